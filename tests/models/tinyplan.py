"""Build TinyPlan checkpoints (tests/models/custom/*_tinyplan.py): auto_map remote code that declares
its own tensor / pipeline parallel plans, fused QKV with 1 KV head (replicated over 2 ranks), vocab
385 (uneven vocab shards), 4 layers in a `blocks` list, tied embeddings. Built through the zoo:

    path = build_tiny_model(TINYPLAN_ARCH, tmp_path)   # tests/models/zoo.py (cached, copied)
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
from pathlib import Path

import torch

from tests.models.tokenizer import VOCAB_SIZE

CODE_DIR = Path(__file__).parent / "custom"
CONFIG = dict(vocab_size=VOCAB_SIZE + 1, num_key_value_heads=1, num_hidden_layers=4)
AUTO_MAP = {
    "AutoConfig": "configuration_tinyplan.TinyPlanConfig",
    "AutoModelForCausalLM": "modeling_tinyplan.TinyPlanForCausalLM",
}


def tinyplan_model(out: Path) -> torch.nn.Module:
    """The code copied into `out`, imported from there as a package (as auto_map would), and the
    model it builds (random init: the zoo re-initialises and saves it)."""
    for file in CODE_DIR.glob("*_tinyplan.py"):
        shutil.copy(file, out / file.name)
    package = "anymodel_tinyplan_build"
    spec = importlib.util.spec_from_file_location(package, CODE_DIR / "__init__.py", submodule_search_locations=[str(out)])
    sys.modules[package] = importlib.util.module_from_spec(spec)
    try:
        config_mod = importlib.import_module(f"{package}.configuration_tinyplan")
        model_mod = importlib.import_module(f"{package}.modeling_tinyplan")
        config = config_mod.TinyPlanConfig(**CONFIG)
        config.auto_map = dict(AUTO_MAP)
        config.architectures = ["TinyPlanForCausalLM"]
        return model_mod.TinyPlanForCausalLM(config).float()
    finally:
        for name in [n for n in sys.modules if n.startswith(package)]:
            del sys.modules[name]
