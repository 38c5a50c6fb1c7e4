"""Tiny quantized checkpoints built in the test: a zoo model's decoder linears quantized by the
format's rules, written with its quantization_config, next to a plain float32 twin whose weights
are the dequantized values (the reference plain Transformers runs).

    quant_dir, plain_dir = quantized_pair("llama", tmp_path, block_fp8((16, 16)))

A format is a function (name, weight [out, in] f32) -> (stored tensors {suffix: tensor}, dequantized
weight [out, in] f32), plus the quantization_config it writes. Embeddings, norms and the LM head
stay plain (as in real checkpoints: the head is in `ignore` / `modules_to_not_convert`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from tests.models.zoo import build_tiny_model

_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Format:
    config: dict
    quantize: Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


def quantized_pair(arch: str, tmp_path: Path, fmt: Format, *, seed: int = 0) -> tuple[Path, Path]:
    """(quantized checkpoint dir, plain twin dir with the dequantized weights)."""
    plain = build_tiny_model(arch, tmp_path / "plain", seed=seed)
    quant = build_tiny_model(arch, tmp_path / "quant", seed=seed)
    tensors = load_file(plain / "model.safetensors")
    stored, dequantized = {}, {}
    for name, w in tensors.items():
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and module.rpartition(".")[2] in _LINEARS:
            parts, deq = fmt.quantize(w.float())
            stored.update({f"{module}.{k}": v.contiguous() for k, v in parts.items()})
            dequantized[name] = deq.contiguous()
        else:
            stored[name] = dequantized[name] = w
    save_file(dequantized, plain / "model.safetensors")
    save_file(stored, quant / "model.safetensors")
    config = json.loads((quant / "config.json").read_text())
    config["quantization_config"] = fmt.config
    (quant / "config.json").write_text(json.dumps(config))
    return quant, plain


# ---- block FP8 (DeepSeek-V3 / Qwen3-FP8): W ~= weight * weight_scale_inv per bo x bi block ----------
def _expand(scale: torch.Tensor, block: tuple[int, int], shape) -> torch.Tensor:
    return scale.repeat_interleave(block[0], 0)[: shape[0]].repeat_interleave(block[1], 1)[:, : shape[1]]


def block_fp8(block: tuple[int, int]) -> Format:
    def quantize(w: torch.Tensor):
        bo, bi = block
        out, in_ = w.shape
        pad = torch.zeros(-(-out // bo) * bo, -(-in_ // bi) * bi)
        pad[:out, :in_] = w.abs()
        amax = pad.view(pad.shape[0] // bo, bo, pad.shape[1] // bi, bi).amax(dim=(1, 3))
        scale = (amax / 448.0).clamp(min=1e-8)  # float8_e4m3fn's largest finite value
        q = (w / _expand(scale, block, w.shape)).to(torch.float8_e4m3fn)
        return {"weight": q, "weight_scale_inv": scale}, q.float() * _expand(scale, block, w.shape)

    config = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": list(block)}
    return Format(config, quantize)


# ---- compressed-tensors, through the library's own compressors ------------------------------------------
def compressed_tensors(fmt: str, weights: dict, input_activations: dict | None = None) -> Format:
    """`weights`: QuantizationArgs fields (num_bits, type, strategy, group_size, symmetric)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=input_activations)
    compressor = BaseCompressor.get_value_from_registry(fmt)
    args = scheme.weights

    def quantize(w: torch.Tensor):
        scale, zero = _qparams(w, args)
        state = {"weight": w, "weight_scale": scale}
        if zero is not None:
            state["weight_zero_point"] = zero
        compressed = compressor.compress(state, scheme)
        if input_activations is not None and not scheme.input_activations.dynamic:
            compressed["input_scale"] = torch.tensor([0.02])
        dequantized = compressor.decompress(dict(compressed), scheme)["weight"].float()
        return compressed, dequantized

    config = {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
              "config_groups": {"group_0": scheme.model_dump(exclude_none=True)}, "ignore": ["lm_head"]}
    return Format(config, quantize)


def _qparams(w: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scales (and zero points) per the strategy: tensor [1], channel [out, 1], group [out, in / g]."""
    out, in_ = w.shape
    if args.strategy == "group":
        view = w.view(out, in_ // args.group_size, args.group_size)
        lo, hi = view.amin(-1), view.amax(-1)
    elif args.strategy == "channel":
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    else:
        lo, hi = w.amin().reshape(1), w.amax().reshape(1)
    if args.type == "float":
        return (torch.maximum(hi.abs(), lo.abs()) / 448.0).clamp(min=1e-8), None
    qmax = 2 ** (args.num_bits - 1) - 1
    if args.symmetric:
        return (torch.maximum(hi.abs(), lo.abs()) / qmax).clamp(min=1e-8), None
    scale = ((hi - lo) / (2 * qmax + 1)).clamp(min=1e-8)
    zero = (-qmax - 1 - torch.round(lo / scale)).clamp(-qmax - 1, qmax).to(torch.int8)
    return scale, zero
