"""Read each rank's slices of a checkpoint (safetensors, or `pytorch_model*.bin` pickles loaded with
weights_only=True) into a model built on the meta device.

A rank never materialises a whole sharded tensor: `get_slice` reads only the ranges of its
ShardSpec. Checkpoint names go through Transformers' own renamings (legacy names, base-model
prefix added or stripped), so a name resolves the way `from_pretrained` would resolve it.
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from anymodel.adapters.quantized_loading import is_placeholder, load_quantized_linears
from anymodel.adapters.tensor_parallel import ShardSpec
from anymodel.native_overrides.quantization.methods import refuse_as_plain


class MissingTensorsError(ValueError):
    """The checkpoint lacks parameters of the model (`names`: qualified parameter names)."""

    def __init__(self, model_dir, names: list[str]) -> None:
        super().__init__(f"model {str(model_dir)!r}: the checkpoint has no tensor for {names[:8]}")
        self.names = names


def checkpoint_files(model_dir) -> dict[str, Path]:
    """checkpoint tensor name -> the file that holds it: safetensors, else `pytorch_model*.bin`
    pickles (read with weights_only=True, as every other loader here)."""
    model_dir = Path(model_dir)
    for index_name, pattern in (("model.safetensors.index.json", "*.safetensors"),
                                ("pytorch_model.bin.index.json", "pytorch_model*.bin")):
        index = model_dir / index_name
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: model_dir / file for name, file in weight_map.items()}
        files: dict[str, Path] = {}
        for file in sorted(model_dir.glob(pattern)):
            with open_checkpoint(file) as f:
                files.update({name: file for name in f.keys()})
        if files:
            return files
    raise ValueError(f"model {str(model_dir)!r}: no *.safetensors or pytorch_model*.bin checkpoint found")


class _PickledCheckpoint:
    """A `pytorch_model*.bin` state dict behind safetensors' reader interface (a slice is the tensor,
    memory-mapped where the file allows, so indexing it reads only that range)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def keys(self):
        return self.tensors.keys()

    def get_tensor(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    get_slice = get_tensor


@contextmanager
def open_checkpoint(file: Path):
    """safe_open for a safetensors file; for a pickle, torch.load(weights_only=True) (a refusal is the
    UnpicklingError the executors turn into one message, see native_overrides/weights.py)."""
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            yield f
        return
    yield _PickledCheckpoint(torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file)))


def model_names(hf_model, checkpoint_names) -> dict[str, str]:
    """model parameter name -> checkpoint name, through Transformers' renaming rules."""
    transformers = sys.modules.get("transformers")  # not imported: cannot be a Transformers model
    if transformers is None or not isinstance(hf_model, transformers.PreTrainedModel):
        return {key: key for key in checkpoint_names}  # a plain module: checkpoint names are its names
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    transforms = get_model_conversion_mapping(hf_model)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = dict(hf_model.state_dict())
    prefix = getattr(hf_model, "base_model_prefix", None) or None
    found: dict[str, str] = {}
    for key in checkpoint_names:
        name, converted = rename_source_key(key, renamings, converters, prefix, meta)
        if converted is not None and name in meta:
            raise ValueError(
                f"checkpoint tensor {key!r} needs Transformers' weight conversion {converted!r}, which sharded "
                "loading does not support yet (use tensor_parallel_size=1 and pipeline_parallel_size=1)"
            )
        found.setdefault(name, key)
    return found


def read_part(f, key: str, spec: ShardSpec | None) -> torch.Tensor:
    if spec is None:
        return f.get_tensor(key)
    piece = f.get_slice(key)
    lead = (slice(None),) * spec.dim
    return torch.cat([piece[lead + (slice(s, e),)] for s, e in spec.ranges], dim=spec.dim)


def _tensors_to_load(model: nn.Module) -> dict[str, tuple[nn.Module, str, bool]]:
    """name -> (owner module, attribute, is parameter), for parameters and persistent buffers."""
    out = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for attr, p in module._parameters.items():
            if p is not None:
                out[prefix + attr] = (module, attr, True)
        for attr, b in module._buffers.items():
            if b is not None and attr not in module._non_persistent_buffers_set:
                out[prefix + attr] = (module, attr, False)
    return out


def load_sharded(model: nn.Module, model_dir, specs: dict[str, ShardSpec], dtype: torch.dtype, tied: dict[str, str]) -> None:
    """Fill every meta parameter of `model` from the checkpoint, sliced by `specs` (qualified names).

    `tied` maps a parameter the checkpoint may omit (lm_head.weight) to the one it shares
    (embed_tokens.weight): it is read from that tensor, cut by its own spec."""
    files = checkpoint_files(model_dir)
    sources = model_names(model, files)
    wanted = {n: v for n, v in _tensors_to_load(model).items() if not is_placeholder(v[0], v[1])}
    plan: dict[Path, list[tuple[str, str]]] = defaultdict(list)
    missing = []
    load_quantized_linears(model, files, sources, specs, missing)  # their stored tensors, cut on their grids
    for name, (module, attr, is_param) in wanted.items():
        key = sources.get(name) or sources.get(tied.get(name, ""))
        if key is not None:
            plan[files[key]].append((name, key))
        elif is_param:
            missing.append(name)
    if missing:
        raise MissingTensorsError(model_dir, missing)
    for file, items in plan.items():
        with open_checkpoint(file) as f:
            for name, key in items:
                module, attr, is_param = wanted[name]
                tensor = read_part(f, key, specs.get(name))
                refuse_as_plain(key, tensor, module._parameters[attr].dtype if is_param else tensor.dtype)
                tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
                _assign(module, attr, tensor, is_param)


def _assign(module: nn.Module, attr: str, tensor: torch.Tensor, is_param: bool) -> None:
    if is_param:
        old = module._parameters[attr]
        if tuple(old.shape) != tuple(tensor.shape):
            raise ValueError(f"{type(module).__name__}.{attr}: checkpoint slice {tuple(tensor.shape)} != {tuple(old.shape)}")
        module._parameters[attr] = nn.Parameter(tensor.contiguous(), requires_grad=False)
    else:
        module._buffers[attr] = tensor
