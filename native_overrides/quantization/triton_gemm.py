"""Triton GEMMs that read quantized weights directly (GPU; CPU only under TRITON_INTERPRET=1 in tests):

    fp8_block_gemm(x [M, K], weight f8 [N, K], scale_inv [ceil(N/bo), ceil(K/bi)], (bo, bi)) -> [M, N]
    w4a16_gemm(x [M, K], packed i32 [N, ceil(K/8)], scales [N, ceil(K/g)], g) -> [M, N]
        (compressed-tensors pack-quantized int4, symmetric: nibble k of a word is value + 8)

Each program computes a BLOCK_M x BLOCK_N tile of y = x W^T, dequantizing one BLOCK_K slice of W
at a time in registers (the weight is never materialised in float), accumulating in float32. The
torch reference of each (formats.BlockFp8 / compressed.CompressedTensors .apply) is the oracle.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _fp8_block_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_sn, stride_ym,
                      BO: tl.constexpr, BI: tl.constexpr, PRECISION: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        w_mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=w_mask, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + (offs_n[:, None] // BO) * stride_sn + offs_k[None, :] // BI, mask=w_mask, other=0.0)
        # the weight is rounded to x's dtype before the product, as the reference dequantizes into it
        acc += tl.dot(x, tl.trans((w * s).to(x.dtype)), input_precision=PRECISION)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _w4a16_kernel(x_ptr, p_ptr, s_ptr, y_ptr, M, N, K, stride_xm, stride_pn, stride_sn, stride_ym,
                  GROUP: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        w_mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        words = tl.load(p_ptr + offs_n[:, None] * stride_pn + offs_k[None, :] // 8, mask=w_mask, other=0)
        nibble = (words >> ((offs_k[None, :] % 8) * 4)) & 0xF
        s = tl.load(s_ptr + offs_n[:, None] * stride_sn + offs_k[None, :] // GROUP, mask=w_mask, other=0.0)
        acc += tl.dot(x, tl.trans(((nibble - 8).to(tl.float32) * s).to(x.dtype)), input_precision=PRECISION)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _precision(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"  # float32: no TF32 rounding (only read for float32)


def _tiles(M: int, N: int, block_k: int) -> tuple[int, int, int]:
    return max(16, min(64, triton.next_power_of_2(M))), 64 if N >= 64 else 16, block_k


def fp8_block_gemm(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """x [M, K] @ dequant(weight [N, K])^T -> [M, N] in x's dtype."""
    M, K = x.shape
    N = weight.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    bm, bn, bk = _tiles(M, N, 32)  # scales are looked up per element: any block shape
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    _fp8_block_kernel[grid](x, weight, scale_inv, y, M, N, K, x.stride(0), weight.stride(0), scale_inv.stride(0),
                            y.stride(0), BO=block[0], BI=block[1], PRECISION=_precision(x), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return y


def w4a16_gemm(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """x [M, K] @ dequant(packed [N, K/8])^T -> [M, N] in x's dtype (symmetric int4, group scales)."""
    M, K = x.shape
    N = packed.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    bm, bn, bk = _tiles(M, N, 32)
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    _w4a16_kernel[grid](x, packed, scales, y, M, N, K, x.stride(0), packed.stride(0), scales.stride(0), y.stride(0),
                        GROUP=group, PRECISION=_precision(x), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return y
