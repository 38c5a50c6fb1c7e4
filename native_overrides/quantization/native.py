"""A native model's linears quantized as its checkpoint says, before its weights load.

Fused layers gather several checkpoint linears (weights.STACKED: q/k/v -> qkv_proj, gate/up ->
gate_up_proj): the fused layer is quantized when all of them are, and refused when only some are.
"""

from __future__ import annotations

from torch import nn

from anymodel.native_overrides.quantization.layers import quantize_linear, quantized_prefixes
from anymodel.native_overrides.quantization.methods import QuantMethod


def quantize_native(model: nn.Module, method: QuantMethod, model_dir) -> int:
    """Quantize every LinearBase the checkpoint quantizes; returns how many."""
    from anymodel.native_overrides.linear import LinearBase
    from anymodel.native_overrides.weights import STACKED

    quantized = quantized_prefixes(model_dir, method)
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, LinearBase):
            continue
        sources = [name.replace(f".{fused}", f".{part}") for fused, part, _ in STACKED if name.endswith(f".{fused}")]
        hits = [s in quantized for s in sources or [name]]
        if all(hits):
            quantize_linear(module, method)
            count += 1
        elif any(hits):
            raise ValueError(f"{name}: the checkpoint quantizes only some of {sources}; a fused layer needs all "
                             "or none quantized (model_impl='transformers' loads them separately)")
    return count
