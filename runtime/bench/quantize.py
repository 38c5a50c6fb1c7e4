"""Quantize a plain checkpoint by a format's rules (what the quantization tests and `anymodel bench
quant` load): its decoder linears quantized, written with the format's quantization_config, and
optionally a plain twin whose weights are the dequantized values (the reference plain Transformers
runs in the tests).

    quantize_checkpoint(plain_dir, quant_dir, block_fp8((16, 16)), twin_dir=None)

A format is a function (name, weight [out, in] f32) -> (stored tensors {suffix: tensor}, dequantized
weight [out, in] f32), plus the quantization_config it writes. Embeddings, norms and the LM head
stay plain (as in real checkpoints: the head is in `ignore` / `modules_to_not_convert`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Format:
    config: dict
    quantize: Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


def quantize_checkpoint(plain: Path, quant: Path, fmt: Format, twin: Path | None = None) -> None:
    """Write `quant` (a copy of the plain model dir `plain`, linears quantized) and, with `twin`, the
    dequantized weights into `twin`'s model.safetensors (a copy of `plain` made by the caller)."""
    shutil.copytree(plain, quant, dirs_exist_ok=True)
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
    if twin is not None:
        save_file(dequantized, twin / "model.safetensors")
    save_file(stored, quant / "model.safetensors")
    config = json.loads((quant / "config.json").read_text())
    config["quantization_config"] = fmt.config
    (quant / "config.json").write_text(json.dumps(config))


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


def tensor_fp8(static_input: bool) -> Format:
    """quant_method "fp8" without weight_block_size: one scale per tensor (+ a static input scale)."""
    def quantize(w: torch.Tensor):
        scale = (w.abs().amax() / 448.0).clamp(min=1e-8).reshape(1)
        q = (w / scale).to(torch.float8_e4m3fn)
        stored = {"weight": q, "weight_scale": scale}
        if static_input:
            stored["input_scale"] = torch.tensor([0.05])
        return stored, q.float() * scale

    config = {"quant_method": "fp8", "activation_scheme": "static" if static_input else "dynamic"}
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


# ---- AWQ (AutoAWQ gemm) and GPTQ (AutoGPTQ), packed as their quantizers pack ---------------------------
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _int_groups(w: torch.Tensor, bits: int, group: int):
    """Asymmetric integer quantization per group of input columns: (q [in, out], zeros [in/g, out],
    float16 scales [in/g, out]) of the transposed weight, and the dequantized weight [out, in]. Zero
    points stay >= 1: GPTQ v1 stores zero - 1, which its packers wrap for 0."""
    wt = w.t()  # [in, out]
    in_, out = wt.shape
    g = in_ if group == -1 else group
    view = wt.reshape(in_ // g, g, out)
    lo, hi = view.amin(1), view.amax(1)
    qmax = 2**bits - 1
    scales = ((hi - lo) / qmax).clamp(min=1e-4).half()
    per_row = scales.float().repeat_interleave(g, 0)  # [in, out]
    zeros = torch.round(-lo / scales.float()).clamp(1, qmax).to(torch.int32)
    q = torch.clamp(torch.round(wt / per_row) + zeros.repeat_interleave(g, 0), 0, qmax).to(torch.int32)
    deq = ((q - zeros.repeat_interleave(g, 0)).float() * per_row).t()
    return q, zeros, scales, deq


def _pack_cols(values: torch.Tensor, bits: int, order=None) -> torch.Tensor:
    """int32 [r, c] -> [r, c * bits / 32]: field i of word k holds column k * pf + order[i]."""
    pf = 32 // bits
    order = order or tuple(range(pf))
    packed = torch.zeros(values.shape[0], values.shape[1] // pf, dtype=torch.int32)
    for i in range(pf):
        packed |= (values[:, [k * pf + order[i] for k in range(values.shape[1] // pf)]] & (2**bits - 1)) << (bits * i)
    return packed


def awq(group: int) -> Format:
    def quantize(w: torch.Tensor):
        q, zeros, scales, deq = _int_groups(w, 4, group)
        return {"qweight": _pack_cols(q, 4, AWQ_ORDER), "qzeros": _pack_cols(zeros, 4, AWQ_ORDER), "scales": scales}, deq

    config = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm",
              "modules_to_not_convert": None}
    return Format(config, quantize)


def gptq(bits: int, group: int, v2: bool = False) -> Format:
    """AutoGPTQ's packing; `v2` (checkpoint_format "gptq_v2") stores zero points as they are, v1 as zero - 1."""
    def quantize(w: torch.Tensor):
        q, zeros, scales, deq = _int_groups(w, bits, group)
        g = w.shape[1] if group == -1 else group
        g_idx = torch.arange(w.shape[1], dtype=torch.int32) // g
        stored = {"qweight": _pack_cols(q.t().contiguous(), bits).t().contiguous(),  # packed along `in`
                  "qzeros": _pack_cols(zeros - (0 if v2 else 1), bits), "scales": scales, "g_idx": g_idx}
        return stored, deq

    config = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": False, "sym": False,
              "checkpoint_format": "gptq_v2" if v2 else "gptq"}
    return Format(config, quantize)

