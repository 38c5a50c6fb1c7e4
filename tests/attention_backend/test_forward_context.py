"""ForwardContext (attention_backend/forward_context.py): the per-forward state beside the frozen step
metadata. Layers count from 0 in every forward, discovery records shapes without a cache, and no
state leaks from one forward into the next or out of a nested one."""

import dataclasses

import pytest
import torch

from anymodel.attention_backend import torch_ref
from anymodel.attention_backend.forward_context import ForwardContext, ForwardMode, current_forward, forward_scratch
from anymodel.attention_backend.interface import paged_attention_forward


def _attend(b, module=None, **kwargs):
    """One attention call as a model makes it: [1, H, T, D] in, [T, Hq, D] out."""
    q, k, v = (t.transpose(0, 1)[None] for t in (b.query, b.key, b.value))
    out, _ = paged_attention_forward(module or torch.nn.Module(), q, k, v, None, scaling=0.4, **kwargs)
    return out[0]


def _two_layer_caches(b):
    return [(torch.zeros_like(b.key_cache), torch.zeros_like(b.value_cache)) for _ in range(2)]


def test_step_metadata_is_frozen(paged_batch):
    b = paged_batch([2, 1], [5, 3], block_size=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.meta.seq_lens = b.meta.seq_lens + 1
    moved = b.meta.to("cpu")
    assert moved is not b.meta and torch.equal(moved.slot_mapping, b.meta.slot_mapping)
    assert not any(f.name in ("kv_caches", "layer_cursor", "backend") for f in dataclasses.fields(b.meta))


def test_layer_cursor_names_each_call_and_restarts_every_forward(paged_batch):
    b = paged_batch([2, 1], [5, 3], block_size=4)
    caches = _two_layer_caches(b)
    for _ in range(2):  # the second forward again starts at layer 0: cache 0, then cache 1
        for cache in caches:
            cache[0].zero_()
        with ForwardContext.paged(b.meta, caches, torch_ref) as forward:
            _attend(b, attn_metadata=b.meta)
            written = [bool(k.any()) for k, _ in caches]
            assert written == [True, False]
            _attend(b, attn_metadata=b.meta)
        assert forward.layer_cursor == 2 and all(k.any() for k, _ in caches)
    assert current_forward() is None


def test_discovery_records_each_call_shape_without_a_cache(paged_batch):
    b = paged_batch([3], [3], num_heads=4, num_kv_heads=2, head_dim=8, block_size=4)
    with ForwardContext.discovery(b.meta, torch_ref) as forward:
        assert forward.mode is ForwardMode.DISCOVERY and not forward.kv_caches
        dense = _attend(b)  # the metadata from the context (layers that drop their kwargs)
        _attend(b, attn_metadata=b.meta)
    assert forward.discovered == [(2, 8, torch.float32)] * 2 and forward.layer_cursor == 2
    # the dense pass is plain causal attention over the one request's tokens
    with ForwardContext.paged(b.meta, [(b.key_cache, b.value_cache)], torch_ref):
        paged = _attend(b, attn_metadata=b.meta)
    torch.testing.assert_close(dense, paged, atol=1e-5, rtol=1e-5)


def test_nested_and_sequential_forwards_do_not_share_state(paged_batch):
    b = paged_batch([2, 1], [5, 3], block_size=4)
    other = paged_batch([1], [4], block_size=4, seed=1)
    caches = _two_layer_caches(b)
    with ForwardContext.paged(b.meta, caches, torch_ref) as outer:
        _attend(b, attn_metadata=b.meta)
        plan = outer.scratch["torch_plan"]
        with ForwardContext.discovery(other.meta) as inner:  # e.g. a probe run inside a forward
            _attend(other)
            assert current_forward() is inner and inner.layer_cursor == 1 and "torch_plan" not in inner.scratch
        assert current_forward() is outer and outer.layer_cursor == 1 and not outer.discovered
        _attend(b, attn_metadata=b.meta)  # the outer forward's second layer, its plan reused
        assert outer.layer_cursor == 2 and outer.scratch["torch_plan"] is plan
    with ForwardContext.paged(b.meta, caches, torch_ref) as again:  # the same metadata, a new forward
        assert again.layer_cursor == 0 and not again.scratch
        _attend(b, attn_metadata=b.meta)
        assert again.scratch["torch_plan"] is not plan
    assert current_forward() is None


def test_scratch_belongs_to_the_forward_over_that_metadata(paged_batch):
    b = paged_batch([2], [5], block_size=4)
    other = paged_batch([2], [5], block_size=4)
    assert forward_scratch(b.meta) == {} and forward_scratch(b.meta) is not forward_scratch(b.meta)  # no forward
    with ForwardContext.paged(b.meta, [], torch_ref) as forward:
        assert forward_scratch(b.meta) is forward.scratch
        assert forward_scratch(other.meta) is not forward.scratch  # a kernel called on another step


def test_a_context_is_entered_once(paged_batch):
    b = paged_batch([1], [1], block_size=4)
    forward = ForwardContext.paged(b.meta, [], torch_ref)
    with forward:
        pass
    with pytest.raises(RuntimeError, match="once"):
        with forward:
            pass
    assert current_forward() is None


def test_attention_outside_a_forward_is_refused(paged_batch):
    b = paged_batch([1], [1], block_size=4)
    with pytest.raises(RuntimeError, match="ForwardContext"):
        _attend(b, attn_metadata=b.meta)
