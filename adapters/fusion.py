"""Fused projections for Hugging Face modules on the Transformers-backend path, applied to a built
model without editing its code (a module-level forward patch), so that it runs nearly as fast as
a native implementation:

    q_proj, k_proj, v_proj  (siblings, same input)  ->  one GEMM  x [T, H] @ [Wq; Wk; Wv]^T
    gate_proj, up_proj      (siblings, same input)  ->  one GEMM  x [T, H] @ [Wg; Wu]^T
    every nn.Linear on CPU float32                  ->  oneDNN pre-packed weight (native_overrides/linear.py)

The modeling code still calls `q_proj(x)`, `k_proj(x)`, `v_proj(x)`: the first call for an input
tensor runs the fused GEMM and every sibling returns its column slice of that one result. The
original parameters stay where they were, as views into the fused weight, so names, shapes and
`state_dict()` do not change. Same input *object* is the fusion criterion: a model that feeds the
siblings different tensors (cross-attention) simply gets one GEMM per call, still correct.

Measured on the bench workload (2-core CPU): see `anymodel bench throughput --model-impl both`.
"""

from __future__ import annotations

import torch
from torch import nn

from anymodel.native_overrides.linear import can_pack, packed_or_plain_linear, prepare_cpu_weight

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class FusedGemm:
    """The shared GEMM of a sibling group: y = x W^T + b computed once per input tensor."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        self.sizes = [m.out_features for m in linears]
        self.weight = torch.cat([m.weight.detach() for m in linears])  # [sum(out), in]
        has_bias = [m.bias is not None for m in linears]
        self.bias = torch.cat([m.bias.detach() for m in linears]) if all(has_bias) else None
        self.packed = prepare_cpu_weight(self.weight)
        self._input: torch.Tensor | None = None
        self._parts: tuple[torch.Tensor, ...] = ()
        self._served: set[int] = set()

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if x is not self._input or index in self._served:
            flat = x.reshape(-1, x.shape[-1])
            y = packed_or_plain_linear(flat, self.weight, self.packed, self.bias)  # [M, sum(out)]
            self._parts = y.view(*x.shape[:-1], y.shape[-1]).split(self.sizes, dim=-1)
            self._input, self._served = x, set()
        self._served.add(index)
        out = self._parts[index]
        if len(self._served) == len(self.sizes):  # every sibling served: drop the references
            self._input, self._parts = None, ()
        return out


def _fused_forward(gemm: FusedGemm, index: int):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return gemm.part(x, index)

    return forward


def _packed_forward(linear: nn.Linear):
    packed = prepare_cpu_weight(linear.weight)

    def forward(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = packed_or_plain_linear(flat, linear.weight, packed, linear.bias)
        return y.view(*x.shape[:-1], y.shape[-1])

    return forward


def _plain_linear(module) -> bool:
    """Exactly nn.Linear (no quantized / LoRA subclass), its forward neither replaced nor hooked."""
    return (
        type(module) is nn.Linear
        and "forward" not in module.__dict__  # e.g. a tensor-parallel wrapper
        and not module._forward_hooks
        and not module._forward_pre_hooks
    )


def fuse_siblings(model: nn.Module) -> int:
    """Fuse every q/k/v and gate/up sibling group of plain linears sharing in_features; returns the count."""
    fused = 0
    for parent in model.modules():
        for names in GROUPS:
            linears = [getattr(parent, n, None) for n in names]
            if not all(_plain_linear(m) for m in linears) or len({m.in_features for m in linears}) != 1:
                continue
            if len({(m.weight.dtype, m.weight.device) for m in linears}) != 1:
                continue
            gemm = FusedGemm(linears)
            offset = 0
            for i, m in enumerate(linears):  # parameters become views of the fused weight
                m.weight = nn.Parameter(gemm.weight[offset : offset + m.out_features], requires_grad=False)
                if gemm.bias is not None:
                    m.bias = nn.Parameter(gemm.bias[offset : offset + m.out_features], requires_grad=False)
                offset += m.out_features
                m.forward = _fused_forward(gemm, i)
            fused += 1
    return fused


def pack_linears(model: nn.Module) -> int:
    """Pre-pack every remaining plain CPU float32 linear (o_proj, down_proj, lm_head, ...)."""
    packed = 0
    for m in model.modules():
        if _plain_linear(m) and can_pack(m.weight):
            m.forward = _packed_forward(m)
            packed += 1
    return packed


def apply_fusion(model: nn.Module) -> nn.Module:
    """Both transforms, in place, inference only (weights must not change afterwards)."""
    fuse_siblings(model)
    pack_linears(model)
    return model
