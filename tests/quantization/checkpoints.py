"""Tiny quantized checkpoints built in the test: a zoo model's decoder linears quantized by the
format's rules (anymodel.bench.quantize, shared with `anymodel bench quant`), next to a plain
float32 twin whose weights are the dequantized values (the reference plain Transformers runs).

    quant_dir, plain_dir = quantized_pair("llama", tmp_path, block_fp8((16, 16)))
"""

from __future__ import annotations

from pathlib import Path

from anymodel.bench.quantize import (  # noqa: F401
    Format, awq, block_fp8, compressed_tensors, gptq, quantize_checkpoint, tensor_fp8)
from tests.models.zoo import build_tiny_model


def quantized_pair(arch: str, tmp_path: Path, fmt: Format, *, seed: int = 0) -> tuple[Path, Path]:
    """(quantized checkpoint dir, plain twin dir with the dequantized weights)."""
    plain = build_tiny_model(arch, tmp_path / "plain", seed=seed)
    quant = tmp_path / "quant"
    quantize_checkpoint(plain, quant, fmt, twin=plain)
    return quant, plain
