"""GGUF files through Transformers' GGUF reader: a tiny Llama written as GGUF (Q8_0 linears, F32
rest; q/k rows permuted as llama.cpp's converter does) serves the greedy tokens plain Transformers
gives on the dequantized weights; the weights are dequantized at load (float32 in memory)."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from anymodel import LLM
from tests.models.zoo import build_tiny_model, mixed_prompts, tiny_config
from tests.reference import hf_greedy, llm_greedy

gguf = pytest.importorskip("gguf")

_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q / k rows (Transformers' reader undoes it)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    layer, rest = name.removeprefix("model.layers.").split(".", 1)
    return f"blk.{layer}.{_NAMES[rest.removesuffix('.weight')]}.weight"


def write_gguf(plain_dir, out, config) -> dict[str, torch.Tensor]:
    """The zoo checkpoint as GGUF (2-D linears Q8_0); returns the dequantized HF-named tensors."""
    writer = gguf.GGUFWriter(str(out), "llama")
    for add, value in (("context_length", 512), ("embedding_length", config.hidden_size), ("block_count", 2),
                       ("feed_forward_length", config.intermediate_size), ("rope_dimension_count", 16),
                       ("head_count", 4), ("head_count_kv", 2), ("layer_norm_rms_eps", config.rms_norm_eps),
                       ("rope_freq_base", 10000.0), ("vocab_size", config.vocab_size)):
        getattr(writer, f"add_{add}")(value)
    dequantized = {}
    for name, t in load_file(plain_dir / "model.safetensors").items():
        data = t.float().numpy()
        heads = {"attn_q": 4, "attn_k": 2}.get(_gguf_name(name).split(".")[2] if name.startswith("model.layers") else "")
        stored = _permute(data, heads) if heads else data
        if name.endswith("proj.weight"):
            q = gguf.quants.quantize(stored, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(_gguf_name(name), q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            data = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
            if heads:  # back to Transformers' row order (the inverse of _permute)
                data = data.reshape(heads, data.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(stored.shape)
        else:
            writer.add_tensor(_gguf_name(name), stored)
        dequantized[name] = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dequantized


def test_gguf_file_serves_transformers_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYMODEL_GGUF_CACHE", str(tmp_path / "cache"))
    plain = build_tiny_model("llama", tmp_path / "plain")
    path = tmp_path / "tiny-q8_0.gguf"
    save_file(write_gguf(plain, path, tiny_config("llama")), plain / "model.safetensors")
    prompts = mixed_prompts(plain, n=4, seed=4)
    reference = hf_greedy(plain, prompts, 6)
    llm = LLM(str(path), tokenizer=str(plain), dtype="float32", num_kv_blocks=64)
    assert llm_greedy(llm, prompts, 6) == reference
    assert llm.apply_model(lambda m: str(m.model.layers[0].self_attn.qkv_proj.weight.dtype)) == ["torch.float32"]
