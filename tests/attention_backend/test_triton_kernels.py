"""Triton kernels (store + unified paged attention + split-K) against torch_ref, the selector, and
the flash-attn wrapper's argument mapping.

On CPU the kernels run in Triton's interpreter (see conftest), so shapes stay tiny; on a GPU the same
tests run compiled, and the `gpu`-marked ones add real shapes, bf16 and head dim 256.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import types

import pytest
import torch
import triton

from anymodel.attention_backend import torch_ref

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=3e-3, rtol=1e-2),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
ATTN_KEYS = ("causal", "sliding_window", "softcap", "scale")


def split_case(case: dict) -> tuple[dict, dict]:
    """A case dict -> (make_batch kwargs, paged_attention kwargs)."""
    case = dict(case)
    attn = {k: case.pop(k) for k in ATTN_KEYS if k in case}
    attn.setdefault("scale", case.get("head_dim", 16) ** -0.5)
    return case, attn


def check_against_ref(b, attn_fn, attn, dtype=torch.float32):
    torch_ref.store_kv(b.key, b.value, b.key_cache, b.value_cache, b.meta.slot_mapping)
    got = attn_fn(b.query, b.key_cache, b.value_cache, b.meta, **attn)
    want = torch_ref.paged_attention(b.query, b.key_cache, b.value_cache, b.meta, **attn)
    assert got.dtype == b.query.dtype and got.shape == b.query.shape
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


# --- store ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_store_kv_matches_ref(dtype, device, triton_backend, paged_batch):
    b = paged_batch([3, 1, 6], [3, 9, 20], head_dim=80, num_kv_heads=3, block_size=4, dtype=dtype, device=device)
    kv = torch.zeros(2, *b.key_cache.shape, dtype=dtype, device=device)  # one tensor: caches are strided views
    key = b.key.transpose(0, 1).contiguous().transpose(0, 1)  # [T, Hkv, D] view, as the interface passes it
    ref_k, ref_v = b.key_cache.clone().zero_(), b.value_cache.clone().zero_()
    triton_backend.store_kv(key, b.value.float(), kv[0], kv[1], b.meta.slot_mapping)  # value cast to the cache
    torch_ref.store_kv(key, b.value.float(), ref_k, ref_v, b.meta.slot_mapping)
    assert torch.equal(kv[0], ref_k) and torch.equal(kv[1], ref_v)


def test_store_kv_skips_negative_slots(device, triton_backend):
    cache = torch.zeros(2, 4, 1, 16, device=device)
    key = torch.ones(3, 1, 16, device=device)
    triton_backend.store_kv(key, key, cache, cache.clone(), torch.tensor([5, -1, 2], device=device))
    assert cache.view(-1, 16).sum(1).nonzero().flatten().tolist() == [2, 5]


# --- unified paged attention ------------------------------------------------------------------------

CASES = {
    "mixed_prefill_prefix_decode": dict(query_lens=[1, 9, 5], seq_lens=[13, 9, 29], head_dim=32),
    "mqa_block4": dict(query_lens=[3, 1, 6], seq_lens=[3, 17, 38], num_heads=4, num_kv_heads=1, block_size=4),
    "mha_bidirectional": dict(query_lens=[7, 1], seq_lens=[7, 12], num_heads=2, num_kv_heads=2, block_size=4,
                              causal=False),
    "window_chunked": dict(query_lens=[6, 1, 4], seq_lens=[30, 25, 11], block_size=4, sliding_window=5),
    "softcap": dict(query_lens=[5, 1], seq_lens=[20, 33], num_kv_heads=4, scale=1.0, softcap=3.0),
    "window_softcap_bidirectional": dict(query_lens=[8], seq_lens=[19], num_heads=2, num_kv_heads=1,
                                         block_size=4, sliding_window=4, softcap=2.0, causal=False),
    # q tile 0..7 (8 tokens per tile on CPU) sees keys up to 16 = the first key of the next key tile
    "bidirectional_window_tile_edge": dict(query_lens=[20, 1], seq_lens=[20, 9], num_heads=2, num_kv_heads=1,
                                           causal=False, sliding_window=10),
    "group3_dim80_fp16": dict(query_lens=[1, 4], seq_lens=[21, 4], num_heads=6, num_kv_heads=2, head_dim=80,
                              dtype=torch.float16, sliding_window=9),
    "decode_block_edges": dict(query_lens=[1, 1, 1], seq_lens=[1, 16, 33], num_heads=8, num_kv_heads=2, head_dim=32),
    "gqa4_fp16": dict(query_lens=[4, 1], seq_lens=[17, 32], num_heads=8, num_kv_heads=2, dtype=torch.float16),
    "many_q_tiles": dict(query_lens=[37], seq_lens=[37], num_heads=2, num_kv_heads=1, block_size=16),
}


@pytest.mark.parametrize("name", CASES)
def test_paged_attention_matches_ref(name, device, triton_backend, paged_batch):
    case, attn = split_case(CASES[name])
    b = paged_batch(device=device, seed=len(name), **case)
    check_against_ref(b, triton_backend.paged_attention, attn, case.get("dtype", torch.float32))


@pytest.mark.parametrize("seed", range(4))
def test_paged_attention_random_batches(seed, device, triton_backend, paged_batch):
    rnd = random.Random(seed)
    num_kv_heads = rnd.choice([1, 2])
    R = rnd.randint(1, 3)
    query_lens = [rnd.choice([1, rnd.randint(1, 12)]) for _ in range(R)]
    seq_lens = [q + rnd.randint(0, 25) for q in query_lens]
    case = dict(num_kv_heads=num_kv_heads, num_heads=num_kv_heads * rnd.choice([1, 2, 3, 4]),
                block_size=rnd.choice([4, 16]), head_dim=rnd.choice([16, 32]))
    attn = dict(scale=rnd.uniform(0.05, 1.0), causal=rnd.random() < 0.8,
                sliding_window=rnd.choice([None, None, rnd.randint(1, 12)]), softcap=rnd.choice([None, 4.0]))
    b = paged_batch(query_lens, seq_lens, device=device, seed=seed, **case)
    check_against_ref(b, triton_backend.paged_attention, attn)


def test_paged_attention_strided_query(device, triton_backend, paged_batch):
    """The interface hands over query[0].transpose(0, 1): [T, Hq, D] with T not the outer stride."""
    b = paged_batch([4, 1], [9, 6], device=device)
    b.query = b.query.transpose(0, 1).contiguous().transpose(0, 1)
    check_against_ref(b, triton_backend.paged_attention, dict(scale=0.25))


def test_empty_step(device, triton_backend, paged_batch):
    b = paged_batch([1], [3], device=device)
    out = triton_backend.paged_attention(b.query[:0], b.key_cache, b.value_cache, b.meta, scale=1.0)
    assert out.shape == (0, 4, 16)


# --- split-K (flash-decoding) -----------------------------------------------------------------------

SPLIT_CASES = {
    "decode": (dict(query_lens=[1, 1, 1], seq_lens=[5, 38, 23], num_heads=4, num_kv_heads=1), {}),
    "mixed_window": (dict(query_lens=[1, 6], seq_lens=[30, 39], block_size=4), dict(sliding_window=7)),
    "softcap_bidirectional": (dict(query_lens=[1, 3], seq_lens=[26, 12], head_dim=32),
                              dict(softcap=2.0, causal=False, scale=0.5)),
}


@pytest.mark.parametrize("splits", [2, 5])
@pytest.mark.parametrize("name", SPLIT_CASES)
def test_split_k_matches_ref(name, splits, device, triton_pa, paged_batch):
    case, attn = SPLIT_CASES[name]
    attn = {"scale": 0.3, "causal": True, "sliding_window": None, "softcap": None, **attn}
    b = paged_batch(device=device, seed=splits, **case)
    g_pad = triton.next_power_of_2(b.query.shape[1] // b.key_cache.shape[2])
    cfg = triton_pa.LaunchConfig(block_q=16 // g_pad, tile_n=16, num_splits=splits)  # 5 splits: some are empty
    check_against_ref(b, lambda *args, **kw: triton_pa.run(*args, cfg, **kw), attn)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("causal, window", [(True, None), (True, 6), (False, None)])
def test_sinks_match_ref(splits, causal, window, device, triton_pa, paged_batch):
    """GPT-OSS sinks: one extra logit per query head in the softmax, counted once across splits."""
    b = paged_batch([1, 5, 1], [20, 9, 3], num_heads=4, num_kv_heads=2, block_size=4, device=device, seed=splits)
    sinks = torch.tensor([2.0, -1.0, 0.5, 4.0], device=device)  # large enough to change the output
    g_pad = triton.next_power_of_2(2)
    cfg = triton_pa.LaunchConfig(block_q=16 // g_pad, tile_n=16, num_splits=splits)
    attn = dict(scale=0.4, causal=causal, sliding_window=window, softcap=None, sinks=sinks)
    check_against_ref(b, lambda *args, **kw: triton_pa.run(*args, cfg, **kw), attn)
    plain = torch_ref.paged_attention(b.query, b.key_cache, b.value_cache, b.meta, scale=0.4, causal=causal,
                                      sliding_window=window)
    sunk = torch_ref.paged_attention(b.query, b.key_cache, b.value_cache, b.meta, **attn)
    assert not torch.allclose(plain, sunk, atol=1e-3)  # the sinks matter in this case


@pytest.mark.parametrize("splits", [1, 3])
def test_alibi_matches_ref(splits, device, triton_pa, paged_batch):
    """ALiBi (Baichuan-13B): score + slope[head] * (key position - query position), across splits."""
    b = paged_batch([1, 5, 1], [20, 9, 3], num_heads=4, num_kv_heads=2, block_size=4, device=device, seed=splits)
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], device=device)
    cfg = triton_pa.LaunchConfig(block_q=8, tile_n=16, num_splits=splits)
    attn = dict(scale=0.4, causal=True, sliding_window=None, softcap=None, alibi_slopes=slopes)
    check_against_ref(b, lambda *args, **kw: triton_pa.run(*args, cfg, **kw), attn)
    plain = torch_ref.paged_attention(b.query, b.key_cache, b.value_cache, b.meta, scale=0.4)
    biased = torch_ref.paged_attention(b.query, b.key_cache, b.value_cache, b.meta, **attn)
    assert not torch.allclose(plain, biased, atol=1e-3)  # the slopes matter in this case


def test_split_heuristic(triton_pa):
    assert triton_pa.num_splits(8192, num_programs=8 * 8, num_sms=132) > 1  # 8 requests x 8k, 8 KV heads
    assert triton_pa.num_splits(8192, num_programs=256 * 8, num_sms=132) == 1  # grid already fills the GPU
    assert triton_pa.num_splits(300, num_programs=8, num_sms=132) == 1  # short context: not worth a reduce
    assert triton_pa.num_splits(10**6, num_programs=1, num_sms=132) == 32  # capped
    assert triton_pa.launch_config(torch.device("cpu"), torch.float16, 16, 1, 1, 8192, 1).num_splits == 1


# --- selector -----------------------------------------------------------------------------------------

def test_selector_names_and_errors(monkeypatch, caplog):
    from anymodel.attention_backend import selector

    with pytest.raises(ValueError, match=r"unsupported attention_backend 'x'; supported: \['auto', 'triton'"):
        selector.get_backend("x", torch.device("cpu"))
    with caplog.at_level(logging.INFO, logger="anymodel"):
        assert selector.get_backend("auto", "cpu") is torch_ref
    assert "'torch'" in caplog.text
    assert selector.get_backend("torch", torch.device("cpu")) is torch_ref
    with pytest.raises(ValueError, match="flash_attn.*CUDA"):
        selector.get_backend("flash_attn", torch.device("cpu"))
    monkeypatch.delenv("ANYMODEL_TRITON_ON_CPU", raising=False)
    with pytest.raises(ValueError, match="triton.*CUDA"):
        selector.get_backend("triton", torch.device("cpu"))


def test_selector_triton_on_cpu_and_auto_on_cuda(monkeypatch, triton_backend):
    from anymodel.attention_backend import selector

    monkeypatch.setenv("ANYMODEL_TRITON_ON_CPU", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert selector.get_backend("triton", "cpu") is triton_backend
    # no flash-attn: Triton on CUDA (only the name is resolved, no CUDA call is made)
    monkeypatch.setattr(selector, "_import_error", lambda m: ImportError(m) if m == "flash_attn" else None)
    assert selector.get_backend("auto", torch.device("cuda")) is triton_backend
    with pytest.raises(ValueError, match="pip install 'anymodel\\[flash\\]'"):
        selector.get_backend("flash_attn", torch.device("cuda"))
    monkeypatch.setattr(selector, "_import_error", lambda m: None)
    from anymodel.attention_backend import flash_attn as flash_backend

    assert selector.get_backend("auto", torch.device("cuda")) is flash_backend


# --- flash-attn wrapper (a fake flash_attn written to its documented semantics) -----------------------

def fake_flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                                softmax_scale, causal, window_size, softcap, block_table):
    """Bottom-right aligned causal mask; keys in [i + sk - sq - left, i + sk - sq + right]."""
    out = torch.empty_like(q)
    for b in range(len(cu_seqlens_q) - 1):
        q0, q1 = cu_seqlens_q[b].item(), cu_seqlens_q[b + 1].item()
        sk = (cu_seqlens_k[b + 1] - cu_seqlens_k[b]).item()
        pos = torch.arange(sk)
        blocks = block_table[b, pos // k.shape[1]]
        kk, vv = k[blocks, pos % k.shape[1]].float(), v[blocks, pos % k.shape[1]].float()  # [sk, Hkv, D]
        rep = q.shape[1] // k.shape[2]
        kk, vv = kk.repeat_interleave(rep, 1), vv.repeat_interleave(rep, 1)
        s = torch.einsum("qhd,khd->hqk", q[q0:q1].float(), kk) * softmax_scale
        if softcap > 0:
            s = torch.tanh(s / softcap) * softcap
        i = torch.arange(q1 - q0)[:, None] + sk - (q1 - q0)  # query i's diagonal key
        left, right = window_size
        right = 0 if causal else right
        ok = torch.ones(q1 - q0, sk, dtype=torch.bool)
        if left >= 0:
            ok &= pos[None] >= i - left
        if right >= 0:
            ok &= pos[None] <= i + right
        out[q0:q1] = torch.einsum("hqk,khd->qhd", s.masked_fill(~ok, -math.inf).softmax(-1), vv).to(q.dtype)
    return out


@pytest.mark.parametrize("attn", [dict(), dict(causal=False), dict(sliding_window=5, softcap=3.0),
                                  dict(sliding_window=3, causal=False)])
def test_flash_attn_wrapper_mapping(attn, monkeypatch, paged_batch):
    fake = types.SimpleNamespace(flash_attn_varlen_func=fake_flash_attn_varlen_func)
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    from anymodel.attention_backend import flash_attn as flash_backend

    b = paged_batch([1, 6, 3], [300, 6, 270], block_size=256, num_heads=4, num_kv_heads=2, dtype=torch.float16)
    check_against_ref(b, flash_backend.paged_attention, dict(scale=0.3, **attn), torch.float16)


def test_flash_attn_wrapper_falls_back_for_small_blocks(device, monkeypatch, paged_batch, caplog):
    def refuse(*args, **kwargs):
        raise AssertionError("flash-attn must not be called with 16-token blocks")

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=refuse))
    from anymodel.attention_backend import flash_attn as flash_backend

    monkeypatch.setattr(flash_backend, "_warned", set())
    b = paged_batch([1, 3], [10, 3], device=device)
    with caplog.at_level(logging.WARNING, logger="anymodel"):
        check_against_ref(b, flash_backend.paged_attention, dict(scale=0.3))
        check_against_ref(b, flash_backend.paged_attention, dict(scale=0.3))
    assert caplog.text.count("multiple of 256") == 1  # warned once, not per layer


# --- bench -------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU paths of the bench")
def test_bench_refuses_cpu_and_smoke_runs(capsys, triton_pa):
    from anymodel.bench import attention as bench  # runtime/bench/attention.py

    assert bench.main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert bench.main(["--interpret-smoke"]) == 0  # also checks each kernel run against torch_ref
    out = capsys.readouterr().out
    assert "decode 4x40" in out and "(4 splits)" in out


# --- GPU only: real shapes, bf16, head dim 256, the heuristic's split-K ---------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim,block_size", [(64, 16), (80, 32), (96, 64), (128, 16), (256, 32)])
def test_gpu_mixed_batch(head_dim, block_size, dtype, triton_backend, paged_batch):
    b = paged_batch([1, 1, 1, 300, 177, 1], [1000, 77, 2049, 300, 1200, 513], num_heads=16, num_kv_heads=4,
                    head_dim=head_dim, block_size=block_size, dtype=dtype, device="cuda", spare_blocks=16)
    check_against_ref(b, triton_backend.paged_attention, dict(scale=head_dim ** -0.5), dtype)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("attn", [dict(causal=False), dict(sliding_window=256), dict(softcap=30.0, scale=1.0),
                                  dict(sliding_window=100, softcap=20.0, causal=False)])
@pytest.mark.parametrize("heads", [(8, 8), (8, 1), (12, 4), (32, 4)])
def test_gpu_features(heads, attn, triton_backend, paged_batch):
    case = dict(num_heads=heads[0], num_kv_heads=heads[1], head_dim=128, dtype=torch.bfloat16, device="cuda")
    b = paged_batch([1, 250, 1, 64], [700, 250, 1500, 900], **case)
    check_against_ref(b, triton_backend.paged_attention, {"scale": 128 ** -0.5, **attn}, torch.bfloat16)


@pytest.mark.gpu
@gpu
def test_gpu_fp32_is_exact_enough(triton_backend, paged_batch):
    """fp32 caches use IEEE dots (no TF32), so fp32 greedy decoding can match Transformers'."""
    b = paged_batch([1, 40, 1], [600, 90, 33], num_heads=8, num_kv_heads=2, head_dim=64, device="cuda")
    check_against_ref(b, triton_backend.paged_attention, dict(scale=0.125), torch.float32)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_long_decode_takes_split_k(dtype, triton_backend, triton_pa, paged_batch):
    b = paged_batch([1] * 8, [8192, 8000, 5000, 8191, 4097, 7000, 6543, 1], num_heads=32, num_kv_heads=8,
                    head_dim=128, dtype=dtype, device="cuda")
    cfg = triton_pa.launch_config(b.query.device, dtype, 128, 4, 1, b.meta.max_seq_len, 8 * 8)
    assert cfg.num_splits > 1
    check_against_ref(b, triton_backend.paged_attention, dict(scale=128 ** -0.5), dtype)
    check_against_ref(b, triton_backend.paged_attention, dict(scale=128 ** -0.5, sliding_window=1000), dtype)
