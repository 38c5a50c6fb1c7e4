"""TP=2, PP=2 and TP=2 x PP=2 through the multiprocess executor: greedy tokens equal the single
process (float32), every rank holds only its shards / its stage, and no process outlives shutdown."""

import os
import re

import pytest

from anymodel import LLM, SamplingParams
from tests.parallel import probes
from tests.models.zoo import build_tiny_model, mixed_prompts
from tests.reference import llm_greedy

MAX_TOKENS = 8
PROMPTS = mixed_prompts(n=6, seed=1)
LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2), "tp2xpp2": (2, 2)}
ENGINE = dict(model_impl="transformers", dtype="float32", trust_remote_code=True, num_kv_blocks=96, max_num_batched_tokens=96)

# Local shapes at tensor_parallel_size=2, rank -> {parameter (layer 0 stands for every layer): shape}.
# llama / qwen2 (zoo): hidden 64, 4 heads x 16 (2 KV heads: split), MLP 128, vocab 384.
_LLAMA = {
    "model.embed_tokens.weight": [(192, 64)] * 2,
    "model.layers.0.self_attn.q_proj.weight": [(32, 64)] * 2,
    "model.layers.0.self_attn.k_proj.weight": [(16, 64)] * 2,
    "model.layers.0.self_attn.o_proj.weight": [(64, 32)] * 2,
    "model.layers.0.mlp.gate_proj.weight": [(64, 64)] * 2,
    "model.layers.0.mlp.down_proj.weight": [(64, 64)] * 2,
    "model.layers.0.input_layernorm.weight": [(64,)] * 2,
    "lm_head.weight": [(192, 64)] * 2,
}
TP2_SHAPES = {
    "llama": _LLAMA,
    "qwen2": {**_LLAMA, "model.layers.0.self_attn.q_proj.bias": [(32,)] * 2, "model.layers.0.self_attn.k_proj.bias": [(16,)] * 2},
    # tinyplan (tests/models/tinyplan.py): hidden 48, 4 heads x 12, 1 KV head (replicated), MLP 80, mix 40, vocab 385 (193 / 192).
    "tinyplan": {
        "model.wte.weight": [(193, 48), (192, 48)],
        "model.blocks.0.attn.qkv_proj.weight": [(48, 48)] * 2,  # (2 q + 1 k + 1 v) x 12
        "model.blocks.0.attn.out_proj.weight": [(48, 24)] * 2,
        "model.blocks.0.attn.out_proj.bias": [(48,)] * 2,
        "model.blocks.0.mlp.gate_up_proj.weight": [(80, 48)] * 2,
        "model.blocks.0.mlp.down_proj.weight": [(48, 40)] * 2,
        "model.blocks.0.mix.proj_in.weight": [(20, 48)] * 2,
        "model.blocks.0.mix.gate.weight": [(40, 40)] * 2,
        "model.blocks.0.mix.proj_out.weight": [(48, 20)] * 2,
        "lm_head.weight": [(193, 48), (192, 48)],
    },
    # tinycustom (tests/models/custom, attribute_map names): its plan leaves `embed` whole; head vocab-parallel.
    "tinycustom": {
        "model.embed.weight": [(384, 64)] * 2,
        "model.blocks.0.mixer.wq.weight": [(32, 64)] * 2,
        "model.blocks.0.mixer.wk.weight": [(16, 64)] * 2,
        "model.blocks.0.mixer.wo.weight": [(64, 32)] * 2,
        "model.blocks.0.ffn.w_gate.weight": [(64, 64)] * 2,
        "model.blocks.0.ffn.w_down.weight": [(64, 64)] * 2,
        "lm_head.weight": [(192, 64)] * 2,
    },
}
LAYERS = {"llama": 2, "qwen2": 2, "tinyplan": 4, "tinycustom": 2}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """arch -> (model dir, prompts, single-process greedy tokens, single-process shapes), built lazily."""
    cache = {}

    def get(arch):
        if arch not in cache:
            path = build_tiny_model(arch, tmp_path_factory.mktemp(arch))
            llm = LLM(str(path), **ENGINE)
            cache[arch] = (path, PROMPTS, llm_greedy(llm, PROMPTS, MAX_TOKENS), sampled(llm), llm.apply_model(probes.param_shapes)[0])
        return cache[arch]

    return get


def sampled(llm):
    """Seeded (n=2: seeds 7 and 8) and unseeded random samples: the ranks keep each request's
    generator across steps, so these equal the single process too."""
    seeded = SamplingParams(temperature=0.9, top_k=50, seed=7, n=2, max_tokens=MAX_TOKENS, ignore_eos=True)
    unseeded = SamplingParams(temperature=0.9, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in mixed_prompts(n=3, seed=1)], [seeded, seeded, unseeded], use_tqdm=False)
    return [[c.token_ids for c in o.outputs] for o in outs]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("arch", ["llama", "qwen2", "tinyplan", "tinycustom"])
def test_parallel_greedy_equals_single_process(references, arch, layout):
    path, token_ids, expected, expected_sampled, full_shapes = references(arch)
    tp, pp = LAYOUTS[layout]
    llm = LLM(str(path), tensor_parallel_size=tp, pipeline_parallel_size=pp, **ENGINE)
    try:
        assert llm_greedy(llm, token_ids, MAX_TOKENS) == expected
        assert llm_greedy(llm, token_ids, MAX_TOKENS) == expected  # again: prefix-cache hits on every rank
        assert sampled(llm) == expected_sampled
        shapes = llm.apply_model(probes.param_shapes)
        pids = llm.apply_model(probes.pid)
        ranks = llm.collective_rpc(probes.worker_rank)
    finally:
        llm.engine.shutdown()
    assert len(shapes) == tp * pp and os.getpid() not in pids
    assert ranks == list(range(tp * pp))  # collective_rpc: every worker, in rank order
    for rank, rank_shapes in enumerate(shapes):
        check_rank(arch, rank_shapes, full_shapes, tp, pp, rank)
    assert not [p for p in pids if _alive(p)], "rank processes outlived shutdown()"


def check_rank(arch, shapes, full_shapes, tp, pp, rank):
    pp_rank, tp_rank = divmod(rank, tp)
    per_stage = LAYERS[arch] // pp
    owned = set(range(pp_rank * per_stage, (pp_rank + 1) * per_stage))
    layers = {int(m.group(1)) for name in shapes if (m := re.search(r"\.(?:layers|blocks)\.(\d+)\.", name))}
    assert layers == owned, f"rank {rank} holds layers {sorted(layers)}"
    has_head = any(name.startswith("lm_head.") for name in shapes)
    assert has_head == (pp_rank == pp - 1)
    assert any(re.search(r"\.(embed_tokens|wte|embed)\.", n) for n in shapes) == (pp_rank == 0)
    for name, shape in shapes.items():
        generic = re.sub(r"\.(layers|blocks)\.\d+\.", r".\1.0.", name)
        if tp == 1:
            assert shape == full_shapes[name], name
        elif generic in TP2_SHAPES[arch]:
            assert shape == TP2_SHAPES[arch][generic][tp_rank], name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purposes
        return f.read().split()[2] != "Z"


def test_rank_errors_reach_the_caller_and_stop_every_rank(references):
    path = references("tinyplan")[0]
    plan = {"blocks.*.attn.qkv_proj": "packed_colwise", "blocks.*.attn.out_proj": "rowwise", "blocks.*.mix.gate": "diagonal"}
    with pytest.raises(ValueError, match=r"unknown tensor-parallel style 'diagonal'.*supported"):
        LLM(str(path), tensor_parallel_size=2, hf_overrides={"base_model_tp_plan": plan}, **ENGINE)


def test_uni_backend_refuses_several_ranks(references):
    with pytest.raises(ValueError, match="distributed_executor_backend='uni' runs one process"):
        LLM(str(references("llama")[0]), tensor_parallel_size=2, distributed_executor_backend="uni", **ENGINE)
