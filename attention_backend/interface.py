"""The attention function anymodel registers with Transformers.

A backend-compatible model calls `ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, q, k,
v, mask, scaling=..., sliding_window=..., softcap=..., **kwargs)`; the engine's `AttentionMetadata`
rides in those kwargs as `attn_metadata`. Layers are identified by call order within a forward,
which also gives shared-weight layers (called twice) a cache each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anymodel.attention_backend import ATTN_IMPLEMENTATION
from anymodel.attention_backend import torch_ref
from anymodel.attention_backend.metadata import AttentionMetadata


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, Hq, T, D]
    key: torch.Tensor,  # [1, Hkv, T, D]
    value: torch.Tensor,  # [1, Hkv, T, D]
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    meta: AttentionMetadata | None = kwargs.get("attn_metadata")
    if meta is None:
        raise RuntimeError(
            f"attention implementation {ATTN_IMPLEMENTATION!r} needs `attn_metadata` in the model's kwargs; "
            "it only runs inside the anymodel engine (does this model pass **kwargs down to attention?)"
        )
    if query.shape[0] != 1:
        raise RuntimeError(f"anymodel runs one flat row of tokens per step; got batch size {query.shape[0]}")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, D]
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    layer = meta.layer_cursor
    meta.layer_cursor += 1

    if meta.kv_caches is None:  # discovery pass: one request, no cache yet
        meta.discovered.append((k.shape[1], k.shape[2], k.dtype))
        return _dense_single_request(query, key, value, scale, causal, sliding_window, softcap), None

    backend = meta.backend or torch_ref
    key_cache, value_cache = meta.kv_caches[layer]
    backend.store_kv(k, v, key_cache, value_cache, meta.slot_mapping)
    out = backend.paged_attention(
        q, key_cache, value_cache, meta, scale=scale, causal=causal, sliding_window=sliding_window, softcap=softcap
    )
    return out.unsqueeze(0), None


def _dense_single_request(query, key, value, scale, causal, sliding_window, softcap):
    """Plain attention over one request's tokens ([1, H, T, D] in, [1, T, Hq, D] out)."""
    T = query.shape[2]
    pos = torch.arange(T, device=query.device)
    allowed = torch.ones(T, T, dtype=torch.bool, device=query.device)
    if causal:
        allowed &= pos[None, :] <= pos[:, None]
    if sliding_window is not None:
        dist = pos[:, None] - pos[None, :]
        allowed &= (dist if causal else dist.abs()) < sliding_window
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [1, T, H, D]
    out = torch_ref._masked_attention(q, k, v, allowed[None], scale, softcap)
    return out


def register() -> str:
    """Register with Transformers (idempotent) and return the implementation name."""
    from transformers import AttentionInterface

    # Deliberately no AttentionMaskInterface entry: for an implementation absent from that registry
    # Transformers' mask builders exit early with `None`, so no [T, T] mask is ever materialised.
    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)
    return ATTN_IMPLEMENTATION
