"""A worker: builds the model for its device (and, later, its rank) and runs steps on it."""

from __future__ import annotations

import logging

import torch

from anymodel import loader
from anymodel.model_runner import ModelRunner

logger = logging.getLogger("anymodel")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(args, model_dir, config, device: torch.device) -> torch.nn.Module:
    """The model implementation `args.model_impl` asks for (native or the Transformers backend)."""
    from anymodel.native_overrides import NATIVE_MODELS, native_model_class

    dtype = loader.resolve_dtype(args.dtype, config)
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    native = native_model_class(arch) if args.model_impl in ("auto", "native") else None
    if args.model_impl == "native" and native is None:
        raise ValueError(
            f"model_impl='native': no native implementation for architecture {arch!r}; "
            f"native implementations: {sorted(NATIVE_MODELS)} (use model_impl='transformers')"
        )
    if native is not None:
        return native.from_pretrained(model_dir, config, dtype).to(device).eval()
    return _build_transformers_model(args, model_dir, config, dtype).to(device)


def _build_transformers_model(args, model_dir, config, dtype):
    from anymodel.adapters.causal_lm import load_causal_lm

    spec = loader.resolve_causal_lm_class(config, model_dir, args.trust_remote_code)
    if not spec.backend_compatible:
        if args.enable_compat_path and spec.has_lm_head:
            from anymodel.adapters.compat import load_compat_causal_lm

            return load_compat_causal_lm(spec.cls, model_dir, config, dtype)
        raise ValueError(
            f"{spec.cls.__name__} is not compatible with the Transformers backend; a compatible model meets all of:\n"
            + loader.BACKEND_REQUIREMENTS
            + "\n(enable_compat_path=True runs it, slowly, through its own attention)"
        )
    logger.info("anymodel: Transformers backend, %s", spec.cls.__name__)
    return load_causal_lm(spec.cls, spec.has_lm_head, model_dir, config, dtype)


class Worker:
    def __init__(self, args, model_dir, config) -> None:
        self.device = resolve_device(args.device)
        self.model = build_model(args, model_dir, config, self.device)
        try:  # TODO(lead): selector lands with the Triton issue
            from anymodel.attention_backend.selector import get_backend

            backend = get_backend(args.attention_backend, self.device)
        except ImportError:
            from anymodel.attention_backend import torch_ref as backend
        self.runner = ModelRunner(self.model, self.device, args.block_size, backend, seed=args.seed)
