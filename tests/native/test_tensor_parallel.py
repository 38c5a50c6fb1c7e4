"""Native models at tensor_parallel_size=2 (multiprocess executor, gloo): greedy tokens equal plain
Transformers; each rank holds its shard (heads split, KV heads replicated when there is only one,
vocabulary split for the embedding and the tied / untied head)."""

import pytest
import torch

from anymodel import LLM, SamplingParams
from tests.models.tokenizer import save_tokenizer
from tests.models.zoo import _rescale_, build_tiny_model, hf_greedy, mixed_prompts, tiny_config

PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def _single_kv_head_llama(out):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.num_key_value_heads = 1  # fewer KV heads than ranks: each rank keeps a copy
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _rescale_(model, seed=0)
    model.eval().save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(out)
    return out


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
    path = _single_kv_head_llama(tmp_path) if arch == "llama-1kv" else build_tiny_model(arch, tmp_path)
    prompts = mixed_prompts(path, n=6, seed=1)
    reference = hf_greedy(path, prompts, 8)
    llm = LLM(str(path), dtype="float32", model_impl="native", tensor_parallel_size=2, num_kv_blocks=96)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in outs] == reference
        assert llm.apply_model(_shard_shapes) == [EXPECTED[arch]] * 2
    finally:
        llm.engine.shutdown()
