"""How much GPU memory the KV cache may take: `gpu_memory_utilization` of the device, as vLLM sizes it.

    budget = utilization x total memory
             - memory outside torch's allocator (CUDA context, NCCL buffers, other processes)
             - torch's peak during a profiling step (weights + the largest step's activations + logits)
             + that step's scratch KV cache (counted in the peak, freed before the real cache exists)

The profiling step is the largest the scheduler may send: `max_num_batched_tokens` tokens in one
prefill, and the LM head on `max_num_seqs` rows. On CPU there is nothing to measure: the engine
uses `kv_cache_memory` or its default there.
"""

from __future__ import annotations

import torch


def kv_budget(total: int, utilization: float, outside_torch: int, torch_peak: int, scratch_cache: int) -> int:
    """Bytes left for the KV cache (negative when even the profiling step did not fit)."""
    return int(utilization * total) - outside_torch - torch_peak + scratch_cache


def measure_kv_budget(runner, layers, utilization: float, num_tokens: int, num_logit_rows: int) -> int | None:
    """Run the profiling step on `runner`'s GPU and return the budget; None on other devices."""
    device = runner.device
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    scratch = runner.profile_step(layers, num_tokens, num_logit_rows)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    outside = (total - free) - torch.cuda.memory_reserved(device)
    return kv_budget(total, utilization, outside, peak, scratch)
