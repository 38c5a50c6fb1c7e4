"""Build TinyOld checkpoints (tests/models/legacy: remote code written for Transformers 4.x, in the
old style), and the model as its own code builds it, the reference for its tokens:

    path = build_tinyold(tmp_path)
    argmax_greedy(tinyold_as_built(path), prompt_ids, n)   # tests/reference.py

Variants (`variant=`, a modeling_<variant>.py beside modeling_tinyold.py, same weights): "tinyepoch"
needs a 2-D attention_mask over past + new tokens (StableLM-epoch style); "tinytuple" takes and
returns legacy tuple caches.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from anymodel.adapters.legacy_api import legacy_transformers_api, patch_legacy_classes
from tests.models.tokenizer import save_tokenizer

LEGACY_DIR = Path(__file__).parent / "legacy"
CLASS_NAMES = {"tinyold": "TinyOldForCausalLM", "tinyepoch": "TinyEpochForCausalLM",
               "tinytuple": "TinyTupleForCausalLM"}


def _classes(variant: str = "tinyold"):
    import importlib

    with legacy_transformers_api():
        from tests.models.legacy.configuration_tinyold import TinyOldConfig

        model_cls = getattr(importlib.import_module(f"tests.models.legacy.modeling_{variant}"), CLASS_NAMES[variant])
    patch_legacy_classes(TinyOldConfig, model_cls)
    return TinyOldConfig, model_cls


def _variant(model_dir: Path) -> str:
    arch = json.loads((model_dir / "config.json").read_text())["architectures"][0]
    return next(v for v, name in CLASS_NAMES.items() if name == arch)


def build_tinyold(out: Path, variant: str = "tinyold") -> Path:
    from safetensors.torch import save_file

    config_cls, model_cls = _classes(variant)
    torch.manual_seed(0)
    model = model_cls(config_cls())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    config = model.config.to_dict()
    auto_map = {"AutoConfig": "configuration_tinyold.TinyOldConfig",
                "AutoModelForCausalLM": f"modeling_{variant}.{CLASS_NAMES[variant]}"}
    config.update(auto_map=auto_map, architectures=[CLASS_NAMES[variant]])
    (out / "config.json").write_text(json.dumps(config))
    save_file({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}, out / "model.safetensors")
    for name in {"configuration_tinyold.py", "modeling_tinyold.py", f"modeling_{variant}.py"}:
        shutil.copy(LEGACY_DIR / name, out / name)
    save_tokenizer(out)
    return out


def tinyold_as_built(model_dir: Path):
    """The model's own code, built for real (its buffers computed by __init__), with the checkpoint's weights."""
    from safetensors.torch import load_file

    config_cls, model_cls = _classes(_variant(model_dir))
    config = json.loads((model_dir / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    model = model_cls(config_cls(**{k: v for k, v in config.items() if k in keys}))
    model.load_state_dict(load_file(model_dir / "model.safetensors"), strict=False)
    model.tie_weights()
    return model
