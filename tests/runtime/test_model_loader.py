"""The model loader's decision table (runtime/model_loader/): one config per rule, decided from the
config and the class registries alone (no weights), and the load-time transform registry's order."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import BertConfig

from anymodel import LLM, native_overrides
from anymodel.config import EngineArgs
from anymodel.distributed import ParallelState
from anymodel.model_loader import RULES, decide, evaluate, transforms
from tests.models.zoo import tiny_config

ONE = ParallelState()


def config_of(arch: str, architecture: str, **fields):
    config = tiny_config(arch)
    config.architectures = [architecture]
    for key, value in fields.items():
        setattr(config, key, value)
    return config


def decided(config, tmp_path, state=ONE, **args):
    return decide(EngineArgs(**args), config, tmp_path, state)


def test_native_llama(tmp_path):
    d = decided(config_of("llama", "LlamaForCausalLM"), tmp_path)
    assert (d.impl, d.rule, d.cls) == ("native", "native", native_overrides.native_class("LlamaForCausalLM"))
    assert d.reason.startswith("native LlamaForCausalLM")
    assert [v.rule.name for v in d.passed] == ["quantization", "pooling", "native-missing", "native-parallel"]
    assert d.log_line == f"anymodel: native for LlamaForCausalLM: {d.reason}"


def test_model_impl_transformers_skips_the_native_class(tmp_path):
    d = decided(config_of("llama", "LlamaForCausalLM"), tmp_path, model_impl="transformers")
    assert d.impl == "transformers" and d.cls.__name__ == "LlamaForCausalLM"
    assert dict((v.rule.name, v.reason) for v in d.passed)["native"] == "model_impl='transformers'"


def test_backend_compatible_hf_model(tmp_path):
    d = decided(config_of("gpt2", "GPT2LMHeadModel"), tmp_path)
    assert (d.impl, d.cls.__name__) == ("transformers", "GPT2LMHeadModel")
    assert "no native implementation for GPT2LMHeadModel" in dict((v.rule.name, v.reason) for v in d.passed)["native"]


def test_a_config_the_native_class_refuses_runs_on_the_backend(tmp_path):
    config = config_of("llama", "LlamaForCausalLM",
                       rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    d = decided(config, tmp_path)
    assert d.impl == "transformers"
    assert dict((v.rule.name, v.reason) for v in d.passed)["native"].endswith("(frequencies change with the sequence length)")
    assert decided(config, tmp_path, model_impl="native").impl == "native"  # from_pretrained says why


@pytest.mark.parametrize("arch, architecture, why", [
    ("bloom", "BloomForCausalLM", "_supports_attention_backend"),
    ("mamba", "MambaForCausalLM", "recurrent"),
])
def test_compat_models(tmp_path, arch, architecture, why):
    d = decided(config_of(arch, architecture), tmp_path)
    assert (d.impl, d.cls.__name__) == ("compat", architecture)
    assert why in d.reason
    refused = decided(config_of(arch, architecture), tmp_path, enable_compat_path=False)
    assert (refused.impl, refused.rule) == ("refuse", "incompatible")
    assert "ALL_ATTENTION_FUNCTIONS" in refused.reason and "**kwargs" in refused.reason


def test_pooling_conversion(tmp_path):
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, architectures=["BertModel"])
    d = decided(config, tmp_path)  # task="auto": a base encoder embeds
    assert (d.impl, d.rule, d.cls.__name__) == ("pooling", "pooling", "BertModel")
    assert d.reason.startswith("task 'embed': BertModel under a pooler")
    assert decided(config_of("llama", "LlamaForCausalLM"), tmp_path, task="reward").impl == "pooling"


def test_encoder_decoder_is_refused(tmp_path):
    d = decided(config_of("bart", "BartForConditionalGeneration"), tmp_path)
    assert (d.impl, d.rule) == ("refuse", "encoder-decoder")
    assert "encoder-decoder model" in d.reason


def test_native_without_a_native_class_is_refused(tmp_path):
    d = decided(config_of("gpt2", "GPT2LMHeadModel"), tmp_path, model_impl="native")
    assert (d.impl, d.rule) == ("refuse", "native-missing")
    assert "model_impl='native': no native implementation for architecture 'GPT2LMHeadModel'" in d.reason


def test_parallelism_the_native_class_lacks(tmp_path, monkeypatch):
    cls = native_overrides.native_class("LlamaForCausalLM")
    monkeypatch.setattr(cls, "supports_tensor_parallel", False)
    tp2 = ParallelState(tp_size=2)
    config = config_of("llama", "LlamaForCausalLM")
    refused = decided(config, tmp_path, tp2, model_impl="native")
    assert (refused.impl, refused.rule) == ("refuse", "native-parallel")
    assert "tensor_parallel_size=2" in refused.reason
    d = decided(config, tmp_path, tp2)  # auto: the Transformers backend shards it
    assert d.impl == "transformers" and "sharded over 2 ranks" in d.reason
    assert "cannot shard over tp=2" in dict((v.rule.name, v.reason) for v in d.passed)["native"]


def test_compat_runs_in_one_process_only(tmp_path):
    d = decided(config_of("bloom", "BloomForCausalLM"), tmp_path, ParallelState(pp_size=2))
    assert (d.impl, d.rule) == ("refuse", "compat-parallel")


def test_excluding_native_gives_the_next_rule(tmp_path):
    d = decide(EngineArgs(), config_of("llama", "LlamaForCausalLM"), tmp_path, ONE, exclude=("native",))
    assert d.impl == "transformers"


def test_evaluate_gives_every_rule_a_reason(tmp_path):
    decision, verdicts = evaluate(EngineArgs(), config_of("llama", "LlamaForCausalLM"), tmp_path, ONE)
    assert [v.rule for v in verdicts] == list(RULES)
    assert all(v.reason for v in verdicts[:-1])
    assert next(v for v in verdicts if v.applied).rule.name == decision.rule == "native"


# ---- load-time transforms ------------------------------------------------------------------------
@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(transforms, "TRANSFORMS", [])
    return transforms


def test_transforms_run_in_stage_order(registry):
    ran = []

    def add(name, stage, applies=True):
        registry.register(registry.Transform(name, stage, lambda ctx: applies,
                                             lambda model, ctx: ran.append(name) or model))

    add("lora-a", "lora")
    add("shard", "sharding")
    add("quant", "quantization")
    add("lora-b", "lora")
    add("skipped", "quantization", applies=False)
    context = registry.TransformContext("transformers", None, torch.float32, ONE)
    model = torch.nn.Linear(2, 2)
    assert registry.apply_transforms(model, context) is model
    assert ran == ["quant", "shard", "lora-a", "lora-b"]


def test_transform_registry_refuses_unknown_stages_and_duplicates(registry):
    with pytest.raises(ValueError, match=r"unsupported transform stage 'pruning'; supported: \['quantization'"):
        registry.register(registry.Transform("p", "pruning", lambda ctx: True, lambda m, ctx: m))
    registry.register(registry.Transform("q", "quantization", lambda ctx: True, lambda m, ctx: m))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.Transform("q", "lora", lambda ctx: True, lambda m, ctx: m))


def test_the_quantization_transform_is_registered():
    assert [(t.name, t.stage) for t in transforms.TRANSFORMS if t.stage == "quantization"] == [
        ("quantized-linears", "quantization")]
    [quant] = [t for t in transforms.TRANSFORMS if t.stage == "quantization"]
    assert not quant.applies(transforms.TransformContext("transformers", None, torch.float32, ONE))


def test_the_lora_transform_is_registered_and_applies_only_with_enable_lora():
    import anymodel.lora.transform  # noqa: F401 - registers it (the model loader imports it)

    [lora] = [t for t in transforms.TRANSFORMS if t.stage == "lora"]
    assert lora.name == "lora"
    assert not lora.applies(transforms.TransformContext("transformers", None, torch.float32, ONE))
    config = anymodel.lora.transform.LoRAConfig(max_loras=2, max_lora_rank=8, max_cpu_loras=2)
    assert lora.applies(transforms.TransformContext("transformers", None, torch.float32, ONE, config))


def test_the_worker_logs_the_decision(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="anymodel"):
        LLM(str(tiny_model_dir), dtype="float32", model_impl="transformers")
    assert "anymodel: transformers for LlamaForCausalLM: Transformers backend: LlamaForCausalLM" in caplog.text
