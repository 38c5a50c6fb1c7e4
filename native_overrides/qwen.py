"""Qwen (the first generation, `QWenLMHeadModel`, remote code), as Qwen/Qwen-7B's modeling_qwen.py:

    transformer.wte                -> model.embed_tokens
    transformer.h.N.ln_1 / ln_2    -> input_layernorm / post_attention_layernorm  (RMSNorm, layer_norm_epsilon)
    transformer.h.N.attn.c_attn    -> self_attn.q_proj / k_proj / v_proj  ([q; k; v] rows, always with a bias)
    transformer.h.N.attn.c_proj    -> self_attn.o_proj     (bias iff not no_bias)
    transformer.h.N.mlp.w2 / w1    -> mlp.gate_proj / up_proj  (c_proj(w1(x) * silu(w2(x))): w2 is the gate)
    transformer.h.N.mlp.c_proj     -> mlp.down_proj        (width intermediate_size // 2)
    transformer.ln_f               -> model.norm;   lm_head stays

Heads are kv_channels wide, rotated over their full width (rotary_pct 1.0; other values are refused)
with base rotary_emb_base. Dynamic NTK (`use_dynamic_ntk`) and log-n attention scaling
(`use_logn_attn`) change nothing up to `seq_length` tokens (the NTK alpha is max(2^ceil(log2(n /
seq_length) + 1) - 1, 1) = 1 and the log-n factor is 1 for positions <= seq_length); seq_length is
one of the context keys anymodel's max_model_len may not exceed, so inside it this is exact.
"""

from __future__ import annotations

from anymodel.native_overrides.remapped import (
    RemappedForCausalLM, llama_config, renamed, split_rows,
)

_RENAMES = (
    (r"^transformer\.wte\.", "model.embed_tokens."),
    (r"^transformer\.h\.(\d+)\.", r"model.layers.\1."),
    (r"\.ln_1\.", ".input_layernorm."),
    (r"\.ln_2\.", ".post_attention_layernorm."),
    (r"\.attn\.c_proj\.", ".self_attn.o_proj."),
    (r"\.mlp\.w1\.", ".mlp.up_proj."),
    (r"\.mlp\.w2\.", ".mlp.gate_proj."),
    (r"\.mlp\.c_proj\.", ".mlp.down_proj."),
    (r"^transformer\.ln_f\.", "model.norm."),
)


# QWenConfig's defaults (Qwen/Qwen-7B configuration_qwen.py).
_DEFAULTS = dict(
    vocab_size=151936, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
    layer_norm_epsilon=1e-6, max_position_embeddings=8192, kv_channels=128, rotary_pct=1.0,
    rotary_emb_base=10000, use_dynamic_ntk=True, use_logn_attn=True, intermediate_size=22016,
    no_bias=True, tie_word_embeddings=False,
)


class QWenLMHeadModel(RemappedForCausalLM):
    config_defaults = _DEFAULTS

    @classmethod
    def family_refusal(cls, config) -> str | None:
        if config.rotary_pct != 1.0:
            return f"rotary_pct={config.rotary_pct} (partial rotary embeddings)"
        if getattr(config, "use_cache_quantization", False):
            return "use_cache_quantization (its int8 KV cache rounds K and V)"
        if getattr(config, "seq_length", None) is None:
            return "a config without seq_length (its dynamic NTK / log-n scaling would start at an unknown length)"
        return None

    @classmethod
    def native_config(cls, config):
        bias = not config.no_bias
        return llama_config(
            config, vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size // 2, num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_attention_heads,
            head_dim=config.kv_channels, hidden_act="silu", max_position_embeddings=config.max_position_embeddings,
            rms_norm_eps=config.layer_norm_epsilon, tie_word_embeddings=bool(config.tie_word_embeddings),
            rope_parameters={"rope_type": "default", "rope_theta": float(config.rotary_emb_base)},
            mlp_bias=bias, qkv_bias=True, o_bias=bias,
        )

    @classmethod
    def native_weights(cls, config, weights, dtype):
        width = config.kv_channels * config.num_attention_heads
        for name, tensor in renamed(weights, _RENAMES):
            if ".attn.c_attn." in name:
                yield from split_rows(name, "attn.c_attn", tensor, ("self_attn.q_proj", "self_attn.k_proj",
                                                                   "self_attn.v_proj"), [width] * 3)
            else:
                yield name, tensor
