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
def _fp8_tile(w_ptr, s_ptr, offs_n, offs_k, mask, stride_wn, stride_sn, BO: tl.constexpr, BI: tl.constexpr):
    """[BLOCK_N, BLOCK_K] of weight * scale_inv (float32), each scale covering a BO x BI block."""
    w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + (offs_n[:, None] // BO) * stride_sn + offs_k[None, :] // BI, mask=mask, other=0.0)
    return w * s


@triton.jit
def _int4_tile(p_ptr, s_ptr, offs_n, offs_k, mask, stride_pn, stride_sn, GROUP: tl.constexpr):
    """[BLOCK_N, BLOCK_K] of (nibble - 8) * group scale (float32); nibble k % 8 of word k // 8."""
    words = tl.load(p_ptr + offs_n[:, None] * stride_pn + offs_k[None, :] // 8, mask=mask, other=0)
    nibble = (words >> ((offs_k[None, :] % 8) * 4)) & 0xF
    s = tl.load(s_ptr + offs_n[:, None] * stride_sn + offs_k[None, :] // GROUP, mask=mask, other=0.0)
    return (nibble - 8).to(tl.float32) * s


@triton.jit
def _dequant_gemm_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_sn, stride_ym,
                         IS_FP8: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y [M, N] = x [M, K] @ W^T, W dequantized one [BLOCK_N, BLOCK_K] tile at a time (BI: the
    group size for int4)."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        if IS_FP8:
            w = _fp8_tile(w_ptr, s_ptr, offs_n, offs_k, mask, stride_wn, stride_sn, BO, BI)
        else:
            w = _int4_tile(w_ptr, s_ptr, offs_n, offs_k, mask, stride_wn, stride_sn, BI)
        # the weight is rounded to x's dtype before the product, as the reference dequantizes into it
        acc += tl.dot(x, tl.trans(w.to(x.dtype)), input_precision=PRECISION)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _precision(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"  # float32: no TF32 rounding (only read for float32)


def _tiles(M: int, N: int, block_k: int) -> tuple[int, int, int]:
    return max(16, min(64, triton.next_power_of_2(M))), 64 if N >= 64 else 16, block_k


def _launch(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, n: int, is_fp8: bool, bo: int,
            bi: int) -> torch.Tensor:
    M, K = x.shape
    y = torch.empty(M, n, dtype=x.dtype, device=x.device)
    bm, bn, bk = _tiles(M, n, 32)  # scales are looked up per element: any block / group shape
    grid = (triton.cdiv(M, bm), triton.cdiv(n, bn))
    _dequant_gemm_kernel[grid](x, weight, scales, y, M, n, K, x.stride(0), weight.stride(0), scales.stride(0),
                               y.stride(0), IS_FP8=is_fp8, BO=bo, BI=bi, PRECISION=_precision(x),
                               BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return y


def fp8_block_gemm(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """x [M, K] @ dequant(weight [N, K])^T -> [M, N] in x's dtype."""
    return _launch(x, weight, scale_inv, weight.shape[0], True, block[0], block[1])


def w4a16_gemm(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """x [M, K] @ dequant(packed [N, K/8])^T -> [M, N] in x's dtype (symmetric int4, group scales)."""
    return _launch(x, packed, scales, packed.shape[0], False, 1, group)
