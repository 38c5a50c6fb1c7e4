"""Start-up self-check: one short probe forward before a model is served.

    probe ids [1, P]  (P = the longest sliding window + 16, between 24 and 64 tokens)
      ours:  adapter.forward over a scratch paged cache (the engine's attention backend): the
             probe as a prefill, its last 4 tokens then as decode steps
      own:   the same module objects with `attn_implementation` switched to sdpa (or eager where
             the class does not support sdpa): the model's own attention and masks
      -> logits [P, V] of both must be finite and agree (median per-token relative L2 error,
         over all tokens, those past the longest window, and the decode steps)

It catches, in general, what the paged path cannot see for itself: a mask-only feature our kernels
miss (a window the config says some way `sliding_windows.py` does not know; a mask or bias the
model computes itself and hands the attention function, as Doge does), a buffer the
checkpoint left uninitialised (NaN / inf logits), attention math that differs from the model's.
A disagreement with finite own logits sends the model to the compat path (the caller decides);
non-finite own logits mean the model itself is broken, and it is refused.

Where it does not apply: native models (our own code, tested against Transformers), ranks of a
tensor/pipeline-parallel world (a rank holds a shard, and the probe would need every rank in
lockstep; the same modeling code is checked single-process), and windows longer than the probe
(P is capped to stay cheap; such windows come from the config all the same). Models on the
compat path, and pooling models, get the finite-logits part only.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from anymodel.attention_backend.forward_context import ForwardContext
from anymodel.attention_backend.interface import OwnMaskError
from anymodel.attention_backend.metadata import AttentionMetadata
from anymodel.model_facts import text_config_of
from anymodel.model_protocol import traits_of

logger = logging.getLogger("anymodel")

PROBE_MIN, PROBE_MAX, PROBE_PAST_WINDOW = 24, 64, 16
DECODE_STEPS = 4  # the probe's last tokens, one step each over the cache the prefill wrote
REQUEST_ID = "anymodel-self-check"
# Per-token relative L2 error of the logits allowed between our attention and the model's own:
# float32 runs agree to ~1e-6, 16-bit ones to ~1e-2; a missed window or mask is O(1).
_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
_HALF_TOLERANCE = 0.1


@dataclass
class CheckFailure:
    reason: str
    fatal: bool  # the model's own forward is broken too: nothing can serve it


def check_model(model: torch.nn.Module, backend, block_size: int) -> CheckFailure | None:
    """None when the probe passes; otherwise what went wrong (see the module docstring)."""
    if not hasattr(model, "model") or not hasattr(model.model, "config"):  # native: not an HF model
        return None
    with torch.inference_mode():
        ids = probe_ids(model)
        if not traits_of(model).paged_kv_cache:  # compat path: its own forward only
            return _finite(_compat_forward(model, ids, block_size), "its own forward", ids, fatal=True)
        if not hasattr(model, "compute_logits"):  # a pooling model: hidden states only
            hidden = _paged_forward(model, ids, backend, block_size, [ids.shape[1]])  # prompts run whole
            return _finite(hidden, "the paged forward", ids, fatal=True)
        return _compare(model, ids, backend, block_size)


def probe_ids(model: torch.nn.Module) -> torch.Tensor:
    """[1, P] deterministic token ids within the embedding table, P past the longest window and
    within the model's context."""
    from anymodel.model_facts import derive_max_model_len

    length = min(max(PROBE_MIN, _longest_window(model) + PROBE_PAST_WINDOW), PROBE_MAX)
    length = min(length, derive_max_model_len(model.model.config, None))
    gen = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    return torch.randint(0, _vocab_size(model.model), (1, length), generator=gen).to(device)


def _vocab_size(base: torch.nn.Module) -> int:
    try:
        return base.get_input_embeddings().weight.shape[0]
    except (AttributeError, NotImplementedError):  # remote code without the accessor
        text = text_config_of(base.config)
        return getattr(text, "vocab_size", None) or 2


def _compare(model, ids, backend, block_size: int) -> CheckFailure | None:
    length = ids.shape[1]
    decode = min(DECODE_STEPS, length - 1)  # fewer only in a context shorter than the probe
    steps = [length - decode] + [1] * decode  # a prefill, then decode steps
    try:
        ours = model.compute_logits(_paged_forward(model, ids, backend, block_size, steps)).float()
    except OwnMaskError as e:  # a mask or bias of its own (Doge): only its own attention can apply it
        return CheckFailure(str(e), fatal=False)
    impl, own = _own_logits(model, ids)
    if own is None:  # the model cannot run its own attention here: only finiteness is checked
        return _finite(ours, "the paged forward", ids, fatal=False)
    if not torch.isfinite(own).all():
        return _finite(own, f"its own ({impl}) forward", ids, fatal=True)
    if not torch.isfinite(ours).all():
        return _finite(ours, "the paged forward", ids, fatal=False)
    window = _longest_window(model)
    groups = [slice(0, length), slice(window if window < length else 0, length), slice(length - max(decode, 1), length)]
    error = _typical_error(ours, own, groups)  # all tokens, those past the longest window, the decode steps
    tolerance = _TOLERANCE.get(next(model.parameters()).dtype, _HALF_TOLERANCE)
    logger.debug("anymodel: self-check on %d tokens: relative logit error %.2e vs %s", length, error, impl)
    if error > tolerance:
        return CheckFailure(
            f"anymodel's paged attention disagrees with the model's own ({impl}) attention on a {length}-token "
            f"probe (median relative logit error {error:.3g} > {tolerance:g}): the model applies something in its "
            "attention or mask that the paged path does not reproduce",
            fatal=False,
        )
    return None


def _typical_error(ours: torch.Tensor, own: torch.Tensor, groups: list[slice]) -> float:
    """Relative L2 logit error per token ([P, V] -> [P]), its median within each group of rows
    (all tokens; those past the longest window, where a missed window shows; the decode steps,
    where a decode-only bug shows), the worst group's. A median, not a max: in 16 bits an MoE
    router may pick another expert for one near-tied token (measured: one token at 0.55 among two
    dozen at ~0.01), which is noise, not a bug; a bug moves most tokens of its group."""
    errors = (ours - own).norm(dim=-1) / own.norm(dim=-1).clamp_min(1e-6)  # [P]
    return max(float(errors[rows].median()) for rows in groups)


def _longest_window(model) -> int:
    return max((w[0] for w in getattr(model, "layer_windows", None) or () if w is not None), default=0)


def _paged_forward(model, ids, backend, block_size: int, steps: list[int]) -> torch.Tensor:
    """Our path, as the engine runs it: a discovery pass (no cache: which calls attend, with
    which K/V shapes), then the probe in consecutive steps of `steps` tokens over one scratch
    cache (a generating model: a prefill, then a decode step on top of it) -> hidden [P, H]."""
    length = ids.shape[1]
    positions = torch.arange(length, device=ids.device)[None]
    whole = _metadata(0, length, block_size, ids.device)
    with ForwardContext.discovery(whole, backend) as discovery:
        model(ids, positions, whole)
    blocks = whole.block_tables.shape[1]
    caches = [
        tuple(torch.zeros(blocks, block_size, h, d, dtype=dt, device=ids.device) for _ in range(2))
        for h, d, dt in discovery.discovered
    ]
    hidden, start = [], 0
    for n in steps:
        meta = _metadata(start, start + n, block_size, ids.device)
        with ForwardContext.paged(meta, caches, backend):
            hidden.append(model(ids[:, start : start + n], positions[:, start : start + n], meta))
        start += n
    return torch.cat(hidden)


def _compat_forward(model, ids, block_size: int) -> torch.Tensor:
    """The compat model's own forward (its own cache, dropped afterwards) -> logits [P, V]."""
    positions = torch.arange(ids.shape[1], device=ids.device)[None]
    try:
        hidden = model(ids, positions, _metadata(0, ids.shape[1], block_size, ids.device))  # no paged attention
    finally:
        if traits_of(model).per_request_state:  # its HF cache for the probe request
            model.release([REQUEST_ID])
    return model.compute_logits(hidden) if hasattr(model, "compute_logits") else hidden


def _metadata(start: int, end: int, block_size: int, device) -> AttentionMetadata:
    """One request's step: tokens [start, end) on top of `start` cached ones, in blocks 0, 1, ..."""
    blocks = -(-end // block_size)
    return AttentionMetadata(
        query_start_loc=torch.tensor([0, end - start], dtype=torch.int32, device=device),
        seq_lens=torch.tensor([end], dtype=torch.int32, device=device),
        block_tables=torch.arange(blocks, dtype=torch.int32, device=device)[None],
        slot_mapping=torch.arange(start, end, dtype=torch.long, device=device),
        max_query_len=end - start,
        max_seq_len=end,
        block_size=block_size,
        request_ids=(REQUEST_ID,),
    )


def _own_logits(model, ids) -> tuple[str, torch.Tensor | None]:
    """The model's own attention on the same modules: (implementation, logits [P, V] or None)."""
    decoder = model.model
    impl = "sdpa" if getattr(type(decoder), "_supports_sdpa", False) else "eager"
    positions = torch.arange(ids.shape[1], device=ids.device)[None]
    try:
        with _attn_implementation(decoder, impl):
            out = decoder(input_ids=ids, position_ids=positions, use_cache=False, return_dict=True)
    except Exception as e:  # remote code that cannot switch, or needs inputs we do not know
        logger.info("anymodel: self-check: %s cannot run its own %s attention (%s: %s); checking finiteness only",
                    type(decoder).__name__, impl, type(e).__name__, e)
        return impl, None
    return impl, model.compute_logits(out.last_hidden_state[0]).float()


@contextlib.contextmanager
def _attn_implementation(decoder, impl: str):
    """Every config the decoder's modules read switched to `impl`, then restored. Set directly,
    not through `set_attn_implementation`, whose source-code heuristic refuses remote code that
    indexes ALL_ATTENTION_FUNCTIONS[...] instead of calling `.get_interface(...)`; the loader
    has already found the model backend-compatible."""
    configs = _configs_of(decoder)
    before = {id(c): c._attn_implementation_internal for c in configs}
    for config in configs:
        config._attn_implementation_internal = impl
    try:
        yield
    finally:
        for config in configs:
            config._attn_implementation_internal = before[id(config)]


def _configs_of(decoder) -> list:
    """The distinct configs held by the decoder's modules, and their sub-configs."""
    found, queue = {}, [getattr(m, "config", None) for m in decoder.modules()]
    while queue:
        config = queue.pop()
        if config is None or id(config) in found or not hasattr(config, "_attn_implementation_internal"):
            continue
        found[id(config)] = config
        queue += [getattr(config, key, None) for key in getattr(config, "sub_configs", {})]
    return list(found.values())


def _finite(out: torch.Tensor, what: str, ids, fatal: bool) -> CheckFailure | None:
    if torch.isfinite(out).all():
        return None
    return CheckFailure(
        f"{what} gives non-finite (NaN / inf) outputs on a {ids.shape[1]}-token probe; a buffer or weight the "
        "checkpoint does not provide was probably left uninitialised (old remote code computing buffers in "
        "__init__?)",
        fatal=fatal,
    )
