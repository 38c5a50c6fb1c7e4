"""Plan resolution and sharding on the meta device, in process (no ranks, no collectives).

A ParallelState(tp_rank=r, tp_size=2) is enough to shard: collectives only run in forward."""

import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from anymodel import loader
from anymodel.adapters.parallel import apply_tensor_plan, build_on_meta, resolve_tp_plan
from anymodel.adapters.pipeline_parallel import StagePlaceholder, apply_stage_plan, layer_range, resolve_stage_plan
from anymodel.distributed import ParallelState
from tests.models.zoo import build_tiny_model


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return {arch: build_tiny_model(arch, tmp_path_factory.mktemp(arch)) for arch in ("llama", "tinyplan", "gpt2")}


def meta_model(path):
    config = loader.load_config(path, trust_remote_code=True)
    spec = loader.resolve_causal_lm_class(config, path, trust_remote_code=True)
    return build_on_meta(spec.cls, config, torch.float32)


class TwoLists(nn.Module):
    def __init__(self, plan=None):
        super().__init__()
        self.config = SimpleNamespace(base_model_pp_plan=plan)
        self.embed = nn.Embedding(4, 4)
        self.layers = nn.ModuleList([nn.Linear(4, 4)])
        self.extra_layers = nn.ModuleList([nn.Linear(4, 4)])


def test_two_module_lists_are_an_error():
    with pytest.raises(ValueError, match=r"exactly one nn.ModuleList.*2 ModuleLists.*\['layers', 'extra_layers'\]"):
        resolve_stage_plan(TwoLists())


def test_a_plan_naming_two_module_lists_is_an_error():
    io = (["hidden_states"], ["hidden_states"])
    with pytest.raises(ValueError, match=r"names 2: \['layers', 'extra_layers'\]"):
        resolve_stage_plan(TwoLists({"embed": io, "layers": io, "extra_layers": io}))


def test_no_module_list_is_an_error():
    base = nn.Module()
    base.config = SimpleNamespace(base_model_pp_plan=None)
    base.proj = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="0 ModuleLists"):
        resolve_stage_plan(base)


def test_layer_ranges_cover_every_layer_once():
    assert [layer_range(5, 2, r) for r in range(2)] == [(0, 3), (3, 5)]
    with pytest.raises(ValueError, match="exceeds the model's 2 layers"):
        layer_range(2, 3, 0)


def test_declared_pp_plan_places_modules(model_dirs):
    hf = meta_model(model_dirs["tinyplan"])
    plan = resolve_stage_plan(hf.base_model)
    assert (plan.layers, plan.before, plan.after, plan.outputs) == ("blocks", ("wte",), ("ln_f",), ("hidden_states",))
    apply_stage_plan(hf.base_model, plan, pp_rank=1, pp_size=2, dtype=torch.float32)
    blocks = hf.base_model.blocks
    assert [isinstance(b, StagePlaceholder) for b in blocks] == [True, True, False, False]
    assert isinstance(hf.base_model.wte, StagePlaceholder) and not isinstance(hf.base_model.ln_f, StagePlaceholder)


def test_missing_pp_plan_is_inferred_with_a_warning(model_dirs, caplog):
    hf = meta_model(model_dirs["gpt2"])  # GPT-2 declares no plans
    with caplog.at_level(logging.WARNING, logger="anymodel"):
        plan = resolve_stage_plan(hf.base_model)
    assert "declares no base_model_pp_plan; inferred" in caplog.text
    assert (plan.layers, plan.before, plan.after) == ("h", ("wte", "wpe"), ("ln_f",))
    apply_stage_plan(hf.base_model, plan, pp_rank=0, pp_size=2, dtype=torch.float32)
    assert isinstance(hf.base_model.ln_f, StagePlaceholder) and isinstance(hf.base_model.h[1], StagePlaceholder)


def test_missing_tp_plan_is_inferred_for_llama_names(model_dirs, caplog):
    hf = meta_model(model_dirs["llama"])
    hf.config.base_model_tp_plan = None
    hf._tp_plan = {}
    with caplog.at_level(logging.WARNING, logger="anymodel"):
        plan = resolve_tp_plan(hf, "lm_head")
    assert "declares no base_model_tp_plan; inferred" in caplog.text
    assert plan["model.layers.*.self_attn.q_proj"] == "colwise" and plan["model.layers.*.mlp.down_proj"] == "rowwise"
    assert plan["model.embed_tokens"] == "embedding_rowwise" and plan["lm_head"] == "colwise_gather_output"


def test_uninferable_tp_plan_is_an_error(model_dirs):
    hf = meta_model(model_dirs["gpt2"])  # fused Conv1D c_attn: nothing to infer safely
    with pytest.raises(ValueError, match="declares no base_model_tp_plan and none can be inferred"):
        resolve_tp_plan(hf, "lm_head")


def test_unknown_style_in_a_model_plan_names_it(model_dirs):
    hf = meta_model(model_dirs["tinyplan"])
    plan = {**resolve_tp_plan(hf, "lm_head"), "model.blocks.*.mix.gate": "diagonal"}
    with pytest.raises(ValueError, match=r"unknown tensor-parallel style 'diagonal' \(plan entry 'model.blocks.\*.mix.gate'\)"):
        apply_tensor_plan(hf, plan, ParallelState(tp_rank=0, tp_size=2))


@pytest.mark.parametrize("tp_rank", [0, 1])
def test_custom_shards_on_meta(model_dirs, tp_rank):
    hf = meta_model(model_dirs["tinyplan"])
    specs = apply_tensor_plan(hf, resolve_tp_plan(hf, "lm_head"), ParallelState(tp_rank=tp_rank, tp_size=2))
    attn = hf.model.blocks[0].attn
    # 4 query heads -> 2 per rank; 1 KV head -> replicated: rank r reads head 0. head_dim 12.
    assert (attn.num_heads, attn.num_key_value_heads, attn.config.num_attention_heads) == (2, 1, 2)
    assert hf.config.num_attention_heads == 4  # the shared config keeps global counts
    q_rows = (tp_rank * 24, tp_rank * 24 + 24)
    assert specs["model.blocks.0.attn.qkv_proj.weight"].ranges == (q_rows, (48, 60), (60, 72))
    assert tuple(hf.model.wte.weight.shape) == ((193, 48) if tp_rank == 0 else (192, 48))  # vocab 385
    assert tuple(hf.lm_head.weight.shape) == tuple(hf.model.wte.weight.shape)
