"""Functions for `llm.apply_model`, run on every rank (importable, so they pickle by reference)."""

import os


def param_shapes(model) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}


def pid(model) -> int:
    return os.getpid()


def die_on_rank_1_in_a_collective(model) -> None:
    """Rank 1 is SIGKILLed while rank 0 waits for it in an all-reduce (the OOM killer mid-step)."""
    import signal

    import torch
    import torch.distributed as dist

    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(torch.ones(1))


def worker_rank(worker) -> int:
    """collective_rpc probe: the worker's global rank."""
    return worker.state.rank
