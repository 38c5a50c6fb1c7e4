"""The Ray executor (`distributed_executor_backend="ray"`): one Ray actor per rank, placed by a
placement group, so the ranks of one model may span machines.

    ray start --head                                  # machine 1
    ray start --address=<head-ip>:6379                # machine 2, ...
    RAY_ADDRESS=auto python script.py                 # LLM(..., tensor_parallel_size=8,
                                                      #     pipeline_parallel_size=2,
                                                      #     distributed_executor_backend="ray")

Without RAY_ADDRESS (and no `ray.init()` by the caller) a local Ray instance is started. The model
directory must exist at the same path on every machine (shared disk or the same Hub snapshot).
torch.distributed rendezvous: rank 0's node address and a free port there.
"""

from __future__ import annotations

import os
import weakref

from anymodel.executor.distributed_executor import DistributedExecutor, RankReply, Replies, output_rank

_READY_TIMEOUT_S = 120.0


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "distributed_executor_backend='ray' needs Ray: pip install 'anymodel[ray]' (or pip install ray); "
            "distributed_executor_backend='mp' runs all ranks on this machine without it"
        ) from exc
    return ray


class _RankActor:
    """Holds one RankWorker inside a Ray actor process."""

    def address(self) -> tuple[str, int]:
        import ray

        from anymodel.distributed import free_port

        return ray.util.get_node_ip_address(), free_port()

    def start(self, args, model_dir, rank: int, init_method: str) -> RankReply:
        from anymodel.executor.rank_worker import RankWorker

        try:
            self.worker = RankWorker(args, model_dir, rank, init_method)
        except BaseException as exc:  # noqa: BLE001
            return RankReply.failed(exc)
        return RankReply()

    def call(self, method: str, args: tuple) -> RankReply:
        from anymodel.executor.rank_worker import call

        return call(self.worker, method, args)


class RayExecutor(DistributedExecutor):
    def __init__(self, args, model_dir, config) -> None:
        ray = _import_ray()
        super().__init__(args.world_size, output_rank(args.tensor_parallel_size, args.pipeline_parallel_size))
        started = not ray.is_initialized()
        if started:
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
        self.actors, self.group = _place_actors(ray, self.world_size, args.device)
        self._finalizer = weakref.finalize(self, _stop, self.actors, self.group, started)
        host, port = ray.get(self.actors[0].address.remote())
        init_method = f"tcp://{host}:{port}"
        refs = [a.start.remote(args, str(model_dir), r, init_method) for r, a in enumerate(self.actors)]
        self._gather(refs, fatal=True)

    def _call(self, method: str, *args, fatal: bool = True) -> list:
        self.check_health()
        if self.stopped:
            raise RuntimeError("the Ray executor is shut down")
        return self._gather([a.call.remote(method, args) for a in self.actors], fatal)

    def _gather(self, refs, fatal: bool) -> list:
        """Replies in rank order (see `Replies`); a failed actor tears the world down at once."""
        ray = _import_ray()
        replies = Replies([None] * len(refs), fatal, self._on_rank_error)
        pending = {ref: rank for rank, ref in enumerate(refs)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            rank = pending.pop(ready[0])
            try:
                reply = ray.get(ready[0])
            except ray.exceptions.RayError as exc:  # the actor died (or its node did): `call` never raises
                self._die(f"anymodel rank {rank} (Ray actor) failed: {exc}")
            replies.add(rank, reply)
        return replies.finish()

    # _check_ranks stays the base no-op: asking Ray whether an actor lives is a round trip to the
    # GCS (or a ping that queues behind a running step), too slow for every /health request. A
    # dead actor still fails the next call at once: ray.get raises RayActorError.

    def _kill_ranks(self) -> None:
        self._finalizer()


def _place_actors(ray, world_size: int, device: str):
    """One bundle per rank (a GPU each when there are GPUs), packed onto as few machines as possible."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    resources = ray.cluster_resources()
    use_gpu = device != "cpu" and resources.get("GPU", 0) > 0
    cpus = 1.0 if use_gpu else min(1.0, resources.get("CPU", 1.0) / world_size)
    bundle = {"CPU": cpus, **({"GPU": 1.0} if use_gpu else {})}
    group = placement_group([dict(bundle) for _ in range(world_size)], strategy="PACK")
    ready, _ = ray.wait([group.ready()], timeout=_READY_TIMEOUT_S)
    if not ready:
        ray.util.remove_placement_group(group)
        raise RuntimeError(f"the Ray cluster cannot place {world_size} ranks of {bundle} ({resources})")
    actor_cls = ray.remote(_RankActor)
    actors = [
        actor_cls.options(
            num_cpus=cpus,
            num_gpus=1.0 if use_gpu else 0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
        ).remote()
        for rank in range(world_size)
    ]
    return actors, group


def _stop(actors, group, started: bool) -> None:
    import ray

    if not ray.is_initialized():
        return
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone
            pass
    ray.util.remove_placement_group(group)
    if started:
        ray.shutdown()
