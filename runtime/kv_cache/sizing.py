"""How many KV blocks the engine gets, and their allocation on every worker.

    num_kv_blocks                     as given
    kv_cache_memory (bytes)           / bytes per block (every layer's K and V for block_size tokens)
    else GPU                          what gpu_memory_utilization leaves after a profiling step (worker/kv_budget.py)
    else CPU                          1 GiB
    capped at max_num_seqs full-length sequences (more could never be used)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from anymodel.model_facts import text_config_of

logger = logging.getLogger("anymodel")

DEFAULT_CPU_KV_BYTES = 1 << 30


@dataclass(frozen=True)
class KVCacheSizing:
    args: object  # EngineArgs: block_size, num_kv_blocks, kv_cache_memory, gpu_memory_utilization, max_num_seqs
    max_model_len: int
    token_budget: int  # tokens per step: the profiling step's size

    def num_blocks(self, executor, layers: list, hf_config) -> int:
        """Size the cache for `layers` (the attention calls the workers discovered; empty for a model
        that keeps its own cache, whose blocks are bookkeeping only) and allocate it on every worker."""
        args = self.args
        per_block = executor.bytes_per_block(layers) if layers else _estimated_bytes_per_block(hf_config, args.block_size)
        if args.num_kv_blocks is not None:
            num_blocks = args.num_kv_blocks
        else:
            memory = args.kv_cache_memory or self._default_memory(executor, layers, per_block)
            cap = args.max_num_seqs * -(-self.max_model_len // args.block_size)
            num_blocks = min(memory // per_block, cap)
        if num_blocks < 1:
            raise ValueError(f"kv_cache_memory ({args.kv_cache_memory} bytes) holds no KV block ({per_block} bytes each)")
        if layers:
            executor.allocate_kv_cache(layers, num_blocks)
        logger.info("anymodel: %d KV blocks of %d tokens (%d layers), %d bytes per block, %.3f GiB in all", num_blocks,
                    args.block_size, len(layers), per_block, num_blocks * per_block / 2**30)
        return num_blocks

    def _default_memory(self, executor, layers, per_block: int) -> int:
        """GPU: what `gpu_memory_utilization` leaves after a profiling step (kv_budget.py); CPU: 1 GiB."""
        util = self.args.gpu_memory_utilization
        budget = executor.kv_memory_budget(layers, util, self.token_budget, self.args.max_num_seqs) if layers else None
        if budget is None:
            return DEFAULT_CPU_KV_BYTES
        if budget < per_block:
            raise ValueError(
                f"gpu_memory_utilization={util} leaves {budget / 2**30:.2f} GiB for the KV cache after the weights and a "
                f"{self.token_budget}-token step, less than one block ({per_block} bytes): raise gpu_memory_utilization, "
                "lower max_num_batched_tokens / max_model_len, or pass kv_cache_memory"
            )
        logger.info("anymodel: gpu_memory_utilization=%s leaves %.2f GiB for the KV cache", util, budget / 2**30)
        return budget


def _estimated_bytes_per_block(hf_config, block_size: int) -> int:
    """For models that keep their own cache (compat path): K and V of every layer, full width."""
    text = text_config_of(hf_config)
    return 2 * block_size * text.num_hidden_layers * text.hidden_size * 4
