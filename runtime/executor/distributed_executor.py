"""What the multiprocess and Ray executors share: the engine-facing calls, on top of one primitive,
`_call(method, *args) -> [result per rank]`, that runs a RankWorker method on every rank.

KV cache sizing across ranks: each rank discovers its own layers (its stage's layers, its shard's
KV heads); the engine's block count must fit every rank, so bytes_per_block is the max over ranks
and every rank allocates the same number of blocks for its own layers.

Faults: the ranks step together, so one dead rank (OOM killer, segfault) or one failed collective
call ends the engine. The executor then stops every rank and remembers why (`_fatal`): that call
and every later one, `check_health()` included, raise it (WorkerDiedError / EngineFatalError), at
once, instead of hanging on a broken world or leaking a BrokenPipeError.
"""

from __future__ import annotations

import pickle
import threading
import traceback
import weakref
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

from anymodel.errors import EngineFatalError, WorkerDiedError

_RESTART = "the other ranks were stopped; this engine cannot run any further request: restart it (a new LLM, or restart the server)"
# A live rank's collective fails a moment after its peer died, sometimes before that peer is reaped.
DEATH_GRACE_S = 0.5


class DistributedExecutor:
    world_size: int
    output_rank: int  # last pipeline stage, TP rank 0: the rank whose RunnerOutput the engine gets
    _finalizer: weakref.finalize  # set by each backend: stops its ranks once

    def __init__(self, world_size: int, output_rank: int) -> None:
        self.world_size = world_size
        self.output_rank = output_rank
        self._fatal: EngineFatalError | None = None  # why no call can run any more; set once
        # Serialises fault handling: the server's health check runs beside a step in flight.
        self._lock = threading.RLock()

    def _call(self, method: str, *args, fatal: bool = True) -> list:
        raise NotImplementedError

    def _check_ranks(self, grace_s: float = 0.0) -> None:
        """Backend hook: `_die` if a rank is known dead (waiting up to grace_s for one to be)."""

    def _kill_ranks(self) -> None:
        """Backend hook: stop every rank now, without the polite shutdown a broken world cannot answer."""

    @property
    def stopped(self) -> bool:
        return not self._finalizer.alive

    def check_health(self) -> None:
        """Raise WorkerDiedError (EngineFatalError) once a rank is dead. No round trip to the ranks:
        cheap enough for every /health request, and never queued behind a running step."""
        if self._fatal is not None:
            self._raise_fatal()
        if not self.stopped:  # shut down on purpose: there is nothing left to watch
            self._check_ranks()

    def _raise_fatal(self) -> NoReturn:
        raise type(self._fatal)(str(self._fatal))  # a fresh exception: tracebacks do not pile up

    def _die(self, what: str) -> NoReturn:
        """A rank is gone: stop the others (they may be blocked in a collective with it) and fail
        this call and every later one with a WorkerDiedError that says what happened."""
        with self._lock:
            if self._fatal is None:
                self._fatal = WorkerDiedError(f"{what}; {_RESTART}")
                self._kill_ranks()
        self._raise_fatal()

    def _on_rank_error(self, rank: int, exc: BaseException) -> None:
        """A rank failed a call that every rank runs together: the others may wait for it in a
        collective, so the world is torn down (the caller then re-raises the rank's error)."""
        self._check_ranks(DEATH_GRACE_S)  # a collective error is often the echo of a dead peer
        with self._lock:
            if self._fatal is None:
                self._fatal = EngineFatalError(f"rank {rank} failed ({type(exc).__name__}: {exc}); {_RESTART}")
            self.shutdown()

    def shutdown(self) -> None:
        with self._lock:
            self._finalizer()

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

    def collective_rpc(self, method, args: tuple = (), kwargs: dict | None = None) -> list:
        """`method` (a Worker method's name, or fn(worker, *args, **kwargs)) on every rank, in rank order."""
        return self._call("collective_rpc", method, args, kwargs, fatal=False)


@dataclass(frozen=True)
class RankReply:
    """A rank's answer to one command (pickled back to the executor): the method's value, or the
    exception it raised with its formatted traceback."""

    value: Any = None
    error: BaseException | None = None
    traceback: str = ""

    @classmethod
    def failed(cls, exc: BaseException) -> "RankReply":
        """For the exception being handled (call it inside the `except` block)."""
        return cls(error=exc, traceback=traceback.format_exc())


@dataclass
class Replies:
    """One RankReply per rank, gathered in rank order. A rank's error is re-raised; when `fatal`,
    the other ranks may be stuck in a collective waiting for it, so `on_fatal(rank, exc)` tears the
    world down first."""

    results: list
    fatal: bool
    on_fatal: Callable[[int, BaseException], None]
    error: tuple | None = None  # the first error of a non-fatal call, raised once all replied

    def add(self, rank: int, reply: RankReply) -> None:
        if reply.error is None:
            self.results[rank] = reply.value
        elif self.fatal:
            self.on_fatal(rank, reply.error)
            raise_remote(rank, reply.error, reply.traceback)
        else:
            self.error = self.error or (rank, reply.error, reply.traceback)

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
