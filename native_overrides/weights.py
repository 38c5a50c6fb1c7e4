"""Read a Hugging Face checkpoint as (name, tensor) pairs, and route them into a native model.

    model.safetensors                          one file
    model.safetensors.index.json + shards      `weight_map` names the shard of every tensor
    pytorch_model.bin (+ .index.json)          legacy pickles, loaded with weights_only=True

A pickle that holds more than tensors (weights_only refuses it) is never unpickled: unpickling runs
whatever code it names. Every path that reads one while a model is built (ours here, Transformers'
from_pretrained, the sentence-transformers Dense layers) raises torch's UnpicklingError, which
`refusing_unsafe_pickles` (around the executors' model build) turns into `unsafe_pickle_error`: one
line naming the file and how to convert it to safetensors. There is deliberately no opt-in to load it anyway: converting once,
where the user trusts the file, is the explicit act of trust (vLLM offers no opt-in either).

Fused parameters gather several checkpoint tensors (`STACKED`): `q_proj`, `k_proj`, `v_proj` go
into `qkv_proj` as shards "q", "k", "v"; `gate_proj` and `up_proj` into `gate_up_proj` as 0 and 1.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from anymodel.native_overrides.linear import default_weight_loader
from anymodel.native_overrides.quantization.methods import refuse_as_plain

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
        else:  # a refusal propagates as UnpicklingError: not a ValueError, which would make
            # model_impl="auto" retry the Transformers backend on the same file; the executor's
            # refusing_unsafe_pickles turns it into the one message
            yield from torch.load(file, map_location="cpu", weights_only=True).items()


def read_first_weights(folder: str | Path, names: Iterable[str]) -> dict[str, torch.Tensor] | None:
    """The tensors of the first of `names` present in `folder` (a small single-file checkpoint: a
    sentence-transformers Dense layer, a LoRA adapter): safetensors, or a pickle read with
    weights_only=True (a refusal propagates, as in iter_checkpoint); None when none is there."""
    for name in names:
        file = Path(folder) / name
        if not file.is_file():
            continue
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        return torch.load(file, map_location="cpu", weights_only=True)
    return None


def unsafe_pickle_error(file: Path, exc: BaseException) -> ValueError:
    """The one message for a refused pickle checkpoint (one line: the CLI prints it as it is)."""
    found = re.search(r"WeightsUnpickler error: (.*?)(?:\. |\.?\n|$)", str(exc))
    why = f" ({found.group(1)})" if found else ""
    convert = (
        f"import torch, safetensors.torch as st; sd = torch.load('{file}', weights_only=False); "
        f"st.save_file({{k: v.clone() for k, v in sd.items() if torch.is_tensor(v)}}, '{file.parent / 'model.safetensors'}')"
    )
    return ValueError(
        f"refusing to load the pickle checkpoint {file}: torch.load(weights_only=True) refuses it{why}, and "
        f"unpickling it could run arbitrary code; convert it to safetensors where you trust its source "
        f'(python -c "{convert}") or use safetensors weights of the model'
    )


@contextmanager
def refusing_unsafe_pickles(model_dir: str | Path):
    """Around a model build: torch's refusal of a pickle checkpoint, raised inside Transformers'
    from_pretrained (which names no file), becomes `unsafe_pickle_error` for the refused file."""
    try:
        yield
    except pickle.UnpicklingError as exc:
        file = _refused_pickle(Path(model_dir))
        if file is None:  # not a checkpoint of this model: leave the error as it is
            raise
        raise unsafe_pickle_error(file, exc) from exc


def _refused_pickle(model_dir: Path) -> Path | None:
    """The first pickle checkpoint (sub-folders too: sentence-transformers Dense layers) that
    weights_only refuses; only read on the error path (mmap'd: zip checkpoints are not read whole)."""
    for file in sorted(model_dir.rglob("pytorch_model*.bin")):
        try:
            torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
        except pickle.UnpicklingError:
            return file
        except Exception:  # noqa: BLE001 - unreadable for another reason: not the file we look for
            continue
    return None


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
        refuse_as_plain(name, tensor, param.dtype)
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


@torch.no_grad()
def random_fill_(model: nn.Module, std: float, seed: int) -> None:
    """Random weights in place of a checkpoint (load_format="dummy"): every matrix ~ N(0, std), every
    bias 0; other vectors (norm scales) keep their constructed values. Seeded: each rank, and each
    run, builds the same weights."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if param.dim() >= 2:
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * std)
        elif name.endswith("bias"):
            param.zero_()
