"""Baichuan-7B, Baichuan-13B, Baichuan2-7B and Baichuan2-13B (remote code, modeling_baichuan.py):
Llama names, except q, k and v stacked in one `self_attn.W_pack` [3 * hidden, hidden] (rows: q,
then k, then v, as `proj.unflatten(-1, (3, hidden_size))` splits them), no biases.

    BaiChuanForCausalLM (Baichuan-7B)      rope (base 10000), a plain LM head
    BaichuanForCausalLM, rope configs      Baichuan2-7B: rope, and the NormHead: the LM head's rows
                                           L2-normalised once at inference (F.normalize(weight))
    BaichuanForCausalLM, ALiBi configs     Baichuan-13B / Baichuan2-13B: no position embedding; each
                                           head h adds slope_h * key position to its scores (the
                                           softmax equals slope_h * (k - q)); the NormHead only for
                                           the Baichuan2 vocabulary (125696 tokens, as vLLM decides)

Which position scheme: the rope models' config classes carry `max_position_embeddings` (their
RotaryEmbedding reads it); the ALiBi models' classes have only `model_max_length`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from anymodel import distributed as dist
from anymodel.native_overrides.layers import PagedAttention
from anymodel.native_overrides.remapped import (
    RemappedAttention, RemappedDecoderLayer, RemappedForCausalLM, RemappedModel, llama_config, split_rows,
)

BAICHUAN2_VOCAB = 125696

# The defaults of Baichuan2-7B's BaichuanConfig (configuration_baichuan.py).
_DEFAULTS = dict(
    vocab_size=125696, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False,
)


def alibi_slopes(num_heads: int) -> list[float]:
    """Baichuan's `_get_interleave` (BLOOM's ALiBi slopes): for n a power of two, s^1 .. s^n with
    s = 2^(-8/n); otherwise those of the largest power of two below n, then every other slope of
    twice that power for the remaining heads."""
    def geometric(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return geometric(num_heads)
    below = 2 ** math.floor(math.log2(num_heads))
    return geometric(below) + alibi_slopes(2 * below)[0::2][: num_heads - below]


def uses_alibi(config) -> bool:
    return getattr(config, "max_position_embeddings", None) is None


class BaichuanAttention(RemappedAttention):
    """Rope (7B), or ALiBi (13B: `config.alibi`) with this rank's heads' slopes and no rotation."""

    def __init__(self, config, layer_idx: int, dtype: torch.dtype) -> None:
        super().__init__(config, layer_idx, dtype)
        self.alibi = config.alibi
        if self.alibi:
            start = dist.tp_rank() * self.num_heads  # this rank's query heads
            slopes = torch.tensor(alibi_slopes(config.num_attention_heads)[start:start + self.num_heads])
            self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim**-0.5,
                                       alibi_slopes=slopes)

    def rotate_qk(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return qk if self.alibi else super().rotate_qk(qk, cos, sin)


class BaichuanDecoderLayer(RemappedDecoderLayer):
    attention_cls = BaichuanAttention


class BaichuanModel(RemappedModel):
    layer_cls = BaichuanDecoderLayer


class BaiChuanForCausalLM(RemappedForCausalLM):
    """Baichuan-7B: rope, W_pack, a plain LM head."""

    model_cls = BaichuanModel
    config_defaults = _DEFAULTS

    @classmethod
    def norm_head(cls, config) -> bool:
        return False

    @classmethod
    def native_config(cls, config):
        alibi = uses_alibi(config)
        context = getattr(config, "model_max_length", 4096) if alibi else config.max_position_embeddings
        return llama_config(
            config, vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_attention_heads,
            head_dim=config.hidden_size // config.num_attention_heads, hidden_act=config.hidden_act,
            max_position_embeddings=context, rms_norm_eps=config.rms_norm_eps,
            tie_word_embeddings=bool(config.tie_word_embeddings),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, qkv_bias=False, o_bias=False,
            alibi=alibi,
        )

    @classmethod
    def native_weights(cls, config, weights, dtype):
        hidden, norm_head = config.hidden_size, cls.norm_head(config)
        for name, tensor in weights:
            if ".self_attn.W_pack." in name:
                yield from split_rows(name, "W_pack", tensor, ("q_proj", "k_proj", "v_proj"), [hidden] * 3)
            elif name == "lm_head.weight" and norm_head:
                # NormHead normalises its parameter in the dtype it runs in, before the first forward
                yield name, F.normalize(tensor.to(dtype), dim=-1)
            else:
                yield name, tensor


class BaichuanForCausalLM(BaiChuanForCausalLM):
    """Baichuan2-7B (rope), Baichuan-13B / Baichuan2-13B (ALiBi)."""

    @classmethod
    def norm_head(cls, config) -> bool:
        return not uses_alibi(config) or config.vocab_size == BAICHUAN2_VOCAB
