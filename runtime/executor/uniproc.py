"""The single-process executor: one worker in this process."""

from __future__ import annotations

from anymodel.worker.worker import Worker, run_on_worker
from anymodel.native_overrides.weights import refusing_unsafe_pickles


class UniProcExecutor:
    def __init__(self, args, model_dir, config) -> None:
        with refusing_unsafe_pickles(model_dir):
            self.worker = Worker(args, model_dir, config)

    @property
    def device(self):
        return self.worker.device

    def discover_layers(self):
        return self.worker.runner.discover_layers()

    def bytes_per_block(self, layers) -> int:
        return self.worker.runner.bytes_per_block(layers)

    def kv_memory_budget(self, layers, utilization: float, num_tokens: int, num_logit_rows: int) -> int | None:
        return self.worker.runner.kv_memory_budget(layers, utilization, num_tokens, num_logit_rows)

    def allocate_kv_cache(self, layers, num_blocks: int) -> None:
        self.worker.runner.allocate_kv_cache(layers, num_blocks)

    def execute_model(self, sched):
        return self.worker.runner.execute(sched)

    def apply_model(self, fn) -> list:
        return [fn(self.worker.model)]

    def collective_rpc(self, method, args: tuple = (), kwargs: dict | None = None) -> list:
        return [run_on_worker(self.worker, method, args, kwargs)]

    def check_health(self) -> None:
        """Nothing to watch: the worker is this process, and it is alive to answer."""

    def shutdown(self) -> None:
        pass
