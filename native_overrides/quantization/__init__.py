"""Quantized checkpoints: detection (config.py), the QuantMethod seam (methods.py), the formats
(formats.py, compressed.py), quantized linears for HF and native models (layers.py, native.py).

Imported by the model loader's rules (detection), the native models and the Transformers adapters
(quantized linears); nothing here imports the layers above it.
"""

from anymodel.native_overrides.quantization.config import SUPPORTED, QuantConfig, describe, resolve_quantization

__all__ = ["SUPPORTED", "QuantConfig", "describe", "resolve_quantization"]
