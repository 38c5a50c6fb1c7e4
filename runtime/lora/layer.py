"""`LoRALinear`: any linear layer (nn.Linear, a quantized linear, a native fused or tensor-parallel
linear) plus per-slot LoRA weights, applied to the tokens of each adapter in the step:

    y = base(x) + B[slot] (A[slot] x)          (scale already folded into B)

A fused layer (native qkv_proj, gate_up_proj) holds one piece per checkpoint module (q/k/v_proj,
gate/up_proj): piece i's A sits in rows [i R, i R + r) of A, its B in the same columns of B and in
its own output rows, so the slot's B is block-diagonal and one shrink + one expand serve all pieces.

Tensor parallelism, as the base weight: a column-parallel layer keeps A whole and its own rows of
B (its output is sharded); a row-parallel layer keeps its columns of A, so the shrink result is
partial and is summed over ranks (all_reduce of [T, R], small) before the whole B expands it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from anymodel import distributed as dist
from anymodel.lora.ops import LoRAMapping, lora_expand, lora_shrink


@dataclass
class LoRAState:
    """Shared by every LoRALinear of a model: the sizes, and the step's mapping (set by the runner
    around each forward; None: no token runs an adapter)."""

    max_loras: int
    max_rank: int
    mapping: LoRAMapping | None = None


@dataclass(frozen=True)
class Piece:
    name: str  # the checkpoint module it stands for, relative to the decoder (e.g. layers.0.self_attn.q_proj)
    shard_id: object  # what the base layer's weight_loader calls it (None: unfused)
    out_features: int  # unsharded output width of this piece


def copy_checked(param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
    """The loader of a layer that is not sharded: shapes must agree exactly."""
    if param.shape != loaded.shape:
        raise ValueError(f"shape {tuple(loaded.shape)} does not fit {tuple(param.shape)}")
    param.copy_(loaded)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, pieces: list[Piece], in_features: int, local_in: int, local_out: int,
                 row_parallel: bool, loader: Callable, state: LoRAState) -> None:
        super().__init__()
        self.base = base
        self.pieces = pieces
        self.in_features_full = in_features
        self.row_parallel = row_parallel
        self.loader = loader  # loader(dst view, full tensor, shard_id): cuts this rank's part (the base's own)
        self.state = state
        weight = next(iter(base.parameters()), None)
        kw = {"device": weight.device if weight is not None else None, "dtype": _float_dtype(weight)}
        width = len(pieces) * state.max_rank
        self.register_buffer("lora_a", torch.zeros(state.max_loras, width, local_in, **kw), persistent=False)
        self.register_buffer("lora_b", torch.zeros(state.max_loras, local_out, width, **kw), persistent=False)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # weight, bias, in_features, ...: the base layer's (model code may read them)
            if name.startswith("__") or "base" not in self.__dict__.get("_modules", {}):
                raise  # copy / pickle probes, or not built yet
            return getattr(self._modules["base"], name)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base(x, *args, **kwargs)
        mapping = self.state.mapping
        if mapping is None:
            return y
        flat = x.reshape(-1, x.shape[-1])  # [T, in]: the step's one row of tokens
        if flat.shape[0] != mapping.num_tokens:
            raise RuntimeError(f"LoRA layer got {flat.shape[0]} tokens, the step has {mapping.num_tokens}")
        shrink, expand = kernels_for(flat.device)
        h = shrink(flat.to(self.lora_a.dtype), self.lora_a, mapping)  # [T, n R]
        if self.row_parallel:
            h = dist.all_reduce(h)
        out = expand(y.reshape(-1, y.shape[-1]), h.to(y.dtype), self.lora_b.to(y.dtype), mapping)
        return out.view(y.shape)

    @torch.no_grad()
    def set_slot(self, slot: int, weights: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Slot `slot` := the adapter's pieces {piece index: (A [r, in], B [out, r])}; others zero."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        R = self.state.max_rank
        for i, (a, b) in weights.items():
            cols = slice(i * R, i * R + a.shape[0])
            a, b = a.to(self.lora_a.dtype), b.to(self.lora_b.dtype)
            if self.row_parallel:
                self.loader(self.lora_a[slot, cols, :], a, None)
                self.lora_b[slot, :, cols].copy_(b)
            else:
                self.lora_a[slot, cols, :].copy_(a)
                self.loader(self.lora_b[slot, :, cols], b, self.pieces[i].shard_id)

    def check(self, i: int, a: torch.Tensor, b: torch.Tensor) -> str | None:
        """Why piece i cannot take A [r, in], B [out, r] (an adapter for another base model), or None."""
        want_in, want_out = self.in_features_full, self.pieces[i].out_features
        if a.shape[1] != want_in or b.shape[0] != want_out:
            return (f"lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit the layer's "
                    f"in_features={want_in}, out_features={want_out}")
        return None

    def extra_repr(self) -> str:
        return f"pieces={[p.name.rsplit('.', 1)[-1] for p in self.pieces]}, slots={self.state.max_loras}, " \
               f"max_rank={self.state.max_rank}, row_parallel={self.row_parallel}"


def kernels_for(device: torch.device) -> tuple[Callable, Callable]:
    """(shrink, expand): the Triton kernels on CUDA (triton_ops.py), the torch reference elsewhere."""
    if device.type == "cuda":
        from anymodel.lora import triton_ops

        return triton_ops.lora_shrink, triton_ops.lora_expand
    return lora_shrink, lora_expand


def _float_dtype(weight: torch.Tensor | None) -> torch.dtype:
    """The layer's compute dtype (a quantized layer's integer weight is not it: float32 then)."""
    if weight is not None and weight.is_floating_point():
        return weight.dtype
    return torch.float32
