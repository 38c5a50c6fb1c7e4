"""What the multiprocess and Ray executors share: the engine-facing calls, on top of one primitive,
`_call(method, *args) -> [result per rank]`, that runs a RankWorker method on every rank.

KV cache sizing across ranks: each rank discovers its own layers (its stage's layers, its shard's
KV heads); the engine's block count must fit every rank, so bytes_per_block is the max over ranks
and every rank allocates the same number of blocks for its own layers.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Callable


class DistributedExecutor:
    world_size: int
    output_rank: int  # last pipeline stage, TP rank 0: the rank whose RunnerOutput the engine gets

    def _call(self, method: str, *args, fatal: bool = True) -> list:
        raise NotImplementedError

    def discover_layers(self):
        per_rank = self._call("discover_layers")
        self._bytes_per_block = self._call("bytes_per_block")
        # The engine only checks the list is non-empty and logs its length; sizing uses every rank.
        widest = max(range(self.world_size), key=lambda r: self._bytes_per_block[r])
        return per_rank[widest]

    def bytes_per_block(self, layers) -> int:
        return max(self._bytes_per_block)

    def kv_memory_budget(self, layers, utilization: float, num_tokens: int, num_logit_rows: int) -> int | None:
        """Every rank profiles its own shard and stage together (their collectives pair up); the
        smallest budget sizes every rank's cache. None when the ranks are on CPU."""
        budgets = self._call("kv_memory_budget", utilization, num_tokens, num_logit_rows)
        return None if any(b is None for b in budgets) else min(budgets)

    def allocate_kv_cache(self, layers, num_blocks: int) -> None:
        self._call("allocate_kv_cache", num_blocks)

    def execute_model(self, sched):
        return self._call("execute_model", sched, self.output_rank)[self.output_rank]

    def apply_model(self, fn) -> list:
        """fn(model) on every rank, in rank order (rank = pp_rank * tensor_parallel_size + tp_rank)."""
        return self._call("apply_model", fn, fatal=False)


@dataclass
class Replies:
    """One reply per rank, ("ok", result) or ("error", exc, traceback), gathered in rank order. A
    rank's error is re-raised; when `fatal`, the other ranks may be stuck in a collective waiting
    for it, so `shutdown` tears the world down first."""

    results: list
    fatal: bool
    shutdown: Callable[[], None]
    error: tuple | None = None  # the first error of a non-fatal call, raised once all replied

    def add(self, rank: int, reply: tuple) -> None:
        if reply[0] == "ok":
            self.results[rank] = reply[1]
        elif self.fatal:
            self.shutdown()
            raise_remote(rank, reply[1], reply[2])
        else:
            self.error = self.error or (rank, reply[1], reply[2])

    def finish(self) -> list:
        if self.error is not None:
            raise_remote(*self.error)
        return self.results


def raise_remote(rank: int, exc: BaseException, tb: str):
    """Re-raise a rank's exception as itself (a ValueError stays a ValueError), with its traceback."""
    if hasattr(exc, "add_note"):
        exc.add_note(f"(raised on rank {rank})\n{tb}")
    raise exc


def output_rank(tensor_parallel_size: int, pipeline_parallel_size: int) -> int:
    return (pipeline_parallel_size - 1) * tensor_parallel_size


def dumps(obj) -> bytes:
    """cloudpickle when installed (lambdas and closures travel by value), else plain pickle, which
    takes module-level functions only."""
    try:
        import cloudpickle
    except ImportError:
        try:
            return pickle.dumps(obj)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise ValueError(
                f"cannot send {obj!r} to the ranks: without cloudpickle (pip install cloudpickle) only "
                "module-level functions can be passed to apply_model"
            ) from exc
    return cloudpickle.dumps(obj)


loads = pickle.loads  # reads cloudpickle's output too
