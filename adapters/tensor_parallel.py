"""Tensor-parallel styles of `base_model_tp_plan`, applied to a model built on the meta device.

A style shrinks a module's parameters to this rank's shard (still on meta), says how to cut each
one out of the checkpoint (a ShardSpec, read later with safetensors `get_slice`), and wraps the
module's forward so that the shards add up to the unsharded result. r = this rank, tp = ranks:

    colwise                W[out/tp, in]  y_r = x W_r^T + b_r                 output stays sharded
    colwise_gather_output  W[out/tp, in]  y = all_gather(x W_r^T + b_r)       (alias colwise_rep)
    rowwise                W[out, in/tp]  y = all_reduce(x_r W_r^T) + b       input already sharded
    rowwise_split_input    W[out, in/tp]  y = all_reduce(x[.., r] W_r^T) + b  (alias rowwise_rep)
    packed_colwise         fused [A; B; ..] output blocks, each cut like colwise: [A_r; B_r; ..]
    packed_rowwise         fused input blocks, each cut like rowwise
    embedding_rowwise      E[V/tp, H]     vocab-parallel: local lookup, zero outside, all_reduce
    embedding_colwise      E[V, H/tp]     all_gather on the hidden dim
    all_reduce             sum the module's (partial) output over ranks
    replicate, replicated_with_grad_allreduce, local_params, mla_kv_a_proj: full copy (these only
    differ from a replica in training: gradient reductions)

Attention projections are cut on head boundaries; when a model has fewer KV heads than ranks,
each rank keeps the one KV head its query heads read (KV heads replicated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anymodel import distributed as dist
from anymodel.adapters.attention_heads import Heads

_REPLICA_STYLES = ("replicate", "replicated_with_grad_allreduce", "local_params", "mla_kv_a_proj")
_ALIASES = {"colwise_rep": "colwise_gather_output", "rowwise_rep": "rowwise_split_input"}
_MOE_STYLES = ("moe_tp_experts", "moe_identity_expert", "ep_dispatch_experts", "grouped_gemm", "ep_router")
_TRAINING_STYLES = ("sequence_parallel",)


@dataclass(frozen=True)
class ShardSpec:
    """Which part of a checkpoint tensor this rank holds: `ranges` along `dim`, concatenated."""

    dim: int
    ranges: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return sum(e - s for s, e in self.ranges)


def chunk(n: int, tp: int, rank: int) -> tuple[int, int]:
    """Rank's slice of n items: equal ceil(n / tp) pieces, the last ones shorter (maybe empty)."""
    size = -(-n // tp)
    start = min(rank * size, n)
    return start, min(start + size, n)


def supported_styles() -> list[str]:
    return sorted(set(STYLES) | set(_ALIASES) | set(_REPLICA_STYLES))


def check_style(style: str, pattern: str) -> str:
    """The canonical style name, or a ValueError that names the style and the plan entry."""
    style = _ALIASES.get(style, style)
    if style in STYLES or style in _REPLICA_STYLES:
        return style
    if style in _MOE_STYLES:
        raise ValueError(f"tensor-parallel style {style!r} (plan entry {pattern!r}) is an MoE expert style: not supported yet")
    if style in _TRAINING_STYLES:
        raise ValueError(f"tensor-parallel style {style!r} (plan entry {pattern!r}) is a training style: not supported for inference")
    raise ValueError(f"unknown tensor-parallel style {style!r} (plan entry {pattern!r}); supported: {supported_styles()}")


# ---- ranges ------------------------------------------------------------------------------------
def _head_range(heads: int, head_dim: int, tp: int, rank: int, what: str) -> tuple[int, int]:
    if heads % tp:
        raise ValueError(f"{what} ({heads}) must be divisible by tensor_parallel_size ({tp})")
    s, e = chunk(heads, tp, rank)
    return s * head_dim, e * head_dim


def _kv_range(h: Heads, tp: int, rank: int) -> tuple[int, int]:
    if h.num_kv_heads % tp == 0:
        return _head_range(h.num_kv_heads, h.head_dim, tp, rank, "num_key_value_heads")
    if tp % h.num_kv_heads:
        raise ValueError(
            f"num_key_value_heads ({h.num_kv_heads}) must divide or be divisible by tensor_parallel_size ({tp})"
        )
    head = rank * h.num_kv_heads // tp  # the KV head this rank's query heads read
    return head * h.head_dim, (head + 1) * h.head_dim


def _column_ranges(n: int, heads: Heads | None, tp: int, rank: int) -> list[tuple[int, int]]:
    """Output features of one projection: head-aligned for q / k / v, plain chunks otherwise."""
    if heads is not None and n == heads.num_heads * heads.head_dim:
        return [_head_range(heads.num_heads, heads.head_dim, tp, rank, "num_attention_heads")]
    if heads is not None and n == heads.num_kv_heads * heads.head_dim:
        return [_kv_range(heads, tp, rank)]
    return [chunk(n, tp, rank)]


def _packed_blocks(n: int, heads: Heads | None) -> list[int]:
    """Sizes of the fused blocks: [q, k, v] for a fused QKV projection, else two halves (gate_up)."""
    if heads is not None and n == (heads.num_heads + 2 * heads.num_kv_heads) * heads.head_dim:
        return [heads.num_heads * heads.head_dim] + [heads.num_kv_heads * heads.head_dim] * 2
    if n % 2:
        raise ValueError(f"packed style: fused width {n} is neither a QKV projection nor two equal halves")
    return [n // 2, n // 2]


def _packed_ranges(n: int, heads: Heads | None, tp: int, rank: int) -> list[tuple[int, int]]:
    ranges, offset = [], 0
    for size in _packed_blocks(n, heads):
        ranges += [(offset + s, offset + e) for s, e in _column_ranges(size, heads, tp, rank)]
        offset += size
    return ranges


# ---- module surgery --------------------------------------------------------------------------------
def _linear_dims(module: nn.Module, name: str, style: str) -> tuple[int, int]:
    """(output dim, input dim) of the weight: nn.Linear is [out, in], HF Conv1D is [in, out]."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"tensor-parallel style {style!r} shards linear layers; {name!r} is {type(module).__name__}")
    return (1, 0) if type(module).__name__ == "Conv1D" else (0, 1)


def _shrink(module: nn.Module, param: str, spec: ShardSpec) -> None:
    """Replace a (meta) parameter by a meta parameter of the shard's shape."""
    p = module._parameters[param]
    shape = list(p.shape)
    shape[spec.dim] = spec.size
    module._parameters[param] = nn.Parameter(torch.empty(shape, dtype=p.dtype, device="meta"), requires_grad=False)


def _shard(module: nn.Module, param: str, spec: ShardSpec, specs: dict) -> None:
    if module._parameters.get(param) is None:
        return
    _shrink(module, param, spec)
    specs[param] = spec


def _set_features(module: nn.Module, **sizes: int) -> None:
    for attr, size in sizes.items():
        if hasattr(module, attr):
            setattr(module, attr, size)


def _pad_gather(y: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """all_gather of last-dim shards of unequal `sizes` (rank order): pad to the largest, gather, drop pads."""
    width = max(sizes)
    if y.shape[-1] < width:
        y = F.pad(y, (0, width - y.shape[-1]))
    full = dist.all_gather(y, dim=-1)  # [..., tp * width]
    if all(s == width for s in sizes):
        return full
    keep = torch.cat([torch.arange(r * width, r * width + s) for r, s in enumerate(sizes)]).to(full.device)
    return full.index_select(-1, keep)


def _first(output):
    """A module may return a tensor or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_first(output, value):
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    return value


def _wrap_forward(module: nn.Module, before=None, after=None, bias_after_reduce: bool = False) -> None:
    """module.forward = after(original(before(x))). With `bias_after_reduce`, the original runs with a
    zero bias and the real one is added once after `after` (the all-reduce), not once per rank."""
    original = module.forward
    bias = module._parameters.get("bias") if bias_after_reduce else None

    def forward(x, *args, **kwargs):
        if before is not None:
            x = before(x)
        if bias is None:
            out = original(x, *args, **kwargs)
            return out if after is None else after(out)
        real = module._parameters["bias"]
        module._parameters["bias"] = torch.zeros_like(real)
        try:
            out = original(x, *args, **kwargs)
        finally:
            module._parameters["bias"] = real
        return after(out) + real

    module.forward = forward


# ---- styles: each shards a module's parameters, wraps its forward, returns {param: ShardSpec} ----------
@dataclass
class Target:
    module: nn.Module
    name: str  # qualified name, for messages
    style: str
    heads: Heads | None  # set when the module projects attention heads
    tp: int
    rank: int

    def all_sizes(self, ranges_of) -> list[int]:
        return [sum(e - s for s, e in ranges_of(r)) for r in range(self.tp)]


def _colwise(t: Target, *, packed: bool = False, gather: bool = False) -> dict[str, ShardSpec]:
    out_dim, _ = _linear_dims(t.module, t.name, t.style)
    n = t.module.weight.shape[out_dim]
    heads = None if gather else t.heads  # a gathered output is whole again: plain chunks suffice

    def ranges_of(rank: int):
        return _packed_ranges(n, heads, t.tp, rank) if packed else _column_ranges(n, heads, t.tp, rank)

    spec = ShardSpec(out_dim, tuple(ranges_of(t.rank)))
    specs: dict[str, ShardSpec] = {}
    _shard(t.module, "weight", spec, specs)
    _shard(t.module, "bias", ShardSpec(0, spec.ranges), specs)
    _set_features(t.module, out_features=spec.size, nf=spec.size)
    if gather:
        sizes = t.all_sizes(ranges_of)
        _wrap_forward(t.module, after=lambda y: _pad_gather(y, sizes))
    return specs


def _rowwise(t: Target, *, packed: bool = False, split_input: bool = False) -> dict[str, ShardSpec]:
    _, in_dim = _linear_dims(t.module, t.name, t.style)
    n = t.module.weight.shape[in_dim]
    heads = None if split_input else t.heads  # a replicated input can be cut anywhere
    ranges = _packed_ranges(n, heads, t.tp, t.rank) if packed else _column_ranges(n, heads, t.tp, t.rank)
    specs: dict[str, ShardSpec] = {}
    _shard(t.module, "weight", ShardSpec(in_dim, tuple(ranges)), specs)  # bias stays whole: added once
    _set_features(t.module, in_features=specs["weight"].size, nx=specs["weight"].size)
    before = None
    if split_input:  # x [..., in] replicated -> this rank's columns [..., in_r]
        index = torch.cat([torch.arange(s, e) for s, e in ranges])
        before = lambda x: x.index_select(-1, index.to(x.device))  # noqa: E731
    _wrap_forward(t.module, before=before, after=dist.all_reduce, bias_after_reduce=True)
    return specs


def _embedding_rowwise(t: Target) -> dict[str, ShardSpec]:
    """Vocab-parallel embedding: ids outside this rank's rows look up row 0, then are zeroed."""
    vocab = t.module.weight.shape[0]
    start, end = chunk(vocab, t.tp, t.rank)
    if end <= start:
        raise ValueError(f"{t.name!r}: vocabulary ({vocab}) is smaller than tensor_parallel_size ({t.tp})")
    specs: dict[str, ShardSpec] = {}
    _shard(t.module, "weight", ShardSpec(0, ((start, end),)), specs)
    _set_features(t.module, num_embeddings=end - start)
    if getattr(t.module, "padding_idx", None) is not None:
        t.module.padding_idx = None  # only shapes gradients; may fall outside the local rows
    original = t.module.forward

    def forward(ids, *args, **kwargs):
        inside = (ids >= start) & (ids < end)  # [..., T] bool
        out = original(torch.where(inside, ids - start, torch.zeros_like(ids)), *args, **kwargs)  # [..., T, H]
        return dist.all_reduce(out * inside.unsqueeze(-1).to(out.dtype))

    t.module.forward = forward
    return specs


def _embedding_colwise(t: Target) -> dict[str, ShardSpec]:
    dim = t.module.weight.shape[1]
    specs: dict[str, ShardSpec] = {}
    _shard(t.module, "weight", ShardSpec(1, (chunk(dim, t.tp, t.rank),)), specs)
    _set_features(t.module, embedding_dim=specs["weight"].size)
    sizes = t.all_sizes(lambda r: [chunk(dim, t.tp, r)])
    _wrap_forward(t.module, after=lambda y: _pad_gather(y, sizes))
    return specs


def _all_reduce(t: Target) -> dict[str, ShardSpec]:
    _wrap_forward(t.module, after=lambda out: _replace_first(out, dist.all_reduce(_first(out))))
    return {}


STYLES = {
    "colwise": _colwise,
    "colwise_gather_output": lambda t: _colwise(t, gather=True),
    "packed_colwise": lambda t: _colwise(t, packed=True),
    "rowwise": _rowwise,
    "rowwise_split_input": lambda t: _rowwise(t, split_input=True),
    "packed_rowwise": lambda t: _rowwise(t, packed=True),
    "embedding_rowwise": _embedding_rowwise,
    "embedding_colwise": _embedding_colwise,
    "all_reduce": _all_reduce,
}
HEAD_SPLITTING = ("colwise", "packed_colwise")  # styles whose output holds this rank's heads only


def apply_style(t: Target) -> dict[str, ShardSpec]:
    """Shard one module by its plan style; returns {parameter name (local to the module): ShardSpec}."""
    t.module.anymodel_tp_style = t.style  # what LLM.describe() reports
    if t.style in _REPLICA_STYLES:
        return {}
    weight = getattr(t.module, "weight", None)
    full = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
    specs = STYLES[t.style](t)
    # the unsharded shape and this rank's cut: LoRA (anymodel/lora/transform.py) cuts A / B alike
    t.module.anymodel_tp_shard = (full, specs.get("weight"))
    return specs


def shard_parameter(module: nn.Module, param: str, t: Target) -> ShardSpec:
    """A plan entry naming a bare parameter (e.g. attention sinks [num_heads]): cut its first dim."""
    if t.style not in ("colwise", "rowwise"):
        raise ValueError(f"plan entry {t.name!r} names a parameter; only 'colwise' / 'rowwise' apply to one, got {t.style!r}")
    p = module._parameters[param]
    dim = 0 if t.style == "colwise" else p.dim() - 1
    n = p.shape[dim]
    if t.heads is not None and n == t.heads.num_heads:
        rng = _head_range(n, 1, t.tp, t.rank, "num_attention_heads")
    else:
        rng = chunk(n, t.tp, t.rank)
    spec = ShardSpec(dim, (rng,))
    _shrink(module, param, spec)
    return spec
