"""Token bitmasks: one row of int32 words per constrained request, bit t of word t // 32 = token t allowed.

The engine fills the rows (manager.py); the worker applies them to the step's logits in one batched
op before any other sampling step (worker/sampler.py). Tokens past the mask's width (a model whose
logits are wider than the grammar's vocabulary) are never allowed.

    apply_bitmask(logits [S, V] float32, bitmask [R, W] int32, rows: R row indices into logits)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GrammarBitmask:
    """What travels to the workers with the scheduler output: a row per constrained sampling request."""

    rows: dict[str, int]  # request id -> row of `bitmask`
    bitmask: torch.Tensor  # [R, W] int32, on the CPU

    def row_of(self, request_id: str) -> torch.Tensor | None:
        i = self.rows.get(request_id)
        return None if i is None else self.bitmask[i]


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """xgrammar's kernel: disallowed tokens of logits[rows] -> -inf, in place. logits float32 [S, V]."""
    import xgrammar as xgr

    width = bitmask.shape[1] * 32
    if logits.dtype != torch.float32 or logits.shape[1] < width:  # the kernel's contract; the reference has none
        apply_bitmask_reference(logits, bitmask, rows)
        return
    full = torch.full((logits.shape[0], bitmask.shape[1]), -1, dtype=torch.int32)  # rows not listed: all allowed
    full[rows] = bitmask
    xgr.apply_token_bitmask_inplace(logits, full.to(logits.device), vocab_size=width, indices=list(rows))
    logits[rows, width:] = float("-inf")


def apply_bitmask_reference(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """The obvious torch version: unpack every bit, mask where it is 0. Same contract as apply_bitmask."""
    allowed = unpack_bitmask(bitmask.to(logits.device), logits.shape[1])  # [R, V]
    index = torch.tensor(rows, dtype=torch.long, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, W] int32 -> [R, vocab_size] bool (tokens past 32 * W: False)."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = ((bitmask[:, :, None] >> shifts) & 1).bool().reshape(bitmask.shape[0], -1)  # [R, 32W]
    if bits.shape[1] >= vocab_size:
        return bits[:, :vocab_size]
    pad = torch.zeros(bits.shape[0], vocab_size - bits.shape[1], dtype=torch.bool, device=bitmask.device)
    return torch.cat([bits, pad], dim=1)


def allows_any(row: torch.Tensor) -> bool:
    """Does a filled row allow at least one token? (A dead end would leave nothing to sample.)"""
    return bool(row.ne(0).any())
