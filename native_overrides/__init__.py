"""Hand-written implementations of hot architectures, looked up lazily by HF architecture name."""

from __future__ import annotations

import importlib

# HF architecture name -> "module:Class" inside anymodel.native_overrides.
NATIVE_MODELS: dict[str, str] = {}


def native_model_class(architecture: str):
    target = NATIVE_MODELS.get(architecture)
    if target is None:
        return None
    module, cls = target.split(":")
    return getattr(importlib.import_module(f"anymodel.native_overrides.{module}"), cls)
