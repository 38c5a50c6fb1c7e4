"""Paged KV cache bookkeeping: the block pool and per-request block tables (plain CPU Python)."""

from anymodel.kv_cache.block_pool import BlockPool, KVBlock
from anymodel.kv_cache.manager import KVCacheManager

__all__ = ["BlockPool", "KVBlock", "KVCacheManager"]
