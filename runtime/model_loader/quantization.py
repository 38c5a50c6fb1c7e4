"""The quantization stage of the load-time transforms (transforms.py): a quantized checkpoint's
linears are replaced while the model is built (on the meta device, before tensor parallelism cuts
them: adapters/quantized_loading.py, native_overrides/quantization/native.py), so that no weight is
ever materialised unquantized; this transform then checks the built model holds quantized linears
and logs what its weights take in memory.
"""

from __future__ import annotations

import logging

import torch

from anymodel.model_loader.transforms import Transform, TransformContext, register

logger = logging.getLogger("anymodel")


def method_of(quant):
    """The QuantMethod of a QuantConfig (None for plain weights)."""
    if quant is None:
        return None
    from anymodel.native_overrides.quantization.methods import method_for

    return method_for(quant)


def _quantized(context: TransformContext) -> bool:
    from anymodel.native_overrides.quantization.config import raw_quantization_config

    return context.config is not None and raw_quantization_config(context.config) is not None


def _check_and_report(model: torch.nn.Module, context: TransformContext) -> torch.nn.Module:
    from anymodel.native_overrides.quantization.layers import weight_bytes

    linears = [m for m in model.modules() if getattr(m, "quant_method", None) is not None]
    if not linears:
        raise ValueError(f"{type(model).__name__}: the checkpoint is quantized, but no quantized linear was built "
                         "(refusing to serve it as plain weights; load_format='dummy' builds plain random weights, "
                         "so it does not apply to quantized checkpoints: use load_format='auto')")
    logger.info("anymodel: %d quantized linears (%s); weights take %.2f MiB on this rank", len(linears),
                linears[0].quant_method.describe(), weight_bytes(model) / 2**20)
    return model


register(Transform("quantized-linears", "quantization", _quantized, _check_and_report))
