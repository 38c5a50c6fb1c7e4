"""Executors own the workers that hold the model.

    uni   one worker in the engine process                          (world size 1, the default)
    mp    one spawned process per rank, torch.distributed between    (default for world size > 1)
    ray   one Ray actor per rank, possibly on several machines       (optional dependency)

world size = tensor_parallel_size * pipeline_parallel_size; rank = pp_rank * tensor_parallel_size + tp_rank.
Every executor offers the engine the same calls:
    discover_layers() -> [(num_kv_heads, head_dim, dtype)]   bytes_per_block(layers) -> int
    allocate_kv_cache(layers, num_blocks)                     execute_model(SchedulerOutput) -> RunnerOutput
    apply_model(fn) -> [fn(model) per rank, in rank order]    shutdown()
    check_health()  raises WorkerDiedError (an EngineFatalError) once a rank process is dead; after
                    that every call raises it too (anymodel.errors)
With several ranks, each rank discovers and allocates its own layers (its stage, its KV-head shard);
bytes_per_block is the max over ranks, so `num_blocks` fits every rank. execute_model returns the
RunnerOutput of the last pipeline stage's TP rank 0.
"""

from __future__ import annotations

BACKENDS = ("uni", "mp", "ray")


def make_executor(args, model_dir, config):
    backend = args.distributed_executor_backend or ("uni" if args.world_size == 1 else "mp")
    if backend == "uni":
        if args.world_size != 1:
            raise ValueError(
                "distributed_executor_backend='uni' runs one process: it needs tensor_parallel_size * "
                f"pipeline_parallel_size == 1, got {args.tensor_parallel_size} * {args.pipeline_parallel_size}; "
                "use 'mp' or 'ray'"
            )
        from anymodel.executor.uniproc import UniProcExecutor

        return UniProcExecutor(args, model_dir, config)
    if backend == "mp":
        from anymodel.executor.multiproc import MultiprocExecutor

        return MultiprocExecutor(args, model_dir, config)
    if backend == "ray":
        from anymodel.executor.ray_executor import RayExecutor

        return RayExecutor(args, model_dir, config)
    raise ValueError(f"unsupported distributed_executor_backend {backend!r}; supported: {list(BACKENDS)}")
