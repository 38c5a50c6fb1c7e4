"""ChatGLM2 / ChatGLM3 / GLM-4 (`ChatGLMModel`, remote code; THUDM/chatglm3-6b and THUDM/glm-4-9b-chat
modeling_chatglm.py):

    transformer.embedding.word_embeddings         -> model.embed_tokens
    transformer.encoder.layers.N.input_layernorm / post_attention_layernorm   (RMSNorm, layernorm_epsilon)
    ...self_attention.query_key_value             -> self_attn.q_proj / k_proj / v_proj
        rows [q (heads * kv_channels); k (groups * kv_channels); v (same)], bias iff add_qkv_bias;
        groups = multi_query_group_num when multi_query_attention, else heads
    ...self_attention.dense                       -> self_attn.o_proj     (bias iff add_bias_linear)
    ...mlp.dense_h_to_4h                          -> mlp.gate_proj / up_proj  (rows [gate; up], swiglu)
    ...mlp.dense_4h_to_h                          -> mlp.down_proj
    transformer.encoder.final_layernorm           -> model.norm;   transformer.output_layer -> lm_head

Rotary: only the first half of each head rotates, in interleaved pairs (x[2i], x[2i+1]) with
frequency base ** (-2i / (kv_channels / 2)), base = 10000 * rope_ratio (GLM-4's reading).
ChatGLM2-6B-32k's file reads rope_ratio as a position divisor instead, and the configs do not say
which file they belong to, so rope_ratio != 1 is served natively for GLM-4 only (vocabulary 151552);
other variants (post-norm residuals, LayerNorm, p-tuning prefixes, quantization_bit) are refused.
"""

from __future__ import annotations

import torch

from anymodel.native_overrides.layers import RotaryEmbedding
from anymodel.native_overrides.remapped import (
    RemappedAttention, RemappedDecoderLayer, RemappedForCausalLM, RemappedModel, llama_config,
    renamed, split_rows,
)

GLM4_VOCAB = 151552
_RENAMES = (
    (r"^transformer\.embedding\.word_embeddings\.", "model.embed_tokens."),
    (r"^transformer\.encoder\.layers\.(\d+)\.", r"model.layers.\1."),
    (r"\.self_attention\.dense\.", ".self_attn.o_proj."),
    (r"\.mlp\.dense_4h_to_h\.", ".mlp.down_proj."),
    (r"^transformer\.encoder\.final_layernorm\.", "model.norm."),
    (r"^transformer\.output_layer\.", "lm_head."),
)


# ChatGLMConfig's defaults (THUDM/chatglm3-6b configuration_chatglm.py), and the attribute names
# the rest of anymodel reads (vocab_size, num_hidden_layers) as that class derives them.
_DEFAULTS = dict(
    num_layers=28, padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696, kv_channels=128,
    num_attention_heads=32, seq_length=2048, layernorm_epsilon=1e-5, rmsnorm=True,
    apply_residual_connection_post_layernorm=False, post_layer_norm=True, add_bias_linear=False,
    add_qkv_bias=False, multi_query_attention=False, multi_query_group_num=1, quantization_bit=0,
    pre_seq_len=None, rope_ratio=1, original_rope=True, tie_word_embeddings=False,
)
_ALIASES = dict(vocab_size="padded_vocab_size", num_hidden_layers="num_layers")


def apply_interleaved_half_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """ChatGLM's rope on x [T, heads, D]: pairs (x[2i], x[2i+1]) of the first D/2 dims rotate by
    angle i (cos/sin [T, 1, D/4]); the second half passes through."""
    rot = 2 * cos.shape[-1]
    pairs = x[..., :rot].unflatten(-1, (-1, 2))  # [T, heads, D/4, 2]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2)
    return torch.cat((rotated, x[..., rot:]), dim=-1)


class ChatGLMAttention(RemappedAttention):
    def rotate_qk(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_interleaved_half_rotary(qk, cos, sin)


class ChatGLMDecoderLayer(RemappedDecoderLayer):
    attention_cls = ChatGLMAttention


class ChatGLMBody(RemappedModel):
    layer_cls = ChatGLMDecoderLayer

    def __init__(self, config, dtype: torch.dtype) -> None:
        super().__init__(config, dtype)
        self.rotary_emb = RotaryEmbedding(config, config.head_dim // 2)  # frequencies over the rotated half


class ChatGLMModel(RemappedForCausalLM):
    model_cls = ChatGLMBody
    config_defaults = _DEFAULTS
    config_aliases = _ALIASES

    @classmethod
    def family_refusal(cls, config) -> str | None:
        checks = (
            (not config.rmsnorm, "LayerNorm (rmsnorm=False)"),
            (config.apply_residual_connection_post_layernorm, "apply_residual_connection_post_layernorm"),
            (not config.post_layer_norm, "post_layer_norm=False"),
            (bool(config.quantization_bit), f"quantization_bit={config.quantization_bit}"),
            (config.pre_seq_len is not None, "p-tuning prefixes (pre_seq_len)"),
            (not getattr(config, "original_rope", True), "original_rope=False"),
            (config.rope_ratio != 1 and config.padded_vocab_size != GLM4_VOCAB,
             f"rope_ratio={config.rope_ratio} outside GLM-4 (ChatGLM2's and GLM-4's files read it differently)"),
        )
        return next((why for bad, why in checks if bad), None)

    @classmethod
    def native_config(cls, config):
        heads = config.num_attention_heads
        groups = config.multi_query_group_num if config.multi_query_attention else heads
        return llama_config(
            config, vocab_size=config.padded_vocab_size, hidden_size=config.hidden_size,
            intermediate_size=config.ffn_hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=heads, num_key_value_heads=groups, head_dim=config.kv_channels,
            hidden_act="silu", max_position_embeddings=config.seq_length, rms_norm_eps=config.layernorm_epsilon,
            tie_word_embeddings=False, mlp_bias=bool(config.add_bias_linear),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * config.rope_ratio},
            qkv_bias=bool(config.add_qkv_bias), o_bias=bool(config.add_bias_linear),
        )

    @classmethod
    def native_weights(cls, config, weights, dtype):
        native = cls.native_config(config)
        q, kv = native.num_attention_heads * native.head_dim, native.num_key_value_heads * native.head_dim
        for name, tensor in renamed(weights, _RENAMES):
            if name.endswith("rotary_pos_emb.inv_freq"):
                continue  # a buffer the remote model recomputes anyway
            if ".self_attention.query_key_value." in name:
                yield from split_rows(name, "self_attention.query_key_value", tensor,
                                      ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), [q, kv, kv])
            elif ".mlp.dense_h_to_4h." in name:
                yield from split_rows(name, "mlp.dense_h_to_4h", tensor, ("mlp.gate_proj", "mlp.up_proj"),
                                      [native.intermediate_size] * 2)
            else:
                yield name, tensor
