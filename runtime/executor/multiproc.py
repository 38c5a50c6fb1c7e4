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
import weakref
from multiprocessing.connection import wait

from anymodel import distributed
from anymodel.executor.distributed_executor import DistributedExecutor, dumps, loads, Replies, output_rank

_STOP_TIMEOUT_S = 10.0
# Imported once by the fork server; each rank is forked from it with these already loaded.
_PRELOAD = ["anymodel.executor.rank_worker", "anymodel.adapters.parallel", "transformers.modeling_utils"]


class MultiprocExecutor(DistributedExecutor):
    def __init__(self, args, model_dir, config) -> None:
        import torch.multiprocessing as mp

        self.world_size = args.world_size
        self.output_rank = output_rank(args.tensor_parallel_size, args.pipeline_parallel_size)
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
        if not self._finalizer.alive:
            raise RuntimeError("the multiprocess executor is shut down")
        message = dumps((method, args))
        for conn in self.conns:
            conn.send_bytes(message)
        return self._gather(fatal)

    def _gather(self, fatal: bool) -> list:
        """One reply per rank (see `Replies`); a rank that dies without replying is an error."""
        replies = Replies([None] * self.world_size, fatal, self.shutdown)
        pending = set(range(self.world_size))
        while pending:
            by_conn = {self.conns[r]: r for r in pending}
            by_sentinel = {self.procs[r].sentinel: r for r in pending}
            ready = wait(list(by_conn) + list(by_sentinel))
            for conn in [c for c in ready if c in by_conn]:
                rank = by_conn[conn]
                try:
                    reply = loads(conn.recv_bytes())
                except EOFError:  # died without a reply: its sentinel reports it below
                    continue
                pending.discard(rank)
                replies.add(rank, reply)
            dead = [r for r in pending if not self.procs[r].is_alive() and self.procs[r].sentinel in ready]
            if dead:
                codes = {r: self.procs[r].exitcode for r in dead}
                self.shutdown()
                raise RuntimeError(f"anymodel rank(s) {sorted(codes)} exited unexpectedly (exit codes {codes})")
        return replies.finish()

    def shutdown(self) -> None:
        self._finalizer()


def _check_gpus(args) -> None:
    import torch

    from anymodel.executor.worker import resolve_device

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
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join(2.0)
    for conn in conns:
        conn.close()
