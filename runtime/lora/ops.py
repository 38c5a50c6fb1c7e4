"""The LoRA shrink / expand pair (punica / S-LoRA) over a mixed batch, in plain torch: the CPU path
and the oracle for any kernel. T tokens, S slots, R = max_lora_rank (times the pieces of a fused layer):

    shrink  h[t] = A[slot[t]] x[t]          x [T, in],  A [S, R, in]  -> h [T, R]
    expand  y[t] += B[slot[t]] h[t]         h [T, R],   B [S, out, R] -> y [T, out]

Tokens of the base model (slot -1) get nothing. Each adapter present in the step costs one GEMM
per op over its tokens (a `LoRAMapping` groups them once per step, for every layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoRAMapping:
    """One step's tokens by slot: `token_slots` [T] (-1: base model) and, per slot present, the
    indices of its tokens (None: the slot has every token of the step)."""

    token_slots: torch.Tensor
    groups: tuple[tuple[int, torch.Tensor | None], ...]

    @classmethod
    def build(cls, token_slots: list[int], device: torch.device) -> "LoRAMapping | None":
        """None when no token of the step runs an adapter (the layers then skip LoRA altogether)."""
        slots = torch.tensor(token_slots, dtype=torch.long)
        present = sorted(set(token_slots) - {-1})
        if not present:
            return None
        if len(present) == 1 and -1 not in token_slots:
            groups = ((present[0], None),)
        else:
            groups = tuple((s, torch.nonzero(slots == s).flatten().to(device)) for s in present)
        return cls(slots.to(device), groups)

    @property
    def num_tokens(self) -> int:
        return self.token_slots.shape[0]


def lora_shrink(x: torch.Tensor, a: torch.Tensor, mapping: LoRAMapping) -> torch.Tensor:
    """x [T, in], a [S, R, in] -> h [T, R] (zeros for base-model tokens)."""
    h = x.new_zeros(x.shape[0], a.shape[1])
    for slot, index in mapping.groups:
        if index is None:
            return x @ a[slot].t()
        h[index] = x[index] @ a[slot].t()
    return h


def lora_expand(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, mapping: LoRAMapping) -> torch.Tensor:
    """y [T, out] + B[slot] h: h [T, R], b [S, out, R] -> [T, out] (a new tensor; `y` is unchanged)."""
    for slot, index in mapping.groups:
        if index is None:
            return y + h @ b[slot].t()
        y = y.index_add(0, index, h[index] @ b[slot].t())
    return y
