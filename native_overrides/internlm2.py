"""InternLM2 / InternLM2.5 (`InternLM2ForCausalLM`, remote code): a Llama decoder under other names,
with q, k and v packed into one `wqkv` per layer in grouped order.

    model.tok_embeddings          -> model.embed_tokens
    layers.N.attention.wqkv       -> self_attn.q_proj / k_proj / v_proj   (unpacked, see below)
    layers.N.attention.wo         -> self_attn.o_proj        (wqkv and wo carry a bias iff config.bias)
    layers.N.feed_forward.w1/w3/w2 -> mlp.gate_proj / up_proj / down_proj   (w2(silu(w1 x) * w3 x))
    layers.N.attention_norm / ffn_norm -> input_layernorm / post_attention_layernorm
    output                        -> lm_head

`wqkv` rows, as the remote InternLM2Attention splits them (rearrange "b q (h gs d) -> b q h gs d",
gs = 2 + heads / kv_heads): for each of the kv_heads groups, that group's query heads, then its
key head, then its value head, head_dim rows each.
"""

from __future__ import annotations

import torch

from anymodel.native_overrides.remapped import (
    RemappedForCausalLM, legacy_rope_refusal, llama_named_config, renamed,
)

_RENAMES = (
    (r"^model\.tok_embeddings\.", "model.embed_tokens."),
    (r"\.attention\.wo\.", ".self_attn.o_proj."),
    (r"\.feed_forward\.w1\.", ".mlp.gate_proj."),
    (r"\.feed_forward\.w3\.", ".mlp.up_proj."),
    (r"\.feed_forward\.w2\.", ".mlp.down_proj."),
    (r"\.attention_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
    (r"^output\.", "lm_head."),
)


# InternLM2Config's defaults (internlm2-chat-7b configuration_internlm2.py).
_DEFAULTS = dict(
    vocab_size=103168, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048,
    rms_norm_eps=1e-6, tie_word_embeddings=False, bias=True, rope_theta=10000, rope_scaling=None,
)


def unpack_wqkv(wqkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int):
    """wqkv [(kv * (g + 2)) * D, ...] (weight or bias) -> q [kv * g * D, ...], k, v [kv * D, ...]."""
    groups = num_heads // num_kv_heads
    packed = wqkv.reshape(num_kv_heads, groups + 2, head_dim, *wqkv.shape[1:])
    q = packed[:, :groups].reshape(num_heads * head_dim, *wqkv.shape[1:])
    k = packed[:, groups].reshape(num_kv_heads * head_dim, *wqkv.shape[1:])
    v = packed[:, groups + 1].reshape(num_kv_heads * head_dim, *wqkv.shape[1:])
    return q, k, v


class InternLM2ForCausalLM(RemappedForCausalLM):
    config_defaults = _DEFAULTS

    @classmethod
    def family_refusal(cls, config) -> str | None:
        return legacy_rope_refusal(config)

    @classmethod
    def native_config(cls, config):
        return llama_named_config(config, bias=bool(config.bias))

    @classmethod
    def native_weights(cls, config, weights, dtype):
        native = cls.native_config(config)
        shape = (native.num_attention_heads, native.num_key_value_heads, native.head_dim)
        for name, tensor in renamed(weights, _RENAMES):
            if ".attention.wqkv." not in name:
                yield name, tensor
                continue
            for part, rows in zip(("q_proj", "k_proj", "v_proj"), unpack_wqkv(tensor, *shape)):
                yield name.replace(".attention.wqkv.", f".self_attn.{part}."), rows
