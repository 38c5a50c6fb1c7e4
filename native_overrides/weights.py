"""Read a Hugging Face checkpoint as (name, tensor) pairs, and route them into a native model.

    model.safetensors                          one file
    model.safetensors.index.json + shards      `weight_map` names the shard of every tensor
    pytorch_model.bin (+ .index.json)          legacy pickles, loaded with weights_only=True

Fused parameters gather several checkpoint tensors (`STACKED`): `q_proj`, `k_proj`, `v_proj` go
into `qkv_proj` as shards "q", "k", "v"; `gate_proj` and `up_proj` into `gate_up_proj` as 0 and 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from anymodel.native_overrides.linear import default_weight_loader

# (fused parameter name part, checkpoint name part, shard id)
STACKED = (
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    model_dir = Path(model_dir)
    for index_name, pattern in (("model.safetensors.index.json", "*.safetensors"), ("pytorch_model.bin.index.json", "*.bin")):
        index = model_dir / index_name
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [model_dir / s for s in shards]
        found = sorted(model_dir.glob(pattern))
        if found:
            return found
    raise ValueError(f"model {str(model_dir)!r} has no *.safetensors or pytorch_model*.bin weights")


def iter_checkpoint(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    for file in checkpoint_files(model_dir):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            yield from torch.load(file, map_location="cpu", weights_only=True).items()


def load_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], skip: tuple[str, ...] = ()) -> None:
    """Copy checkpoint tensors into `model` (HF names, fused layers via `STACKED`); every parameter
    must be filled, and no checkpoint tensor may be left without a home (except those in `skip`)."""
    params = dict(model.named_parameters())
    filled: dict[str, set] = {}
    unexpected: list[str] = []
    for name, tensor in weights:
        if name.endswith("rotary_emb.inv_freq") or any(s in name for s in skip):
            continue
        target, shard = _target(name, params)
        if target is None:
            unexpected.append(name)
            continue
        param = params[target]
        loader = getattr(param, "weight_loader", None)
        if shard is None:
            (loader or default_weight_loader)(param, tensor)
        else:
            loader(param, tensor, shard)
        filled.setdefault(target, set()).add(shard)
    _check(params, filled, unexpected)


def _target(name: str, params: dict) -> tuple[str | None, object]:
    for fused, part, shard in STACKED:
        if f".{part}." in name:
            target = name.replace(f".{part}.", f".{fused}.")
            if target in params:
                return target, shard
    return (name, None) if name in params else (None, None)


def _check(params: dict, filled: dict[str, set], unexpected: list[str]) -> None:
    missing = [name for name in params if filled.get(name) != (_expected_shards(name) or {None})]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the native model: missing {missing[:8]}, unexpected {unexpected[:8]} "
            "(model_impl='transformers' runs it through Transformers)"
        )


def _expected_shards(name: str) -> set:
    return {shard for fused, _, shard in STACKED if f".{fused}." in name}
