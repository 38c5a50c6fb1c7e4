"""GGUF files (`LLM(model="x.gguf", tokenizer=...)`): read by Transformers' GGUF reader (the `gguf`
package dequantizes every tensor), then written once as a plain safetensors model directory, which
the engine serves like any other (native, Transformers backend, tensor parallelism).

GGUF weights are dequantized at load: a Q4_K file takes float32 memory, not 4 bits per weight (the
quantized GGUF kernels of llama.cpp are not reimplemented here). The directory is cached beside
the Hub cache, keyed by the file's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

logger = logging.getLogger("anymodel")


def is_gguf(model: str | None) -> bool:
    return model is not None and str(model).lower().endswith(".gguf") and Path(model).expanduser().is_file()


def _cache_dir(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("ANYMODEL_GGUF_CACHE", Path.home() / ".cache" / "anymodel" / "gguf"))
    return root / f"{path.stem}-{key}"


def gguf_model_dir(model: str) -> Path:
    """The plain model directory of a GGUF file (written on first use): config.json,
    model.safetensors (dequantized, float32) and, when the file carries one, its tokenizer."""
    path = Path(model).expanduser()
    out = _cache_dir(path)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    try:
        import gguf  # noqa: F401  (Transformers' reader needs it)
    except ImportError:
        raise ValueError(f"model {model!r} is a GGUF file: reading it needs the `gguf` package (pip install gguf)") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("anymodel: dequantizing GGUF file %s into %s (Transformers' GGUF reader; weights float32)", path, out)
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"model {model!r}: Transformers cannot read this GGUF file: {e}") from e
    partial = out.with_name(out.name + ".partial")
    _save_plain(hf, partial)
    try:
        AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(str(partial))
    except Exception as e:  # noqa: BLE001 - no tokenizer in the file: `tokenizer=` must name one
        logger.info("anymodel: GGUF file %s has no tokenizer Transformers can read (%s); pass tokenizer=", path, e)
    partial.rename(out)
    return out


def _save_plain(hf, out: Path) -> None:
    """The dequantized model as a plain checkpoint (Transformers refuses to save_pretrained a model
    it marks GGUF-quantized: its weights are plain tensors by now, so they are saved as they are)."""
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    config = hf.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.architectures = [type(hf).__name__]
    config.save_pretrained(str(out))
    save_model(hf, str(out / "model.safetensors"))
