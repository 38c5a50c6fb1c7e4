"""Load-time transforms: what happens to a built model before it serves, in one fixed order.

    built model -> quantization -> sharding -> lora -> self-check -> serve

    quantization  linear modules become quantized linears (a QuantMethod per checkpoint format)
    sharding      tensor / pipeline sharding of a built model (scales shard with their weights)
    lora          target linears gain per-slot A/B buffers

Each is a registration (`register(Transform(...))`), not a branch in the loader: a feature adds
its transform under its stage, and `apply_transforms` runs those that apply, stage by stage, in
registration order within a stage. Tensor/pipeline sharding happens while loading
(adapters/parallel.py, native linears); so does the replacement of a quantized checkpoint's
linears (on the meta device, before sharding cuts them: no weight is ever held unquantized), whose
registered transform (model_loader/quantization.py) checks the result and logs the weight bytes;
LoRA registers itself from anymodel/lora/transform.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

STAGES = ("quantization", "sharding", "lora")


@dataclass(frozen=True)
class TransformContext:
    """What a transform may read: the implementation chosen, the HF config, dtype and ranks."""

    impl: str
    config: object
    dtype: torch.dtype
    state: object  # anymodel.distributed.ParallelState
    lora: object = None  # anymodel.lora.transform.LoRAConfig when enable_lora, else None


@dataclass(frozen=True)
class Transform:
    name: str
    stage: str  # one of STAGES
    applies: Callable[[TransformContext], bool]
    apply: Callable[[torch.nn.Module, TransformContext], torch.nn.Module]


TRANSFORMS: list[Transform] = []


def register(transform: Transform) -> Transform:
    if transform.stage not in STAGES:
        raise ValueError(f"unsupported transform stage {transform.stage!r}; supported: {list(STAGES)}")
    if any(t.name == transform.name for t in TRANSFORMS):
        raise ValueError(f"transform {transform.name!r} is already registered")
    TRANSFORMS.append(transform)
    return transform


def ordered(context: TransformContext) -> list[Transform]:
    """The transforms that apply to this model, in stage order (stable within a stage)."""
    chosen = [t for t in TRANSFORMS if t.applies(context)]
    return sorted(chosen, key=lambda t: STAGES.index(t.stage))


def apply_transforms(model: torch.nn.Module, context: TransformContext) -> torch.nn.Module:
    for transform in ordered(context):
        model = transform.apply(model, context)
    return model
