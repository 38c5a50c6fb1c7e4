"""Block pool and KV cache manager: exact block ids, prefix-cache hits, eviction order."""

from anymodel.kv_cache import BlockPool, KVCacheManager
from anymodel.params import SamplingParams
from anymodel.engine.request import Request


def make_request(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=4), max_tokens=4)


def test_pool_allocates_in_order_and_reuses_freed_blocks_last():
    pool = BlockPool(4)
    a = pool.allocate(2)
    assert [b.block_id for b in a] == [0, 1]
    b = pool.allocate(1)
    assert [x.block_id for x in b] == [2]
    pool.free(list(reversed(a)))  # tail first: block 1 is evicted before block 0
    assert pool.num_free_blocks == 3
    assert [x.block_id for x in pool.allocate(3)] == [3, 1, 0]


def test_refcounts_keep_shared_blocks_alive():
    pool = BlockPool(2)
    (blk,) = pool.allocate(1)
    pool.touch([blk])
    assert blk.ref_cnt == 2
    pool.free([blk])
    assert pool.num_free_blocks == 1  # still held once
    pool.free([blk])
    assert pool.num_free_blocks == 2


def test_prefix_hit_reuses_the_same_physical_blocks():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    first = make_request("a", list(range(10)))  # blocks: [0..3] [4..7] [8, 9]
    assert kv.allocate_slots(first, 10)
    assert kv.block_ids("a") == [0, 1, 2]
    kv.free(first)

    second = make_request("b", list(range(8)) + [42, 43, 44])
    hits, n_cached = kv.get_computed_blocks(second)
    assert n_cached == 8 and [b.block_id for b in hits] == [0, 1]
    second.num_computed_tokens = 0
    assert kv.allocate_slots(second, 3, hits)
    # Hits revive blocks 0 and 1; the new block comes from the head of the free list (3), while
    # the freed tail block 2 waits at the end, still holding a's third block.
    assert kv.block_ids("b") == [0, 1, 3]


def test_prefix_hit_leaves_one_token_to_compute():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    r = make_request("a", list(range(8)))
    assert kv.allocate_slots(r, 8)
    kv.free(r)
    again = make_request("b", list(range(8)))
    hits, n_cached = kv.get_computed_blocks(again)
    assert n_cached == 4 and len(hits) == 1  # the last full block is recomputed to get logits


def test_different_prefix_misses_even_with_equal_second_block():
    kv = KVCacheManager(num_blocks=8, block_size=2)
    a = make_request("a", [1, 2, 3, 4, 5])
    assert kv.allocate_slots(a, 5)
    b = make_request("b", [9, 9, 3, 4, 5])
    assert kv.get_computed_blocks(b) == ([], 0)


def test_allocation_fails_cleanly_when_full():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    a = make_request("a", list(range(8)))
    assert kv.allocate_slots(a, 8)
    b = make_request("b", [7])
    assert not kv.allocate_slots(b, 1)
    assert kv.block_ids("b") == []
    kv.free(a)
    assert kv.num_free_blocks == 2


def test_evicted_block_loses_its_hash():
    kv = KVCacheManager(num_blocks=1, block_size=2)
    a = make_request("a", [1, 2, 3])
    assert kv.allocate_slots(a, 2)
    kv.free(a)
    b = make_request("b", [5, 6, 7])
    assert kv.allocate_slots(b, 2)  # reuses block 0, evicting a's prefix
    kv.free(b)
    c = make_request("c", [1, 2, 3])
    assert kv.get_computed_blocks(c) == ([], 0)
