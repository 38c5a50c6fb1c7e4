"""Unified paged attention: one launch for a mixed batch of prefills, prefill chunks and decodes.

Work split (grid = (q tiles, KV heads, splits)):

    flat tokens  | r0: q0 tokens           | r1: 1 | r2: q2 tokens  |
    q tiles      | t0 | t1 | t2 (partial)  | t3    | t4 | t5        |   BLOCK_Q tokens each
    request i owns tiles from  query_start_loc[i] // BLOCK_Q + i  (found by binary search, no host sync)

A program takes one q tile and one KV head, and stacks all GROUP query heads of that KV head as
rows of its Q tile (GQA/MQA without repeating K/V):

    Q rows  [BLOCK_M = BLOCK_Q * G_PAD, D_PAD]   row m = (token m // G_PAD, head m % G_PAD)

It walks the request's keys TILE_N at a time, looking each key's physical block up in the block
table (so a tile may span several cache blocks, and any block size works), and keeps an online
softmax in fp32 (log2 domain). Key tiles wholly outside the causal limit or the sliding window are
never visited. With NUM_SPLITS > 1 (flash-decoding), the key range is cut in NUM_SPLITS parts
handled by separate programs, which write unnormalised partials that `_reduce_splits_kernel` merges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import triton
import triton.language as tl

from anymodel.attention_backend.metadata import AttentionMetadata

LOG2E = 1.4426950408889634


@triton.jit
def _tanh(x):
    """tanh from exp, stable for large |x| (tl has no portable tanh across backends/interpreter)."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _find_request(query_start_loc, num_reqs, tile, BLOCK_Q: tl.constexpr):
    """Last request i whose first q tile (query_start_loc[i] // BLOCK_Q + i) is <= `tile`."""
    lo = tl.zeros([], dtype=tl.int32)
    hi = lo + num_reqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first_tile = tl.load(query_start_loc + mid) // BLOCK_Q + mid
        if first_tile <= tile:
            lo = mid
        else:
            hi = mid - 1
    return lo


@triton.jit
def _key_tile_range(q_first, q_last, seq_len, window, split,
                    TILE_N: tl.constexpr, CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr,
                    NUM_SPLITS: tl.constexpr):
    """Key tiles [lo, hi) this program visits, for queries at positions q_first..q_last."""
    k_end = seq_len
    if CAUSAL:
        k_end = q_last + 1  # no query in the tile sees beyond the last one
    elif USE_WINDOW:
        k_end = tl.minimum(q_last + window, seq_len)  # bidirectional window: k - q < window too
    k_start = q_first * 0
    if USE_WINDOW:
        k_start = tl.maximum(q_first - window + 1, 0)  # keys q - k < window
    lo = k_start // TILE_N
    hi = tl.cdiv(k_end, TILE_N)
    per_split = tl.cdiv(hi - lo, NUM_SPLITS)
    lo = lo + split * per_split
    return lo, tl.minimum(lo + per_split, hi)


@triton.jit
def _attend_tile(acc, m_i, l_i, q, key_cache, value_cache, k_off, v_off, k_pos, q_pos, d,
                 seq_len, window, score_mul, cap_mul, slope,
                 HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr,
                 USE_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_ALIBI: tl.constexpr):
    """One online-softmax step over keys `k_pos` [TILE_N]; q [BLOCK_M, D_PAD], acc [BLOCK_M, D_PAD].

    `k_off`/`v_off` [TILE_N] (int64): where each key's row starts in the caches (block table lookup
    done by the caller).
    """
    k_ok = k_pos < seq_len
    d_ok = d < HEAD_DIM
    kt = tl.load(key_cache + k_off[None, :] + d[:, None], mask=d_ok[:, None] & k_ok[None, :], other=0.0)
    s = tl.dot(q, kt, input_precision=DOT_PRECISION)  # [BLOCK_M, TILE_N] fp32
    if USE_SOFTCAP:  # softcap * tanh(s * scale / softcap), then into the log2 domain
        s = cap_mul * _tanh(s * score_mul)
    else:
        s = s * score_mul
    if USE_ALIBI:  # slope [BLOCK_M] per row's head, already in log2 units
        s = s + slope[:, None] * (k_pos[None, :] - q_pos[:, None]).to(tl.float32)
    allowed = k_ok[None, :]
    if CAUSAL:
        allowed = allowed & (k_pos[None, :] <= q_pos[:, None])
    if USE_WINDOW:  # causal: the window - 1 keys behind; bidirectional: |q - k| < window
        dist = q_pos[:, None] - k_pos[None, :]
        if not CAUSAL:
            dist = tl.abs(dist)
        allowed = allowed & (dist < window)
    s = tl.where(allowed, s, float("-inf"))

    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: avoid inf - inf
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    v = tl.load(value_cache + v_off[:, None] + d[None, :], mask=k_ok[:, None] & d_ok[None, :], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _paged_attention_kernel(
    query, key_cache, value_cache, out, part_m, part_l,
    query_start_loc, seq_lens, block_tables, sinks, alibi,
    num_reqs, window, score_mul, cap_mul,
    stride_qt, stride_qh,  # query [T, Hq, D]
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,  # caches [N, B, Hkv, D]
    stride_ot, stride_oh, stride_os,  # out [T, Hq, D], or partial acc [T, Hq, S, D] when split
    stride_mt, stride_mh,  # part_m / part_l [T, Hq, S]
    stride_bt,  # block_tables [R, max_blocks]
    GROUP: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, TILE_N: tl.constexpr,
    CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr,
    NUM_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_SINKS: tl.constexpr,
    USE_ALIBI: tl.constexpr,
):
    tile, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    req = _find_request(query_start_loc, num_reqs, tile, BLOCK_Q)
    q_begin = tl.load(query_start_loc + req)
    q_len = tl.load(query_start_loc + req + 1) - q_begin
    q_tile_start = (tile - (q_begin // BLOCK_Q + req)) * BLOCK_Q  # first query of the tile, in-request
    if q_tile_start >= q_len:  # the grid is an upper bound on the tile count
        return
    seq_len = tl.load(seq_lens + req)
    context = seq_len - q_len

    m = tl.arange(0, BLOCK_M)  # BLOCK_M = BLOCK_Q * G_PAD
    q_idx = q_tile_start + m // G_PAD  # query index within the request, per row
    head = kv_head * GROUP + m % G_PAD
    row_ok = (q_idx < q_len) & (m % G_PAD < GROUP)
    q_pos = context + q_idx  # absolute position of each row's query
    token = (q_begin + q_idx).to(tl.int64)
    d = tl.arange(0, D_PAD)
    q = tl.load(query + token[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None] & (d[None, :] < HEAD_DIM), other=0.0)
    q = q.to(key_cache.dtype.element_ty)

    q_last = context + tl.minimum(q_tile_start + BLOCK_Q, q_len) - 1
    lo, hi = _key_tile_range(context + q_tile_start, q_last, seq_len, window, split,
                             TILE_N, CAUSAL, USE_WINDOW, NUM_SPLITS)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if USE_SINKS:  # a sink is one more score (log2 units) with no value: it starts the softmax
        if split == 0:  # counted once, by the first split
            m_i = tl.load(sinks + head, mask=row_ok, other=0.0).to(tl.float32) * 1.4426950408889634
            l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    slope = tl.zeros([BLOCK_M], dtype=tl.float32)
    if USE_ALIBI:  # ALiBi slopes [Hq], into the log2 domain like the scores
        slope = tl.load(alibi + head, mask=row_ok, other=0.0).to(tl.float32) * 1.4426950408889634
    for j in range(lo, hi):
        k_pos = j * TILE_N + tl.arange(0, TILE_N)
        block = tl.load(block_tables + req * stride_bt + k_pos // BLOCK_SIZE, mask=k_pos < seq_len, other=0)
        block = block.to(tl.int64)  # block * stride can pass 2^31 in a large cache
        in_block = k_pos % BLOCK_SIZE
        k_off = block * stride_kb + in_block * stride_kt + kv_head * stride_kh
        v_off = block * stride_vb + in_block * stride_vt + kv_head * stride_vh
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, key_cache, value_cache, k_off, v_off, k_pos, q_pos, d,
                                     seq_len, window, score_mul, cap_mul, slope,
                                     HEAD_DIM, CAUSAL, USE_WINDOW, USE_SOFTCAP, DOT_PRECISION, USE_ALIBI)

    o_ptr = out + token[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
    o_mask = row_ok[:, None] & (d[None, :] < HEAD_DIM)
    if NUM_SPLITS == 1:
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        tl.store(o_ptr, (acc / l_safe[:, None]).to(out.dtype.element_ty), mask=o_mask)
    else:  # unnormalised partials; the reduce kernel rescales them to a common max
        tl.store(o_ptr + split * stride_os, acc, mask=o_mask)
        stat = token * stride_mt + head * stride_mh + split
        tl.store(part_m + stat, m_i, mask=row_ok)
        tl.store(part_l + stat, l_i, mask=row_ok)


@triton.jit
def _reduce_splits_kernel(
    part_acc, part_m, part_l, out,
    stride_pt, stride_ph, stride_ps,  # part_acc [T, Hq, S, D]
    stride_mt, stride_mh,  # part_m / part_l [T, Hq, S]
    stride_ot, stride_oh,  # out [T, Hq, D]
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr,
):
    """out[t, h] = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s, with M = max_s m_s."""
    t, h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    s = tl.arange(0, S_PAD)
    d = tl.arange(0, D_PAD)
    s_ok = s < NUM_SPLITS
    m = tl.load(part_m + t * stride_mt + h * stride_mh + s, mask=s_ok, other=float("-inf"))
    l_s = tl.load(part_l + t * stride_mt + h * stride_mh + s, mask=s_ok, other=0.0)
    m_max = tl.max(m, 0)
    w = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # empty splits weigh 0
    acc_ptr = part_acc + t * stride_pt + h * stride_ph + s[:, None] * stride_ps + d[None, :]
    acc = tl.load(acc_ptr, mask=s_ok[:, None] & (d[None, :] < HEAD_DIM), other=0.0)
    o = tl.sum(acc * w[:, None], 0) / tl.sum(l_s * w, 0)
    tl.store(out + t * stride_ot + h * stride_oh + d, o.to(out.dtype.element_ty), mask=d < HEAD_DIM)


@dataclass(frozen=True)
class LaunchConfig:
    block_q: int  # query tokens per program (rows = block_q * G_PAD)
    tile_n: int  # keys per inner-loop step
    num_splits: int = 1
    num_warps: int = 4
    num_stages: int = 2


def launch_config(device: torch.device, dtype: torch.dtype, head_dim: int, group: int, max_query_len: int,
                  max_seq_len: int, num_programs: int) -> LaunchConfig:
    """Tile sizes for this step (sized with ptxas for sm_90: no register spills).

    `dtype`: the cache's; `num_programs`: requests x KV heads, the decode grid without splits.
    """
    g_pad = triton.next_power_of_2(group)
    wide = head_dim > 128

    def rows(n: int) -> int:  # query tokens per program for n Q rows (tl.dot needs >= 16 rows)
        return max(1, n // g_pad)

    if device.type != "cuda":  # interpreter: small tiles so the tests cross tile boundaries
        return LaunchConfig(block_q=rows(16), tile_n=16)
    if dtype == torch.float32:  # IEEE fp32 dots run on FMA units with large register tiles
        cfg = LaunchConfig(block_q=rows(16), tile_n=16 if wide else 32, num_warps=4 if wide else 8)
    elif max_query_len == 1:  # decode: spare rows are free, the loop is memory bound
        cfg = LaunchConfig(block_q=rows(16), tile_n=32 if wide else 64)
    else:
        cfg = LaunchConfig(block_q=rows(32 if wide else 64), tile_n=32 if wide else 64, num_warps=8 if wide else 4)
    if max_query_len == 1:
        cfg = replace(cfg, num_splits=num_splits(max_seq_len, num_programs, _num_sms(device.index)))
    return cfg


def num_splits(max_seq_len: int, num_programs: int, num_sms: int,
               min_tokens_per_split: int = 512, max_splits: int = 32) -> int:
    """Flash-decoding heuristic: split keys only when the grid cannot fill the GPU on its own."""
    target = 2 * num_sms
    if num_programs >= target or max_seq_len < 2 * min_tokens_per_split:
        return 1
    return max(1, min(math.ceil(target / num_programs), max_seq_len // min_tokens_per_split, max_splits))


@lru_cache(maxsize=None)
def _num_sms(index: int | None) -> int:
    index = torch.cuda.current_device() if index is None else index
    return torch.cuda.get_device_properties(index).multi_processor_count


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
    """query [T, Hq, D], caches [N, B, Hkv, D] -> out [T, Hq, D] (query's dtype); `sinks` [Hq]:
    learnable sink logits (GPT-OSS) that join each head's softmax denominator; `alibi_slopes` [Hq]:
    ALiBi, score + slope * (key position - query position)."""
    T, Hq, D = query.shape
    Hkv = key_cache.shape[2]
    cfg = launch_config(query.device, key_cache.dtype, D, Hq // Hkv, meta.max_query_len, meta.max_seq_len,
                        meta.num_reqs * Hkv)
    return run(query, key_cache, value_cache, meta, cfg, scale=scale, causal=causal,
               sliding_window=sliding_window, softcap=softcap, sinks=sinks, alibi_slopes=alibi_slopes)


def run(query, key_cache, value_cache, meta: AttentionMetadata, cfg: LaunchConfig, *, scale: float,
        causal: bool, sliding_window: int | None, softcap: float | None,
        sinks: torch.Tensor | None = None, alibi_slopes: torch.Tensor | None = None) -> torch.Tensor:
    """`paged_attention` with an explicit launch config (tests force split-K and tile sizes here)."""
    T, Hq, D = query.shape
    Hkv = key_cache.shape[2]
    _check(query, key_cache, value_cache)
    out = torch.empty_like(query)
    if T == 0:
        return out
    use_softcap = softcap is not None and softcap > 0
    split = cfg.num_splits > 1
    part_shape = (T, Hq, cfg.num_splits)
    part_acc = torch.empty(*part_shape, D, dtype=torch.float32, device=query.device) if split else out
    part_m = torch.empty(part_shape, dtype=torch.float32, device=query.device) if split else out
    part_l = torch.empty_like(part_m) if split else out
    g_pad = triton.next_power_of_2(Hq // Hkv)
    sink_logits = sinks.to(device=query.device, dtype=torch.float32).contiguous() if sinks is not None else out
    slopes = alibi_slopes.to(device=query.device, dtype=torch.float32).contiguous() if alibi_slopes is not None else out
    grid = (T // cfg.block_q + meta.num_reqs, Hkv, cfg.num_splits)
    _paged_attention_kernel[grid](
        query, key_cache, value_cache, part_acc, part_m, part_l,
        meta.query_start_loc, meta.seq_lens, meta.block_tables, sink_logits, slopes,
        meta.num_reqs, sliding_window or 0,
        scale / softcap if use_softcap else scale * LOG2E, softcap * LOG2E if use_softcap else 1.0,
        query.stride(0), query.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        part_acc.stride(0), part_acc.stride(1), part_acc.stride(2) if split else 0,
        part_m.stride(0) if split else 0, part_m.stride(1) if split else 0,
        meta.block_tables.stride(0),
        GROUP=Hq // Hkv, G_PAD=g_pad, HEAD_DIM=D, D_PAD=triton.next_power_of_2(D),
        BLOCK_SIZE=key_cache.shape[1], BLOCK_Q=cfg.block_q, BLOCK_M=cfg.block_q * g_pad,
        TILE_N=cfg.tile_n,
        CAUSAL=bool(causal), USE_WINDOW=sliding_window is not None, USE_SOFTCAP=use_softcap,
        NUM_SPLITS=cfg.num_splits, DOT_PRECISION="ieee" if key_cache.dtype == torch.float32 else "tf32",
        USE_SINKS=sinks is not None, USE_ALIBI=alibi_slopes is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if split:
        _reduce_splits_kernel[(T, Hq)](
            part_acc, part_m, part_l, out,
            part_acc.stride(0), part_acc.stride(1), part_acc.stride(2),
            part_m.stride(0), part_m.stride(1), out.stride(0), out.stride(1),
            HEAD_DIM=D, D_PAD=triton.next_power_of_2(D), NUM_SPLITS=cfg.num_splits,
            S_PAD=triton.next_power_of_2(cfg.num_splits),
        )
    return out


def _check(query, key_cache, value_cache) -> None:
    Hq, D = query.shape[1:]
    Hkv = key_cache.shape[2]
    if Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) must be a multiple of KV heads ({Hkv})")
    if key_cache.shape[3] != D or value_cache.shape != key_cache.shape:
        raise ValueError(f"cache shape {tuple(key_cache.shape)} does not match query head dim {D}")
    if D > 256:
        raise ValueError(f"head dim {D} > 256 is not supported by the Triton kernel")
    for t in (query, key_cache, value_cache):
        if t.stride(-1) != 1:
            raise ValueError("paged_attention needs the head dim contiguous (stride 1)")
