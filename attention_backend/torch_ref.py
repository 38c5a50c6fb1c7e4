"""Paged attention in plain torch: the CPU path and the test oracle for the Triton kernels.

Both functions share their signature with the kernels in `triton/`:

    store_kv(key[T,Hkv,D], value[T,Hkv,D], key_cache[N,B,Hkv,D], value_cache, slot_mapping[T])
    paged_attention(query[T,Hq,D], key_cache, value_cache, meta, *, scale, causal,
                    sliding_window, softcap) -> out[T,Hq,D]

Decode requests (one query token) are attended in one vectorised gather; each prefill chunk is
attended on its own so that a long prompt never pads the decode batch.
"""

from __future__ import annotations

import torch

from anymodel.attention_backend.metadata import AttentionMetadata


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write this step's K/V rows [T, Hkv, D] into the caches at `slot_mapping` [T]."""
    key_cache.view(-1, *key_cache.shape[2:]).index_copy_(0, slot_mapping, key.to(key_cache.dtype))
    value_cache.view(-1, *value_cache.shape[2:]).index_copy_(0, slot_mapping, value.to(value_cache.dtype))


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    *,
    scale: float,
    causal: bool = True,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    out = torch.empty_like(query)
    query_lens = meta.query_lens.tolist()
    decode = [i for i, q in enumerate(query_lens) if q == 1]
    groups = [decode] if decode else []
    groups += [[i] for i, q in enumerate(query_lens) if q > 1]
    for reqs in groups:
        _attend_group(query, out, key_cache, value_cache, meta, reqs, scale, causal, sliding_window, softcap)
    return out


def _attend_group(query, out, key_cache, value_cache, meta, reqs, scale, causal, sliding_window, softcap):
    """Attend requests `reqs` together, padded to their longest query and context."""
    device = query.device
    idx = torch.tensor(reqs, device=device)
    starts = meta.query_start_loc[idx].long()  # [S]
    qlens = meta.query_lens[idx].long()  # [S]
    seq_lens = meta.seq_lens[idx].long()  # [S]
    max_q = int(qlens.max())
    max_k = int(seq_lens.max())

    # Query tokens, padded: [S, Q] flat token indices (padding points at a valid token, masked later).
    j = torch.arange(max_q, device=device)
    q_valid = j[None, :] < qlens[:, None]
    tok = torch.where(q_valid, starts[:, None] + j[None, :], starts[:, None])
    q = query[tok]  # [S, Q, Hq, D]

    # Context keys through the block table: [S, L] slots -> [S, L, Hkv, D].
    bs = meta.block_size
    pos = torch.arange(max_k, device=device)
    blocks = meta.block_tables[idx][:, pos // bs].long()  # [S, L]
    slots = blocks * bs + pos % bs
    k = key_cache.view(-1, *key_cache.shape[2:])[slots]
    v = value_cache.view(-1, *value_cache.shape[2:])[slots]

    q_pos = (seq_lens - qlens)[:, None] + j[None, :]  # [S, Q] absolute positions
    allowed = pos[None, None, :] < seq_lens[:, None, None]  # [S, 1, L]
    if causal:
        allowed = allowed & (pos[None, None, :] <= q_pos[:, :, None])
    if sliding_window is not None:
        allowed = allowed & (q_pos[:, :, None] - pos[None, None, :] < sliding_window)

    o = _masked_attention(q, k, v, allowed, scale, softcap)  # [S, Q, Hq, D]
    out[tok[q_valid]] = o[q_valid]


def _masked_attention(q, k, v, allowed, scale, softcap):
    """q [S,Q,Hq,D], k/v [S,L,Hkv,D], allowed [S,Q,L] -> [S,Q,Hq,D]; scores in float32."""
    S, Q, Hq, D = q.shape
    Hkv = k.shape[2]
    G = Hq // Hkv  # query heads per KV head: grouped, never materialising repeated K/V
    qg = q.float().view(S, Q, Hkv, G, D).permute(0, 2, 3, 1, 4)  # [S, Hkv, G, Q, D]
    kt = k.float().permute(0, 2, 3, 1)[:, :, None]  # [S, Hkv, 1, D, L]
    scores = torch.matmul(qg, kt) * scale  # [S, Hkv, G, Q, L]
    if softcap is not None and softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    vv = v.float().permute(0, 2, 1, 3)[:, :, None]  # [S, Hkv, 1, L, D]
    o = torch.matmul(probs, vv)  # [S, Hkv, G, Q, D]
    return o.permute(0, 3, 1, 2, 4).reshape(S, Q, Hq, D).to(q.dtype)
