"""Tensor-parallel linears and embeddings of the native models, with stacked-weight loading.

Every weight is stored like `nn.Linear`: [out, in]. r = this rank, tp = ranks (anymodel.distributed;
1 outside a distributed run, where every collective is the identity):

    ColumnParallelLinear       W[out/tp, in]    y_r = x W_r^T + b_r            output stays sharded
    MergedColumnParallelLinear [A_r; B_r]       gate_up_proj: gate_proj and up_proj in one GEMM
    QKVParallelLinear          [Q_r; K_r; V_r]  qkv_proj: q/k/v_proj in one GEMM, cut on head bounds
    RowParallelLinear          W[out, in/tp]    y = all_reduce(x_r W_r^T) + b   input already sharded
    VocabParallelEmbedding     E[V/tp, H]       local lookup, zero outside the shard, all_reduce
    ParallelLMHead             E[V/tp, H]       logits = all_gather(h E_r^T)[:, :V]

A checkpoint tensor reaches its parameter through `param.weight_loader(param, tensor[, shard_id])`,
which cuts this rank's part out of the full tensor and, for fused layers, places it at its offset.

On CPU (float32), `prepare()` lays each weight out for the CPU GEMMs once (`prepare_cpu_weight`):
a oneDNN-packed copy for multi-row steps, a transposed layout for wide single-row GEMVs.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from anymodel import distributed as dist
from anymodel.native_overrides.quantization.methods import Cut, QuantMethod

# ANYMODEL_CPU_PACKED_GEMM=0 turns the oneDNN packed weights off (A/B measurements, debugging).
_PACK_ENV = "ANYMODEL_CPU_PACKED_GEMM"
# Smaller weights stay plain: a packed GEMM costs ~40 us however small, which F.linear beats below
# ~2^18 elements (Zen 3, 2 to 128 rows: 256x256 packed runs at 0.55-0.83x of F.linear, 512x512
# at 1.1-1.55x, 1024x1024 at 1.2-2.6x). The tests lower it to 0 so that tiny models take the
# packed path too.
_PACK_MIN_NUMEL_ENV = "ANYMODEL_CPU_PACK_MIN_NUMEL"
_PACK_MIN_NUMEL = 1 << 18


def _divide(n: int, d: int, what: str) -> int:
    if n % d:
        raise ValueError(f"{what} ({n}) is not divisible by tensor_parallel_size ({d})")
    return n // d


def _copy(param: torch.Tensor, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"checkpoint tensor of shape {tuple(loaded.shape)} does not fit parameter {tuple(param.shape)}")
    param.data.copy_(loaded)


def default_weight_loader(param: torch.Tensor, loaded: torch.Tensor) -> None:
    _copy(param, loaded)


def can_pack(weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and os.environ.get(_PACK_ENV, "1") != "0"
        and weight.numel() >= int(os.environ.get(_PACK_MIN_NUMEL_ENV, _PACK_MIN_NUMEL))
    )


def prepare_cpu_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """Lay out `weight` [out, in] for the CPU GEMMs once; returns the oneDNN-packed copy (or None
    off CPU / float32). Measured on the 125M-Llama shapes, one Zen 3 core, weights cold in cache:
      M >= 2 rows: the packed weight beats F.linear by 1.5x (M=16: 105 vs 154 ms for all layers);
      M == 1 (GEMV): F.linear wins, and reads a transposed [in, out] layout 1.6x faster when the
      output is wider than the input (gate_up, lm_head), slower otherwise: such weights switch
      to column-major storage in place (same values, same shape, same parameter)."""
    if not can_pack(weight):
        return None
    if weight.shape[0] > weight.shape[1] and weight.is_contiguous():
        weight.data = weight.data.t().contiguous().t()
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def packed_or_plain_linear(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor | None, bias) -> torch.Tensor:
    """x [M, in] -> [M, out]: the packed GEMM from 2 rows on, F.linear for a single row."""
    if packed is not None and x.shape[0] > 1:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return F.linear(x, weight, bias)


class LinearBase(nn.Module):
    """y = x W^T + b with W [out_local, in_local]; subclasses say how a checkpoint tensor is cut."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = dist.tp_rank(), dist.tp_size()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None
        for p in (self.weight, self.bias):
            if p is not None:
                p.weight_loader = self.weight_loader
        self.packed: torch.Tensor | None = None  # oneDNN blocked copy of `weight` (CPU float32)
        # set by quantization.native.quantize_linear: the stored tensors replace `weight`
        self.quant_method: QuantMethod | None = None
        self.logical_shape = (out_features, in_features)

    def cut(self, shard_id=None) -> Cut | None:
        """This rank's (and this fused slice's) part of a checkpoint weight; None: all of it."""
        return None

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
        cut = self.cut(shard_id)
        if cut is None:
            return _copy(param, loaded)
        _copy(param.narrow(cut.dim, cut.dst, cut.length), loaded.narrow(cut.dim, cut.src, cut.length))

    def prepare(self) -> None:
        """Once per device placement: pack the weight for the CPU GEMM, or drop a stale packing."""
        self.packed = None if self.quant_method is not None else prepare_cpu_weight(self.weight)

    def _apply(self, fn, recurse=True):
        self.packed = None  # moved or cast: the packed copy no longer matches `weight`
        return super()._apply(fn, recurse)

    def gemm(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.quant_method is not None:
            tensors = {s.name: getattr(self, s.name) for s in self.quant_method.stored()}
            return self.quant_method.apply(tensors, self.logical_shape, x, bias)
        return packed_or_plain_linear(x, self.weight, self.packed, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gemm(x, self.bias)

    def extra_repr(self) -> str:
        quant = f", {self.quant_method.name}" if self.quant_method is not None else ""
        return f"in={self.logical_shape[1]}, out={self.logical_shape[0]}, tp={self.tp_rank}/{self.tp_size}{quant}"


class ColumnParallelLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__(in_features, _divide(out_features, dist.tp_size(), "output size"), bias, dtype)

    def cut(self, shard_id=None) -> Cut:
        size = self.logical_shape[0]
        return Cut(0, 0, self.tp_rank * size, size)

    def weight_loader(self, param, loaded, shard_id=None) -> None:
        # sized by `param` (not the layer): LoRA loads its [out, r] B matrices through it too
        size = param.shape[0]
        _copy(param, loaded.narrow(0, self.tp_rank * size, size))


class MergedColumnParallelLinear(LinearBase):
    """Several column-parallel outputs stacked on dim 0: [A_r; B_r; ...], e.g. [gate_r; up_r]."""

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool, dtype: torch.dtype) -> None:
        tp = dist.tp_size()
        self.local_sizes = [_divide(n, tp, "output size") for n in out_sizes]
        super().__init__(in_features, sum(self.local_sizes), bias, dtype)

    def cut(self, shard_id: int) -> Cut:
        size = self.local_sizes[shard_id]
        return Cut(0, sum(self.local_sizes[:shard_id]), self.tp_rank * size, size)


class QKVParallelLinear(LinearBase):
    """[Q_r; K_r; V_r] on dim 0, cut on head boundaries. With fewer KV heads than ranks, each rank
    keeps the one KV head its query heads read (KV heads replicated)."""

    def __init__(self, hidden: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool, dtype) -> None:
        tp = dist.tp_size()
        self.head_dim = head_dim
        self.total_num_kv_heads = num_kv_heads  # the checkpoint's (LoRA B of k/v_proj is cut like its weight)
        self.num_heads = _divide(num_heads, tp, "num_attention_heads")
        if num_kv_heads >= tp:
            self.num_kv_heads = _divide(num_kv_heads, tp, "num_key_value_heads")
        else:
            _divide(tp, num_kv_heads, "num_key_value_heads (replicated): tensor_parallel_size")
            self.num_kv_heads = 1
        self.kv_head_start = dist.tp_rank() * num_kv_heads // tp
        super().__init__(hidden, (self.num_heads + 2 * self.num_kv_heads) * head_dim, bias, dtype)

    @property
    def sizes(self) -> list[int]:
        """Local widths of q, k, v: split the fused output [T, q + k + v] with these."""
        return [self.num_heads * self.head_dim] + [self.num_kv_heads * self.head_dim] * 2

    def cut(self, shard_id: str) -> Cut:
        q, kv = self.sizes[0], self.sizes[1]
        if shard_id == "q":
            return Cut(0, 0, self.tp_rank * q, q)
        return Cut(0, q if shard_id == "k" else q + kv, self.kv_head_start * self.head_dim, kv)


class RowParallelLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__(_divide(in_features, dist.tp_size(), "input size"), out_features, bias, dtype)

    def cut(self, shard_id=None) -> Cut:
        size = self.logical_shape[1]
        return Cut(1, 0, self.tp_rank * size, size)

    def weight_loader(self, param, loaded, shard_id=None) -> None:
        if param.ndim == 1:  # the bias is added once, after the reduction
            return _copy(param, loaded)
        size = param.shape[1]  # sized by `param`: LoRA loads its [r, in] A matrices through it too
        _copy(param, loaded.narrow(1, self.tp_rank * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self.gemm(x, self.bias)
        y = dist.all_reduce(self.gemm(x, None))
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """E [ceil(V / tp), H]: this rank's rows of the vocabulary (the last shard zero-padded)."""

    def __init__(self, vocab_size: int, hidden: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = dist.tp_rank(), dist.tp_size()
        self.vocab_size = vocab_size
        self.rows = -(-vocab_size // self.tp_size)
        self.start = self.tp_rank * self.rows
        self.weight = nn.Parameter(torch.zeros(self.rows, hidden, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param, loaded, shard_id=None) -> None:
        n = max(0, min(self.rows, self.vocab_size - self.start))
        _copy(param.narrow(0, 0, n), loaded.narrow(0, self.start, n))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, H]
        if self.tp_size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return dist.all_reduce(out.masked_fill(outside[:, None], 0))


class ParallelLMHead(VocabParallelEmbedding):
    """Logits over the vocabulary; `tie_to(embedding)` shares the input embedding's shard."""

    def __init__(self, vocab_size: int, hidden: int, dtype: torch.dtype) -> None:
        super().__init__(vocab_size, hidden, dtype)
        self.packed: torch.Tensor | None = None

    def tie_to(self, embedding: VocabParallelEmbedding) -> None:
        self.weight = embedding.weight

    def prepare(self) -> None:
        self.packed = prepare_cpu_weight(self.weight)

    def _apply(self, fn, recurse=True):
        self.packed = None
        return super()._apply(fn, recurse)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [S, H] -> [S, V]
        logits = packed_or_plain_linear(hidden, self.weight, self.packed, None)
        if self.tp_size > 1:
            logits = dist.all_gather(logits, dim=-1)
        return logits[:, : self.vocab_size] if logits.shape[-1] != self.vocab_size else logits
