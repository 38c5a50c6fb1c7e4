"""What a checkpoint's tensors are, from the safetensors headers alone (no tensor is read).

A safetensors file starts with an 8-byte little-endian header length and a JSON header:
{name: {"dtype": "F8_E4M3", "shape": [...], "data_offsets": [...]}, "__metadata__": {...}}.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

# Names only quantized checkpoints use (fp8 block scales, AWQ / GPTQ, compressed-tensors, bitsandbytes)
QUANT_SUFFIXES = ("weight_scale_inv", "weight_scale", "qweight", "qzeros", "weight_packed", "weight_zero_point",
                  "SCB", "absmax", "quant_map", "quant_state.bitsandbytes__nf4", "quant_state.bitsandbytes__fp4")
_FLOAT8 = ("F8_E4M3", "F8_E5M2", "F8_E8M0")
_INTEGER = ("I8", "U8", "I16", "I32")


def read_header(file: Path) -> dict[str, dict]:
    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def tensor_headers(model_dir) -> dict[str, dict]:
    """name -> {"dtype", "shape"} over every *.safetensors file of the model directory."""
    out: dict[str, dict] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(read_header(file))
    return out


def unmarked_quantized_tensors(model_dir) -> list[str]:
    """Tensors that only a quantized checkpoint holds ("name (dtype)"): float8 tensors, 2-D integer
    `.weight`s, and quantization-only names (scales, packed weights, zero points)."""
    found = []
    for name, h in tensor_headers(model_dir).items():
        dtype = h.get("dtype", "")
        quant_name = name.rpartition(".")[2] in QUANT_SUFFIXES or name.endswith(QUANT_SUFFIXES[-2:])
        int_weight = dtype in _INTEGER and name.endswith(".weight") and len(h.get("shape", ())) == 2
        if dtype in _FLOAT8 or int_weight or quant_name:
            found.append((not (dtype in _FLOAT8 or int_weight), f"{name} ({dtype})"))
    return [text for _, text in sorted(found)]  # quantized weights first, then scales / zero points


def kv_scale_tensors(model_dir) -> list[str]:
    """Per-layer KV-cache scales a checkpoint carries (k_scale / v_scale / kv_scale, vLLM's names)."""
    return [n for n in tensor_headers(model_dir) if n.rpartition(".")[2] in ("k_scale", "v_scale", "kv_scale")]
