"""Llama (and Mistral, and every other Llama-shaped decoder): pre-norm blocks of
grouped-query attention with rotary positions and a SwiGLU MLP.

    h = embed(ids)                                        [T, H]
    for each layer:
        h = h + o_proj(attn(rope(q), rope(k), v))         q, k, v = split(qkv_proj(rmsnorm(h)))
        h = h + down_proj(silu(gate) * up)                gate, up = split(gate_up_proj(rmsnorm(h)))
    return rmsnorm(h)                                     logits = lm_head(h) at sampled positions only

Variants override a class attribute or a small method: Qwen2 (qkv bias), Qwen3 (q/k RMSNorm),
Mistral (sliding window on every layer).
"""

from __future__ import annotations

import torch
from torch import nn

from anymodel.native_overrides.base import NativeForCausalLM, head_dim_of
from anymodel.native_overrides.layers import (
    GatedMLP,
    PagedAttention,
    QKVParallelLinear,
    RMSNorm,
    RotaryEmbedding,
    RowParallelLinear,
    VocabParallelEmbedding,
    apply_rotary,
)


class LlamaAttention(nn.Module):
    def __init__(self, config, layer_idx: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.head_dim = head_dim_of(config)
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, config.num_attention_heads, config.num_key_value_heads,
            self.qkv_bias(config), dtype,
        )
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim, config.hidden_size, self.o_bias(config), dtype)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads  # this rank's
        self.attn = PagedAttention(
            self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim**-0.5, self.sliding_window(config, layer_idx)
        )

    @staticmethod
    def qkv_bias(config) -> bool:
        return getattr(config, "attention_bias", False)

    @staticmethod
    def o_bias(config) -> bool:
        return getattr(config, "attention_bias", False)

    @staticmethod
    def sliding_window(config, layer_idx: int) -> int | None:
        """Per-layer window from `layer_types` (Qwen2/3 set it; Llama has none)."""
        layer_types = getattr(config, "layer_types", None)
        if layer_types and layer_types[layer_idx] == "sliding_attention":
            return config.sliding_window
        return None

    def rotate_qk(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """q and k heads side by side [T, Hq + Hkv, D]: one rope call covers both."""
        return apply_rotary(qk, cos, sin)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta) -> torch.Tensor:
        nq, nkv = self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x).view(x.shape[0], nq + 2 * nkv, self.head_dim)  # [T, Hq + 2 Hkv, D]
        qk = self.rotate_qk(qkv[:, : nq + nkv], cos, sin)
        out = self.attn(qk[:, :nq], qk[:, nq:], qkv[:, nq + nkv :], meta)  # [T, Hq * D]
        return self.o_proj(out)


class LlamaDecoderLayer(nn.Module):
    attention_cls = LlamaAttention

    def __init__(self, config, layer_idx: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.self_attn = self.attention_cls(config, layer_idx, dtype)
        self.mlp = GatedMLP(
            config.hidden_size, config.intermediate_size, config.hidden_act, getattr(config, "mlp_bias", False), dtype
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, meta)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    layer_cls = LlamaDecoderLayer

    def __init__(self, config, dtype: torch.dtype) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, dtype)
        self.layers = nn.ModuleList(self.layer_cls(config, i, dtype) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.rotary_emb = RotaryEmbedding(config, head_dim_of(config))

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, meta) -> torch.Tensor:
        h = self.embed_tokens(ids)  # [T, H]
        cos, sin = self.rotary_emb(positions, h.dtype)  # once per step, shared by every layer
        for layer in self.layers:
            h = layer(h, cos, sin, meta)
        return self.norm(h)


class LlamaForCausalLM(NativeForCausalLM):
    model_cls = LlamaModel



# ---- Mistral: Llama with one sliding window for every layer -------------------------------------

class MistralAttention(LlamaAttention):
    qkv_bias = o_bias = staticmethod(lambda config: False)

    @staticmethod
    def sliding_window(config, layer_idx: int) -> int | None:
        return getattr(config, "sliding_window", None)


class MistralDecoderLayer(LlamaDecoderLayer):
    attention_cls = MistralAttention


class MistralModel(LlamaModel):
    layer_cls = MistralDecoderLayer


class MistralForCausalLM(LlamaForCausalLM):
    model_cls = MistralModel
