"""The experts function anymodel registers with Transformers (its experts interface).

A Transformers 5 MoE block routes itself (its own router: top-k, softmax or sigmoid, group-limited
top-k, normalisation, scaling, bias) and then calls its experts module, whose class is decorated
with `@use_experts_implementation`; the decorator dispatches the call to
`ALL_EXPERTS_FUNCTIONS[config._experts_implementation](self, hidden_states, top_k_index, top_k_weights)`.
We register `anymodel` there (as attention_backend/interface.py registers our attention) and every
Transformers-backend loader selects it (computed_buffers.load_pretrained, parallel.py), so every
model whose experts class uses the interface runs this function; classes that do not keep their
own loop.

What the function receives, and keeps as the model's:
    hidden_states  [T, H]   the routed tokens
    top_k_index    [T, K]   expert ids; an id outside [0, num_experts) (the identity/zero expert
                            some models route to, expert parallel's sentinel) contributes nothing,
                            as in Transformers' own loop
    top_k_weights  [T, K]   the router's final weights (already normalised / scaled)
and the class's flags: `has_gate` (gate_up_proj + `_apply_gate`, the class's own gate: GPT-OSS's
interleaved clamped SwiGLU is its `_apply_gate`, so `is_concatenated` needs nothing here) or
`up_proj` + `act_fn`; `has_bias`; `is_transposed` (weights [E, in, out] instead of [E, out, in]);
`has_post_expert_norm`.

How: the T*K (token, expert) pairs are sorted by expert (stable, so tokens stay in order within an
expert), the tokens gathered once, one grouped GEMM for gate-up, the gate, one grouped GEMM for
down, the router weights, and one `index_add_` back to the tokens. The grouped GEMM on CPU is a
loop over the experts that received tokens, each a plain GEMM on a contiguous slice of the sorted
rows and a view of that expert's weight (no weight copy; experts without tokens cost nothing —
torch's CPU `grouped_mm` measured slower, see `anymodel bench moe`); on CUDA with bf16/fp16 it is
torch's `grouped_mm`.

`reference_experts_forward` is the slow obvious oracle with the same signature: one token, one
expert at a time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

EXPERTS_IMPLEMENTATION = "anymodel"


def register_experts() -> str:
    """Register with Transformers' experts interface (idempotent) and return the implementation name."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(EXPERTS_IMPLEMENTATION, anymodel_experts_forward)
    return EXPERTS_IMPLEMENTATION


@dataclass(frozen=True)
class RoutedPairs:
    """The step's (token, expert) pairs that reach a real expert, sorted by expert."""

    tokens: torch.Tensor  # [S] token index of each pair
    weights: torch.Tensor  # [S] its router weight
    segments: tuple[tuple[int, int, int], ...]  # (expert, start, end) rows of each expert with tokens


GEMV_MAX_ROWS = 4  # up to this many rows per expert, W @ x^T beat x @ W^T on this CPU (bench moe)
HOST_SORT_MAX_PAIRS = 512  # up to this many (token, expert) pairs the sort runs on the host: fewer tensor ops


def sort_by_expert(top_k_index: torch.Tensor, top_k_weights: torch.Tensor, num_experts: int) -> RoutedPairs:
    """top_k_index / top_k_weights [T, K] -> the pairs sorted by expert (stable: token order kept
    within an expert); ids outside [0, num_experts) (identity/zero expert, EP sentinels) are dropped.
    Decode steps route few pairs: a host-side sort there costs one copy instead of ~10 small ops."""
    k = top_k_index.shape[-1]
    if top_k_index.numel() <= HOST_SORT_MAX_PAIRS:
        ids = top_k_index.reshape(-1).tolist()
        order_list = sorted((i for i, e in enumerate(ids) if 0 <= e < num_experts), key=ids.__getitem__)
        order = torch.tensor(order_list, dtype=torch.long, device=top_k_index.device)
        counts = [0] * num_experts
        for i in order_list:
            counts[ids[i]] += 1
    else:
        flat = top_k_index.reshape(-1)
        flat = torch.where((flat >= 0) & (flat < num_experts), flat, num_experts)  # invalid -> one tail bucket
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=num_experts + 1)[:num_experts].tolist()  # one host sync
    segments, start = [], 0
    for expert, count in enumerate(counts):
        if count:
            segments.append((expert, start, start + count))
            start += count
    order = order[:start]
    return RoutedPairs(tokens=order // k, weights=top_k_weights.reshape(-1)[order], segments=tuple(segments))


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, routed: RoutedPairs,
                   transposed: bool) -> torch.Tensor:
    """x [S, in] sorted by expert; weight [E, out, in] ([E, in, out] when transposed); bias [E, out]
    -> [S, out], each row through its expert."""
    out_dim = weight.shape[-1] if transposed else weight.shape[-2]
    if _use_torch_grouped_mm(x, weight):
        return _torch_grouped_linear(x, weight, bias, routed, transposed)
    out = x.new_empty(x.shape[0], out_dim)
    for expert, start, end in routed.segments:
        rows = out[start:end]
        if not transposed and end - start <= GEMV_MAX_ROWS:
            # [out, in] @ [in, rows]: the weight streamed row-major, GEMV-like (decode's few rows per expert)
            rows.copy_(torch.mm(weight[expert], x[start:end].t()).t())
            if bias is not None:
                rows.add_(bias[expert])
            continue
        w = weight[expert] if transposed else weight[expert].t()  # [in, out] view
        if bias is None:
            torch.mm(x[start:end], w, out=rows)
        else:
            torch.addmm(bias[expert], x[start:end], w, out=rows)
    return out


def _use_torch_grouped_mm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # CUDA's grouped GEMM kernels take half precision; on CPU the segment loop is faster (bench moe).
    return (x.device.type == "cuda" and weight.dtype in (torch.bfloat16, torch.float16)
            and hasattr(torch.nn.functional, "grouped_mm"))


def _torch_grouped_linear(x, weight, bias, routed: RoutedPairs, transposed: bool) -> torch.Tensor:
    counts = torch.zeros(weight.shape[0], dtype=torch.int32)
    for expert, start, end in routed.segments:
        counts[expert] = end - start
    offsets = torch.cumsum(counts, 0, dtype=torch.int32).to(x.device)
    w = weight if transposed else weight.transpose(-2, -1)  # [E, in, out]
    out = torch.nn.functional.grouped_mm(x.to(weight.dtype), w, offs=offsets)
    if bias is not None:
        out = out + bias[_expert_of_rows(routed, x.device)]
    return out


def _expert_of_rows(routed: RoutedPairs, device) -> torch.Tensor:
    rows = [torch.full((end - start,), expert, dtype=torch.long) for expert, start, end in routed.segments]
    return torch.cat(rows).to(device) if rows else torch.empty(0, dtype=torch.long, device=device)


def expert_weights(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(up weight, up bias, down weight, down bias) of an experts module; the up weight is the
    concatenated/interleaved gate-up when the class has a gate."""
    up = "gate_up_proj" if module.has_gate else "up_proj"
    up_bias = getattr(module, f"{up}_bias") if module.has_bias else None
    down_bias = module.down_proj_bias if module.has_bias else None
    return getattr(module, up), up_bias, module.down_proj, down_bias


def _activate(module: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return module._apply_gate(h) if module.has_gate else module.act_fn(h)


def anymodel_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                             top_k_weights: torch.Tensor) -> torch.Tensor:
    """hidden_states [T, H], top_k_index / top_k_weights [T, K] -> [T, H]."""
    routed = sort_by_expert(top_k_index, top_k_weights, self.num_experts)
    up, up_bias, down, down_bias = expert_weights(self)
    x = hidden_states[routed.tokens]  # [S, H], sorted by expert
    h = _activate(self, grouped_linear(x, up, up_bias, routed, self.is_transposed))  # [S, I]
    y = grouped_linear(h, down, down_bias, routed, self.is_transposed)  # [S, H]
    if self.has_post_expert_norm:
        y = self.post_expert_norm(y)
    y = y * routed.weights.unsqueeze(-1)
    out = torch.zeros(hidden_states.shape, dtype=y.dtype, device=y.device)
    out.index_add_(0, routed.tokens, y)
    return out.to(hidden_states.dtype)


def reference_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                              top_k_weights: torch.Tensor) -> torch.Tensor:
    """The oracle: every (token, slot) through its expert alone, in plain torch."""
    up, up_bias, down, down_bias = expert_weights(self)
    out = torch.zeros(hidden_states.shape, dtype=torch.float64)
    for t in range(hidden_states.shape[0]):
        for slot in range(top_k_index.shape[1]):
            e = int(top_k_index[t, slot])
            if not 0 <= e < self.num_experts:
                continue
            h = _one_linear(hidden_states[t], up[e], None if up_bias is None else up_bias[e], self.is_transposed)
            y = _one_linear(_activate(self, h), down[e], None if down_bias is None else down_bias[e], self.is_transposed)
            if self.has_post_expert_norm:
                y = self.post_expert_norm(y)
            out[t] += (y * top_k_weights[t, slot]).double()
    return out.to(hidden_states.dtype)


def _one_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    y = x @ w if transposed else w @ x  # x [in]; w [in, out] or [out, in]
    return y if b is None else y + b


# ------------------------------------------------------------------ which path each module runs

def uses_experts_interface(module: nn.Module) -> bool:
    """An experts module built by a `@use_experts_implementation` class (the decorator sets these)."""
    return hasattr(module, "has_gate") and hasattr(module, "is_transposed") and hasattr(module, "config")


def experts_paths(model: nn.Module) -> dict[str, int]:
    """'ClassName: path' -> how many modules run it: the registered function, another entry of the
    interface, or the class's own loop (no interface)."""
    paths: dict[str, int] = {}
    for module in model.modules():
        name = type(module).__name__
        if uses_experts_interface(module):
            impl = getattr(module.config, "_experts_implementation", None) or "eager"
            path = f"{impl} experts function" if impl != "eager" else "Transformers eager loop"
        elif name.endswith("Experts"):
            path = "own code (no experts interface)"
        else:
            continue
        key = f"{name}: {path}"
        paths[key] = paths.get(key, 0) + 1
    return paths


def select_experts(model: nn.Module, name: str) -> str | None:
    """Run `model`'s interface experts through `name` ("anymodel", "grouped_mm", "eager", ...) from
    now on; returns the name they ran before (benchmarks and tests compare the paths on one loaded
    model)."""
    before = None
    for module in model.modules():
        if uses_experts_interface(module):
            before = before or module.config._experts_implementation_internal
            module.config._experts_implementation_internal = name
    return before


@contextlib.contextmanager
def experts_implementation(model: nn.Module, name: str):
    """`select_experts` inside the block only."""
    before = select_experts(model, name)
    try:
        yield
    finally:
        if before is not None:
            select_experts(model, before)
