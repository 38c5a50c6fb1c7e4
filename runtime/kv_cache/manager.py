"""Per-request block tables on top of the block pool, with prefix-cache hits by chained block hash.

Block i of a request is identified by hash((hash of block i-1, its block_size token ids)), so two
requests share a block only if their whole prefixes up to it are equal. Block 0's parent is the
LoRA adapter (None for the base model): requests of different adapters never share a block.
"""

from __future__ import annotations

from anymodel.kv_cache.block_pool import BlockPool, KVBlock
from anymodel.engine.request import Request


def hash_blocks(token_ids: list[int], block_size: int, start: int = 0, parent: int | None = None) -> list[int]:
    """Chained hashes of the full blocks of `token_ids`, beginning at block index `start`."""
    hashes = []
    for i in range(start, len(token_ids) // block_size):
        parent = hash((parent, tuple(token_ids[i * block_size : (i + 1) * block_size])))
        hashes.append(parent)
    return hashes


def _root(request: Request):
    """Block 0's parent: None for the base model; the adapter (id, name, path) otherwise, so that an id
    reused for another adapter after its removal never meets the old adapter's blocks; with prompt
    embeddings, their digest as well."""
    lora = request.lora_request
    root = None if lora is None else ("lora", lora.lora_int_id, lora.lora_name, lora.lora_path)
    # placeholder ids of a prompt given as embeddings: its blocks are the embeddings' own
    return root if request.prompt_embeds_digest is None else (root, "embeds", request.prompt_embeds_digest)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.enable_prefix_caching = enable_prefix_caching
        self.req_blocks: dict[str, list[KVBlock]] = {}
        self.req_hashes: dict[str, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.pool.num_blocks * self.block_size

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_blocks.get(request_id, [])]

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """Longest cached prefix of a new request, leaving at least one token to compute.

        No hit for requests that want prompt logprobs: the model must see every prompt position
        to score it (vLLM skips the prefix cache for them too).
        """
        wants_prompt_logprobs = getattr(request.params, "prompt_logprobs", None) is not None
        if not self.enable_prefix_caching or request.is_pooling or wants_prompt_logprobs:
            return [], 0
        hashes = self._hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits = []
        for h in hashes[:max_blocks]:
            block = self.pool.lookup(h)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def allocate_slots(self, request: Request, num_new_tokens: int, computed: list[KVBlock] = ()) -> bool:
        """Make room for `num_new_tokens` more tokens; False (and no change) if blocks run out."""
        blocks = self.req_blocks.setdefault(request.request_id, [])
        total = request.num_computed_tokens + len(computed) * self.block_size + num_new_tokens
        need = self.blocks_needed(total) - len(blocks) - len(computed)
        evictable_hits = sum(1 for b in computed if b.ref_cnt == 0)
        if need > self.pool.num_free_blocks - evictable_hits:
            return False
        self.pool.touch(list(computed))
        blocks.extend(computed)
        if need > 0:
            blocks.extend(self.pool.allocate(need))
        self._cache_full_blocks(request, total)
        return True

    def free(self, request: Request) -> None:
        blocks = self.req_blocks.pop(request.request_id, [])
        self.req_hashes.pop(request.request_id, None)
        self.pool.free(list(reversed(blocks)))

    def _hashes(self, request: Request) -> list[int]:
        """Hashes of the request's full blocks so far (extended as tokens arrive)."""
        hashes = self.req_hashes.setdefault(request.request_id, [])
        if len(hashes) < request.num_tokens // self.block_size:
            parent = hashes[-1] if hashes else _root(request)
            hashes.extend(hash_blocks(request.all_token_ids, self.block_size, len(hashes), parent))
        return hashes

    def _cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Register blocks that are full once `num_tokens` tokens are computed."""
        if not self.enable_prefix_caching or request.is_pooling:
            return
        hashes = self._hashes(request)
        blocks = self.req_blocks[request.request_id]
        for i in range(min(num_tokens // self.block_size, len(hashes))):
            self.pool.cache(blocks[i], hashes[i])
