"""A worker: builds the model for its device and rank (its TP shard, its PP stage) and runs steps on it."""

from __future__ import annotations

import gc
import logging

import torch

from anymodel import loader
from anymodel.worker.cuda_graph import GraphSpec, capture_sizes
from anymodel.distributed import ParallelState, get_parallel_state
from anymodel.model_protocol import traits_of
from anymodel.worker.model_runner import ModelRunner

logger = logging.getLogger("anymodel")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(args, model_dir, config, device: torch.device, state: ParallelState | None = None,
                backend=None) -> torch.nn.Module:
    """The model implementation `args.model_impl` asks for (native or the Transformers backend),
    cut to this rank's tensor-parallel shard and pipeline stage when `state` spans several ranks.
    A Transformers-backend model passes the start-up self-check (see `self_checked`) first."""
    from anymodel.native_overrides import NATIVE_MODELS, native_model_class

    state = state or get_parallel_state()
    dtype = loader.resolve_dtype(args.dtype, config)
    if args.task not in ("auto", "generate"):  # embed / classify / score / reward: a pooling adapter
        from anymodel.pooling.tasks import build_pooling_model

        return self_checked(build_pooling_model(args, model_dir, config, dtype, state).to(device), args, state, backend,
                            rebuild=None)
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    # "auto" falls back to the Transformers backend when the native class refuses the config;
    # "native" loads it anyway, so that from_pretrained raises with the reason.
    auto_config = config if args.model_impl == "auto" else None
    native = native_model_class(arch, auto_config) if args.model_impl in ("auto", "native") else None
    native = _native_for_world(native, args.model_impl, state)
    if args.model_impl == "native" and native is None:
        raise ValueError(
            f"model_impl='native': no native implementation for architecture {arch!r}; "
            f"native implementations: {sorted(NATIVE_MODELS)} (use model_impl='transformers')"
        )
    if native is not None:
        try:
            return native.from_pretrained(model_dir, config, dtype).to(device).eval()
        except ValueError as e:  # e.g. checkpoint names the native class does not know
            if args.model_impl == "native":
                raise
            logger.warning("anymodel: native %s cannot load this checkpoint (%s); using the Transformers backend", arch, e)

    def compat(reason: str) -> torch.nn.Module:
        from anymodel.adapters.compat import load_compat_causal_lm

        spec = loader.resolve_causal_lm_class(config, model_dir, args.trust_remote_code)
        if not spec.has_lm_head:
            raise ValueError(f"{spec.cls.__name__} failed anymodel's start-up self-check ({reason}), and the compat "
                             "path needs a *ForCausalLM class")
        return load_compat_causal_lm(spec.cls, model_dir, config, dtype, reason).to(device)

    # passed on, not kept here: a fallback frees the first copy before loading the second
    return self_checked(_build_transformers_model(args, model_dir, config, dtype, state).to(device), args, state,
                        backend, rebuild=compat)


def self_checked(model, args, state: ParallelState, backend, rebuild) -> torch.nn.Module:
    """`model` if it passes the start-up self-check (adapters/self_check.py: one short probe,
    our paged attention against the model's own, finite logits); otherwise the compat path, built
    by `rebuild(reason)`, when allowed; otherwise a ValueError naming the problem. Skipped on
    tensor/pipeline-parallel ranks (a rank holds a shard; see self_check.py)."""
    from anymodel.adapters.self_check import check_model

    if state.world_size > 1:
        return model
    failure = check_model(model, backend, args.block_size)
    if failure is None:
        return model
    name = type(getattr(model, "model", model)).__name__
    if failure.fatal or rebuild is None or not traits_of(model).paged_kv_cache:
        raise ValueError(f"{name} failed anymodel's start-up self-check and is not served: {failure.reason}")
    if not args.enable_compat_path:
        raise ValueError(f"{name} failed anymodel's start-up self-check and is not served: {failure.reason} "
                         "(enable_compat_path=True runs it on the compat path, through its own attention)")
    logger.warning("anymodel: %s failed the start-up self-check: %s; falling back to the compat path",
                   name, failure.reason)
    del model  # the only reference: freed before the second copy loads
    gc.collect()
    fallback = rebuild(f"start-up self-check: {failure.reason}")
    failure = check_model(fallback, backend, args.block_size)
    if failure is not None:
        raise ValueError(f"{name} failed anymodel's start-up self-check on the compat path too: {failure.reason}")
    return fallback


def _native_for_world(native, model_impl: str, state: ParallelState):
    """Native classes opt in to parallelism (`supports_tensor_parallel` / `supports_pipeline_parallel`,
    sharding themselves through anymodel.distributed); otherwise the Transformers backend runs it."""
    if native is None or state.world_size == 1:
        return native
    ok = (state.tp_size == 1 or getattr(native, "supports_tensor_parallel", False)) and (
        state.pp_size == 1 or getattr(native, "supports_pipeline_parallel", False)
    )
    if ok:
        return native
    if model_impl == "native":
        raise ValueError(
            f"model_impl='native': {native.__name__} does not support tensor_parallel_size={state.tp_size} / "
            f"pipeline_parallel_size={state.pp_size} (use model_impl='transformers')"
        )
    logger.info("anymodel: %s has no parallel support; using the Transformers backend", native.__name__)
    return None


def _build_transformers_model(args, model_dir, config, dtype, state: ParallelState):
    from anymodel.adapters.causal_lm import load_causal_lm

    spec = loader.resolve_causal_lm_class(config, model_dir, args.trust_remote_code)
    if state.world_size > 1:
        return _build_parallel_model(spec, model_dir, config, dtype, state)
    if not spec.backend_compatible:
        if args.enable_compat_path and spec.has_lm_head:
            from anymodel.adapters.compat import load_compat_causal_lm

            return load_compat_causal_lm(spec.cls, model_dir, config, dtype)
        raise ValueError(
            f"{spec.cls.__name__} is not compatible with the Transformers backend; a compatible model meets all of:\n"
            + loader.BACKEND_REQUIREMENTS
            + "\n(enable_compat_path=True runs it, slowly, through its own attention)"
        )
    logger.info("anymodel: Transformers backend, %s", spec.cls.__name__)
    return load_causal_lm(spec.cls, spec.has_lm_head, model_dir, config, dtype)


def _build_parallel_model(spec, model_dir, config, dtype, state: ParallelState):
    from anymodel.adapters.parallel import load_parallel_causal_lm

    if not spec.backend_compatible:
        raise ValueError(
            f"{spec.cls.__name__} is not compatible with the Transformers backend, and its compat path runs in one "
            "process only: use tensor_parallel_size=1 and pipeline_parallel_size=1"
        )
    logger.info("anymodel: Transformers backend, %s, rank %d of %d", spec.cls.__name__, state.rank, state.world_size)
    return load_parallel_causal_lm(spec.cls, spec.has_lm_head, model_dir, config, dtype, state)


class Worker:
    def __init__(self, args, model_dir, config, state: ParallelState | None = None) -> None:
        self.state = state or get_parallel_state()
        self.device = resolve_device(args.device)
        from anymodel.attention_backend.selector import get_backend

        backend = get_backend(args.attention_backend, self.device, args.block_size)
        self.model = build_model(args, model_dir, config, self.device, self.state, backend)
        spec = decode_graph_spec(args, config, self.device, self.model, backend, self.state)
        self.runner = ModelRunner(self.model, self.device, args.block_size, backend, seed=args.seed, graph_spec=spec)
        # Only the last pipeline stage has the LM head: earlier stages run the forward and stop.
        self.runner.produces_output = self.state.is_last_stage


def decode_graph_spec(args, config, device: torch.device, model, backend, state: ParallelState) -> GraphSpec | None:
    """CUDA graphs for decode steps when `enforce_eager=False` and everything in the step can be
    captured: one GPU, a generating model over the paged cache, an attention backend without host
    syncs (it says so with `CUDA_GRAPHS = True`). Otherwise None, with the reason logged."""
    if args.enforce_eager:
        return None
    reason = None
    if device.type != "cuda":
        reason = f"device {device.type!r} (CUDA only)"
    elif state.world_size > 1:
        reason = "tensor/pipeline parallelism (not captured yet)"
    elif args.task not in ("auto", "generate") or not traits_of(model).paged_kv_cache:
        reason = "a pooling model or one on the compat path"
    elif not getattr(backend, "CUDA_GRAPHS", False):
        reason = f"attention backend {getattr(backend, '__name__', backend)!r} cannot be captured; use 'triton'"
    if reason is not None:
        logger.info("anymodel: enforce_eager=False, but decode runs eagerly: %s", reason)
        return None
    max_seq_len = loader.derive_max_model_len(config, args.max_model_len)
    return GraphSpec(capture_sizes(args.max_num_seqs), max_seq_len)
