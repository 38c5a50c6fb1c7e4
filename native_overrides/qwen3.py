"""Qwen3: Llama with an RMSNorm over each query and key head before the rotary embedding
(`q_norm`, `k_norm`: one weight [head_dim] each, shared by all heads)."""

from __future__ import annotations

import torch

from anymodel.native_overrides.layers import RMSNorm, apply_qk_norm_rotary
from anymodel.native_overrides.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel


class Qwen3Attention(LlamaAttention):
    def __init__(self, config, layer_idx: int, dtype: torch.dtype) -> None:
        super().__init__(config, layer_idx, dtype)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype)

    def rotate_qk(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_qk_norm_rotary(qk, self.num_heads, self.q_norm, self.k_norm, cos, sin)


class Qwen3DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen3Attention


class Qwen3Model(LlamaModel):
    layer_cls = Qwen3DecoderLayer


class Qwen3ForCausalLM(LlamaForCausalLM):
    model_cls = Qwen3Model
