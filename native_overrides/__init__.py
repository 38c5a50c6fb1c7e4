"""Hand-written implementations of hot architectures, looked up lazily by HF architecture name.

A native class loads the same checkpoint as Transformers and gives the same greedy tokens; it may
refuse a config it cannot reproduce (`cls.unsupported(config)` -> reason), and `model_impl="auto"`
then runs the Transformers backend instead.
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger("anymodel")

# HF architecture name -> "module:Class" inside anymodel.native_overrides.
NATIVE_MODELS: dict[str, str] = {
    "LlamaForCausalLM": "llama:LlamaForCausalLM",
    "MistralForCausalLM": "llama:MistralForCausalLM",
    "Qwen2ForCausalLM": "qwen2:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "qwen3:Qwen3ForCausalLM",
    "Gemma2ForCausalLM": "gemma2:Gemma2ForCausalLM",
    "Gemma3ForCausalLM": "gemma3:Gemma3ForCausalLM",
}


def native_model_class(architecture: str, config=None):
    """The native class for `architecture`, or None (unknown, or `config` uses something it cannot
    reproduce: the reason is logged)."""
    target = NATIVE_MODELS.get(architecture)
    if target is None:
        return None
    module, cls_name = target.split(":")
    cls = getattr(importlib.import_module(f"anymodel.native_overrides.{module}"), cls_name)
    reason = cls.unsupported(config) if config is not None else None
    if reason is not None:
        logger.info("anymodel: native %s does not support %s; using the Transformers backend", cls_name, reason)
        return None
    return cls
