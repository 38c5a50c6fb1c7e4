"""One rank of a multi-process or Ray world: joins torch.distributed, builds its Worker (its TP
shard, its PP stage, its own KV cache), and serves the executor's commands.

    executor --pickle((method, args))--> rank --pickle(RankReply(value | error, traceback))--> executor

Every rank receives every command: the forward is collective (all-reduce inside a stage, send /
recv between stages), so all ranks step together on the same SchedulerOutput.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch

from anymodel import distributed, loader
from anymodel.executor.distributed_executor import RankReply, dumps, loads
from anymodel.logging_config import label_process
from anymodel.worker.worker import Worker, resolve_device, run_on_worker
from anymodel.native_overrides.weights import refusing_unsafe_pickles


class RankWorker:
    """The Worker of one rank, plus what a remote rank keeps between steps."""

    def __init__(self, args, model_dir, rank: int, init_method: str) -> None:
        label_process(f"Worker rank={rank}")  # its log lines say which rank wrote them
        on_gpu = resolve_device(args.device).type == "cuda"
        if on_gpu:  # one GPU per rank (Ray: each actor sees only its own)
            torch.cuda.set_device(rank % torch.cuda.device_count())
        backend = "nccl" if on_gpu else "gloo"
        tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
        self.state = distributed.init_distributed(rank, tp, pp, init_method, backend)
        # Loaded here, not pickled from the engine: remote-code config classes only exist once
        # their dynamic module is imported, which load_config does.
        model_dir = Path(model_dir)
        config = loader.load_config(model_dir, args.trust_remote_code, args.hf_overrides)
        with refusing_unsafe_pickles(model_dir):
            self.worker = Worker(args, model_dir, config, self.state)
        self.layers: list = []
        # Seeded requests arrive as fresh copies each step; their generator state lives here.
        self.generators: dict[str, torch.Generator] = {}

    def discover_layers(self):
        self.layers = self.worker.runner.discover_layers()
        return self.layers

    def bytes_per_block(self) -> int:
        return self.worker.runner.bytes_per_block(self.layers)

    def kv_memory_budget(self, utilization: float, num_tokens: int, num_logit_rows: int) -> int | None:
        return self.worker.runner.kv_memory_budget(self.layers, utilization, num_tokens, num_logit_rows)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.worker.runner.allocate_kv_cache(self.layers, num_blocks)

    def execute_model(self, sched, output_rank: int):
        for s in sched.scheduled:
            r = s.request
            if r.generator is not None:
                r.generator = self.generators.setdefault(r.request_id, r.generator)
        out = self.worker.runner.execute(sched)
        for rid in sched.finished_req_ids:
            self.generators.pop(rid, None)
        return out if self.state.rank == output_rank else None  # one copy travels back

    def apply_model(self, fn):
        return fn(self.worker.model)

    def collective_rpc(self, method, args: tuple, kwargs: dict | None):
        return run_on_worker(self.worker, method, args, kwargs)

    def shutdown(self) -> None:
        distributed.destroy_distributed()


def call(worker: RankWorker, method: str, args: tuple) -> RankReply:
    """Run one command; never raises: the executor gets the value, or the error and its traceback."""
    try:
        return RankReply(value=getattr(worker, method)(*args))
    except BaseException as exc:  # noqa: BLE001 - reported to the executor, which re-raises
        return RankReply.failed(exc)


def run_rank(conn, payload: bytes) -> None:
    """Process entry point (started by the multiprocess executor)."""
    kwargs = loads(payload)
    _limit_threads(kwargs.pop("threads"))
    _exit_with_parent()
    try:
        worker = RankWorker(**kwargs)
    except BaseException as exc:  # noqa: BLE001
        conn.send_bytes(_dumps(RankReply.failed(exc)))
        _wait_for_stop(conn)  # a rank exits only when told to: any other exit is a death
        return
    conn.send_bytes(_dumps(RankReply()))
    while True:
        try:
            method, args = loads(conn.recv_bytes())
        except (EOFError, OSError):  # the executor went away
            break
        conn.send_bytes(_dumps(call(worker, method, args)))
        if method == "shutdown":
            break


def _wait_for_stop(conn) -> None:
    try:
        conn.recv_bytes()  # the executor's "shutdown" (or EOF when it went away)
    except (EOFError, OSError):
        pass


def _dumps(reply: RankReply) -> bytes:
    """Pickle a reply; one that does not pickle (an odd exception, a model object) travels as an error."""
    try:
        return dumps(reply)
    except Exception as exc:  # noqa: BLE001
        text = reply.traceback if reply.error is not None else (
            f"apply_model result {type(reply.value).__name__} does not pickle: {exc}")
        return dumps(RankReply(error=RuntimeError(text), traceback=text))


def _limit_threads(threads: int | None) -> None:
    """Ranks share the machine's cores: without this each one would use them all."""
    if threads and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads)


def _exit_with_parent() -> None:
    """A rank blocked in a collective never sees its pipe close: watch the parent instead."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="anymodel-parent-watch", daemon=True).start()
