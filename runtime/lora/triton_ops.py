"""Triton shrink / expand for LoRA on GPU: the same contract as ops.py (its torch reference), one
program per (token, output tile), a GEMV per token as punica's BGMV (decode batches are small):

    shrink  h[t, r]  = sum_k x[t, k] a[slot[t], r, k]            x [T, in],  a [S, R, in]  -> h [T, R]
    expand  out[t, j] = y[t, j] + sum_r h[t, r] b[slot[t], j, r]  h [T, R],   b [S, out, R] -> [T, out]

A token with slot -1 (the base model) gets h = 0 and out = y. Accumulation is float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from anymodel.lora.ops import LoRAMapping


@triton.jit
def _shrink_kernel(x, a, slots, h, N_IN, R, stride_xt, stride_as, stride_ar, stride_ht,
                   BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    slot = tl.load(slots + t)
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    if slot >= 0:
        for k0 in range(0, N_IN, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            xv = tl.load(x + t * stride_xt + k, mask=k < N_IN, other=0.0).to(tl.float32)
            av = tl.load(a + slot * stride_as + r[:, None] * stride_ar + k[None, :],
                         mask=(r[:, None] < R) & (k[None, :] < N_IN), other=0.0).to(tl.float32)
            acc += tl.sum(av * xv[None, :], axis=1)
    tl.store(h + t * stride_ht + r, acc.to(h.dtype.element_ty), mask=r < R)


@triton.jit
def _expand_kernel(y, h, b, slots, out, N_OUT, R, stride_yt, stride_ht, stride_bs, stride_bo, stride_ot,
                   BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    slot = tl.load(slots + t)
    acc = tl.load(y + t * stride_yt + j, mask=j < N_OUT, other=0.0).to(tl.float32)
    if slot >= 0:
        for r0 in range(0, R, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            hv = tl.load(h + t * stride_ht + r, mask=r < R, other=0.0).to(tl.float32)
            bv = tl.load(b + slot * stride_bs + j[:, None] * stride_bo + r[None, :],
                         mask=(j[:, None] < N_OUT) & (r[None, :] < R), other=0.0).to(tl.float32)
            acc += tl.sum(bv * hv[None, :], axis=1)
    tl.store(out + t * stride_ot + j, acc.to(out.dtype.element_ty), mask=j < N_OUT)


def lora_shrink(x: torch.Tensor, a: torch.Tensor, mapping: LoRAMapping) -> torch.Tensor:
    """x [T, in], a [S, R, in] -> h [T, R] (zeros for base-model tokens)."""
    x, a = x.contiguous(), a.contiguous()
    T, R = x.shape[0], a.shape[1]
    h = torch.empty(T, R, dtype=x.dtype, device=x.device)
    block_r = min(32, triton.next_power_of_2(R))
    grid = (T, triton.cdiv(R, block_r))
    _shrink_kernel[grid](x, a, mapping.token_slots, h, x.shape[1], R, x.stride(0), a.stride(0), a.stride(1),
                         h.stride(0), BLOCK_R=block_r, BLOCK_K=min(128, triton.next_power_of_2(x.shape[1])))
    return h


def lora_expand(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, mapping: LoRAMapping) -> torch.Tensor:
    """y [T, out] + B[slot] h: h [T, R], b [S, out, R] -> [T, out] (a new tensor; `y` is unchanged)."""
    y, h, b = y.contiguous(), h.contiguous(), b.contiguous()
    T, n_out, R = y.shape[0], y.shape[1], h.shape[1]
    out = torch.empty_like(y)
    block_o = min(64, triton.next_power_of_2(n_out))
    grid = (T, triton.cdiv(n_out, block_o))
    _expand_kernel[grid](y, h, b, mapping.token_slots, out, n_out, R, y.stride(0), h.stride(0), b.stride(0),
                         b.stride(1), out.stride(0), BLOCK_O=block_o, BLOCK_R=min(64, triton.next_power_of_2(R)))
    return out
