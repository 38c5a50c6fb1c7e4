"""Hand-written implementations of hot architectures, looked up lazily by HF architecture name.

A native class loads the same checkpoint as Transformers and gives the same greedy tokens; it may
refuse a config it cannot reproduce (`cls.unsupported(config)` -> reason), and `model_impl="auto"`
then runs the Transformers backend instead (the choice is runtime/model_loader's table).
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
    # remote-code families, loaded from their own checkpoint layout (remapped.py)
    "InternLM2ForCausalLM": "internlm2:InternLM2ForCausalLM",
    "BaichuanForCausalLM": "baichuan:BaichuanForCausalLM",
    "BaiChuanForCausalLM": "baichuan:BaiChuanForCausalLM",
    "QWenLMHeadModel": "qwen:QWenLMHeadModel",
    "MiniCPMForCausalLM": "minicpm:MiniCPMForCausalLM",
    "ChatGLMModel": "chatglm:ChatGLMModel",
}


def native_class(architecture: str) -> type | None:
    """The native class registered for `architecture` (imported on first use), or None."""
    target = NATIVE_MODELS.get(architecture)
    if target is None:
        return None
    module, cls_name = target.split(":")
    return getattr(importlib.import_module(f"anymodel.native_overrides.{module}"), cls_name)


def native_model_class(architecture: str, config=None):
    """The native class for `architecture`, or None (unknown, or `config` uses something it cannot
    reproduce: the reason is logged)."""
    cls = native_class(architecture)
    reason = cls.unsupported(config) if cls is not None and config is not None else None
    if reason is not None:
        logger.info("anymodel: native %s does not support %s; using the Transformers backend", cls.__name__, reason)
        return None
    return cls


def parallel_support(cls: type) -> tuple[bool, bool]:
    """(tensor, pipeline): the parallelism a native class opts in to; the one place that reads the
    flags (`supports_tensor_parallel` / `supports_pipeline_parallel`, off unless declared)."""
    return (bool(getattr(cls, "supports_tensor_parallel", False)),
            bool(getattr(cls, "supports_pipeline_parallel", False)))
