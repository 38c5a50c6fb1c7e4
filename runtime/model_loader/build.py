"""Build what the decision names, for this device and rank; then the load-time transforms and the
start-up self-check.

    decide -> build (native | transformers | compat | pooling) -> transforms -> self-check
                 native cannot load the checkpoint ("auto") -> the next rule that applies
                 self-check fails (transformers, enable_compat_path) -> compat
"""

from __future__ import annotations

import gc
import logging

import torch

from anymodel import loader
from anymodel.distributed import ParallelState
from anymodel.model_loader import quantization  # noqa: F401  (registers the quantization transform)
from anymodel.lora.transform import LoRAConfig  # also registers the LoRA transform
from anymodel.model_loader.rules import Decision, decide
from anymodel.model_loader.transforms import TransformContext, apply_transforms
from anymodel.model_protocol import traits_of

logger = logging.getLogger("anymodel")


def load_model(args, model_dir, config, device: torch.device, state: ParallelState, backend) -> torch.nn.Module:
    """The model the decision table picks for `args`, cut to this rank's tensor-parallel shard and
    pipeline stage when `state` spans several ranks; a ValueError with the reason when it refuses."""
    return build(decide(args, config, model_dir, state), args, device, backend)


def build(decision: Decision, args, device: torch.device, backend) -> torch.nn.Module:
    facts = decision.facts
    logger.info(decision.log_line)
    for verdict in decision.passed:
        logger.debug("anymodel: rule %s does not apply: %s", verdict.rule.name, verdict.reason)
    if decision.impl == "refuse":
        raise ValueError(decision.reason)
    dtype = loader.resolve_dtype(args.dtype, facts.config)
    context = TransformContext(decision.impl, facts.config, dtype, facts.state, LoRAConfig.from_args(args))
    if args.load_format == "dummy":
        return _dummy(decision, args, device, backend, context)
    if decision.impl == "native":
        return _native(decision, args, device, backend, context)
    # a quantized model has no plain fallback: the compat path would load its checkpoint as plain weights
    plain_fallback = decision.impl != "pooling" and facts.quantization is None
    rebuild = _compat_rebuild(decision, device, context) if plain_fallback else None
    # passed on, not kept here: a fallback frees the first copy before loading the second
    built = _BUILDERS[decision.impl]
    return self_checked(apply_transforms(built(decision, args, dtype).to(device), context), args, facts.state, backend,
                        rebuild)


def _native(decision: Decision, args, device, backend, context: TransformContext) -> torch.nn.Module:
    facts = decision.facts
    try:
        model = decision.cls.from_pretrained(facts.model_dir, facts.config, context.dtype).to(device)
    except ValueError as e:  # e.g. checkpoint names the native class does not know
        if args.model_impl == "native":
            raise
        logger.warning("anymodel: native %s cannot load this checkpoint (%s); using the Transformers backend",
                       facts.arch, e)
        return build(decide(args, facts.config, facts.model_dir, facts.state, exclude=("native",)), args, device,
                     backend)
    return apply_transforms(model, context).eval()


def _dummy(decision: Decision, args, device, backend, context: TransformContext) -> torch.nn.Module:
    """load_format="dummy": random weights for the native class or the single-rank Transformers
    backend (benchmarks without a checkpoint); the other paths read weights as they build and refuse."""
    f = decision.facts
    if decision.impl == "native":
        model = decision.cls.with_random_weights(f.config, context.dtype, args.seed)
        return apply_transforms(model.to(device), context).eval()
    if decision.impl != "transformers" or f.state.world_size > 1:
        path = f"{decision.impl} on {f.state.world_size} ranks" if decision.impl == "transformers" else decision.impl
        raise ValueError(f"load_format='dummy' builds random weights for native models and the single-rank "
                         f"Transformers backend; this model runs {path}: pass load_format='auto'")
    from anymodel.adapters.causal_lm import random_causal_lm

    model = random_causal_lm(f.hf.cls, f.hf.has_lm_head, f.config, context.dtype, args.seed)
    return self_checked(apply_transforms(model.to(device), context), args, f.state, backend, None)


def _transformers(decision: Decision, args, dtype: torch.dtype) -> torch.nn.Module:
    f, spec = decision.facts, decision.facts.hf
    if f.state.world_size > 1 or f.quantization is not None:  # quantized: built on meta, read tensor by tensor
        from anymodel.adapters.parallel import load_parallel_causal_lm

        method = quantization.method_of(f.quantization)
        return load_parallel_causal_lm(spec.cls, spec.has_lm_head, f.model_dir, f.config, dtype, f.state, method)
    from anymodel.adapters.causal_lm import load_causal_lm

    return load_causal_lm(spec.cls, spec.has_lm_head, f.model_dir, f.config, dtype)


def _compat(decision: Decision, args, dtype: torch.dtype) -> torch.nn.Module:
    from anymodel.adapters.compat import load_compat_causal_lm

    f = decision.facts
    return load_compat_causal_lm(f.hf.cls, f.model_dir, f.config, dtype)


def _pooling(decision: Decision, args, dtype: torch.dtype) -> torch.nn.Module:
    from anymodel.pooling.tasks import build_pooling_model

    f = decision.facts
    return build_pooling_model(args, f.model_dir, f.config, dtype, f.state)


_BUILDERS = {"transformers": _transformers, "compat": _compat, "pooling": _pooling}


def _compat_rebuild(decision: Decision, device, context: TransformContext):
    """The compat path for a model that failed the self-check (`reason`: why, for its log)."""

    def rebuild(reason: str) -> torch.nn.Module:
        from anymodel.adapters.compat import load_compat_causal_lm

        f = decision.facts
        if not f.hf.has_lm_head:
            raise ValueError(f"{f.hf_name} failed anymodel's start-up self-check ({reason}), and the compat "
                             "path needs a *ForCausalLM class")
        model = load_compat_causal_lm(f.hf.cls, f.model_dir, f.config, context.dtype, reason).to(device)
        return apply_transforms(model, TransformContext("compat", f.config, context.dtype, f.state, context.lora))

    return rebuild


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
