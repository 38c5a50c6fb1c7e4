"""Pipeline stages from `base_model_pp_plan`: one nn.ModuleList split evenly across ranks.

    plan: embed_tokens -> layers[0..L) -> norm               (the base model's own forward runs on
    stage 0:  embed_tokens, layers[0, L/2), placeholders      every stage; placeholders stand in for
    stage 1:  placeholders, layers[L/2, L), norm              the modules another stage owns)

Only the list's declared outputs (e.g. ["hidden_states"]) cross stages: the last owned layer of a
stage sends them, a pre-hook on the first owned layer of the next stage swaps them into its call.
Everything else a layer takes (rotary cos/sin, masks, our attention metadata) each stage rebuilds
from the same inputs. Attention calls are counted per stage, so each stage's KV cache holds only
its own layers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from anymodel import distributed as dist

logger = logging.getLogger("anymodel")

_PLAIN = (int, float, str, bool, type(None))


@dataclass(frozen=True)
class StagePlan:
    layers: str  # dotted name of the one ModuleList, relative to the base model
    inputs: tuple[str, ...]  # what a layer takes, in call order: ("hidden_states", "attention_mask")
    outputs: tuple[str, ...]  # what crosses stages: ("hidden_states",)
    before: tuple[str, ...]  # plan modules ahead of the list: first stage only
    after: tuple[str, ...]  # plan modules behind it: last stage only
    io: dict  # every plan entry: name -> (inputs, outputs)


def resolve_stage_plan(base: nn.Module) -> StagePlan:
    plan = dict(getattr(base, "pp_plan", None) or getattr(base.config, "base_model_pp_plan", None) or {})
    if not plan:
        plan = infer_pp_plan(base)
        logger.warning("anymodel: %s declares no base_model_pp_plan; inferred %s", type(base).__name__, plan)
    lists = [name for name in plan if isinstance(base.get_submodule(name), nn.ModuleList)]
    if len(lists) != 1:
        raise ValueError(
            f"pipeline parallelism splits exactly one nn.ModuleList; {type(base).__name__}'s base_model_pp_plan "
            f"names {len(lists)}: {lists}"
        )
    names = list(plan)
    at = names.index(lists[0])
    inputs, outputs = plan[lists[0]]
    return StagePlan(lists[0], tuple(inputs), tuple(outputs), tuple(names[:at]), tuple(names[at + 1 :]), plan)


def infer_pp_plan(base: nn.Module) -> dict[str, tuple[list[str], list[str]]]:
    """Direct children in registration order: the one ModuleList, with weighted modules around it."""
    children = list(base.named_children())
    lists = [name for name, m in children if isinstance(m, nn.ModuleList)]
    if len(lists) != 1:
        raise ValueError(
            f"pipeline parallelism splits exactly one nn.ModuleList; {type(base).__name__} has no "
            f"base_model_pp_plan and {len(lists)} ModuleLists among its children: {lists}; add a "
            "base_model_pp_plan to its config (hf_overrides={'base_model_pp_plan': {...}}) or use pipeline_parallel_size=1"
        )
    plan: dict[str, tuple[list[str], list[str]]] = {}
    for name, module in children:
        if name == lists[0]:
            plan[name] = (["hidden_states", "attention_mask"], ["hidden_states"])
        elif any(True for _ in module.parameters()):
            embeds = isinstance(module, nn.Embedding)
            plan[name] = (["input_ids"], ["inputs_embeds"]) if embeds else (["hidden_states"], ["hidden_states"])
    return plan


def layer_range(num_layers: int, pp_size: int, pp_rank: int) -> tuple[int, int]:
    """[start, end) of the layers a stage owns; the first stages take one extra when uneven."""
    if pp_size > num_layers:
        raise ValueError(f"pipeline_parallel_size ({pp_size}) exceeds the model's {num_layers} layers")
    per, extra = divmod(num_layers, pp_size)
    start = pp_rank * per + min(pp_rank, extra)
    return start, start + per + (pp_rank < extra)


class StagePlaceholder(nn.Module):
    """Stands in for a module another stage owns: returns the plan's declared outputs, uncomputed.

    An embedding's stand-in returns zeros [*ids.shape, width] (the next layer's pre-hook replaces
    them); any other returns its inputs. Plain attributes (e.g. `attention_type`) are kept, since
    the base model's loop may read them."""

    def __init__(self, replaced: nn.Module, inputs, outputs, dtype: torch.dtype) -> None:
        super().__init__()
        for key, value in vars(replaced).items():
            if not key.startswith("_") and key != "training" and isinstance(value, _PLAIN):
                setattr(self, key, value)
        self.replaced = type(replaced).__name__
        self.inputs, self.outputs, self.dtype = tuple(inputs), tuple(outputs), dtype
        weight = getattr(replaced, "weight", None)
        self.width = weight.shape[1] if isinstance(replaced, nn.Embedding) and weight is not None else None

    def forward(self, *args, **kwargs):
        values = dict(zip(self.inputs, args)) | kwargs
        first = args[0] if args else next(iter(kwargs.values()))
        picked = [values.get(name, first) for name in self.outputs]
        if self.width is not None:
            picked = [torch.zeros(*first.shape, self.width, dtype=self.dtype, device=first.device)]
        return picked[0] if len(picked) == 1 else tuple(picked)

    def extra_repr(self) -> str:
        return f"replaces {self.replaced} (owned by another pipeline stage)"


def apply_stage_plan(base: nn.Module, plan: StagePlan, pp_rank: int, pp_size: int, dtype: torch.dtype) -> tuple[int, int]:
    """Swap the modules this stage does not own for placeholders; wire the stage boundaries."""
    layers = base.get_submodule(plan.layers)
    start, end = layer_range(len(layers), pp_size, pp_rank)
    for i in [*range(start), *range(end, len(layers))]:
        layers[i] = StagePlaceholder(layers[i], plan.inputs, plan.outputs, dtype)
    for name in plan.before if pp_rank > 0 else ():
        _replace(base, name, plan.io[name], dtype)
    for name in plan.after if pp_rank < pp_size - 1 else ():
        _replace(base, name, plan.io[name], dtype)
    if pp_rank > 0:
        layers[start].register_forward_pre_hook(_receive_hook(plan), with_kwargs=True)
    if pp_rank < pp_size - 1:
        layers[end - 1].register_forward_hook(_send_hook(plan))
    return start, end


def _replace(base: nn.Module, name: str, io, dtype: torch.dtype) -> None:
    parent, _, child = name.rpartition(".")
    owner = base.get_submodule(parent) if parent else base
    inputs, outputs = io
    setattr(owner, child, StagePlaceholder(getattr(owner, child), inputs, outputs, dtype))


def _receive_hook(plan: StagePlan):
    """Pre-hook of a stage's first layer: the previous stage's outputs replace the call's inputs."""

    def hook(module, args, kwargs):
        args = list(args)
        for name in plan.outputs:  # same order as the sender
            if name in kwargs:
                kwargs[name] = dist.recv_from_prev_stage(kwargs[name])
            elif name in plan.inputs and plan.inputs.index(name) < len(args):
                i = plan.inputs.index(name)
                args[i] = dist.recv_from_prev_stage(args[i])
            else:
                raise RuntimeError(f"pipeline stage: the first layer's call has no {name!r} to receive into")
        return tuple(args), kwargs

    return hook


def _send_hook(plan: StagePlan):
    """Hook on a stage's last layer: send its declared outputs ([1, T, H] each) to the next stage."""

    def hook(module, args, output):
        if isinstance(output, torch.Tensor):
            tensors = [output]
        elif isinstance(output, dict):
            tensors = [output[name] for name in plan.outputs]
        else:
            tensors = list(output)[: len(plan.outputs)]
        if len(tensors) != len(plan.outputs):
            raise RuntimeError(f"pipeline stage: the layer returned {len(tensors)} tensors, plan declares {plan.outputs}")
        for tensor in tensors:
            dist.send_to_next_stage(tensor)

    return hook
