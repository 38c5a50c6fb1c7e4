"""Baichuan-7B and Baichuan2-7B (remote code): Llama names, except q, k and v stacked in one
`self_attn.W_pack` [3 * hidden, hidden] (rows: q, then k, then v, as modeling_baichuan.py's
`proj.unflatten(-1, (3, hidden_size))` splits them), no biases, default rope (base 10000).

    BaiChuanForCausalLM (Baichuan-7B)          plain LM head
    BaichuanForCausalLM (Baichuan2-7B)         NormHead: the LM head's rows are L2-normalised once
                                               at inference (F.normalize(weight), per vocabulary row)
    BaichuanForCausalLM (Baichuan-13B, Baichuan2-13B): ALiBi instead of rope; refused here (the paged
                                               kernels have no ALiBi bias), so those run through their
                                               own remote code (trust_remote_code=True).

Which one: the rope models' config classes carry `max_position_embeddings` (their RotaryEmbedding
reads it); the ALiBi models' classes have only `model_max_length`. Among `BaichuanForCausalLM`
checkpoints, the only rope one is Baichuan2-7B, which always has the NormHead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anymodel.native_overrides.remapped import RemappedForCausalLM, llama_config, split_rows


# The defaults of Baichuan2-7B's BaichuanConfig (configuration_baichuan.py).
_DEFAULTS = dict(
    vocab_size=125696, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False,
)


class BaiChuanForCausalLM(RemappedForCausalLM):
    """Baichuan-7B: rope, W_pack, a plain LM head."""

    config_defaults = _DEFAULTS
    norm_head = False

    @classmethod
    def family_refusal(cls, config) -> str | None:
        if getattr(config, "max_position_embeddings", None) is None:
            return ("ALiBi position biases (a Baichuan 13B config: model_max_length and no max_position_embeddings); "
                    "the paged kernels have no ALiBi, run its remote code with trust_remote_code=True")
        return None

    @classmethod
    def native_config(cls, config):
        return llama_config(
            config, vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_attention_heads,
            head_dim=config.hidden_size // config.num_attention_heads, hidden_act=config.hidden_act,
            max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
            tie_word_embeddings=bool(config.tie_word_embeddings),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, qkv_bias=False, o_bias=False,
        )

    @classmethod
    def native_weights(cls, config, weights, dtype):
        hidden = config.hidden_size
        for name, tensor in weights:
            if ".self_attn.W_pack." in name:
                yield from split_rows(name, "W_pack", tensor, ("q_proj", "k_proj", "v_proj"), [hidden] * 3)
            elif name == "lm_head.weight" and cls.norm_head:
                # NormHead normalises its parameter in the dtype it runs in, before the first forward
                yield name, F.normalize(tensor.to(dtype), dim=-1)
            else:
                yield name, tensor


class BaichuanForCausalLM(BaiChuanForCausalLM):
    """Baichuan2-7B: as Baichuan-7B, with the NormHead."""

    norm_head = True
