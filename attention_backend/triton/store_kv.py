"""Store kernel: write this step's K/V rows into the paged caches at their slots.

    key/value   [T, Hkv, D]        one row per scheduled token
    slot_mapping[T]  int64         slot = block_id * block_size + offset; a negative slot is skipped
    key_cache   [N, B, Hkv, D]     (any strides: the caches may be views of one [2, N, B, Hkv, D])

One program copies one token: all its KV heads for both K and V, so the slot is read once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(
    key, value, key_cache, value_cache, slot_mapping,
    stride_kt, stride_kh, stride_vt, stride_vh,  # key/value [T, Hkv, D]
    stride_kcb, stride_kct, stride_kch,  # key_cache [N, B, Hkv, D]
    stride_vcb, stride_vct, stride_vch,
    NUM_KV_HEADS: tl.constexpr, H_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping + t)
    if slot < 0:  # padding token: nothing to store
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    h = tl.arange(0, H_PAD)[:, None]
    d = tl.arange(0, D_PAD)[None, :]
    mask = (h < NUM_KV_HEADS) & (d < HEAD_DIM)  # [H_PAD, D_PAD]: pow-2 tiles, real sizes masked

    k = tl.load(key + t * stride_kt + h * stride_kh + d, mask=mask)
    k_dst = key_cache + block * stride_kcb + offset * stride_kct + h * stride_kch + d
    tl.store(k_dst, k.to(key_cache.dtype.element_ty), mask=mask)

    v = tl.load(value + t * stride_vt + h * stride_vh + d, mask=mask)
    v_dst = value_cache + block * stride_vcb + offset * stride_vct + h * stride_vch + d
    tl.store(v_dst, v.to(value_cache.dtype.element_ty), mask=mask)


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write K/V rows [T, Hkv, D] into the caches [N, B, Hkv, D] at `slot_mapping` [T] (in place)."""
    T, Hkv, D = key.shape
    if T == 0:
        return
    for t in (key, value, key_cache, value_cache):
        if t.stride(-1) != 1:
            raise ValueError("store_kv needs the head dim contiguous (stride 1)")
    _store_kv_kernel[(T,)](
        key, value, key_cache, value_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        NUM_KV_HEADS=Hkv, H_PAD=triton.next_power_of_2(Hkv),
        HEAD_DIM=D, D_PAD=triton.next_power_of_2(D), BLOCK_SIZE=key_cache.shape[1],
    )
