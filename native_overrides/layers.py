"""Building blocks shared by every native model: RMSNorm, rotary embedding, paged attention, the
gated MLP activation. The parallel linears live in `linear.py` and are re-exported here.

Shapes: the engine runs one flat row of T tokens per step, so activations are [T, H] and heads
[T, heads, head_dim]; there is no batch dimension anywhere in a native model.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from anymodel.attention_backend.interface import paged_attention_forward
from anymodel.native_overrides.linear import (  # noqa: F401 - re-exported
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)

# Rope types whose frequencies depend on the step's sequence length: native models leave them to
# the Transformers backend (see `unsupported_rope`).
_DYNAMIC_ROPE = ("dynamic", "longrope")


class RMSNorm(nn.Module):
    """Llama's RMSNorm: w * (x / rms(x)), the normalisation in float32. [..., dim] -> [..., dim]."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused kernel; same math as below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm: (x / rms(x)) * (1 + w), all in float32, zero-initialised w."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__(dim, eps, dtype)
        self.weight.data.zero_()
        self._scale: torch.Tensor | None = None

    def prepare(self) -> None:
        self._scale = 1.0 + self.weight.float()  # computed once, not once per step

    def _apply(self, fn, recurse=True):
        self._scale = None
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._scale if self._scale is not None else 1.0 + self.weight.float()
        return F.rms_norm(x.float(), self.weight.shape, scale, self.eps).to(x.dtype)


# ---------------------------------------------------------------- rotary

def rope_parameters(config, layer_type: str | None = None) -> dict:
    params = config.rope_parameters
    return params[layer_type] if layer_type is not None else params


def unsupported_rope(config, layer_types=(None,)) -> str | None:
    """Why the native rotary cannot reproduce this config's rope, or None."""
    for layer_type in layer_types:
        params = rope_parameters(config, layer_type) or {}
        rope_type = params.get("rope_type", "default")
        if rope_type in _DYNAMIC_ROPE:
            return f"rope_type {rope_type!r} (frequencies change with the sequence length)"
        if params.get("partial_rotary_factor", 1.0) != 1.0 and rope_type != "default":
            return "partial rotary embeddings"
    return None


def rope_inv_freq(config, head_dim: int, layer_type: str | None = None) -> tuple[torch.Tensor, float]:
    """(inv_freq [head_dim / 2], attention_scaling), exactly as Transformers computes them: its own
    ROPE_INIT_FUNCTIONS for every scaled variant (linear, llama3, yarn, ...), the plain formula for default."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = rope_parameters(config, layer_type)
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)), 1.0
    kwargs = {"layer_type": layer_type} if layer_type is not None else {}
    return ROPE_INIT_FUNCTIONS[rope_type](config, None, **kwargs)


class RotaryEmbedding(nn.Module):
    """positions [T] -> (cos, sin), each [T, 1, head_dim / 2], computed once per step for all layers."""

    def __init__(self, config, head_dim: int, layer_type: str | None = None) -> None:
        super().__init__()
        inv_freq, self.attention_scaling = rope_inv_freq(config, head_dim, layer_type)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[:, None].float() * self.inv_freq  # [T, D/2]
        cos, sin = freqs.cos(), freqs.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos.to(dtype)[:, None], sin.to(dtype)[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half (GPT-NeoX) rope on x [T, heads, D]: bit-identical to Transformers'
    `x * cos + rotate_half(x) * sin`, without building the duplicated [T, D] cos/sin."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def apply_qk_norm_rotary(qk: torch.Tensor, num_q_heads: int, q_norm: nn.Module, k_norm: nn.Module,
                         cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Per-head RMSNorm of q and k (Qwen3, Gemma 3), then rope; qk [T, Hq + Hkv, D] side by side."""
    q, k = qk[:, :num_q_heads], qk[:, num_q_heads:]
    return apply_rotary(torch.cat((q_norm(q), k_norm(k)), dim=1), cos, sin)


# ---------------------------------------------------------------- attention and MLP

class PagedAttention(nn.Module):
    """Attention over the paged KV cache, through the same function the Transformers backend
    registers: the engine discovers and allocates this layer's cache exactly as for HF models, and
    the forward's `ForwardContext` hands it over (the layer is its call's position in the forward)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scaling: float,
                 sliding_window: int | None = None, softcap: float | None = None,
                 alibi_slopes: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scaling, self.sliding_window, self.softcap = scaling, sliding_window, softcap
        self.is_causal = True
        # ALiBi slopes [num_heads] of this rank's heads (Baichuan-13B), moved with the model
        self.register_buffer("alibi_slopes", alibi_slopes, persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq * D]."""
        extra = {} if self.alibi_slopes is None else {"alibi_slopes": self.alibi_slopes}
        out, _ = paged_attention_forward(
            self, q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], None,
            scaling=self.scaling, sliding_window=self.sliding_window, softcap=self.softcap, attn_metadata=meta,
            **extra,
        )
        return out.reshape(q.shape[0], -1)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, window={self.sliding_window}"


@functools.lru_cache(maxsize=None)
def activation(name: str):
    """The MLP activation by its HF config name; the common ones as plain torch functions."""
    if name in ("silu", "swish"):
        return F.silu
    if name == "gelu_pytorch_tanh":
        return functools.partial(F.gelu, approximate="tanh")
    from transformers.activations import ACT2FN

    return ACT2FN[name]


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with gate and up in one GEMM: [T, H] -> [T, 2I / tp] -> [T, H]."""

    def __init__(self, hidden: int, intermediate: int, act: str, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [intermediate] * 2, bias, dtype)
        self.down_proj = RowParallelLinear(intermediate, hidden, bias, dtype)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


def softcapped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma-style final logit soft-capping, cap * tanh(logits / cap); unchanged when cap is unset."""
    return torch.tanh(logits / cap) * cap if cap else logits
