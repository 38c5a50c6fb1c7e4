"""Tiny checkpoints for the parallel tests (offline, float32, peaky logits from the zoo's re-init).

    llama, qwen2, gpt2   tests/models/zoo.py (2 layers, 4 heads / 2 KV heads: KV split over 2 ranks)
    tinycustom           tests/models/custom via the zoo: auto_map code with its own plans, attribute_map names
    custom               auto_map remote code declaring its own plans (tests/parallel/custom_model):
                         fused QKV with 1 KV head (replicated over 2 ranks), vocab 385 (uneven
                         vocab shards), 4 layers in a `blocks` list, tied embeddings
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
from pathlib import Path

import torch

from tests.models.tokenizer import VOCAB_SIZE, save_tokenizer
from tests.models.zoo import _rescale_, build_tiny_model, mixed_prompts

CUSTOM_CODE = Path(__file__).parent / "custom_model"
CUSTOM_CONFIG = dict(vocab_size=VOCAB_SIZE + 1, num_key_value_heads=1, num_hidden_layers=4)


def build(arch: str, out_dir) -> Path:
    out = Path(out_dir)
    if arch != "custom":
        return build_tiny_model(arch, out)
    out.mkdir(parents=True, exist_ok=True)
    _build_custom(out)
    save_tokenizer(out)
    return out


def _build_custom(out: Path) -> None:
    for file in CUSTOM_CODE.glob("*.py"):
        shutil.copy(file, out / file.name)
    package = "anymodel_tinyplan_build"  # import the copy as a package, as auto_map would
    spec = importlib.util.spec_from_file_location(package, CUSTOM_CODE / "__init__.py", submodule_search_locations=[str(out)])
    sys.modules[package] = importlib.util.module_from_spec(spec)
    try:
        config_mod = importlib.import_module(f"{package}.configuration_tinyplan")
        model_mod = importlib.import_module(f"{package}.modeling_tinyplan")
        config = config_mod.TinyPlanConfig(**CUSTOM_CONFIG)
        config.auto_map = {
            "AutoConfig": "configuration_tinyplan.TinyPlanConfig",
            "AutoModelForCausalLM": "modeling_tinyplan.TinyPlanForCausalLM",
        }
        config.architectures = ["TinyPlanForCausalLM"]
        torch.manual_seed(0)
        model = model_mod.TinyPlanForCausalLM(config).float()
        _rescale_(model, seed=0)
        model.eval().save_pretrained(out, safe_serialization=True)
    finally:
        for name in [n for n in sys.modules if n.startswith(package)]:
            del sys.modules[name]


def prompts(n: int = 6) -> list[list[int]]:
    return mixed_prompts(VOCAB_SIZE, n=n, seed=1)
