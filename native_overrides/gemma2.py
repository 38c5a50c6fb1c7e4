"""Gemma 2: sandwich-normed blocks (RMSNorm before *and* after attention and MLP, weights used as
1 + w), embeddings scaled by sqrt(H), GeGLU MLP, layers alternating sliding-window and global
attention, tanh soft-capping of attention scores and of the final logits.

    h = embed(ids) * sqrt(H)
    for each layer:
        h = h + post_attn_norm(attn(input_norm(h)))        scores: cap * tanh(q.k * s / cap),
        h = h + post_ffw_norm(mlp(pre_ffw_norm(h)))        s = query_pre_attn_scalar ** -0.5
    logits = cap * tanh(lm_head(norm(h)) / cap)
"""

from __future__ import annotations

import torch
from torch import nn

from anymodel.model_facts import text_config_of
from anymodel.native_overrides.base import NativeForCausalLM, head_dim_of
from anymodel.native_overrides.layers import (
    GatedMLP,
    GemmaRMSNorm,
    PagedAttention,
    QKVParallelLinear,
    RotaryEmbedding,
    RowParallelLinear,
    VocabParallelEmbedding,
    apply_rotary,
)


class Gemma2Attention(nn.Module):
    def __init__(self, config, layer_idx: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.head_dim = head_dim_of(config)
        bias = config.attention_bias
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, config.num_attention_heads, config.num_key_value_heads, bias, dtype
        )
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim, config.hidden_size, bias, dtype)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads  # this rank's
        sliding = config.layer_types[layer_idx] == "sliding_attention"
        self.attn = PagedAttention(
            self.num_heads, self.num_kv_heads, self.head_dim, config.query_pre_attn_scalar**-0.5,
            sliding_window=config.sliding_window if sliding else None, softcap=self.softcap(config),
        )

    @staticmethod
    def softcap(config) -> float | None:
        return config.attn_logit_softcapping

    def rotate_qk(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rotary(qk, cos, sin)  # [T, Hq + Hkv, D]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta) -> torch.Tensor:
        nq, nkv = self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x).view(x.shape[0], nq + 2 * nkv, self.head_dim)  # [T, Hq + 2 Hkv, D]
        qk = self.rotate_qk(qkv[:, : nq + nkv], cos, sin)
        return self.o_proj(self.attn(qk[:, :nq], qk[:, nq:], qkv[:, nq + nkv :], meta))


class Gemma2DecoderLayer(nn.Module):
    attention_cls = Gemma2Attention

    def __init__(self, config, layer_idx: int, dtype: torch.dtype) -> None:
        super().__init__()
        H, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = self.attention_cls(config, layer_idx, dtype)
        self.mlp = GatedMLP(H, config.intermediate_size, config.hidden_activation, False, dtype)
        self.input_layernorm = GemmaRMSNorm(H, eps, dtype)
        self.post_attention_layernorm = GemmaRMSNorm(H, eps, dtype)
        self.pre_feedforward_layernorm = GemmaRMSNorm(H, eps, dtype)
        self.post_feedforward_layernorm = GemmaRMSNorm(H, eps, dtype)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta) -> torch.Tensor:
        h = h + self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), cos, sin, meta))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Gemma2Model(nn.Module):
    layer_cls = Gemma2DecoderLayer

    def __init__(self, config, dtype: torch.dtype) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, dtype)
        # float32 first, then the model dtype: Transformers' rounding of sqrt(H), bit for bit
        self.register_buffer("normalizer", torch.tensor(config.hidden_size**0.5).to(dtype), persistent=False)
        self.layers = nn.ModuleList(self.layer_cls(config, i, dtype) for i in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        # One rotary table per rope variant; layer i uses rotary_emb[rope_keys[i]].
        self.rope_keys = self.rope_layer_types(config)
        self.rotary_emb = nn.ModuleDict(
            {str(t): RotaryEmbedding(config, head_dim_of(config), t) for t in dict.fromkeys(self.rope_keys)}
        )

    @staticmethod
    def rope_layer_types(config) -> list:
        return [None] * config.num_hidden_layers  # one rope for all layers

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, meta) -> torch.Tensor:
        h = self.embed_tokens(ids) * self.normalizer  # [T, H]
        ropes = {key: emb(positions, h.dtype) for key, emb in self.rotary_emb.items()}  # once per step
        for layer, key in zip(self.layers, self.rope_keys):
            h = layer(h, *ropes[str(key)], meta)
        return self.norm(h)


class Gemma2ForCausalLM(NativeForCausalLM):
    model_cls = Gemma2Model


    @classmethod
    def unsupported(cls, config) -> str | None:
        if getattr(text_config_of(config), "use_bidirectional_attention", False):
            return "bidirectional attention"
        return super().unsupported(config)
