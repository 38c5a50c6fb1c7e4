"""Pick the attention kernels for a device: `get_backend(name, device)` -> a module with
`store_kv` and `paged_attention` (the `torch_ref` contract).

    auto        flash-attn on CUDA when `flash_attn` imports and can page the block size (a multiple
                of 256), else Triton on CUDA, else torch (CPU)
    triton      our Triton kernels; CUDA only, or CPU under the interpreter for tests
                (ANYMODEL_TRITON_ON_CPU=1 together with TRITON_INTERPRET=1)
    torch       torch_ref, anywhere
    flash_attn  flash-attn's paged varlen kernel (CUDA + the flash-attn package)

Imports are lazy: asking for `torch` never imports Triton or flash-attn.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

import torch

logger = logging.getLogger("anymodel")

SUPPORTED_BACKENDS = ("auto", "triton", "torch", "flash_attn")


# flash-attn 2 pages KV only in blocks whose size is a multiple of this.
FLASH_ATTN_BLOCK_MULTIPLE = 256


def get_backend(name: str, device: torch.device | str, block_size: int | None = None) -> ModuleType:
    """`block_size`, when known, lets `auto` skip flash-attn for blocks it cannot page."""
    if name not in SUPPORTED_BACKENDS:
        raise ValueError(f"unsupported attention_backend {name!r}; supported: {list(SUPPORTED_BACKENDS)}")
    device = torch.device(device)
    if name == "auto":
        name = _auto(device, block_size)
    backend = _LOADERS[name](device)
    logger.info("anymodel: attention backend %r on %s", name, device)
    return backend


def _auto(device: torch.device, block_size: int | None) -> str:
    if device.type != "cuda":
        return "torch"
    flash_shape_ok = block_size is None or block_size % FLASH_ATTN_BLOCK_MULTIPLE == 0
    if flash_shape_ok and _import_error("flash_attn") is None:
        return "flash_attn"
    return "triton" if _import_error("triton") is None else "torch"


def _load_torch(device: torch.device) -> ModuleType:
    from anymodel.attention_backend import torch_ref

    return torch_ref


def _load_triton(device: torch.device) -> ModuleType:
    if device.type != "cuda" and not _triton_on_cpu():
        raise ValueError(
            f"attention_backend='triton' needs a CUDA device (got {device}); use 'torch' or 'auto' on CPU "
            "(tests: set ANYMODEL_TRITON_ON_CPU=1 and TRITON_INTERPRET=1 to run the kernels in the interpreter)"
        )
    error = _import_error("triton")
    if error is not None:
        raise ValueError(f"attention_backend='triton' needs the triton package, which failed to import: {error}")
    from anymodel.attention_backend import triton as triton_backend

    return triton_backend


def _load_flash_attn(device: torch.device) -> ModuleType:
    if device.type != "cuda":
        raise ValueError(f"attention_backend='flash_attn' needs a CUDA device (got {device}); use 'torch' or 'auto'")
    error = _import_error("flash_attn")
    if error is not None:
        raise ValueError(
            f"attention_backend='flash_attn' needs the flash-attn package (pip install 'anymodel[flash]'): {error}"
        )
    from anymodel.attention_backend import flash_attn as flash_backend

    return flash_backend


def _triton_on_cpu() -> bool:
    if os.environ.get("ANYMODEL_TRITON_ON_CPU") != "1":
        return False
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("ANYMODEL_TRITON_ON_CPU=1 runs the Triton kernels in the interpreter: "
                         "set TRITON_INTERPRET=1 too")
    return True


def _import_error(module: str) -> Exception | None:
    """None when `module` imports; else the error (a broken CUDA build raises more than ImportError)."""
    try:
        __import__(module)
    except Exception as e:  # noqa: BLE001 - any failure means "not usable here"
        return e
    return None


_LOADERS = {"torch": _load_torch, "triton": _load_triton, "flash_attn": _load_flash_attn}
