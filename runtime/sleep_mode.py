"""`LLM.sleep(level)` / `LLM.wake_up(tags)`: give the device memory back between bursts of work
(vLLM's sleep mode), run on every worker through collective_rpc.

    sleep(1)  the KV cache is freed (its contents are gone: the prefix cache is reset) and the
              weights move to host memory; on a CPU device they already are there, so only the
              KV cache's memory is returned
    sleep(2)  the same here: the weights are kept in host memory rather than discarded (vLLM
              discards them and expects new weights to be loaded), so wake_up restores the model
    wake_up() the weights move back and a zeroed KV cache of the same shape is allocated (CUDA
              graphs, which point into both, are captured again); tags=["weights"] or
              ["kv_cache"] wake one of them (vLLM's tags)

Sleeping needs an idle engine: requests in flight would lose their KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SLEEP_LEVELS = (1, 2)
WAKE_TAGS = ("weights", "kv_cache")


@dataclass
class WorkerSleep:
    """What one asleep worker needs to wake up: its KV cache's shape and where its weights lived."""

    kv_layers: list[tuple[int, int, torch.dtype]] = field(default_factory=list)  # (kv heads, head size, dtype)
    num_blocks: int = 0
    weights_device: torch.device | None = None  # None: the weights are awake
    kv_asleep: bool = False


def sleep_worker(worker, level: int) -> int:
    """Free this worker's KV cache and move its weights to host memory; returns the KV bytes freed."""
    runner = worker.runner
    kv = runner.kv_caches
    state = WorkerSleep([(k.shape[2], k.shape[3], k.dtype) for k, _ in kv], kv[0][0].shape[0] if kv else 0)
    freed = sum(t.numel() * t.element_size() for pair in kv for t in pair)
    runner.graphs = None  # captured graphs point into the cache and the weights
    runner.kv_caches = []
    state.kv_asleep = True
    if worker.device.type != "cpu":
        state.weights_device = worker.device
        runner.model.to("cpu")
    worker.sleep_state = state
    if worker.device.type == "cuda":
        torch.cuda.empty_cache()
    return freed


def wake_worker(worker, tags: list[str]) -> None:
    state: WorkerSleep | None = getattr(worker, "sleep_state", None)
    if state is None:
        return
    runner = worker.runner
    if "weights" in tags and state.weights_device is not None:
        runner.model.to(state.weights_device)
        state.weights_device = None
    if "kv_cache" in tags and state.kv_asleep:
        if state.kv_layers:
            runner.allocate_kv_cache(state.kv_layers, state.num_blocks, capture=state.weights_device is None)
        state.kv_asleep = False
    elif "weights" in tags and runner.graph_spec is not None and runner.kv_caches:
        runner.capture_decode_graphs(runner.graph_spec)  # the cache woke first: capture now
    if state.weights_device is None and not state.kv_asleep:
        worker.sleep_state = None


def check_level(level) -> None:
    if level not in SLEEP_LEVELS:
        raise ValueError(f"sleep level must be 1 or 2, got {level!r}")


def check_tags(tags) -> list[str]:
    tags = list(WAKE_TAGS) if tags is None else list(tags)
    unknown = [t for t in tags if t not in WAKE_TAGS]
    if unknown:
        raise ValueError(f"wake_up tags must be among {list(WAKE_TAGS)}, got {unknown}")
    return tags
