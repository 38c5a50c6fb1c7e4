"""flash-attn backend: the `torch_ref` contract on top of `flash_attn_varlen_func(..., block_table=)`.

flash-attn reads the caches [N, B, Hkv, D] through the block table directly, with its causal mask
aligned to the bottom right (query j of a request with q new tokens and s keys sits at s - q + j),
which is our position convention. Upstream flash-attn 2 only pages with blocks that are a multiple
of 256 tokens and only fp16/bf16; other steps fall back to our Triton kernel (logged once).
`flash_attn` is imported on first use, so importing this module is free.
"""

from __future__ import annotations

import logging

import torch

from anymodel.attention_backend.forward_context import forward_scratch
from anymodel.attention_backend.metadata import AttentionMetadata
from anymodel.attention_backend.triton import paged_attention as _triton_paged_attention
from anymodel.attention_backend.triton import store_kv

logger = logging.getLogger("anymodel")

PAGE_BLOCK_MULTIPLE = 256  # flash-attn 2: "Paged KV cache block size must be divisible by 256"
_DTYPES = (torch.float16, torch.bfloat16)
_warned: set[str] = set()

__all__ = ["store_kv", "paged_attention"]


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    *,
    scale: float,
    causal: bool = True,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """query [T, Hq, D], caches [N, B, Hkv, D] -> [T, Hq, D]."""
    reason = _unsupported(query, key_cache)
    if reason is not None:
        _warn_once(reason)
        return _triton_paged_attention(query, key_cache, value_cache, meta, scale=scale, causal=causal,
                                       sliding_window=sliding_window, softcap=softcap)
    from flash_attn import flash_attn_varlen_func

    out = flash_attn_varlen_func(
        query.to(key_cache.dtype), key_cache, value_cache,
        cu_seqlens_q=meta.query_start_loc, cu_seqlens_k=_cu_seqlens_k(meta),
        max_seqlen_q=meta.max_query_len, max_seqlen_k=meta.max_seq_len,
        softmax_scale=scale, causal=causal, window_size=window_size(sliding_window, causal),
        softcap=softcap if softcap is not None and softcap > 0 else 0.0,
        block_table=meta.block_tables,
    )
    return out.to(query.dtype)


def window_size(sliding_window: int | None, causal: bool) -> tuple[int, int]:
    """Our window (causal: q - k < w; bidirectional: |q - k| < w) as flash-attn's inclusive (left, right)."""
    if sliding_window is None:
        return (-1, -1)  # -1: unbounded
    return (sliding_window - 1, 0 if causal else sliding_window - 1)


def _cu_seqlens_k(meta: AttentionMetadata) -> torch.Tensor:
    """[R+1] int32 prefix sums of seq_lens, computed once per forward (every layer shares them)."""
    scratch = forward_scratch(meta)
    cu = scratch.get("flash_cu_seqlens_k")
    if cu is None:
        cu = scratch["flash_cu_seqlens_k"] = torch.nn.functional.pad(meta.seq_lens.cumsum(0, dtype=torch.int32), (1, 0))
    return cu


def _unsupported(query: torch.Tensor, key_cache: torch.Tensor) -> str | None:
    block_size, head_dim = key_cache.shape[1], key_cache.shape[3]
    if block_size % PAGE_BLOCK_MULTIPLE:
        return f"flash-attn pages only blocks of a multiple of {PAGE_BLOCK_MULTIPLE} tokens (block_size={block_size})"
    if key_cache.dtype not in _DTYPES:
        return f"flash-attn needs an fp16/bf16 KV cache (got {key_cache.dtype})"
    if head_dim > 256 or head_dim % 8:
        return f"flash-attn needs a head dim <= 256 and a multiple of 8 (got {head_dim})"
    return None


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        logger.warning("anymodel: %s; using the Triton kernel for these steps", reason)
