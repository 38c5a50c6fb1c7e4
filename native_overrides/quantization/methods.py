"""The quantized-linear seam: a `QuantMethod` says which tensors a quantized linear stores, how a
checkpoint tensor (or this rank's part of it) lands in them, and how to compute y = x W^T + b.

    create_weights(out, in)          {stored name: empty tensor}   (checkpoint names: weight, weight_scale_inv, ...)
    load_weight(name, param, loaded, cut)   copy this rank's / this slice's part of a checkpoint tensor
    apply(tensors, shape, x, bias)   the torch reference: dequantize into x's dtype, then F.linear

Weights stay quantized in memory (float8 / int8 / packed int32 + scales); each forward dequantizes
(the CPU path, and the oracle of any GPU kernel). Every stored tensor declares, per logical weight
dimension (0 = out, 1 = in), which of its axes carries it and in what unit (a 128x128 block scale:
unit 128 on both; a weight packed 8 per int32 along `in`: unit 8), so that tensor-parallel cuts and
fused-layer offsets translate to every stored tensor, and a cut off the block / group grid is refused.

A per-tensor scale is stored per output row ([out, 1]): a fused q/k/v or gate/up layer then keeps
each projection's own scale (per-slice scales) without requantizing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Axis = tuple[int, int] | None  # (axis of the stored tensor, logical elements per stored element), None: not cut


@dataclass(frozen=True)
class Cut:
    """This layer's part of a checkpoint tensor, in logical weight coordinates: along `dim`
    (0 = out, 1 = in), `length` elements from `src` of the checkpoint tensor go to `dst` of ours."""

    dim: int
    dst: int
    src: int
    length: int


@dataclass(frozen=True)
class Stored:
    name: str
    dtype: torch.dtype
    shape: Callable[[int, int], tuple[int, ...]]  # logical (out, in) -> stored shape
    out_axis: Axis
    in_axis: Axis

    def axis(self, dim: int) -> Axis:
        return self.out_axis if dim == 0 else self.in_axis


def _ceil(n: int, d: int) -> int:
    return -(-n // d)


def stored_range(stored: Stored, dim: int, start: int, length: int, full: int | None) -> tuple[int, int]:
    """(start, length) in the stored tensor's own units for logical [start, start + length) along
    `dim`; a ValueError when the range does not fall on the tensor's block / group / packing grid.
    `full`: the logical size of the whole dimension (a range ending there may end in a partial block)."""
    _, unit = stored.axis(dim)
    end = start + length
    reaches_end = full is not None and end >= full
    if start % unit or (end % unit and not reaches_end):
        what = "output rows" if dim == 0 else "input columns"
        raise ValueError(
            f"quantized tensor {stored.name!r}: this shard's {what} [{start}, {end}) do not fall on its "
            f"{unit}-wide block / group / packing grid; use a tensor_parallel_size (or model) whose shards "
            f"split {stored.name} on whole blocks")
    return start // unit, _ceil(end, unit) - start // unit


class QuantMethod:
    """One checkpoint format's quantized linear (subclasses: stored tensors and dequantize)."""

    name = ""

    def stored(self) -> tuple[Stored, ...]:
        raise NotImplementedError

    def dequantize(self, t: dict[str, torch.Tensor], shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """The weight [out, in] in `dtype` from this layer's stored tensors `t`."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    # ---- shared by every format -----------------------------------------------------------------
    def create_weights(self, out: int, in_: int, device="cpu") -> dict[str, torch.Tensor]:
        return {s.name: torch.zeros(s.shape(out, in_), dtype=s.dtype, device=device) for s in self.stored()}

    def stored_named(self, name: str) -> Stored:
        return next(s for s in self.stored() if s.name == name)

    def apply(self, t: dict[str, torch.Tensor], shape: tuple[int, int], x: torch.Tensor, bias) -> torch.Tensor:
        """y = x W^T + b with W dequantized into x's dtype: x [..., in] -> [..., out]. On CUDA, a
        format's Triton GEMM when it has one (triton_gemm.py; ANYMODEL_QUANT_TRITON=0: never)."""
        if x.is_cuda and os.environ.get("ANYMODEL_QUANT_TRITON", "1") != "0":
            y = self.triton_gemm(t, shape, x.reshape(-1, x.shape[-1]).contiguous())
            if y is not None:
                y = y.view(*x.shape[:-1], y.shape[-1])
                return y if bias is None else y + bias
        return F.linear(x, self.dequantize(t, shape, x.dtype), bias)

    def triton_gemm(self, t: dict[str, torch.Tensor], shape: tuple[int, int], x: torch.Tensor) -> torch.Tensor | None:
        """x [M, in] -> [M, out] by a Triton kernel reading the stored tensors; None: no kernel for this case."""
        return None

    def load_weight(self, name: str, param: torch.Tensor, loaded: torch.Tensor, cut: Cut | None) -> None:
        """Copy `loaded` (the whole checkpoint tensor) into `param` (this layer's stored tensor),
        cut as `cut` says (None: the whole tensor)."""
        stored = self.stored_named(name)
        check_dtype(name, stored, loaded)
        dst, src = param.data, loaded
        if cut is not None and stored.axis(cut.dim) is not None:
            axis = stored.axis(cut.dim)[0]
            if loaded.numel() == 1:  # a per-tensor scale, kept per output row: this slice's rows get it
                d, n = stored_range(stored, cut.dim, cut.dst, cut.length, None)
                return dst.narrow(axis, d, n).fill_(loaded.reshape(()).item())
            full = loaded.shape[axis] * stored.axis(cut.dim)[1]
            s, n = stored_range(stored, cut.dim, cut.src, cut.length, full)
            d, _ = stored_range(stored, cut.dim, cut.dst, cut.length, param.shape[axis] * stored.axis(cut.dim)[1])
            dst, src = dst.narrow(axis, d, n), src.narrow(axis, s, n)
        elif loaded.numel() == 1 and param.numel() > 1:
            return dst.fill_(loaded.reshape(()).item())
        if tuple(dst.shape) != tuple(src.shape):
            raise ValueError(f"quantized tensor {name!r}: checkpoint part {tuple(src.shape)} does not fit {tuple(dst.shape)}")
        dst.copy_(src)


def check_dtype(name: str, stored: Stored, loaded: torch.Tensor) -> None:
    """Quantized values load bit for bit (never cast); only scales may change float precision."""
    exact = is_quantized_dtype(stored.dtype) or is_quantized_dtype(loaded.dtype)
    if exact and loaded.dtype != stored.dtype:
        raise ValueError(f"quantized tensor {name!r}: checkpoint dtype {loaded.dtype} where the format stores "
                         f"{stored.dtype}; refusing to convert quantized values")


def is_quantized_dtype(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point or dtype.itemsize == 1  # integers, float8


def method_for(quant) -> QuantMethod:
    """The QuantMethod for a QuantConfig (ValueError: a detail of the format we do not load)."""
    from anymodel.native_overrides.quantization import formats

    return formats.method_for(quant)


def refuse_as_plain(name: str, tensor: torch.Tensor, target: torch.dtype) -> None:
    """Every loader's guard: a float8 / integer checkpoint tensor never lands in a float tensor of
    another dtype (a cast would silently drop its scales)."""
    if is_quantized_dtype(tensor.dtype) and tensor.dtype != target and target.is_floating_point:
        raise ValueError(f"checkpoint tensor {name!r} is {tensor.dtype} (quantized), but would load as a plain "
                         f"{target} weight; refusing to cast it (a quantized checkpoint needs its quantization_config)")
