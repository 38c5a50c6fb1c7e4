"""sentence-transformers Dense modules: the projections some embedding models apply after pooling.

    modules.json:  Transformer -> Pooling -> Dense (2_Dense) [-> Dense ...] -> Normalize
    2_Dense/config.json:  {"in_features": 768, "out_features": 512, "bias": true,
                           "activation_function": "torch.nn.modules.activation.Tanh"}
    2_Dense/model.safetensors (or pytorch_model.bin):  linear.weight [out, in], linear.bias [out]

Each Dense is `activation(linear(x))` on the pooled embedding [H] -> [out]; the stack becomes the
embedding pooler's head (see pooler.py), so it runs before truncation to `dimensions` and before
normalisation, in sentence-transformers' order (LaBSE, distiluse, stella use them).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from torch import nn

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class STDense(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, activation: nn.Module,
                 residual: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
        self.activation = activation
        self.residual = residual  # sentence-transformers' use_residual (equal widths): x + act(linear(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(x))
        return out + x if self.residual else out


def sentence_transformers_modules(model_dir: Path) -> list[dict] | None:
    """modules.json's entries ({"type", "path", ...}) in order; None when the directory has none."""
    modules_file = Path(model_dir) / "modules.json"
    return json.loads(modules_file.read_text()) if modules_file.exists() else None


def modules_of_kind(modules: list[dict] | None, kind: str) -> list[dict]:
    """The entries of one sentence-transformers module class ("Pooling", "Dense", "Normalize")."""
    return [m for m in modules or [] if m.get("type", "").endswith(f"models.{kind}")]


def load_dense_stack(model_dir: Path, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Sequential | None:
    """The model's Dense modules in order, or None when modules.json lists none."""
    entries = modules_of_kind(sentence_transformers_modules(model_dir), "Dense")
    if not entries:
        return None
    return nn.Sequential(*(_load_dense(Path(model_dir) / m.get("path", ""), dtype, trust_remote_code) for m in entries))


def _load_dense(folder: Path, dtype: torch.dtype, trust_remote_code: bool) -> STDense:
    config = json.loads((folder / "config.json").read_text())
    where = f"sentence-transformers Dense module in {folder}"
    source = config.get("module_input_name", "sentence_embedding")
    if source != "sentence_embedding":
        raise ValueError(f"{where}: module_input_name {source!r} is not supported; supported: ['sentence_embedding']")
    n_in, n_out = config["in_features"], config["out_features"]
    residual = bool(config.get("use_residual", False))
    if residual and n_in != n_out:
        raise ValueError(f"{where}: use_residual with a residual projection ({n_in} -> {n_out}) is not supported")
    activation = _activation(config.get("activation_function", "torch.nn.modules.activation.Tanh"), where,
                             trust_remote_code)
    dense = STDense(n_in, n_out, config.get("bias", True), activation, residual, dtype)
    state = _read_weights(folder, where)
    missing, unexpected = dense.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match its config (missing {missing}, unexpected {unexpected})")
    return dense.eval()


def _activation(path: str, where: str, trust_remote_code: bool) -> nn.Module:
    """A torch.nn module class by its dotted path; other code only with trust_remote_code."""
    if not (path.startswith("torch.") or trust_remote_code):
        raise ValueError(f"{where}: activation_function {path!r} is not a torch class; loading it runs code from "
                         "the checkpoint, which needs trust_remote_code=True")
    module_name, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{where}: activation_function {path!r} is not a torch.nn.Module class")
    return cls()


def _read_weights(folder: Path, where: str) -> dict[str, torch.Tensor]:
    from anymodel.native_overrides.weights import read_first_weights

    state = read_first_weights(folder, _WEIGHT_FILES)
    if state is None:
        raise ValueError(f"{where}: no weights ({' or '.join(_WEIGHT_FILES)})")
    return state
