"""Decode steps replayed from captured CUDA graphs (`enforce_eager=False`).

A decode step of B requests (one new token each) launches the same kernels every time; only the
values in its inputs change. So the model's forward is captured once per size P in `sizes`, over
static input buffers, and a step copies its inputs into the buffers and replays the graph of the
smallest P >= B. Rows B..P-1 are padding that writes nothing and whose output is dropped:

    row        input_id  position  slot_mapping  seq_len  block_tables[row, 0]
    real b     token     pos       its slot      its len  its blocks...
    padding    0         0         -1 (skipped)  1        0        (attends to one junk key)

The attention launch is sized for `max_seq_len` = the model's context length, not the step's, so
that one graph serves every context; the kernels read the true lengths from `seq_lens`. Each graph
keeps one (frozen) `AttentionMetadata` over the buffers, whose tensors are refilled in place; every
forward it runs (capture, and each eager "replay") enters a fresh `ForwardContext`.
Prefill chunks, token-type inputs, and steps larger than the largest graph run eagerly.

`capture` is the seam: `CudaGraphCapture` records real graphs; `eager_capture` runs the same
buffers, padding and slicing without a graph (the reference, and how CPU tests check the path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from anymodel.attention_backend.forward_context import ForwardContext
from anymodel.attention_backend.metadata import AttentionMetadata

Replay = Callable[[], torch.Tensor]  # runs the captured forward, returns its (static) hidden [P, H]
_MAX_CAPTURE_SIZE = 512


def capture_sizes(max_num_seqs: int) -> tuple[int, ...]:
    """1, 2, 4, then every multiple of 8 below `max_num_seqs`, then `max_num_seqs` (at most 512):
    padding wastes at most 7 rows, and a full batch never falls back to eager."""
    top = min(max_num_seqs, _MAX_CAPTURE_SIZE)
    return tuple(s for s in (1, 2, 4, *range(8, top, 8)) if s < top) + (top,)


class CudaGraphCapture:
    """Warm the forward up on a side stream (Triton compiles, lazy inits), then record it; every
    graph draws on one memory pool, captured largest first so the smaller ones reuse its blocks."""

    def __init__(self) -> None:
        self.pool = None

    def __call__(self, forward: Callable[[], torch.Tensor]) -> Replay:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            hidden = forward()
        if self.pool is None:
            self.pool = graph.pool()

        def replay() -> torch.Tensor:
            graph.replay()
            return hidden

        return replay


def eager_capture(forward: Callable[[], torch.Tensor]) -> Replay:
    """No graph: "capture" runs the forward once, "replay" runs it again over the same buffers."""
    forward()
    return forward


@dataclass(frozen=True)
class GraphSpec:
    sizes: tuple[int, ...]  # batch sizes to capture
    max_seq_len: int  # the longest context a request may reach (sizes the attention launch)
    capture: Callable[[Callable[[], torch.Tensor]], Replay] = field(default_factory=CudaGraphCapture)


@dataclass
class DecodeBuffers:
    """Static inputs of every graph, sized for the largest one (N rows); graph P uses rows [:P]."""

    input_ids: torch.Tensor  # [1, N] int64
    positions: torch.Tensor  # [1, N] int64
    query_start_loc: torch.Tensor  # [N + 1] int32, = arange: one query token per row, never changes
    seq_lens: torch.Tensor  # [N] int32
    block_tables: torch.Tensor  # [N, max_blocks] int32
    slot_mapping: torch.Tensor  # [N] int64

    @classmethod
    def allocate(cls, rows: int, max_blocks: int, device: torch.device) -> "DecodeBuffers":
        def zeros(*shape, dtype=torch.int32):
            return torch.zeros(*shape, dtype=dtype, device=device)

        return cls(
            input_ids=zeros(1, rows, dtype=torch.long), positions=zeros(1, rows, dtype=torch.long),
            query_start_loc=torch.arange(rows + 1, dtype=torch.int32, device=device),
            seq_lens=torch.ones(rows, dtype=torch.int32, device=device), block_tables=zeros(rows, max_blocks),
            slot_mapping=torch.full((rows,), -1, dtype=torch.long, device=device),
        )

    def load(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, size: int) -> None:
        """Copy a step's B rows (CPU tensors) in, and make rows B..size-1 padding."""
        b, width = meta.num_reqs, meta.block_tables.shape[1]
        self.input_ids[:, :b].copy_(input_ids, non_blocking=True)
        self.positions[:, :b].copy_(positions, non_blocking=True)
        self.seq_lens[:b].copy_(meta.seq_lens, non_blocking=True)
        self.block_tables[:b, :width].copy_(meta.block_tables, non_blocking=True)
        self.slot_mapping[:b].copy_(meta.slot_mapping, non_blocking=True)
        if size > b:  # a padding row must never carry a real request's slot or length from an earlier step
            self.input_ids[:, b:size] = 0
            self.positions[:, b:size] = 0
            self.seq_lens[b:size] = 1
            self.block_tables[b:size, 0] = 0
            self.slot_mapping[b:size] = -1

    def metadata(self, size: int, max_seq_len: int, block_size: int) -> AttentionMetadata:
        """Graph `size`'s metadata: views of the buffers, so `load` refills it in place."""
        return AttentionMetadata(
            query_start_loc=self.query_start_loc[: size + 1], seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size], slot_mapping=self.slot_mapping[:size],
            max_query_len=1, max_seq_len=max_seq_len, block_size=block_size,
        )


class DecodeGraphs:
    """One replayable forward per capture size, over one set of `DecodeBuffers`."""

    def __init__(self, model: torch.nn.Module, spec: GraphSpec, block_size: int, kv_caches, backend,
                 device: torch.device) -> None:
        max_blocks = -(-spec.max_seq_len // block_size)
        self.buffers = DecodeBuffers.allocate(max(spec.sizes), max_blocks, device)
        self.sizes = sorted(spec.sizes)
        self.replays: dict[int, Replay] = {}
        self.num_replays = 0  # steps served by a graph (stats, tests)
        for size in reversed(self.sizes):
            meta = self.buffers.metadata(size, spec.max_seq_len, block_size)
            self.replays[size] = spec.capture(self._forward(model, size, meta, kv_caches, backend))

    def _forward(self, model: torch.nn.Module, size: int, meta: AttentionMetadata, kv_caches,
                 backend) -> Callable[[], torch.Tensor]:
        ids, positions = self.buffers.input_ids[:, :size], self.buffers.positions[:, :size]

        def forward() -> torch.Tensor:
            # a new context per forward: layers count from 0, per-forward values derive from the buffers' contents
            with ForwardContext.paged(meta, kv_caches, backend):
                return model(ids, positions, meta)  # [size, H]

        return forward

    def size_for(self, meta: AttentionMetadata, has_token_types: bool) -> int | None:
        """The graph that serves this step, or None (not a pure decode step, or too large)."""
        if meta.max_query_len != 1 or has_token_types or meta.block_tables.shape[1] > self.buffers.block_tables.shape[1]:
            return None
        return next((s for s in self.sizes if s >= meta.num_reqs), None)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, size: int) -> torch.Tensor:
        """CPU step inputs -> hidden [B, H] (a view of the graph's output: read it before the next step)."""
        self.buffers.load(input_ids, positions, meta, size)
        self.num_replays += 1
        return self.replays[size]()[: meta.num_reqs]
