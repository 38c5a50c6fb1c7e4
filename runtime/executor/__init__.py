"""Executors own the workers that hold the model: one process now; torch.distributed / Ray later.

Every executor offers the same four calls to the engine:
    discover_layers() -> [(num_kv_heads, head_dim, dtype)]     allocate_kv_cache(layers, num_blocks)
    execute_model(SchedulerOutput) -> RunnerOutput               apply_model(fn) -> [fn(model) per worker]
"""

from __future__ import annotations


def make_executor(args, model_dir, config):
    backend = args.distributed_executor_backend or ("uni" if args.world_size == 1 else "mp")
    if backend == "uni":
        if args.world_size != 1:
            raise ValueError("distributed_executor_backend='uni' needs tensor_parallel_size * pipeline_parallel_size == 1")
        from anymodel.executor.uniproc import UniProcExecutor

        return UniProcExecutor(args, model_dir, config)
    raise ValueError(
        f"distributed_executor_backend {backend!r} (tensor_parallel_size={args.tensor_parallel_size}, "
        f"pipeline_parallel_size={args.pipeline_parallel_size}) is not available yet; supported now: ['uni'] with world size 1"
    )
