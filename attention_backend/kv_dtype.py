"""The KV cache's storage dtype (`kv_cache_dtype`): "auto" keeps the model's dtype; the FP8 ones
store each K/V element in one byte and are dequantized on read (the torch backend).

    fp8, fp8_e4m3   torch.float8_e4m3fn  (largest finite 448: values beyond saturate, never NaN)
    fp8_e5m2        torch.float8_e5m2    (largest finite 57344)

The scale is 1.0 (vLLM's default without calculate_kv_scales or checkpoint scales): K/V are cast
as they are, saturating at the format's largest finite value.
"""

from __future__ import annotations

import torch

KV_CACHE_DTYPES = {"auto": None, "fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
                   "fp8_e5m2": torch.float8_e5m2}


def kv_cache_torch_dtype(name: str) -> torch.dtype | None:
    """The storage dtype `name` asks for (None: the model's own)."""
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"unsupported kv_cache_dtype {name!r}; supported: {list(KV_CACHE_DTYPES)}")
    return KV_CACHE_DTYPES[name]


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def write_rows(cache: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor) -> None:
    """cache [N, B, H, D] at flat slots [T] <- rows [T, H, D], cast (saturating) to the cache dtype.
    FP8 rows are copied as bytes: CPU index_copy_ has no float8 kernel."""
    flat = cache.view(-1, *cache.shape[2:])
    if not is_fp8(cache.dtype):
        flat.index_copy_(0, slots, rows.to(cache.dtype))
        return
    limit = torch.finfo(cache.dtype).max
    encoded = rows.clamp(-limit, limit).to(cache.dtype)
    flat.view(torch.uint8).index_copy_(0, slots, encoded.view(torch.uint8))
