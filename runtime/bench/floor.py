"""The memory-bandwidth floor of a batch-1 decode step, measured in the benchmark's own process.

A b=1 decode step must read every weight matrix once (the embedding table aside: one row per
token), so it cannot be faster than `decode_weight_bytes / streaming bandwidth`. `bench latency`
reports that floor and the measured step as a fraction of it (floor / step: 1.0 is the limit,
llama.cpp F32 reaches ~0.85 on the machine issue 24 measured).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Floor:
    weight_bytes: int  # bytes of the weight matrices one decode step streams
    bandwidth: float  # bytes/s, best of several reductions over a large tensor
    floor_ms: float  # weight_bytes / bandwidth, in ms

    def fraction(self, step_ms: float) -> float:
        """floor / measured step (1.0 = at the bandwidth limit)."""
        return self.floor_ms / step_ms


def decode_weight_bytes(model: nn.Module) -> int:
    """Bytes of every >= 2-D parameter a decode step reads: those of every module but embedding
    tables (an LM head tied to the embedding is a Linear's weight too, so it counts once)."""
    seen, total = set(), 0
    for module in model.modules():
        if _is_embedding_table(module):
            continue
        for t in module.parameters(recurse=False):
            if t.dim() >= 2 and t.device.type != "meta" and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def _is_embedding_table(module: nn.Module) -> bool:
    """An input embedding (Transformers' nn.Embedding, the native models' vocabulary shard), not
    the native LM head, which subclasses the shard but multiplies by all of it."""
    from anymodel.native_overrides.linear import ParallelLMHead, VocabParallelEmbedding

    return isinstance(module, (nn.Embedding, VocabParallelEmbedding)) and not isinstance(module, ParallelLMHead)


def stream_bandwidth(nbytes: int = 500 * 2**20, repeats: int = 5) -> float:
    """Bytes/s that `x.sum()` reads over an `nbytes` float32 tensor, best of `repeats` (after one
    warm-up): the streaming bandwidth torch reaches with the current thread count."""
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


def measure_floor(weight_bytes: int, nbytes: int = 500 * 2**20) -> Floor:
    bandwidth = stream_bandwidth(nbytes)
    return Floor(weight_bytes, bandwidth, 1e3 * weight_bytes / bandwidth)
