"""The multiprocess executor: tensor_parallel_size * pipeline_parallel_size ranks, one spawned
process each (the engine process holds no rank and no torch.distributed state).

    engine ──pipe──> rank 0 ┐
           ──pipe──> rank 1 ├─ torch.distributed (gloo on CPU, nccl on GPU), TCP rendezvous on 127.0.0.1
           ──pipe──> ...    ┘

Commands and `apply_model` functions travel cloudpickled, so lambdas and closures work (plain
pickle, module-level functions only, when cloudpickle is not installed). Ranks
start from a fork server (spawn where there is none): a clean process that imported torch and
Transformers once, so every later engine in this process starts its ranks in about a second, and
nothing the engine process did (CUDA, OpenMP threads) leaks into them. As with spawn, a user
script must guard its entry point with `if __name__ == "__main__":`.
No orphans: ranks stop on shutdown(), when the executor is garbage-collected, at interpreter exit
(weakref.finalize), and on their own when the engine process dies.
"""

from __future__ import annotations

import os
import signal
import weakref
from multiprocessing.connection import wait

from anymodel import distributed
from anymodel.executor.distributed_executor import DEATH_GRACE_S, DistributedExecutor, Replies, dumps, loads, output_rank

_STOP_TIMEOUT_S = 10.0
# Imported once by the fork server; each rank is forked from it with these already loaded.
_PRELOAD = ["anymodel.executor.rank_worker", "anymodel.adapters.parallel", "transformers.modeling_utils"]


class MultiprocExecutor(DistributedExecutor):
    def __init__(self, args, model_dir, config) -> None:
        import torch.multiprocessing as mp

        super().__init__(args.world_size, output_rank(args.tensor_parallel_size, args.pipeline_parallel_size))
        _check_gpus(args)
        ctx = _context(mp)
        init_method = distributed.local_init_method()
        threads = max(1, (os.cpu_count() or 1) // self.world_size)
        self.procs, self.conns = [], []
        from anymodel.executor.rank_worker import run_rank

        for rank in range(self.world_size):
            payload = dumps(
                dict(args=args, model_dir=model_dir, rank=rank, init_method=init_method, threads=threads)
            )
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=run_rank, args=(child, payload), name=f"anymodel-rank{rank}", daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.conns)
        self._gather(fatal=True)  # every rank reports its model built (or the first error)

    def _call(self, method: str, *args, fatal: bool = True) -> list:
        self.check_health()  # a rank found dead now fails the call before any rank starts it
        if self.stopped:
            raise RuntimeError("the multiprocess executor is shut down")
        message = dumps((method, args))
        for rank, conn in enumerate(self.conns):
            try:
                conn.send_bytes(message)
            except OSError as exc:  # its end of the pipe closed: it died since check_health
                self._check_ranks(DEATH_GRACE_S)
                self._die(f"anymodel rank {rank}: its pipe broke ({exc!r})")
        return self._gather(fatal)

    def _gather(self, fatal: bool) -> list:
        """One reply per rank (see `Replies`). A rank that dies fails the call at once, even while
        the others wait for it inside a collective: the wait covers every process's sentinel."""
        replies = Replies([None] * self.world_size, fatal, self._on_rank_error)
        pending = set(range(self.world_size))
        while pending:
            if self._fatal is not None:  # the health check found a rank dead and stopped the world
                self._raise_fatal()
            by_conn = {self.conns[r]: r for r in pending}
            sentinels = [p.sentinel for p in self.procs]
            ready = wait(list(by_conn) + sentinels)
            for conn in [c for c in ready if c in by_conn]:
                try:
                    reply = loads(conn.recv_bytes())
                except (EOFError, OSError):  # died without a reply: its sentinel reports it
                    continue
                pending.discard(by_conn[conn])
                replies.add(by_conn[conn], reply)
            if any(s in ready for s in sentinels):
                self._check_ranks(DEATH_GRACE_S)
        return replies.finish()

    def _check_ranks(self, grace_s: float = 0.0) -> None:
        if grace_s:
            wait([p.sentinel for p in self.procs], grace_s)
        with self._lock:  # polling reads a forkserver sentinel, which two threads must not race on
            dead = {rank: proc for rank, proc in enumerate(self.procs) if proc.exitcode is not None}
        if dead:
            self._die("anymodel " + ", ".join(_describe_exit(rank, proc) for rank, proc in dead.items()))

    def _kill_ranks(self) -> None:
        _terminate(self.procs)
        self._finalizer()


def _describe_exit(rank: int, proc) -> str:
    """'rank 1 (pid 4242) was killed by signal SIGKILL (...)' / 'rank 0 (pid 4241) exited with code 1'."""
    code = proc.exitcode
    if code >= 0:
        return f"rank {rank} (pid {proc.pid}) exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    hint = " (e.g. by the out-of-memory killer)" if name == "SIGKILL" else ""
    return f"rank {rank} (pid {proc.pid}) was killed by signal {name}{hint}"


def _check_gpus(args) -> None:
    import torch

    from anymodel.worker.worker import resolve_device

    if resolve_device(args.device).type == "cuda" and args.world_size > torch.cuda.device_count():
        raise ValueError(
            f"tensor_parallel_size * pipeline_parallel_size ({args.world_size}) exceeds the {torch.cuda.device_count()} "
            "visible GPU(s): one rank per GPU (use distributed_executor_backend='ray' to span machines)"
        )


def _context(mp):
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # no effect once the server runs: it already has them
    return ctx


def _stop(procs, conns) -> None:
    """Ask every rank to stop, then make sure: terminate, then kill, whatever did not exit."""
    for proc, conn in zip(procs, conns):
        try:
            if proc.is_alive():
                conn.send_bytes(dumps(("shutdown", ())))
        except (OSError, ValueError):
            pass
    for proc in procs:
        proc.join(_STOP_TIMEOUT_S / max(1, len(procs)))
    _terminate(procs)
    for conn in conns:
        conn.close()


def _terminate(procs) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join(2.0)
