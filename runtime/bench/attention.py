"""`anymodel bench attention`: the Triton paged kernel against dense torch SDPA on the same shapes.

    anymodel bench attention [--dtype bf16] [--num-heads 32] [--num-kv-heads 8] [--head-dim 128]
                             [--block-size 16] [--interpret-smoke]

Cases: a prefill batch, a mixed batch (prefill chunks on a cached prefix + decodes) and long-context
decode (8 requests x 8k keys). SDPA gets contiguous K/V (no paging, no gather), so "x SDPA" > 1 means
the paged kernel beats the dense one. Decode rows add the achieved bandwidth (bytes of K/V read /
time) and a second row with the split-K choice the heuristic did not make; `--sweep` adds neighbouring
tile sizes and split counts, for tuning. Needs CUDA; `--interpret-smoke` runs tiny shapes in Triton's
CPU interpreter to check the plumbing (its timings mean nothing).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from anymodel.attention_backend.metadata import AttentionMetadata

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Case:
    name: str
    query_lens: list[int]
    seq_lens: list[int]

    @property
    def decode_only(self) -> bool:
        return max(self.query_lens) == 1


GPU_CASES = [
    Case("prefill 4x2048", [2048] * 4, [2048] * 4),
    Case("mixed 2x512@2048 + 64x1@2048", [512] * 2 + [1] * 64, [2048] * 66),
    Case("decode 8x8192", [1] * 8, [8192] * 8),
    Case("decode 64x2048", [1] * 64, [2048] * 64),
]
SMOKE_CASES = [
    Case("prefill 2x24", [24] * 2, [24] * 2),
    Case("mixed 6@20 + 3x1@30", [6, 1, 1, 1], [20, 30, 30, 30]),
    Case("decode 4x40", [1] * 4, [40] * 4),
]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.interpret_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated, i.e. imported below
        device, dtype, cases = torch.device("cpu"), torch.float32, SMOKE_CASES
        args.num_heads, args.num_kv_heads, args.head_dim = 4, 2, 32
    elif not torch.cuda.is_available():
        print("anymodel bench attention: needs a CUDA device (--interpret-smoke checks the plumbing on CPU)",
              file=sys.stderr)
        return 2
    else:
        device, dtype, cases = torch.device("cuda"), DTYPES[args.dtype], GPU_CASES
    pa = importlib.import_module("anymodel.attention_backend.triton.paged_attention")
    print(f"anymodel bench attention: {_device_name(device)}, {dtype}, Hq={args.num_heads} "
          f"Hkv={args.num_kv_heads} D={args.head_dim} block={args.block_size}")
    print(f"{'case':32} {'triton ms':>10} {'sdpa ms':>10} {'x SDPA':>7} {'triton GB/s':>12} {'sdpa GB/s':>10}")
    for case in cases:
        for line in _run_case(case, pa, args, dtype, device):
            print(line)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anymodel bench attention", description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--num-heads", type=int, default=32)
    p.add_argument("--num-kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--sweep", action="store_true", help="also time other tile sizes / split counts (tuning)")
    p.add_argument("--interpret-smoke", action="store_true", help="tiny shapes in the CPU interpreter (no GPU)")
    return p


def _run_case(case: Case, pa, args, dtype, device):
    """Yields one printed line per launch config (as soon as it is timed)."""
    query, k_cache, v_cache, meta = _paged_inputs(case, args, dtype, device)
    dense = _dense_inputs(case, query, k_cache, v_cache, meta)
    scale = args.head_dim ** -0.5
    cfg = pa.launch_config(device, dtype, args.head_dim, args.num_heads // args.num_kv_heads, meta.max_query_len,
                           meta.max_seq_len, meta.num_reqs * args.num_kv_heads)
    kernel = lambda c: pa.run(query, k_cache, v_cache, meta, c, scale=scale, causal=True,  # noqa: E731
                              sliding_window=None, softcap=None)
    sdpa_ms = _time(lambda: _sdpa(dense, scale), device)
    kv_bytes = sum(case.seq_lens) * args.num_kv_heads * args.head_dim * k_cache.element_size() * 2
    rows = [(case.name, cfg)]
    if case.decode_only:  # the heuristic's other choice, to show it chose well
        other = replace(cfg, num_splits=1 if cfg.num_splits > 1 else 4)
        rows.append((f"  ({other.num_splits} split{'s' if other.num_splits > 1 else ''})", other))
    if args.sweep:
        rows += _sweep(cfg, case, args.num_heads // args.num_kv_heads)
    for name, c in rows:
        if device.type == "cpu":
            _check_smoke(kernel(c), query, k_cache, v_cache, meta, scale)
        try:
            ms = _time(lambda c=c: kernel(c), device)
        except Exception as e:  # a swept config may not fit (shared memory, registers)
            yield f"{name:32} failed: {type(e).__name__}: {str(e)[:80]}"
            continue
        gbs = f"{kv_bytes / ms / 1e6:12.0f} {kv_bytes / sdpa_ms / 1e6:10.0f}" if case.decode_only else ""
        yield f"{name:32} {ms:10.3f} {sdpa_ms:10.3f} {sdpa_ms / ms:6.2f}x {gbs}"


def _sweep(cfg, case: Case, group: int) -> list[tuple[str, object]]:
    """Neighbouring launch configs: split counts x key tiles for decode, Q rows x key tiles x warps else."""
    g_pad = 1 << (group - 1).bit_length()
    if case.decode_only:
        return [(f"  splits={s} tile_n={t}", replace(cfg, num_splits=s, tile_n=t))
                for s in (1, 2, 4, 8, 16, 32) for t in (32, 64, 128)]
    return [(f"  rows={r} tile_n={t} warps={w}", replace(cfg, block_q=max(1, r // g_pad), tile_n=t, num_warps=w))
            for r in (64, 128) for t in (32, 64, 128) for w in (4, 8)]


def _paged_inputs(case: Case, args, dtype, device):
    """Random query [T, Hq, D] and caches [N, B, Hkv, D], each request on shuffled blocks."""
    B = args.block_size
    blocks = [-(-s // B) for s in case.seq_lens]
    ids = torch.randperm(sum(blocks), device=device).to(torch.int32)
    block_tables = torch.zeros(len(blocks), max(blocks), dtype=torch.int32, device=device)
    for i, (start, n) in enumerate(zip([0, *torch.tensor(blocks).cumsum(0).tolist()], blocks)):
        block_tables[i, :n] = ids[start:start + n]
    shape = (sum(blocks), B, args.num_kv_heads, args.head_dim)
    k_cache, v_cache = (torch.randn(shape, device=device).to(dtype) for _ in range(2))
    T = sum(case.query_lens)
    query = torch.randn(T, args.num_heads, args.head_dim, device=device).to(dtype)
    qsl = torch.tensor([0, *torch.tensor(case.query_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    seq_lens = torch.tensor(case.seq_lens, dtype=torch.int32, device=device)
    meta = AttentionMetadata(query_start_loc=qsl, seq_lens=seq_lens, block_tables=block_tables,
                             slot_mapping=torch.zeros(T, dtype=torch.int64, device=device),
                             max_query_len=max(case.query_lens), max_seq_len=max(case.seq_lens), block_size=B)
    return query, k_cache, v_cache, meta


def _dense_inputs(case: Case, query, k_cache, v_cache, meta):
    """Requests grouped by (query len, seq len) into dense [n, H, L, D] batches, as SDPA wants them."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(case.query_lens, case.seq_lens)):
        groups.setdefault(key, []).append(i)
    starts = meta.query_start_loc.tolist()
    dense = []
    for (q_len, seq_len), reqs in groups.items():
        q = torch.stack([query[starts[i]:starts[i] + q_len] for i in reqs]).transpose(1, 2)
        pos = torch.arange(seq_len, device=query.device)
        blocks = meta.block_tables[reqs][:, pos // meta.block_size].long()  # [n, L]
        k, v = (c[blocks, pos % meta.block_size].transpose(1, 2).contiguous() for c in (k_cache, v_cache))
        mask = None
        if 1 < q_len < seq_len:  # bottom-right causal: query j sits at seq_len - q_len + j
            mask = pos[None, :] <= (seq_len - q_len + torch.arange(q_len, device=query.device))[:, None]
        dense.append((q.contiguous(), k, v, mask, q_len == seq_len))
    return dense


def _sdpa(dense, scale):
    for q, k, v, mask, causal in dense:
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True)


def _check_smoke(out, query, k_cache, v_cache, meta, scale) -> None:
    from anymodel.attention_backend import torch_ref

    want = torch_ref.paged_attention(query, k_cache, v_cache, meta, scale=scale)
    err = (out - want).abs().max().item()
    if err > 1e-3:
        raise RuntimeError(f"interpreted kernel disagrees with torch_ref (max |diff| {err:.2e})")


def _time(fn, device: torch.device) -> float:
    """Milliseconds per call: triton's do_bench (median, L2 flushed) on CUDA; one call on CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
