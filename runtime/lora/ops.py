"""The LoRA shrink / expand pair (punica / S-LoRA) over a mixed batch, in plain torch: the CPU path.
T tokens, S slots, R = max_lora_rank (times the pieces of a fused layer):

    shrink  h[t] = A[slot[t]] x[t]          x [T, in],  A [S, R, in]  -> h
    expand  y[t] += B[slot[t]] h[t]         h,          B [S, out, R] -> y [T, out]

Tokens of the base model (slot -1) get nothing. How, the step's `LoRAMapping` decides once for
every layer (a CPU step pays per op, so the fewer the better):
    one slot for every token   h [T, R]: one GEMM each
    most slots in use, <= 32 tokens  h [T, S R]: one GEMM over all slots, zeroed where a token's slot is not
                               (`mask`), then one GEMM with [B_0 .. B_S-1]; as many bytes read as the
                               grouped form when the slots are in use, 3 ops instead of ~6 per slot
    otherwise                  h [T, R]: one GEMM pair per slot present over its tokens
tests/lora/test_lora_parts.py checks all three against the per-token definition above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


# The dense form does S times the FLOPs: it wins while per-op overhead dominates, i.e. decode-sized
# steps (measured on 125M-Llama shapes, one core, 4 slots: T=16 dense 0.6x the grouped time, T=64 1.6x).
DENSE_MAX_TOKENS = 32


@dataclass(frozen=True)
class LoRAMapping:
    """One step's tokens by slot: `token_slots` [T] (-1: base model); per slot present, the indices
    of its tokens (None: the slot has every token of the step); `mask` [T, S, 1] (1 where slot s is
    the token's) when the dense form runs."""

    token_slots: torch.Tensor
    groups: tuple[tuple[int, torch.Tensor | None], ...]
    mask: torch.Tensor | None = None

    @classmethod
    def build(cls, token_slots: list[int], device: torch.device, num_slots: int) -> "LoRAMapping | None":
        """None when no token of the step runs an adapter (the layers then skip LoRA altogether)."""
        slots = torch.tensor(token_slots, dtype=torch.long)
        present = sorted(set(token_slots) - {-1})
        if not present:
            return None
        if len(present) == 1 and -1 not in token_slots:
            return cls(slots.to(device), ((present[0], None),))
        groups = tuple((s, torch.nonzero(slots == s).flatten().to(device)) for s in present)
        mask = None
        if 2 * len(present) >= num_slots and len(token_slots) <= DENSE_MAX_TOKENS:
            mask = (slots[:, None] == torch.arange(num_slots)[None, :]).float()[:, :, None].to(device)
        return cls(slots.to(device), groups, mask)

    @property
    def num_tokens(self) -> int:
        return self.token_slots.shape[0]


def lora_shrink(x: torch.Tensor, a: torch.Tensor, mapping: LoRAMapping) -> torch.Tensor:
    """x [T, in], a [S, R, in] -> h ([T, S R] in the dense form, else [T, R]); zero for base tokens."""
    if mapping.mask is not None:
        S, R = a.shape[:2]
        h = (x @ a.reshape(S * R, -1).t()).view(-1, S, R) * mapping.mask.to(x.dtype)
        return h.view(-1, S * R)
    h = x.new_zeros(x.shape[0], a.shape[1])
    for slot, index in mapping.groups:
        if index is None:
            return x @ a[slot].t()
        h[index] = x[index] @ a[slot].t()
    return h


def lora_expand(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, mapping: LoRAMapping) -> torch.Tensor:
    """y [T, out] + B[slot] h: h from lora_shrink, b [S, out, R] -> [T, out] (a new tensor; `y` is unchanged).
    `b` stored as [out, S, R] (LoRALinear does) makes the dense form's [out, S R] a view, not a copy."""
    if mapping.mask is not None:
        S, n_out, R = b.shape
        return torch.addmm(y, h, b.permute(1, 0, 2).reshape(n_out, S * R).t())
    for slot, index in mapping.groups:
        if index is None:
            return y + h @ b[slot].t()
        y = y.index_add(0, index, h[index] @ b[slot].t())
    return y
