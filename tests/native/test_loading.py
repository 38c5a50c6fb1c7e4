"""Checkpoint loading of the native models (sharded index, tied embeddings, stacked q/k/v and
gate/up), the shared rotary against Transformers' own, and the refusal of configs a native class
cannot reproduce (auto falls back to the Transformers backend; model_impl='native' says why)."""

import json

import pytest
import torch

from anymodel import LLM
from anymodel.native_overrides.layers import RotaryEmbedding, apply_rotary
from tests.models.zoo import build_tiny_model, mixed_prompts
from tests.reference import hf_greedy, llm_greedy


def test_sharded_checkpoint_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    src = build_tiny_model("qwen2", tmp_path / "src")
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    out = build_tiny_model("qwen2", tmp_path / "sharded")
    (out / "model.safetensors").unlink()
    model.save_pretrained(str(out), max_shard_size="40KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    prompts = mixed_prompts(out, n=3, seed=2)
    llm = LLM(str(out), dtype="float32", model_impl="native")
    assert llm_greedy(llm, prompts, 6) == hf_greedy(src, prompts, 6)


def test_tied_embeddings_share_one_tensor(tmp_path):
    path = build_tiny_model("gemma2", tmp_path)  # tie_word_embeddings=True: no lm_head.weight saved
    llm = LLM(str(path), dtype="float32", model_impl="native")
    assert llm.apply_model(lambda m: m.lm_head.weight is m.model.embed_tokens.weight) == [True]


def test_fused_weights_equal_the_checkpoint(tmp_path):
    from safetensors.torch import load_file

    path = build_tiny_model("llama", tmp_path)
    ckpt = load_file(str(path / "model.safetensors"))
    llm = LLM(str(path), dtype="float32", model_impl="native")
    layer = llm.apply_model(lambda m: m.model.layers[1])[0]
    p = "model.layers.1."
    qkv = torch.cat([ckpt[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
    gate_up = torch.cat([ckpt[p + "mlp.gate_proj.weight"], ckpt[p + "mlp.up_proj.weight"]])
    assert torch.equal(layer.self_attn.qkv_proj.weight, qkv)
    assert torch.equal(layer.mlp.gate_up_proj.weight, gate_up)


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64},
])
def test_rotary_matches_transformers(rope):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=4096, rope_parameters=rope)
    positions = torch.tensor([0, 1, 5, 63, 64, 1000, 4000])
    q, k = torch.randn(len(positions), 4, 16), torch.randn(len(positions), 2, 16)  # [T, heads, D]
    cos, sin = LlamaRotaryEmbedding(config)(q, positions[None])
    q_ref, k_ref = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    ours_cos, ours_sin = RotaryEmbedding(config, 16)(positions, torch.float32)
    assert torch.equal(apply_rotary(q, ours_cos, ours_sin), q_ref[0].transpose(0, 1))
    assert torch.equal(apply_rotary(k, ours_cos, ours_sin), k_ref[0].transpose(0, 1))


def _dynamic_rope_model(tmp_path):
    path = build_tiny_model("llama", tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_unsupported_config_falls_back_to_transformers(tmp_path):
    path = _dynamic_rope_model(tmp_path)
    llm = LLM(str(path), dtype="float32", num_kv_blocks=32)
    assert llm.apply_model(lambda m: type(m).__name__) == ["TransformersForCausalLM"]
    with pytest.raises(ValueError, match=r"does not support rope_type 'dynamic'.*model_impl='transformers'"):
        LLM(str(path), dtype="float32", model_impl="native", num_kv_blocks=32)


def test_unknown_checkpoint_tensor_falls_back_to_transformers(tmp_path):
    from safetensors.torch import load_file, save_file

    path = build_tiny_model("llama", tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    tensors["model.layers.0.self_attn.extra_scale"] = torch.ones(4)  # Transformers ignores it, native cannot place it
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    llm = LLM(str(path), dtype="float32", num_kv_blocks=32)
    assert llm.apply_model(lambda m: type(m).__name__) == ["TransformersForCausalLM"]
    with pytest.raises(ValueError, match=r"unexpected \['model.layers.0.self_attn.extra_scale'\]"):
        LLM(str(path), dtype="float32", model_impl="native", num_kv_blocks=32)
