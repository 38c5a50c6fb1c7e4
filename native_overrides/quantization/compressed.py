"""compressed-tensors checkpoints (llm-compressor): the config is read by the compressed-tensors
package (QuantizationConfig), and weights are dequantized by its own compressors, so that the
format's rules (offsets, packing order, group layout) are the library's, not a re-implementation.

    float-quantized / naive-quantized / int-quantized   weight fp8 / int8 [out, in]
    pack-quantized                                       weight_packed int32 [out, ceil(in * bits / 32)],
                                                         weight_shape [2]
    + weight_scale      tensor / channel: [1] / [out, 1] (kept per row); group: [out, in / group_size]
    + weight_zero_point when asymmetric (int8 like the scale; pack-quantized: packed along out)
    + input_scale       static activation quantization: read but unused (CPU: weight-only semantics)

One scheme for every quantized Linear (a single config group) is loaded; mixed schemes, sparsity,
activation ordering (g_idx) and a quantized KV cache (kv_cache_scheme) are refused by name.
"""

from __future__ import annotations

import torch

from anymodel.native_overrides.quantization.formats import fp8_to_float32
from anymodel.native_overrides.quantization.methods import QuantMethod, Stored, _ceil

_FORMATS = ("float-quantized", "naive-quantized", "int-quantized", "pack-quantized")
_STRATEGIES = ("tensor", "channel", "group")
_ROW = (0, 1)


class CompressedTensors(QuantMethod):
    name = "compressed-tensors"

    def __init__(self, fmt: str, scheme) -> None:
        self.format = fmt
        self.scheme = scheme
        w = scheme.weights
        self.bits, self.strategy, self.group = w.num_bits, w.strategy, w.group_size
        self.symmetric = w.symmetric
        acts = scheme.input_activations
        self.static_input = acts is not None and not acts.dynamic
        # per-tensor scales are kept per row (per-slice scales of fused layers): dequantize them as channel
        self.dequant_scheme = scheme.model_copy(update={"weights": w.model_copy(update={"strategy": "channel"})}) \
            if self.strategy == "tensor" else scheme

    @property
    def packed(self) -> bool:
        return self.format == "pack-quantized"

    def stored(self) -> tuple[Stored, ...]:
        g = self.group
        if self.strategy == "group":
            scale_shape, scale_in = (lambda o, i: (o, _ceil(i, g))), (1, g)
        else:
            scale_shape, scale_in = (lambda o, i: (o, 1)), None
        if self.packed:
            per_word = 32 // self.bits
            found = [Stored("weight_packed", torch.int32, lambda o, i: (o, _ceil(i * self.bits, 32)), _ROW, (1, per_word)),
                     Stored("weight_scale", torch.float32, scale_shape, _ROW, scale_in),
                     Stored("weight_shape", torch.int64, lambda o, i: (2,), None, None)]
            zero = Stored("weight_zero_point", torch.int32, lambda o, i: (_ceil(o * self.bits, 32), scale_shape(o, i)[1]),
                          (0, per_word), scale_in)
        else:
            dtype = torch.float8_e4m3fn if self.scheme.weights.type == "float" else torch.int8
            found = [Stored("weight", dtype, lambda o, i: (o, i), _ROW, (1, 1)),
                     Stored("weight_scale", torch.float32, scale_shape, _ROW, scale_in)]
            zero = Stored("weight_zero_point", torch.int8, scale_shape, _ROW, scale_in)
        if not self.symmetric:
            found.append(zero)
        if self.static_input:
            found.append(Stored("input_scale", torch.float32, lambda o, i: (o, 1), _ROW, None))
        return tuple(found)

    def dequantize(self, t, shape, dtype) -> torch.Tensor:
        from compressed_tensors.compressors import BaseCompressor

        state = {k: v for k, v in t.items() if k != "input_scale"}
        if state.get("weight") is not None and state["weight"].dtype == torch.float8_e4m3fn:
            state["weight"] = fp8_to_float32(state["weight"])  # the same values, decoded ~2.5x faster on CPU
        if self.packed:
            state["weight_shape"] = torch.tensor(shape)  # this rank's part, not the checkpoint's whole shape
        compressor = BaseCompressor.get_value_from_registry(self.format)
        return compressor.decompress(state, self.dequant_scheme)["weight"].to(dtype)

    def triton_gemm(self, t, shape, x):
        if not (self.packed and self.bits == 4 and self.symmetric and self.strategy == "group"):
            return None
        from anymodel.native_overrides.quantization.triton_gemm import w4a16_gemm

        return w4a16_gemm(x, t["weight_packed"], t["weight_scale"], self.group)

    def describe(self) -> str:
        kind = "float" if self.scheme.weights.type == "float" else "int"
        group = f" (group {self.group})" if self.strategy == "group" else ""
        sym = "" if self.symmetric else ", asymmetric"
        return f"compressed-tensors {self.format}, {kind}{self.bits} weights per {self.strategy}{group}{sym}"


def compressed_tensors_method(raw: dict) -> CompressedTensors:
    from compressed_tensors.quantization import QuantizationConfig

    config = QuantizationConfig.model_validate(raw)
    for key in ("sparsity_config", "transform_config"):
        if raw.get(key):
            raise ValueError(f"compressed-tensors {key} is not supported; supported: quantization only")
    if config.kv_cache_scheme is not None:
        raise ValueError("compressed-tensors kv_cache_scheme (a quantized KV cache) is not supported; "
                         "use a checkpoint without it")
    groups = list(config.config_groups.values())
    if len(groups) != 1:
        raise ValueError(f"compressed-tensors config_groups: {len(groups)} schemes; anymodel loads one scheme for "
                         "every quantized Linear")
    scheme = groups[0]
    fmt = str(getattr(scheme.format, "value", scheme.format) or config.format)
    w = scheme.weights
    if fmt not in _FORMATS:
        raise ValueError(f"compressed-tensors format {fmt!r} is not supported; supported: {list(_FORMATS)}")
    if w is None or scheme.targets != ["Linear"]:
        raise ValueError(f"compressed-tensors scheme targets {scheme.targets} with weights {w}: anymodel loads "
                         "weight quantization of Linear layers")
    if w.strategy not in _STRATEGIES or w.actorder not in (None, False):
        raise ValueError(f"compressed-tensors weight strategy {w.strategy!r} / actorder {w.actorder!r} is not "
                         f"supported; supported strategies: {list(_STRATEGIES)}, no activation ordering")
    bits = (4, 8) if fmt == "pack-quantized" else (8,)
    if w.num_bits not in bits or (fmt == "pack-quantized" and w.type != "int"):
        raise ValueError(f"compressed-tensors {fmt} with {w.type}{w.num_bits} weights is not supported; "
                         f"supported: {w.type if fmt != 'pack-quantized' else 'int'} with num_bits in {list(bits)}")
    return CompressedTensors(fmt, scheme)
