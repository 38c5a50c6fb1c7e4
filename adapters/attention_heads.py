"""Attention heads under tensor parallelism: a module's global head layout, and the local counts
its reshapes must use once its projections hold only this rank's heads.

    4 query heads, 2 KV heads, 2 ranks -> 2 query heads + 1 KV head per rank
    4 query heads, 1 KV head,  2 ranks -> 2 query heads + the 1 KV head, replicated
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Heads:
    """Head layout of the attention module that owns a projection (global counts)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    def local(self, tp: int) -> tuple[int, int]:
        """(query heads, KV heads) per rank; KV heads are replicated when fewer than ranks."""
        return self.num_heads // tp, max(1, self.num_kv_heads // tp)


_Q_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head")
_WIDTH_ATTRS = ("hidden_size", "embed_dim", "all_head_size", "inner_dim")
_HEAD_HINTS = _Q_ATTRS + _KV_ATTRS + ("head_dim", "num_key_value_groups")


def heads_of(module: nn.Module, config) -> Heads | None:
    """Global head layout of an attention module, from its attributes or its config; None otherwise."""
    if not (any(hasattr(module, a) for a in _HEAD_HINTS) or "Attention" in type(module).__name__):
        return None
    config = getattr(module, "config", None) or config
    q = _int_attr(module, _Q_ATTRS) or _int_attr(config, ("num_attention_heads",))
    if not q:
        return None
    kv = _int_attr(module, _KV_ATTRS) or _int_attr(config, ("num_key_value_heads",)) or q
    head_dim = _int_attr(module, ("head_dim",)) or _int_attr(config, ("head_dim",))
    if head_dim is None:
        hidden = _int_attr(config, ("hidden_size",))
        if hidden is None:
            return None
        head_dim = hidden // q
    return Heads(q, kv, head_dim)


def _int_attr(obj, names) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def localize_heads(module: nn.Module, heads: Heads, tp: int) -> None:
    """Make an attention module's reshapes use this rank's head counts.

    Transformers' own code reshapes with -1 and needs nothing, but remote code often writes
    `view(b, t, self.num_heads, self.head_dim)` or reads `self.config.num_attention_heads`."""
    q, kv = heads.local(tp)
    for names, value in ((_Q_ATTRS, q), (_KV_ATTRS, kv)):
        for name in names:
            if _int_attr(module, (name,)) is not None:
                setattr(module, name, value)
    if _int_attr(module, ("num_key_value_groups",)) is not None:
        module.num_key_value_groups = q // kv
    for name in _WIDTH_ATTRS:
        if _int_attr(module, (name,)) == heads.num_heads * heads.head_dim:
            setattr(module, name, q * heads.head_dim)
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "num_attention_heads"):
        local = copy.copy(config)  # the shared config keeps global counts for every other module
        local.head_dim = heads.head_dim  # pin it: hidden_size // local heads would be wrong
        local.num_attention_heads, local.num_key_value_heads = q, kv
        module.config = local
