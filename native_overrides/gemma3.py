"""Gemma 3 (text): Gemma 2 with an RMSNorm over each query and key head before the rotary
embedding, a rope variant per layer type (local layers: short base; global: long base, possibly
scaled), and no attention soft-capping."""

from __future__ import annotations

import torch

from anymodel.native_overrides.gemma2 import Gemma2Attention, Gemma2DecoderLayer, Gemma2ForCausalLM, Gemma2Model
from anymodel.native_overrides.layers import GemmaRMSNorm, apply_qk_norm_rotary


class Gemma3Attention(Gemma2Attention):
    def __init__(self, config, layer_idx: int, dtype: torch.dtype) -> None:
        super().__init__(config, layer_idx, dtype)
        self.q_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps, dtype)
        self.k_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps, dtype)

    @staticmethod
    def softcap(config) -> float | None:
        return None  # Gemma 3 keeps `attn_logit_softcapping` in its config but never applies it

    def rotate_qk(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_qk_norm_rotary(qk, self.num_heads, self.q_norm, self.k_norm, cos, sin)


class Gemma3DecoderLayer(Gemma2DecoderLayer):
    attention_cls = Gemma3Attention


class Gemma3TextModel(Gemma2Model):
    layer_cls = Gemma3DecoderLayer

    @staticmethod
    def rope_layer_types(config) -> list:
        return list(config.layer_types)  # rope_parameters is keyed by layer type


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    model_cls = Gemma3TextModel

    @classmethod
    def rope_layer_types(cls, config) -> tuple:
        return tuple(dict.fromkeys(config.layer_types))

    def get_input_embeddings(self):
        # Transformers' Gemma3 lookup includes the sqrt(H) scale, ours applies it after: the rows a
        # user computed with HF's get_input_embeddings() would be scaled twice here.
        raise ValueError("prompt_embeds on Gemma3 need model_impl='transformers' (the native model scales "
                         "its embeddings after the lookup, Transformers' get_input_embeddings() before)")
