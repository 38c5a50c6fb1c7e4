"""Paged attention in plain torch: the CPU path and the test oracle for the Triton kernels.

Both functions share their signature with the kernels in `triton/`:

    store_kv(key[T,Hkv,D], value[T,Hkv,D], key_cache[N,B,Hkv,D], value_cache, slot_mapping[T])
    paged_attention(query[T,Hq,D], key_cache, value_cache, meta, *, scale, causal,
                    sliding_window, softcap) -> out[T,Hq,D]

`paged_attention` here also takes `sinks` [Hq] (learnable sink logits, GPT-OSS) and `alibi_slopes`
[Hq] (ALiBi: score + slope * (key position - query position), Baichuan-13B); a backend without
such a parameter is refused for such models at start-up (see interface.py).

Decode requests (one query token) are attended in one vectorised gather; each prefill chunk is
attended on its own so that a long prompt never pads the decode batch. K/V are gathered a whole
cache block at a time (one `index_select` row per block, not per token: ~4x faster), and keys past
a request's length are masked. The plan depends only on the step, not the layer, so it is built
once per forward and kept in the forward's scratch (forward_context.py).

The math: `_masked_attention` is the plain reference (float32 scores, any softcap or sinks);
plain attention goes through torch's fused CPU SDPA kernel, which reads the gathered K/V in
place (~2x faster per layer) and agrees with the reference to float rounding (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from anymodel.attention_backend.forward_context import current_forward, forward_scratch
from anymodel.attention_backend.kv_dtype import write_rows
from anymodel.attention_backend.metadata import AttentionMetadata


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write this step's K/V rows [T, Hkv, D] into the caches at `slot_mapping` [T]; rows with a
    negative slot (padding of a decode graph) are skipped."""
    keep = _kept_slots(slot_mapping)
    if keep is not None:
        key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    write_rows(key_cache, slot_mapping, key)
    write_rows(value_cache, slot_mapping, value)


def _kept_slots(slot_mapping: torch.Tensor) -> torch.Tensor | None:
    """[T] bool of the rows with a slot, or None when every row has one. Looked at once per forward
    (the forward's scratch, when `slot_mapping` is its metadata's), not once per layer: the check
    reads the tensor's values, a host sync on a GPU. `_padding_rows` is the uncached reference."""
    forward = current_forward()
    if forward is None or forward.metadata.slot_mapping is not slot_mapping:
        return _padding_rows(slot_mapping)
    if "kept_slots" not in forward.scratch:
        forward.scratch["kept_slots"] = _padding_rows(slot_mapping)
    return forward.scratch["kept_slots"]


def _padding_rows(slot_mapping: torch.Tensor) -> torch.Tensor | None:
    if slot_mapping.numel() and int(slot_mapping.min()) < 0:
        return slot_mapping >= 0
    return None


@dataclass
class _Group:
    """Requests attended together: all the decode requests (Q = 1 each), or one prefill chunk
    (S = 1). Either way every one of the S x Q query rows is a real token; contexts are padded to
    the longest (L), and the padding masked."""

    rows: slice | torch.Tensor  # the S*Q flat tokens, request-major; a slice when they are contiguous
    num_reqs: int  # S
    blocks: torch.Tensor  # [S * nb] cache blocks to gather, request by request (L = nb * block_size)
    q_pos: torch.Tensor  # [S, Q] absolute position of each query
    k_pos: torch.Tensor  # [L]
    k_valid: torch.Tensor  # [S, 1, L] position < seq_len
    masks: dict = field(default_factory=dict)  # (causal, window) -> allowed [S, Q, L], built once per step

    def allowed(self, causal: bool, sliding_window: int | None) -> torch.Tensor:
        key = (causal, sliding_window)
        if key not in self.masks:
            allowed = self.k_valid
            if causal:
                allowed = allowed & (self.k_pos[None, None, :] <= self.q_pos[:, :, None])
            if sliding_window is not None:  # causal: the w-1 keys behind; bidirectional: |q - k| < w
                dist = self.q_pos[:, :, None] - self.k_pos[None, None, :]
                allowed = allowed & ((dist if causal else dist.abs()) < sliding_window)
            self.masks[key] = allowed
        return self.masks[key]

    def gather(self, cache: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[N, B, Hkv, D] cache -> [S, L, Hkv, D] context of each request of the group, in `dtype`
        (an FP8 cache is dequantized here, on read)."""
        context = cache.index_select(0, self.blocks).view(self.num_reqs, -1, *cache.shape[2:])
        return context if context.dtype == dtype else context.to(dtype)


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
    sinks: torch.Tensor | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    plain = sinks is None and alibi_slopes is None and not (softcap is not None and softcap > 0)
    attend = _sdpa_attention if plain else _masked_attention
    plan = _plan(meta)
    out = None if len(plan) == 1 else torch.empty_like(query)
    for g in plan:
        q = query[g.rows].view(g.num_reqs, -1, *query.shape[1:])  # [S, Q, Hq, D]
        bias = None if alibi_slopes is None else alibi_bias(alibi_slopes, g.q_pos, g.k_pos[None])
        o = attend(q, g.gather(key_cache, q.dtype), g.gather(value_cache, q.dtype), g.allowed(causal, sliding_window),
                   scale, softcap, sinks, bias).reshape(-1, *query.shape[1:])  # [S * Q, Hq, D]
        if out is None:  # one group holds every token, in order (all decode, or one prefill)
            return o
        out[g.rows] = o
    return out


def _plan(meta: AttentionMetadata) -> list[_Group]:
    scratch = forward_scratch(meta)
    plan = scratch.get("torch_plan")
    if plan is None:
        query_lens = meta.query_lens.tolist()
        decode = [i for i, q in enumerate(query_lens) if q == 1]
        groups = ([decode] if decode else []) + [[i] for i, q in enumerate(query_lens) if q > 1]
        plan = scratch["torch_plan"] = [_group(meta, reqs) for reqs in groups]
    return plan


def _group(meta: AttentionMetadata, reqs: list[int]) -> _Group:
    device = meta.slot_mapping.device
    idx = torch.tensor(reqs, device=device)
    starts = meta.query_start_loc[idx].long()  # [S]
    qlens = meta.query_lens[idx].long()  # [S], all equal (see _Group)
    seq_lens = meta.seq_lens[idx].long()  # [S]
    S, Q = len(reqs), int(qlens[0])
    j = torch.arange(Q, device=device)
    first = int(starts[0])
    contiguous = reqs == list(range(reqs[0], reqs[0] + S))  # consecutive requests: consecutive tokens
    bs = meta.block_size
    num_blocks = -(-int(seq_lens.max()) // bs)
    pos = torch.arange(num_blocks * bs, device=device)
    return _Group(
        rows=slice(first, first + S * Q) if contiguous else (starts[:, None] + j[None, :]).view(-1),
        num_reqs=S,
        blocks=meta.block_tables[idx][:, :num_blocks].reshape(-1).long(),
        q_pos=(seq_lens - qlens)[:, None] + j[None, :],
        k_pos=pos,
        k_valid=pos[None, None, :] < seq_lens[:, None, None],
    )


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """ALiBi's score bias slope[h] * (k - q): slopes [Hq], q_pos [S, Q], k_pos [S or 1, L] ->
    [S, Hq, Q, L] float32 (the remote codes add slope * k; the same softmax, as q is fixed per row)."""
    rel = (k_pos[:, None, :] - q_pos[:, :, None]).float()  # [S, Q, L]
    return slopes.float().view(1, -1, 1, 1) * rel[:, None]


def _masked_attention(q, k, v, allowed, scale, softcap, sinks=None, bias=None):
    """q [S,Q,Hq,D], k/v [S,L,Hkv,D], allowed [S,Q,L] -> [S,Q,Hq,D]; scores in float32.
    `sinks` [Hq]: one extra logit per head in the softmax denominator, attending to nothing.
    `bias` [S, Hq, Q, L]: added to the scaled scores (ALiBi, `alibi_bias`).

    The G query heads that share a KV head are folded into the query rows ([G*Q, D] @ [D, L]), so
    K and V are read once per KV head: broadcasting K over G would copy it G times (most of a CPU
    decode step for GQA models)."""
    S, Q, Hq, D = q.shape
    L, Hkv = k.shape[1], k.shape[2]
    G = Hq // Hkv
    qg = q.float().view(S, Q, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(S, Hkv, G * Q, D)
    kt = k.float().permute(0, 2, 3, 1)  # [S, Hkv, D, L]
    scores = torch.matmul(qg, kt).view(S, Hkv, G, Q, L) * scale
    if softcap is not None and softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    if bias is not None:
        scores = scores + bias.view(S, Hkv, G, Q, L)
    scores = scores.masked_fill(~allowed[:, None, None], float("-inf"))
    if sinks is None:
        probs = torch.softmax(scores, dim=-1)
    else:  # softmax over [scores, sink], then drop the sink's column
        sink = sinks.float().view(1, Hkv, G, 1, 1).expand(S, Hkv, G, Q, 1)
        probs = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :L]
    probs = probs.reshape(S, Hkv, G * Q, L)
    o = torch.matmul(probs, v.float().permute(0, 2, 1, 3))  # [S, Hkv, G*Q, D]
    return o.view(S, Hkv, G, Q, D).permute(0, 3, 1, 2, 4).reshape(S, Q, Hq, D).to(q.dtype)


def _sdpa_attention(q, k, v, allowed, scale, softcap=None, sinks=None, bias=None):
    """`_masked_attention` without softcap or sinks, through torch's fused SDPA: q [S,Q,Hq,D],
    k/v [S,L,Hkv,D] read in place as [S,Hkv,L,D] views, allowed [S,Q,L] -> [S,Q,Hq,D]."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2)
