"""The LoRA load-time transform (stage "lora" of model_loader/transforms.py, after quantization and
sharding): every linear layer of the decoder becomes a `LoRALinear` with `max_loras` slots of rank
`max_lora_rank`. Which layers an adapter adapts is known only when it arrives, so every one is
wrapped (an adapter may name any of them); a layer no adapter in the step uses costs one check.

    Transformers backend  each nn.Linear (or whatever linear an earlier transform left, e.g. a quantized
                          one: anything with in_features / out_features) is wrapped where it sits, so any
                          `auto_map` custom model works; a tensor-parallel one is cut as its plan cut it
    native                qkv_proj / gate_up_proj take the checkpoint's q/k/v_proj and gate/up_proj as
                          pieces (weights.STACKED); tensor-parallel layers cut A / B with their own loaders
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from anymodel.lora.layer import LoRALinear, LoRAState, Piece, copy_checked
from anymodel.model_loader.transforms import Transform, TransformContext, register


@dataclass(frozen=True)
class LoRAConfig:
    max_loras: int  # GPU (device) slots: distinct adapters in one step
    max_lora_rank: int
    max_cpu_loras: int  # adapters kept loaded in host memory (LRU)

    @classmethod
    def from_args(cls, args) -> "LoRAConfig | None":
        if not getattr(args, "enable_lora", False):
            return None
        return cls(args.max_loras, args.max_lora_rank, args.max_cpu_loras or args.max_loras)


def wrap_model(model: nn.Module, context: TransformContext) -> nn.Module:
    config: LoRAConfig = context.lora
    if context.impl not in ("native", "transformers"):
        raise ValueError(f"enable_lora=True: LoRA adapters run on the native and Transformers-backend paths, and this "
                         f"model runs on the {context.impl!r} path; pass enable_lora=False")
    state = context.state
    if state.pp_size > 1:
        raise ValueError("enable_lora=True does not run with pipeline parallelism yet; pass pipeline_parallel_size=1 "
                         "or enable_lora=False")
    decoder = getattr(model, "model", None)
    if not isinstance(decoder, nn.Module):
        raise ValueError(f"enable_lora=True: {type(model).__name__} has no decoder (.model) to adapt")
    lora_state = LoRAState(config.max_loras, config.max_lora_rank)
    wrap = _native_layer if context.impl == "native" else _hf_layer
    wrapped = 0
    for name, module in list(decoder.named_modules()):
        layer = wrap(name, module, lora_state)
        if layer is not None:
            parent, _, child = name.rpartition(".")
            setattr(decoder.get_submodule(parent) if parent else decoder, child, layer)
            wrapped += 1
    if not wrapped:
        raise ValueError(f"enable_lora=True: {type(decoder).__name__} has no linear layer to adapt")
    return model


def _hf_layer(name: str, module: nn.Module, state: LoRAState) -> LoRALinear | None:
    """Any leaf linear: nn.Linear or a replacement that keeps its in_features / out_features; under
    tensor parallelism cut like its weight (adapters/tensor_parallel.py records the cut)."""
    n_in, n_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if isinstance(module, LoRALinear) or not (isinstance(n_in, int) and isinstance(n_out, int)):
        return None
    if any(True for _ in module.children()) and not isinstance(module, nn.Linear):
        return None
    full, spec = getattr(module, "anymodel_tp_shard", (None, None))
    if spec is None:
        return LoRALinear(module, [Piece(name, None, n_out)], n_in, n_in, n_out, False, copy_checked, state)
    full_out, full_in = full
    style = getattr(module, "anymodel_tp_style", "")
    if style in ("colwise_gather_output", "rowwise_split_input"):  # whole input and output: A and B whole
        return LoRALinear(module, [Piece(name, None, full_out)], full_in, full_in, full_out, False, copy_checked,
                          state)
    loader = _cutter(spec)
    if spec.dim == 0:  # column-parallel: this rank's output rows; B cut, A whole
        return LoRALinear(module, [Piece(name, None, full_out)], full_in, full_in, spec.size, False, loader, state)
    # row-parallel: this rank's input columns; A cut, the shrink summed over ranks, B whole
    return LoRALinear(module, [Piece(name, None, full_out)], full_in, spec.size, full_out, True, loader, state)


def _cutter(spec):
    """loader(dst, full, shard_id): this rank's ranges of `full` along the weight's sharded dim."""
    import torch

    def load(dst, full, shard_id=None):
        copy_checked(dst, torch.cat([full.narrow(spec.dim, s, e - s) for s, e in spec.ranges], dim=spec.dim))

    return load


def _native_layer(name: str, module: nn.Module, state: LoRAState) -> LoRALinear | None:
    from anymodel.native_overrides import linear as nl
    from anymodel.native_overrides.weights import STACKED

    if not isinstance(module, nl.LinearBase):
        return None
    tp = module.tp_size
    local_out, local_in = module.logical_shape  # a quantized layer has no float `weight`
    prefix, _, last = name.rpartition(".")
    parts = [(part, shard) for fused, part, shard in STACKED if fused == last]
    if isinstance(module, nl.QKVParallelLinear):
        q, kv = module.num_heads * tp * module.head_dim, module.total_num_kv_heads * module.head_dim
        outs = {"q": q, "k": kv, "v": kv}
        pieces = [Piece(_join(prefix, part), shard, outs[shard]) for part, shard in parts]
    elif isinstance(module, nl.MergedColumnParallelLinear):
        pieces = [Piece(_join(prefix, part), shard, module.local_sizes[shard] * tp) for part, shard in parts]
    else:
        column = isinstance(module, nl.ColumnParallelLinear)
        pieces = [Piece(name, None, local_out * tp if column else local_out)]
    row = isinstance(module, nl.RowParallelLinear)
    return LoRALinear(module, pieces, local_in * tp if row else local_in, local_in, local_out, row and tp > 1,
                      module.weight_loader, state)


def _join(prefix: str, part: str) -> str:
    return f"{prefix}.{part}" if prefix else part


register(Transform("lora", "lora", applies=lambda c: getattr(c, "lora", None) is not None, apply=wrap_model))
