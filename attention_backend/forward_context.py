"""The mutable state of one forward, kept apart from the step's (immutable) metadata.

    AttentionMetadata (metadata.py)   what the step is: tokens -> requests -> KV blocks; built once per step
    ForwardContext (here)             what one forward over it does: the KV caches it writes and reads (or
                                      none: discovery), the next attention call's layer, the kernels, and
                                      what those derive from the metadata once and share across layers

The runner enters a fresh context around every forward, and the attention function, called once
per attention layer, finds it through a context variable (not a global: one engine per thread may
run at once); nothing is reset by hand between forwards, and a context entered inside another
(a nested forward) leaves the outer one's state as it was:

    with ForwardContext.paged(meta, kv_caches, backend):      # a step
        hidden = model(input_ids, positions, meta)
    with ForwardContext.discovery(meta, backend) as forward:   # before the cache exists
        model(input_ids, positions, meta)
    forward.discovered                                         # [(num_kv_heads, head_dim, dtype)] per call

Layers are named by call order within the forward (`next_layer`), which also gives shared-weight
layers (called twice) a cache each. A decode CUDA graph replays kernels recorded inside one such
context: its per-forward values are device tensors the replay recomputes from the refilled buffers.
"""

from __future__ import annotations

import enum
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from anymodel.attention_backend.metadata import AttentionMetadata

KVCache = tuple[torch.Tensor, torch.Tensor]  # (key_cache, value_cache), each [num_blocks, block_size, Hkv, D]


class ForwardMode(enum.Enum):
    PAGED = "paged"  # attention writes this step's K/V into the paged caches and attends over them
    DISCOVERY = "discovery"  # no cache yet: each attention call records its K/V shape and attends densely


@dataclass(eq=False)
class ForwardContext:
    metadata: AttentionMetadata  # the step's; read when a model's layers drop the `attn_metadata` kwarg
    mode: ForwardMode
    kv_caches: Sequence[KVCache] = ()  # one per attention call, in call order (PAGED only)
    # The kernels: a module or object with `store_kv` and `paged_attention` (see torch_ref); None: torch_ref.
    backend: Any = None
    layer_cursor: int = 0  # attention calls so far in this forward
    discovered: list[tuple[int, int, torch.dtype]] = field(default_factory=list)  # DISCOVERY: per call
    # What a backend derives from `metadata` once per forward and shares across layers (torch_ref's
    # gather plan, flash-attn's key offsets); see `forward_scratch`.
    scratch: dict[str, Any] = field(default_factory=dict)
    _token: Token | None = field(default=None, init=False, repr=False)

    @classmethod
    def paged(cls, metadata: AttentionMetadata, kv_caches: Sequence[KVCache], backend: Any) -> "ForwardContext":
        return cls(metadata, ForwardMode.PAGED, kv_caches, backend)

    @classmethod
    def discovery(cls, metadata: AttentionMetadata, backend: Any = None) -> "ForwardContext":
        """One request, no cache: which calls attend, with how many KV heads of which size."""
        return cls(metadata, ForwardMode.DISCOVERY, (), backend)

    def next_layer(self) -> int:
        """The calling attention layer's index: its position among this forward's attention calls."""
        layer = self.layer_cursor
        self.layer_cursor = layer + 1
        return layer

    def __enter__(self) -> "ForwardContext":
        if self._token is not None:
            raise RuntimeError("a ForwardContext is entered once, for one forward; make a new one per forward")
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _CURRENT.reset(self._token)


_CURRENT: ContextVar[ForwardContext | None] = ContextVar("anymodel_forward_context", default=None)


def current_forward() -> ForwardContext | None:
    """The context of the forward in progress, or None outside one."""
    return _CURRENT.get()


def forward_scratch(meta: AttentionMetadata) -> dict[str, Any]:
    """Where a backend keeps what it derives from `meta` for the whole forward: the active
    context's scratch when that forward runs over `meta`, else a throwaway dict (a kernel called
    directly, as the tests and benchmarks do, derives its values afresh)."""
    forward = _CURRENT.get()
    if forward is None or forward.metadata is not meta:
        return {}
    return forward.scratch
