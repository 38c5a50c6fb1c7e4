"""Native models at tensor_parallel_size=2 (multiprocess executor, gloo): greedy tokens equal plain
Transformers; each rank holds its shard (heads split, KV heads replicated when there is only one,
vocabulary split for the embedding and the tied / untied head)."""

import pytest

from anymodel import LLM
from tests.reference import greedy_case, llm_greedy


def _shard_shapes(model):
    attn = model.model.layers[0].self_attn
    return {
        "heads": (attn.num_heads, attn.num_kv_heads),
        "qkv": tuple(attn.qkv_proj.weight.shape),
        "o": tuple(attn.o_proj.weight.shape),
        "gate_up": tuple(model.model.layers[0].mlp.gate_up_proj.weight.shape),
        "embed": tuple(model.model.embed_tokens.weight.shape),
        "head": tuple(model.lm_head.weight.shape),
    }


# hidden 64, 4 heads x 16, MLP 128, vocab 384 -> per rank: 2 heads, MLP 64, 192 vocab rows
EXPECTED = {
    "llama": {"heads": (2, 1), "qkv": (64, 64), "o": (64, 32), "gate_up": (128, 64), "embed": (192, 64), "head": (192, 64)},
    "gemma2": {"heads": (2, 1), "qkv": (64, 64), "o": (64, 32), "gate_up": (128, 64), "embed": (192, 64), "head": (192, 64)},
    "llama-1kv": {"heads": (2, 1), "qkv": (64, 64), "o": (64, 32), "gate_up": (128, 64), "embed": (192, 64), "head": (192, 64)},
}


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_tp2_greedy_equals_transformers(arch, tmp_path):
    path, prompts, reference = greedy_case(arch, tmp_path, 8, n=6, seed=1)
    llm = LLM(str(path), dtype="float32", model_impl="native", tensor_parallel_size=2, num_kv_blocks=96)
    try:
        assert llm_greedy(llm, prompts, 8) == reference
        assert llm.apply_model(_shard_shapes) == [EXPECTED[arch]] * 2
    finally:
        llm.engine.shutdown()
