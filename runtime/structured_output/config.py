"""LLM(structured_outputs_config={...}) and vLLM's older guided_decoding_backend=: the engine's
structured-output settings, checked once."""

from __future__ import annotations

from dataclasses import dataclass

from anymodel.structured_output.params import BACKENDS
from anymodel.structured_output.reasoning import REASONING_MARKERS


@dataclass(frozen=True)
class StructuredOutputsConfig:
    backend: str = "auto"  # "auto" and "xgrammar": xgrammar (the one backend built in)
    disable_any_whitespace: bool = False  # engine default for requests that do not say
    disable_additional_properties: bool = False
    disable_fallback: bool = False  # accepted: nothing to fall back to
    reasoning_parser: str | None = None  # deepseek_r1 | qwen3: the grammar starts after </think> (reasoning.py)


def resolve_config(config: dict | StructuredOutputsConfig | None, guided_decoding_backend: str | None):
    """The engine's StructuredOutputsConfig; ValueError naming a bad key or backend."""
    if isinstance(config, StructuredOutputsConfig):
        data = dict(config.__dict__)
    elif config is None:
        data = {}
    elif isinstance(config, dict):
        data = dict(config)
    else:
        raise ValueError(f"structured_outputs_config must be a dict, got {type(config).__name__}")
    if guided_decoding_backend is not None:
        if data.get("backend", guided_decoding_backend) != guided_decoding_backend:
            raise ValueError("guided_decoding_backend and structured_outputs_config['backend'] disagree; pass one")
        data["backend"] = guided_decoding_backend
    known = set(StructuredOutputsConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"structured_outputs_config has unsupported key(s) {unknown}; supported: {sorted(known)}")
    cfg = StructuredOutputsConfig(**data)
    check_backend(cfg.backend, "structured_outputs_config['backend']")
    if cfg.reasoning_parser is not None and cfg.reasoning_parser not in REASONING_MARKERS:
        raise ValueError(f"structured_outputs_config['reasoning_parser'] must be one of {sorted(REASONING_MARKERS)}, "
                         f"got {cfg.reasoning_parser!r}")
    return cfg


def check_backend(backend: str | None, name: str) -> None:
    if backend is None or backend in ("auto", "xgrammar"):
        return
    if backend == "guidance":
        raise ValueError(f"{name}='guidance' (llguidance) is not supported by anymodel; use 'xgrammar' or 'auto'")
    raise ValueError(f"{name} must be one of {list(BACKENDS)}, got {backend!r}")
