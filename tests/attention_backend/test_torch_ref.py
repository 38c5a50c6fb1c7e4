"""torch_ref (the kernels' oracle) against a naive loop written straight from the contract."""

from __future__ import annotations

import math

import pytest
import torch

from anymodel.attention_backend import torch_ref


def naive_paged_attention(query, key_cache, value_cache, meta, *, scale, causal=True, sliding_window=None,
                          softcap=None):
    """One query token and one head at a time, keys fetched one by one through the block table."""
    out = torch.zeros(query.shape, dtype=torch.float64)

    def in_window(q_pos, k_pos):  # causal: the w - 1 keys behind; bidirectional: |q - k| < w
        dist = q_pos - k_pos if causal else abs(q_pos - k_pos)
        return sliding_window is None or dist < sliding_window
    Hq, Hkv = query.shape[1], key_cache.shape[2]
    B = meta.block_size
    qsl, seq_lens = meta.query_start_loc.tolist(), meta.seq_lens.tolist()
    for i, seq_len in enumerate(seq_lens):
        q_len = qsl[i + 1] - qsl[i]
        for j in range(q_len):
            q_pos = seq_len - q_len + j
            keys = [p for p in range(seq_len) if (not causal or p <= q_pos) and in_window(q_pos, p)]
            for h in range(Hq):
                kv_h = h // (Hq // Hkv)
                q = query[qsl[i] + j, h].double()
                scores, values = [], []
                for p in keys:
                    block, offset = int(meta.block_tables[i, p // B]), p % B
                    s = float(q @ key_cache[block, offset, kv_h].double()) * scale
                    if softcap:
                        s = math.tanh(s / softcap) * softcap
                    scores.append(s)
                    values.append(value_cache[block, offset, kv_h].double())
                probs = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
                out[qsl[i] + j, h] = (probs[:, None] * torch.stack(values)).sum(0)
    return out


CASES = {
    "mixed": dict(query_lens=[1, 5, 3], seq_lens=[9, 5, 12]),
    "mqa_bidirectional": dict(query_lens=[4, 1], seq_lens=[6, 7], num_heads=3, num_kv_heads=1, causal=False),
    "window_softcap": dict(query_lens=[6, 1], seq_lens=[11, 10], sliding_window=3, softcap=2.0),
    "window_bidirectional": dict(query_lens=[5], seq_lens=[9], num_kv_heads=4, sliding_window=2, causal=False),
}


@pytest.mark.parametrize("name", CASES)
def test_torch_ref_matches_naive_loop(name, paged_batch):
    case = dict(CASES[name])
    attn = {k: case.pop(k) for k in ("causal", "sliding_window", "softcap") if k in case}
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
