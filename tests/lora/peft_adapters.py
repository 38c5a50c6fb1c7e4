"""LoRA adapters made by peft for the tests, and their reference: the adapter merged into the base
(`PeftModel.from_pretrained(base, path).merge_and_unload()`, float32), generating greedily as
tests/reference.py's `hf_greedy` does."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.reference import _load_reference, argmax_greedy
from tests.models.zoo import _one_thread


def make_adapter(base_dir: str | Path, out_dir: str | Path, target_modules: list[str], *, r: int = 4,
                 alpha: int = 8, seed: int = 0, rank_pattern: dict | None = None) -> Path:
    """A PEFT LoRA adapter of the checkpoint in `base_dir` with random non-zero A and B
    (init_lora_weights=False), saved to `out_dir` (adapter_config.json + adapter_model.safetensors)."""
    from peft import LoraConfig, get_peft_model

    base = _load_reference(base_dir)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=target_modules, init_lora_weights=False,
                        rank_pattern=rank_pattern or {})
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    with torch.no_grad():  # B ~ N(0, 0.3): enough to change greedy tokens of the tiny models
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


def merged_greedy(base_dir: str | Path, adapter_dir: str | Path | None, prompts: list[list[int]],
                  max_new_tokens: int) -> list[list[int]]:
    """Greedy tokens of the base with the adapter merged in (None: the base alone)."""
    model = _load_reference(base_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    with _one_thread():  # full recompute per token: greedy, as generate() without its config checks
        return [argmax_greedy(model, ids, max_new_tokens) for ids in prompts]
