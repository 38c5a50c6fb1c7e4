"""Build TinyOld checkpoints (tests/models/legacy: remote code written for Transformers 4.x, in the
old style), and the model as its own code builds it, the reference for its tokens:

    path = build_tinyold(tmp_path)
    argmax_greedy(tinyold_as_built(path), prompt_ids, n)   # tests/reference.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from anymodel.adapters.legacy_api import legacy_transformers_api, patch_legacy_classes
from tests.models.tokenizer import save_tokenizer

LEGACY_DIR = Path(__file__).parent / "legacy"
AUTO_MAP = {"AutoConfig": "configuration_tinyold.TinyOldConfig",
            "AutoModelForCausalLM": "modeling_tinyold.TinyOldForCausalLM"}


def _classes():
    with legacy_transformers_api():
        from tests.models.legacy.configuration_tinyold import TinyOldConfig
        from tests.models.legacy.modeling_tinyold import TinyOldForCausalLM
    patch_legacy_classes(TinyOldConfig, TinyOldForCausalLM)
    return TinyOldConfig, TinyOldForCausalLM


def build_tinyold(out: Path) -> Path:
    from safetensors.torch import save_file

    config_cls, model_cls = _classes()
    torch.manual_seed(0)
    model = model_cls(config_cls())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    config = model.config.to_dict()
    config.update(auto_map=AUTO_MAP, architectures=["TinyOldForCausalLM"])
    (out / "config.json").write_text(json.dumps(config))
    save_file({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}, out / "model.safetensors")
    for source in LEGACY_DIR.glob("*_tinyold.py"):
        shutil.copy(source, out / source.name)
    save_tokenizer(out)
    return out


def tinyold_as_built(model_dir: Path):
    """The model's own code, built for real (its buffers computed by __init__), with the checkpoint's weights."""
    from safetensors.torch import load_file

    config_cls, model_cls = _classes()
    config = json.loads((model_dir / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    model = model_cls(config_cls(**{k: v for k, v in config.items() if k in keys}))
    model.load_state_dict(load_file(model_dir / "model.safetensors"), strict=False)
    model.tie_weights()
    return model
