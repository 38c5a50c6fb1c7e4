"""Read one PEFT LoRA adapter: adapter_config.json + adapter_model.safetensors (or .bin, weights
only), from a local directory or the Hugging Face Hub.

    base_model.model.<module>.lora_A.weight  A [r, in]
    base_model.model.<module>.lora_B.weight  B [out, r]      delta(x) = scale * B (A x)

`scale` is lora_alpha / r (lora_alpha / sqrt(r) with use_rslora; rank_pattern / alpha_pattern
override both per module, as PEFT matches them) and is folded into B here, once.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from anymodel.lora.request import LoRARequest

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class LoRAAdapter:
    request: LoRARequest
    rank: int  # the largest rank of any module
    # module name as PEFT saved it (without "base_model.model.") -> (A [r, in], scale * B [out, r]), float32
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]


def adapter_error(request: LoRARequest, problem: str) -> ValueError:
    return ValueError(f"LoRA adapter {request.lora_name!r} ({request.lora_path}): {problem}")


def resolve_path(request: LoRARequest) -> Path:
    """The adapter's local directory: `lora_path` itself, or a Hub snapshot when it names a Hub repo."""
    path = Path(request.lora_path).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or request.lora_path.startswith(".") or request.lora_path.count("/") != 1:
        raise adapter_error(request, "the path does not exist (a local directory with adapter_config.json or a "
                                     "Hub id 'org/name' is expected)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(request.lora_path, allow_patterns=[CONFIG_FILE, *WEIGHT_FILES]))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, ...: one clear error
        raise adapter_error(request, f"the path does not exist locally and the Hub download failed "
                                     f"({type(e).__name__}: {e})") from e


def read_config(request: LoRARequest, path: Path) -> dict:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise adapter_error(request, f"no {CONFIG_FILE} in {path} (a PEFT LoRA adapter is expected)")
    config = json.loads(file.read_text())
    problems = {
        "peft_type": config.get("peft_type", "LORA") != "LORA",
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias", "none") != "none",
        "modules_to_save": bool(config.get("modules_to_save")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
    }
    bad = [f"{k}={config.get(k)!r}" for k, v in problems.items() if v]
    if bad:
        raise adapter_error(request, f"unsupported adapter_config.json setting(s) {bad}; supported: peft_type='LORA', "
                                     "use_dora=false, bias='none', no modules_to_save, fan_in_fan_out=false")
    return config


def read_tensors(request: LoRARequest, path: Path) -> dict[str, torch.Tensor]:
    from anymodel.native_overrides.weights import read_first_weights

    tensors = read_first_weights(path, WEIGHT_FILES)  # a pickle is read weights-only: never unpickles code
    if tensors is None:
        raise adapter_error(request, f"no adapter weights in {path}; expected one of {list(WEIGHT_FILES)}")
    return tensors


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key matching the module name's end."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_adapter(request: LoRARequest, max_rank: int) -> LoRAAdapter:
    """The adapter's weights, checked on their own (ranks, keys); the model checks the shapes."""
    path = resolve_path(request)
    config = read_config(request, path)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in read_tensors(request, path).items():
        m = _KEY.match(key)
        if m is None:
            raise adapter_error(request, f"unsupported tensor {key!r}: only lora_A / lora_B weights of linear layers "
                                         "are supported (no embeddings, biases or DoRA magnitudes)")
        pairs.setdefault(m["module"], {})[m["ab"]] = tensor
    if not pairs:
        raise adapter_error(request, "the adapter holds no lora_A / lora_B weights")
    weights, top = {}, 0
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"} or ab["A"].dim() != 2 or ab["B"].dim() != 2 or ab["A"].shape[0] != ab["B"].shape[1]:
            raise adapter_error(request, f"module {module!r} needs a lora_A [r, in] and a lora_B [out, r] weight")
        r = ab["A"].shape[0]
        if r > max_rank:
            raise adapter_error(request, f"module {module!r} has rank {r} > max_lora_rank={max_rank}; "
                                         f"raise max_lora_rank (--max-lora-rank) to at least {r}")
        alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
        rank = _pattern_value(config.get("rank_pattern"), module, config.get("r", r))
        scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        weights[module] = (ab["A"].float(), ab["B"].float() * scale)
        top = max(top, r)
    return LoRAAdapter(request, top, weights)
