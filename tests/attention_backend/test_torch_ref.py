"""torch_ref (the kernels' oracle) against a naive loop written straight from the contract."""

from __future__ import annotations

import math

import pytest
import torch

from anymodel.attention_backend import torch_ref


def naive_paged_attention(query, key_cache, value_cache, meta, *, scale, causal=True, sliding_window=None,
                          softcap=None, sinks=None, allowed=None, alibi_slopes=None):
    """One query token and one head at a time, keys fetched one by one through the block table.
    `sinks` [Hq]: GPT-OSS's extra logit per head, in the softmax and then dropped. `allowed(q_pos,
    k_pos)`: which keys a query sees, instead of `causal` and `sliding_window`. `alibi_slopes` [Hq]:
    slope * (k_pos - q_pos) added to each score."""
    out = torch.zeros(query.shape, dtype=torch.float64)

    def in_window(q_pos, k_pos):  # causal: the w - 1 keys behind; bidirectional: |q - k| < w
        if allowed is not None:
            return allowed(q_pos, k_pos)
        dist = q_pos - k_pos if causal else abs(q_pos - k_pos)
        return sliding_window is None or dist < sliding_window
    Hq, Hkv = query.shape[1], key_cache.shape[2]
    B = meta.block_size
    qsl, seq_lens = meta.query_start_loc.tolist(), meta.seq_lens.tolist()
    for i, seq_len in enumerate(seq_lens):
        q_len = qsl[i + 1] - qsl[i]
        for j in range(q_len):
            q_pos = seq_len - q_len + j
            keys = [p for p in range(seq_len) if (not causal or allowed or p <= q_pos) and in_window(q_pos, p)]
            for h in range(Hq):
                kv_h = h // (Hq // Hkv)
                q = query[qsl[i] + j, h].double()
                scores, values = [], []
                for p in keys:
                    block, offset = int(meta.block_tables[i, p // B]), p % B
                    s = float(q @ key_cache[block, offset, kv_h].double()) * scale
                    if softcap:
                        s = math.tanh(s / softcap) * softcap
                    if alibi_slopes is not None:
                        s += float(alibi_slopes[h]) * (p - q_pos)
                    scores.append(s)
                    values.append(value_cache[block, offset, kv_h].double())
                if sinks is not None:
                    scores.append(float(sinks[h]))
                probs = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)[: len(values)]
                out[qsl[i] + j, h] = (probs[:, None] * torch.stack(values)).sum(0)
    return out


CASES = {
    "mixed": dict(query_lens=[1, 5, 3], seq_lens=[9, 5, 12]),
    "mqa_bidirectional": dict(query_lens=[4, 1], seq_lens=[6, 7], num_heads=3, num_kv_heads=1, causal=False),
    "window_softcap": dict(query_lens=[6, 1], seq_lens=[11, 10], sliding_window=3, softcap=2.0),
    "window_bidirectional": dict(query_lens=[5], seq_lens=[9], num_kv_heads=4, sliding_window=2, causal=False),
    "sinks_window": dict(query_lens=[1, 4, 1], seq_lens=[7, 4, 12], sliding_window=3, sinks=[2.0, -1.0, 0.5, 4.0]),
    "alibi": dict(query_lens=[1, 4, 1], seq_lens=[7, 4, 12], alibi_slopes=[0.5, 0.25, 0.125, 0.0625]),
}


@pytest.mark.parametrize("name", CASES)
def test_torch_ref_matches_naive_loop(name, paged_batch):
    case = dict(CASES[name])
    attn = {k: case.pop(k) for k in ("causal", "sliding_window", "softcap", "sinks", "alibi_slopes") if k in case}
    for key in ("sinks", "alibi_slopes"):
        if key in attn:
            attn[key] = torch.tensor(attn[key])
    b = paged_batch(head_dim=8, block_size=4, seed=len(name), **case)
    torch_ref.store_kv(b.key, b.value, b.key_cache, b.value_cache, b.meta.slot_mapping)
    got = torch_ref.paged_attention(b.query, b.key_cache, b.value_cache, b.meta, scale=0.4, **attn)
    want = naive_paged_attention(b.query, b.key_cache, b.value_cache, b.meta, scale=0.4, **attn)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_store_kv_writes_each_row_at_its_slot(paged_batch):
    b = paged_batch([2, 3], [5, 3], block_size=4)
    torch_ref.store_kv(b.key, b.value, b.key_cache, b.value_cache, b.meta.slot_mapping)
    for t, slot in enumerate(b.meta.slot_mapping.tolist()):
        assert torch.equal(b.key_cache[slot // 4, slot % 4], b.key[t])
        assert torch.equal(b.value_cache[slot // 4, slot % 4], b.value[t])


@pytest.mark.parametrize("pad", [False, True])
def test_store_kv_in_a_forward_checks_padding_once_and_writes_as_outside(paged_batch, pad):
    """Inside a forward the padding check is cached in the forward's scratch (once per forward,
    not per layer); every layer still writes exactly what the uncached call writes."""
    from dataclasses import replace

    from anymodel.attention_backend.forward_context import ForwardContext

    b = paged_batch([2, 3], [5, 3], block_size=4)
    meta = replace(b.meta, slot_mapping=torch.tensor([-1, 5, 6, -1, 14])) if pad else b.meta
    want_k, want_v = torch.zeros_like(b.key_cache), torch.zeros_like(b.value_cache)
    torch_ref.store_kv(b.key, b.value, want_k, want_v, meta.slot_mapping)  # no forward: the reference
    caches = [(torch.zeros_like(want_k), torch.zeros_like(want_v)) for _ in range(2)]
    with ForwardContext.paged(meta, caches, torch_ref) as forward:
        for k_cache, v_cache in caches:  # two layers, one check
            torch_ref.store_kv(b.key, b.value, k_cache, v_cache, meta.slot_mapping)
        cached = forward.scratch["kept_slots"]
    assert (cached is not None) == pad
    for k_cache, v_cache in caches:
        assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
    if pad:  # padded rows wrote nothing
        assert torch.count_nonzero(want_k.view(-1, *want_k.shape[2:]).abs().sum((1, 2))) == 3


# ---- the registered attention function (interface.py) around the kernels

def _call_interface(b, *, kv_caches, backend=torch_ref, value_dim=None, via_context=False, **kwargs):
    """paged_attention_forward on batch `b` as a model calls it, inside a ForwardContext (paged over
    `kv_caches`, or discovery when None): [1, H, T, D] tensors, the metadata in the kwargs or
    (layers that drop their kwargs) only in the context. Returns (out [T, Hq, Dv], the context)."""
    from anymodel.attention_backend.forward_context import ForwardContext
    from anymodel.attention_backend.interface import paged_attention_forward

    q, k, v = (t.transpose(0, 1)[None] for t in (b.query, b.key, b.value))
    if value_dim is not None:
        v = v[..., :value_dim]
    if kv_caches is None:
        forward = ForwardContext.discovery(b.meta, backend)
    else:
        forward = ForwardContext.paged(b.meta, kv_caches, backend)
    if not via_context:
        kwargs["attn_metadata"] = b.meta
    with forward:
        out, _ = paged_attention_forward(torch.nn.Module(), q, k, v, None, scaling=0.4, **kwargs)
    return out[0], forward  # [T, Hq, Dv]


def test_interface_needs_a_forward_context(paged_batch):
    from anymodel.attention_backend.interface import paged_attention_forward

    b = paged_batch([2], [2], head_dim=8, block_size=4)
    q, k, v = (t.transpose(0, 1)[None] for t in (b.query, b.key, b.value))
    with pytest.raises(RuntimeError, match="ForwardContext"):
        paged_attention_forward(torch.nn.Module(), q, k, v, None, attn_metadata=b.meta)
    _, forward = _call_interface(b, kv_caches=None, via_context=True)  # discovery, metadata from the context only
    assert forward.discovered == [(2, 8, torch.float32)] and forward.layer_cursor == 1


def test_interface_pads_narrow_values_and_cuts_them_back(paged_batch):
    """MLA: values 6 wide under 8-wide queries/keys are stored zero-padded to 8 (one cache width)
    and the output is attention over the first 6 value columns."""
    b = paged_batch([1, 3], [5, 3], head_dim=8, block_size=4)
    got, _ = _call_interface(b, kv_caches=[(b.key_cache, b.value_cache)], value_dim=6)  # stores, then attends
    new_rows = b.value_cache.view(-1, *b.value_cache.shape[2:])[b.meta.slot_mapping]
    assert got.shape[-1] == 6 and not new_rows[..., 6:].any()
    want = naive_paged_attention(b.query, b.key_cache, b.value_cache, b.meta, scale=0.4)[..., :6]
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_interface_passes_sinks_and_refuses_backends_without_them(paged_batch):
    b = paged_batch([2, 1], [6, 9], head_dim=8, block_size=4)
    sinks = torch.tensor([1.0, -2.0, 0.0, 3.0])
    got, _ = _call_interface(b, kv_caches=[(b.key_cache, b.value_cache)], s_aux=sinks, via_context=True)
    want = naive_paged_attention(b.query, b.key_cache, b.value_cache, b.meta, scale=0.4, sinks=sinks)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    _refused_at_discovery(b, "sinks", s_aux=sinks)


def _refused_at_discovery(b, match: str, **kwargs) -> None:
    """A backend whose paged_attention lacks the extra parameter fails the discovery pass: the
    engine fails at start-up, not on its first step."""
    from types import SimpleNamespace

    def bare(query, key_cache, value_cache, meta, *, scale, causal=True, sliding_window=None, softcap=None):
        raise AssertionError("never reached")

    plain = SimpleNamespace(__name__="plain", store_kv=torch_ref.store_kv, paged_attention=bare)
    with pytest.raises(ValueError, match=match):
        _call_interface(b, kv_caches=None, backend=plain, **kwargs)


def test_interface_passes_alibi_slopes_and_refuses_backends_without_them(paged_batch):
    b = paged_batch([3], [3], head_dim=8, block_size=4)  # one whole prompt: paged and dense (discovery) agree
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    got, _ = _call_interface(b, kv_caches=[(b.key_cache, b.value_cache)], alibi_slopes=slopes)  # stores, then attends
    want = naive_paged_attention(b.query, b.key_cache, b.value_cache, b.meta, scale=0.4, alibi_slopes=slopes)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    dense, _ = _call_interface(b, kv_caches=None, alibi_slopes=slopes)
    torch.testing.assert_close(dense.double(), want, atol=1e-5, rtol=1e-5)
    _refused_at_discovery(b, "ALiBi", alibi_slopes=slopes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (3, 1)])
def test_sdpa_path_matches_masked_reference(dtype, heads):
    """The fused path torch_ref takes for plain attention == the float32 reference it replaces."""
    g = torch.Generator().manual_seed(0)
    S, Q, L, D = 3, 5, 11, 16
    hq, hkv = heads
    q, k, v = (torch.randn(S, n, h, D, generator=g).to(dtype) for n, h in ((Q, hq), (L, hkv), (L, hkv)))
    allowed = torch.rand(S, Q, L, generator=g) < 0.6
    allowed[:, :, 0] = True  # every query sees at least one key
    ref = torch_ref._masked_attention(q, k, v, allowed, 0.3, None)
    out = torch_ref._sdpa_attention(q, k, v, allowed, 0.3)
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref.float(), **({} if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)))


def _hf_mask_function(kind: str, window: int):
    from transformers.masking_utils import (
        or_masks, sliding_window_bidirectional_mask_function, sliding_window_causal_mask_function,
    )
    from transformers.models.gemma3.modeling_gemma3 import _bidirectional_window_overlay

    if kind == "causal":
        return sliding_window_causal_mask_function(window)
    if kind == "bidirectional":  # masking_utils' (ModernBERT)
        return sliding_window_bidirectional_mask_function(window)
    # Gemma 3 with use_bidirectional_attention: its overlay on the causal sliding mask
    return or_masks(sliding_window_causal_mask_function(window), _bidirectional_window_overlay(window))


@pytest.mark.parametrize("kind", ["causal", "bidirectional", "gemma3_bidirectional"])
def test_config_windows_follow_transformers_mask_functions(paged_batch, kind):
    """A layer window from the config (kernel_windows -> sliding_windows) means what Transformers'
    masks make of it: causal q - k < w; bidirectional |q - k| <= w in masking_utils, but < w in
    Gemma 3's own overlay (`use_bidirectional_attention`). The layer is the module's `layer_idx`;
    the kwarg is ignored."""

    from transformers import PretrainedConfig

    from anymodel.adapters.sliding_windows import kernel_windows
    from anymodel.attention_backend.forward_context import ForwardContext
    from anymodel.attention_backend.interface import paged_attention_forward, sliding_windows

    window, layer_types = 3, ["full_attention", "sliding_attention"]
    causal, gemma = kind == "causal", kind.startswith("gemma3")
    mask_fn = _hf_mask_function(kind, window)
    zero = torch.tensor(0)

    def hf_allowed(q_pos, k_pos):
        return bool(mask_fn(zero, zero, torch.tensor(q_pos), torch.tensor(k_pos)))

    b = paged_batch([6, 1], [10, 8], head_dim=8, block_size=4, seed=3)
    module = torch.nn.Module()
    module.is_causal, module.layer_idx = causal, 1
    q, k, v = (t.transpose(0, 1)[None] for t in (b.query, b.key, b.value))
    forward = ForwardContext.paged(b.meta, [None, (b.key_cache, b.value_cache)], torch_ref)
    forward.layer_cursor = 1  # the second attention call of the forward
    config = PretrainedConfig(layer_types=layer_types, sliding_window=window, use_bidirectional_attention=gemma)
    with forward, sliding_windows(kernel_windows(config)):
        out, _ = paged_attention_forward(module, q, k, v, None, scaling=0.4, sliding_window=1000)
    want = naive_paged_attention(b.query, b.key_cache, b.value_cache, b.meta, scale=0.4, allowed=hf_allowed)
    torch.testing.assert_close(out[0].double(), want, atol=1e-5, rtol=1e-5)
