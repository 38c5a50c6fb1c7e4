"""Per-step attention metadata: how a flat row of tokens maps onto requests and KV blocks.

One engine step runs R requests whose scheduled tokens are concatenated into one row of T tokens:

    tokens   | r0: q0 tokens | r1: q1 tokens | ... |      (T = sum q_i)
    query_start_loc = [0, q0, q0+q1, ..., T]            int32 [R+1]
    seq_lens[i]     = tokens of r_i in the cache after this step (computed + scheduled)   int32 [R]
    block_tables[i] = physical KV block ids of r_i, padded with 0             int32 [R, max_blocks]
    slot_mapping[t] = block_id * block_size + offset where token t's K/V go   int64 [T]

Query token j of request i sits at absolute position seq_lens[i] - q_i + j; it attends to keys at
positions <= its own (causal) or < seq_lens[i] (bidirectional), limited by a sliding window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class AttentionMetadata:
    query_start_loc: torch.Tensor  # int32 [R+1]
    seq_lens: torch.Tensor  # int32 [R]
    block_tables: torch.Tensor  # int32 [R, max_blocks]
    slot_mapping: torch.Tensor  # int64 [T]
    max_query_len: int
    max_seq_len: int
    block_size: int
    # One (key_cache, value_cache) pair per attention layer, each [num_blocks, block_size, Hkv, D].
    # None during the discovery pass, when the runner learns which modules attend and their shapes.
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    # Request ids in row order: lets per-request state (the compat path's HF caches) follow requests.
    request_ids: list[str] | None = None
    # The kernels to use: a module or object with `store_kv` and `paged_attention` (see torch_ref).
    backend: Any = None
    # Attention calls so far in this forward: the call order names the layer (and its cache).
    layer_cursor: int = 0
    # Filled during the discovery pass: (num_kv_heads, head_dim, dtype) per attention call.
    discovered: list[tuple[int, int, torch.dtype]] = field(default_factory=list)
    # What a backend derives from the tensors above once per forward and shares across layers
    # (torch_ref's gather plan, flash-attn's key offsets); `begin_forward` clears it.
    step_cache: dict[str, Any] = field(default_factory=dict)

    def begin_forward(self) -> None:
        """Before each forward that reuses this object (a decode graph's static metadata, whose
        tensors are refilled in place every step): layers count from 0 again, and derived values
        are recomputed from the tensors' current contents."""
        self.layer_cursor = 0
        self.step_cache.clear()

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

        return AttentionMetadata(
            query_start_loc=move(self.query_start_loc),
            seq_lens=move(self.seq_lens),
            block_tables=move(self.block_tables),
            slot_mapping=move(self.slot_mapping),
            max_query_len=self.max_query_len,
            max_seq_len=self.max_seq_len,
            block_size=self.block_size,
            kv_caches=self.kv_caches,
            request_ids=self.request_ids,
            backend=self.backend,
        )
