"""A quantized checkpoint on the Transformers backend: the HF model's quantized nn.Linears become
QuantLinears on the meta device (before tensor parallelism cuts them), and the sharded loader
reads each one's stored tensors, cut like its logical weight (block scales on the block grid).

    build_on_meta -> pipeline stage -> quantize_hf_linears -> tensor plan -> load_sharded
                                                                               (load_quantized_linears)
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from anymodel.adapters.tensor_parallel import ShardSpec
from anymodel.native_overrides.quantization.layers import QuantLinear, quantized_prefixes
from anymodel.native_overrides.quantization.methods import QuantMethod, Stored, stored_range

logger = logging.getLogger("anymodel")


def quantize_hf_linears(hf: nn.Module, method: QuantMethod, model_dir, staged: bool) -> int:
    """Replace every nn.Linear the checkpoint quantizes by a QuantLinear; returns how many.
    `staged`: a pipeline stage, whose other stages' modules are absent."""
    from anymodel.adapters.sharded_loader import model_names

    rename = lambda names: list(model_names(hf, names))  # noqa: E731 - checkpoint -> model names
    count = 0
    for name in sorted(quantized_prefixes(model_dir, method, rename)):
        owner, _, attr = name.rpartition(".")
        try:
            parent = hf.get_submodule(owner)
        except AttributeError:
            if staged:
                continue  # another pipeline stage's layer
            raise ValueError(f"the checkpoint quantizes {name!r}, which {type(hf).__name__} does not have") from None
        module = getattr(parent, attr, None)
        if module is None and staged:
            continue
        if type(module) is not nn.Linear:
            raise ValueError(f"the checkpoint quantizes {name!r}, a {type(module).__name__}: anymodel quantizes "
                             "nn.Linear layers only")
        setattr(parent, attr, QuantLinear(module, method))
        count += 1
    if count == 0 and not staged:
        raise ValueError(f"the {method.name} checkpoint quantizes none of {type(hf).__name__}'s linears")
    return count


def is_placeholder(module: nn.Module, attr: str) -> bool:
    """A QuantLinear's meta `weight`: its stored tensors load instead."""
    return isinstance(module, QuantLinear) and attr == "weight"


def load_quantized_linears(model: nn.Module, files: dict, sources: dict[str, str], specs: dict[str, ShardSpec],
                           missing: list[str]) -> None:
    """Read every QuantLinear's stored tensors (this rank's part); names not found go to `missing`."""
    from safetensors import safe_open

    for name, module in model.named_modules():
        if not isinstance(module, QuantLinear):
            continue
        method = module.quant_method
        out, in_ = module.weight.shape
        tensors = method.create_weights(out, in_)
        for stored in method.stored():
            key = sources.get(f"{name}.{stored.name}")
            if key is None:
                missing.append(f"{name}.{stored.name}")
                continue
            with safe_open(files[key], framework="pt") as f:
                part = _read_stored(f, key, stored, specs.get(f"{name}.weight"), module.full_shape)
            method.load_weight(stored.name, tensors[stored.name], part, None)
        module.set_stored(tensors)


def _read_stored(f, key: str, stored: Stored, spec: ShardSpec | None, full_shape) -> torch.Tensor:
    """This rank's part of one stored tensor: the weight's ShardSpec moved onto the tensor's own grid."""
    piece = f.get_slice(key)
    shape = piece.get_shape()
    axis = stored.axis(spec.dim) if spec is not None else None
    if axis is None or len(shape) == 0 or (len(shape) == 1 and shape[0] == 1):
        return f.get_tensor(key)  # not cut along the sharded dim (per-row scale of a row-parallel layer, a scalar)
    ranges = []
    for s, e in spec.ranges:
        start, length = stored_range(stored, spec.dim, s, e - s, full_shape[spec.dim])
        ranges.append((start, start + length))
    from anymodel.adapters.sharded_loader import read_part

    return read_part(f, key, ShardSpec(axis[0], tuple(ranges)))
