"""The checkpoint formats anymodel loads, each a QuantMethod (methods.py): what a quantized linear
stores (checkpoint names, dtypes, shapes, how shards cut them) and how it dequantizes.

    fp8 (block)        weight float8_e4m3fn [out, in]; weight_scale_inv f32 [ceil(out/bo), ceil(in/bi)]
                       W = weight * scale_inv, each scale covering one bo x bi block (DeepSeek-V3, Qwen3-FP8)
    fp8 (per tensor)   weight float8_e4m3fn [out, in]; weight_scale [1] (+ input_scale [1] when static)
    compressed-tensors float-quantized / int-quantized / naive-quantized (weight fp8 / int8 [out, in]) and
                       pack-quantized (weight_packed int32 [out, in*bits/32]) with weight_scale per tensor,
                       channel or group (+ weight_zero_point when asymmetric); dequantized by the
                       compressed-tensors package's own compressors
    awq / gptq         int4 (GPTQ also int8) packed in int32 with group scales and zero points (packed_int.py)
"""

from __future__ import annotations

import torch

from anymodel.native_overrides.quantization.methods import QuantMethod, Stored, _ceil

_FP8 = torch.float8_e4m3fn
# every float8_e4m3fn bit pattern's value: decoding by table is ~2.5x faster than .to() on CPU
_FP8_VALUES = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(_FP8).to(torch.float32)


def fp8_to_float32(w: torch.Tensor) -> torch.Tensor:
    if w.device.type != "cpu":
        return w.to(torch.float32)
    return _FP8_VALUES.take(w.view(torch.uint8).long())
_PER_ROW = (0, 1)  # a stored axis 0 that follows output rows one for one


def _per_row(name: str) -> Stored:
    """A per-tensor (or per-channel) scale, kept per output row: [out, 1]."""
    return Stored(name, torch.float32, lambda o, i: (o, 1), _PER_ROW, None)


def _weight(name: str, dtype: torch.dtype) -> Stored:
    return Stored(name, dtype, lambda o, i: (o, i), _PER_ROW, (1, 1))


class BlockFp8(QuantMethod):
    """quant_method "fp8" with weight_block_size [bo, bi]."""

    name = "fp8"

    def __init__(self, block: tuple[int, int]) -> None:
        self.block = block

    def stored(self) -> tuple[Stored, ...]:
        bo, bi = self.block
        scale = Stored("weight_scale_inv", torch.float32, lambda o, i: (_ceil(o, bo), _ceil(i, bi)), (0, bo), (1, bi))
        return _weight("weight", _FP8), scale

    def dequantize(self, t, shape, dtype) -> torch.Tensor:
        out, in_ = shape
        bo, bi = self.block
        scale = t["weight_scale_inv"].repeat_interleave(bo, 0)[:out].repeat_interleave(bi, 1)[:, :in_]
        return (fp8_to_float32(t["weight"]) * scale).to(dtype)

    def triton_gemm(self, t, shape, x):
        if torch.cuda.get_device_capability(x.device) < (8, 9):  # no float8 conversions before Ada / Hopper
            return None
        from anymodel.native_overrides.quantization.triton_gemm import fp8_block_gemm

        return fp8_block_gemm(x, t["weight"], t["weight_scale_inv"], self.block)

    def describe(self) -> str:
        return f"block FP8 (float8_e4m3fn weights, {self.block[0]}x{self.block[1]} block scales)"


class TensorFp8(QuantMethod):
    """quant_method "fp8" without weight_block_size: one scale per tensor (per slice once fused)."""

    name = "fp8"

    def __init__(self, static_input: bool) -> None:
        self.static_input = static_input

    def stored(self) -> tuple[Stored, ...]:
        found = (_weight("weight", _FP8), _per_row("weight_scale"))
        # static activation scales: read (every checkpoint tensor has a home) but unused: weight-only on CPU
        return found + ((_per_row("input_scale"),) if self.static_input else ())

    def dequantize(self, t, shape, dtype) -> torch.Tensor:
        return (fp8_to_float32(t["weight"]) * t["weight_scale"]).to(dtype)

    def describe(self) -> str:
        return "per-tensor FP8 (float8_e4m3fn weights)"


def _fp8_method(raw: dict) -> QuantMethod:
    if raw.get("fmt", "e4m3") != "e4m3":
        raise ValueError(f"fp8 quantization_config fmt={raw['fmt']!r} is not supported; supported: ['e4m3']")
    scheme = raw.get("activation_scheme", "dynamic")
    if scheme not in ("dynamic", "static"):
        raise ValueError(f"fp8 activation_scheme={scheme!r} is not supported; supported: ['dynamic', 'static']")
    block = raw.get("weight_block_size")
    if block is None:
        return TensorFp8(static_input=scheme == "static")
    if scheme != "dynamic":
        raise ValueError("block fp8 (weight_block_size) with activation_scheme='static' is not supported")
    if len(block) != 2 or not all(isinstance(b, int) and b > 0 for b in block):
        raise ValueError(f"fp8 weight_block_size must be two positive integers, got {block!r}")
    return BlockFp8(tuple(block))


def method_for(quant) -> QuantMethod:
    if quant.method == "fp8":
        return _fp8_method(quant.raw)
    if quant.method == "compressed-tensors":
        from anymodel.native_overrides.quantization.compressed import compressed_tensors_method

        return compressed_tensors_method(quant.raw)
    if quant.method in ("awq", "gptq"):
        from anymodel.native_overrides.quantization import packed_int

        return packed_int.awq_method(quant.raw) if quant.method == "awq" else packed_int.gptq_method(quant.raw)
    raise ValueError(f"unsupported quantization method {quant.method!r}")
