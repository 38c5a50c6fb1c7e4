"""Process groups for tensor / pipeline parallelism, and the few collectives model code calls.

Ranks are laid out stage-major, as in vLLM:  global rank = pp_rank * tp_size + tp_rank

    tensor_parallel_size=2, pipeline_parallel_size=2
        stage 0: ranks 0 1        TP groups: {0, 1} {2, 3}   (all-reduce / all-gather inside a stage)
        stage 1: ranks 2 3        PP groups: {0, 2} {1, 3}   (send / recv between stages, same TP rank)

Stable API (native_overrides and adapters rely on it):
    get_tp_group(), tp_rank(), tp_size(), get_pp_group(), pp_rank(), pp_size(), get_parallel_state()
    all_reduce(t) -> t (summed over the TP group, in place)
    all_gather(t, dim=-1) -> TP shards concatenated along dim
Outside a distributed run (one process, or before init) every helper is the identity: tp_size() == 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelState:
    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    tp_group: Any = None  # torch.distributed ProcessGroup, None when single-process
    pp_group: Any = None

    @property
    def rank(self) -> int:
        return self.pp_rank * self.tp_size + self.tp_rank

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def prev_stage_rank(self) -> int:
        """Global rank of the same TP rank one stage earlier."""
        return self.rank - self.tp_size

    @property
    def next_stage_rank(self) -> int:
        return self.rank + self.tp_size


_SINGLE = ParallelState()
_state: ParallelState = _SINGLE


def init_distributed(rank: int, tp_size: int, pp_size: int, init_method: str, backend: str | None = None) -> ParallelState:
    """Join the world (every rank calls this) and build the TP and PP groups.

    `new_group` is collective: every rank creates every group, in the same order."""
    global _state
    world = tp_size * pp_size
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    tp_groups = [dist.new_group(list(range(s * tp_size, (s + 1) * tp_size))) for s in range(pp_size)]
    pp_groups = [dist.new_group(list(range(t, world, tp_size))) for t in range(tp_size)]
    pp_rank, tp_rank = divmod(rank, tp_size)
    _state = ParallelState(tp_rank, tp_size, pp_rank, pp_size, tp_groups[pp_rank], pp_groups[tp_rank])
    return _state


def destroy_distributed() -> None:
    global _state
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _state = _SINGLE


def set_parallel_state(state: ParallelState) -> None:
    """For tests and single-process fallbacks; `init_distributed` sets it in workers."""
    global _state
    _state = state


def get_parallel_state() -> ParallelState:
    return _state


def get_tp_group():
    return _state.tp_group


def get_pp_group():
    return _state.pp_group


def tp_rank() -> int:
    return _state.tp_rank


def tp_size() -> int:
    return _state.tp_size


def pp_rank() -> int:
    return _state.pp_rank


def pp_size() -> int:
    return _state.pp_size


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the TP group, in place (a rowwise linear's partial products)."""
    if _state.tp_size > 1:
        dist.all_reduce(tensor, group=_state.tp_group)
    return tensor


def all_gather(tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every TP rank's equally shaped shard along `dim` (rank order)."""
    if _state.tp_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(_state.tp_size)]
    dist.all_gather(parts, tensor.contiguous(), group=_state.tp_group)
    return torch.cat(parts, dim=dim)


def send_to_next_stage(tensor: torch.Tensor) -> None:
    dist.send(tensor.contiguous(), dst=_state.next_stage_rank, group=None)


def recv_from_prev_stage(like: torch.Tensor) -> torch.Tensor:
    """Receive a tensor shaped and typed like `like` from the previous stage."""
    buf = torch.empty_like(like).contiguous()
    dist.recv(buf, src=_state.prev_stage_rank, group=None)
    return buf


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_init_method() -> str:
    """A TCP rendezvous for ranks on this machine: loopback and a free port (never MASTER_ADDR, which
    a cluster environment may point elsewhere)."""
    return f"tcp://127.0.0.1:{free_port()}"
