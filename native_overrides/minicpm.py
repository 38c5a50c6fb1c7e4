"""MiniCPM (`MiniCPMForCausalLM`, remote code; openbmb/MiniCPM-2B's modeling_minicpm.py): Llama's
weight names and layers, with three scalings (µP):

    h = embed(ids) * scale_emb
    h = h + attn(norm(h)) * (scale_depth / sqrt(num_hidden_layers))     the same factor after the MLP
    logits = lm_head(h / (hidden_size / dim_model_base))

The MoE variants (num_experts) and LongRoPE configs are refused.
"""

from __future__ import annotations

import math

import torch

from anymodel.native_overrides.remapped import (
    RemappedDecoderLayer, RemappedForCausalLM, RemappedModel, legacy_rope_refusal, llama_named_config,
)


# MiniCPMConfig's defaults (openbmb/MiniCPM-2B-sft-bf16 configuration_minicpm.py).
_DEFAULTS = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048,
    rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=10000.0, rope_scaling=None,
    attention_bias=False, scale_emb=1, dim_model_base=1, scale_depth=1,
)


class MiniCPMDecoderLayer(RemappedDecoderLayer):
    def __init__(self, config, layer_idx: int, dtype: torch.dtype) -> None:
        super().__init__(config, layer_idx, dtype)
        self.residual_scale = config.scale_depth / math.sqrt(config.num_hidden_layers)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, meta) * self.residual_scale
        return h + self.mlp(self.post_attention_layernorm(h)) * self.residual_scale


class MiniCPMModel(RemappedModel):
    layer_cls = MiniCPMDecoderLayer

    def __init__(self, config, dtype: torch.dtype) -> None:
        super().__init__(config, dtype)
        self.scale_emb = config.scale_emb

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, meta) -> torch.Tensor:
        h = self.embed_tokens(ids) * self.scale_emb  # [T, H]
        cos, sin = self.rotary_emb(positions, h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin, meta)
        return self.norm(h)


class MiniCPMForCausalLM(RemappedForCausalLM):
    model_cls = MiniCPMModel
    config_defaults = _DEFAULTS

    def __init__(self, config, dtype: torch.dtype) -> None:
        super().__init__(config, dtype)
        self.logit_divisor = config.hidden_size / config.dim_model_base

    @classmethod
    def family_refusal(cls, config) -> str | None:
        if getattr(config, "num_experts", None):
            return "MiniCPM mixture-of-experts layers (num_experts)"
        return legacy_rope_refusal(config)

    @classmethod
    def native_config(cls, config):
        return llama_named_config(
            config, bias=bool(config.attention_bias), scale_emb=float(config.scale_emb),
            scale_depth=float(config.scale_depth), dim_model_base=float(config.dim_model_base),
        )

    @classmethod
    def native_weights(cls, config, weights, dtype):
        return weights  # Llama's names already

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden / self.logit_divisor)
