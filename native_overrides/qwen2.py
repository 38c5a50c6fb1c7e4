"""Qwen2: Llama with a bias on the q/k/v projections (none on o_proj) and optional per-layer
sliding windows from `layer_types`."""

from __future__ import annotations

from anymodel.native_overrides.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel


class Qwen2Attention(LlamaAttention):
    qkv_bias = staticmethod(lambda config: True)
    o_bias = staticmethod(lambda config: False)


class Qwen2DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen2Attention


class Qwen2Model(LlamaModel):
    layer_cls = Qwen2DecoderLayer


class Qwen2ForCausalLM(LlamaForCausalLM):
    model_cls = Qwen2Model
