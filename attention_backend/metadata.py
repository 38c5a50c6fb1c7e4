"""Per-step attention metadata: how a flat row of tokens maps onto requests and KV blocks.

One engine step runs R requests whose scheduled tokens are concatenated into one row of T tokens:

    tokens   | r0: q0 tokens | r1: q1 tokens | ... |      (T = sum q_i)
    query_start_loc = [0, q0, q0+q1, ..., T]            int32 [R+1]
    seq_lens[i]     = tokens of r_i in the cache after this step (computed + scheduled)   int32 [R]
    block_tables[i] = physical KV block ids of r_i, padded with 0             int32 [R, max_blocks]
    slot_mapping[t] = block_id * block_size + offset where token t's K/V go   int64 [T]

Query token j of request i sits at absolute position seq_lens[i] - q_i + j; it attends to keys at
positions <= its own (causal) or < seq_lens[i] (bidirectional), limited by a sliding window.

This is step data: built by the runner once per step and never changed afterwards (frozen). What
one forward over the step does with it (the KV caches it writes, which layer comes next, what the
kernels derive once and share across layers) is in `forward_context.ForwardContext`. A decode CUDA
graph keeps one of these over static buffers and refills the tensors in place each step; the object
itself is never reassigned. The step's other inputs (M-RoPE positions, multimodal embeddings with
their placeholder ranges, the LoRA token -> adapter mapping, speculative-decoding verification
layout) belong beside this metadata in the runner's per-step bundle, not inside it: they are not
what the attention kernels read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    query_start_loc: torch.Tensor  # int32 [R+1]
    seq_lens: torch.Tensor  # int32 [R]
    block_tables: torch.Tensor  # int32 [R, max_blocks]
    slot_mapping: torch.Tensor  # int64 [T]
    max_query_len: int
    max_seq_len: int
    block_size: int
    # Request ids in row order: lets per-request state (the compat path's HF caches) follow requests.
    request_ids: tuple[str, ...] | None = None

    @property
    def num_reqs(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.slot_mapping.shape[0]

    @property
    def query_lens(self) -> torch.Tensor:
        return self.query_start_loc[1:] - self.query_start_loc[:-1]

    @property
    def context_lens(self) -> torch.Tensor:
        """Tokens already in the cache before this step, per request."""
        return self.seq_lens - self.query_lens

    def to(self, device: torch.device | str) -> "AttentionMetadata":
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        return replace(
            self,
            query_start_loc=move(self.query_start_loc),
            seq_lens=move(self.seq_lens),
            block_tables=move(self.block_tables),
            slot_mapping=move(self.slot_mapping),
        )
