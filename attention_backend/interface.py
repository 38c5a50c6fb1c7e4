"""The attention function anymodel registers with Transformers.

A backend-compatible model calls `ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, q, k,
v, mask, scaling=..., sliding_window=..., softcap=..., **kwargs)`. The step's `AttentionMetadata`
rides in those kwargs as `attn_metadata`; everything else the call needs (the KV caches, which layer
it is, the kernels) comes from the `ForwardContext` the runner set for this forward
(forward_context.py), which also carries the metadata for models whose decoder layers drop
`**kwargs` on the way to attention (Nemotron).

Beyond plain attention: learnable sinks (`s_aux`, GPT-OSS) join the softmax, and heads whose value
width differs from the query/key width (MLA: DeepSeek V2/V3, MiniCPM3) are zero-padded to one width.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from contextvars import ContextVar

import torch
import torch.nn.functional as F

from anymodel.attention_backend import ATTN_IMPLEMENTATION
from anymodel.attention_backend import torch_ref
from anymodel.attention_backend.forward_context import ForwardMode, current_forward
from anymodel.attention_backend.metadata import AttentionMetadata

_DISCOVERY = ForwardMode.DISCOVERY
# The running model's (causal, bidirectional) window per decoder layer (adapters/sliding_windows.py), or None.
LayerWindows = tuple[tuple[int, int] | None, ...]
_LAYER_WINDOWS: ContextVar[LayerWindows | None] = ContextVar("anymodel_layer_windows", default=None)


@contextlib.contextmanager
def sliding_windows(layer_windows: LayerWindows | None):
    """Make the model's per-layer windows reachable by every attention call of the forward run
    inside (the adapter sets them: they are the model's, not the step's nor the runner's).

    `layer_windows[i]`: layer i's (causal, bidirectional) window in the kernels' terms, or None,
    read from the config at load as Transformers' masks apply it. Transformers enforces windows
    only through the mask (which our implementation never gets), and some models pass no
    `sliding_window` kwarg at all (PhiMoE), so with a list here the kwarg is not trusted."""
    token = _LAYER_WINDOWS.set(layer_windows)
    try:
        yield
    finally:
        _LAYER_WINDOWS.reset(token)


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, Hq, T, D]
    key: torch.Tensor,  # [1, Hkv, T, D]
    value: torch.Tensor,  # [1, Hkv, T, Dv]
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    # Returns [1, T, Hq, Dv] contiguous, as Transformers' own attention functions do (JetMoE views it).
    forward = current_forward()
    if forward is None:
        raise RuntimeError(
            f"attention implementation {ATTN_IMPLEMENTATION!r} needs an active ForwardContext (the forward's KV "
            "caches and layer cursor); it only runs inside the anymodel engine"
        )
    meta: AttentionMetadata | None = kwargs.get("attn_metadata")
    if meta is None:
        meta = forward.metadata
    if query.shape[0] != 1:
        raise RuntimeError(f"anymodel runs one flat row of tokens per step; got batch size {query.shape[0]}")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    sinks = _sinks(module, kwargs)
    alibi = kwargs.get("alibi_slopes")  # [Hq] this rank's heads (native ALiBi models)
    # MLA heads: values narrower than queries/keys. Zero columns change no dot product and give
    # zero output columns, cut off below; the cache then keeps one width for K and V, as every
    # backend's kernels expect.
    value_dim = value.shape[-1]
    width = max(key.shape[-1], value_dim)
    if key.shape[-1] != value_dim:
        query, key, value = (F.pad(t, (0, width - t.shape[-1])) for t in (query, key, value))
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, D]
    layer = forward.next_layer()
    sliding_window = _layer_window(module, layer, causal, sliding_window)
    backend = forward.backend or torch_ref

    if forward.mode is _DISCOVERY:  # one request, no cache yet
        if sinks is not None:
            _check_supported(backend, "sinks", "learnable sinks (`s_aux`)")
        if alibi is not None:
            _check_supported(backend, "alibi_slopes", "ALiBi position biases")
        _check_no_own_mask(module, attention_mask)
        forward.discovered.append((k.shape[1], k.shape[2], k.dtype))
        out = _dense_single_request(query, key, value, scale, causal, sliding_window, softcap, sinks, alibi)
        return out[..., :value_dim].contiguous(), None

    key_cache, value_cache = forward.kv_caches[layer]
    backend.store_kv(k, v, key_cache, value_cache, meta.slot_mapping)
    # only backends that take sinks / ALiBi slopes get the argument
    extra = {name: t for name, t in (("sinks", sinks), ("alibi_slopes", alibi)) if t is not None}
    out = backend.paged_attention(
        q, key_cache, value_cache, meta, scale=scale, causal=causal, sliding_window=sliding_window, softcap=softcap,
        **extra,
    )
    return out[..., :value_dim].unsqueeze(0).contiguous(), None


def _layer_window(module: torch.nn.Module, call: int, causal: bool, kwarg: int | None) -> int | None:
    """This layer's window in the kernels' terms (|q - k| < w on each side attended, as
    flash-attention's `window_size=(w - 1, w - 1)`), from the forward's per-layer list when there is
    one: the layer is the module's `layer_idx`, else the call's position in the forward. Without a
    list (or past its end) the model's own kwarg, in flash terms too, is all there is."""
    windows = _LAYER_WINDOWS.get()
    if windows is None:
        return kwarg
    index = getattr(module, "layer_idx", None)
    if not isinstance(index, int) or not 0 <= index < len(windows):
        index = call
    if index >= len(windows):
        return kwarg
    window = windows[index]
    return None if window is None else (window[0] if causal else window[1])


def _sinks(module: torch.nn.Module, kwargs: dict) -> torch.Tensor | None:
    """Per-query-head sink logits [Hq]: Transformers passes them as `s_aux` (flash / flex), and its
    eager paged path reads `module.sinks`; either way they join the softmax denominator."""
    sinks = kwargs.get("s_aux")
    if sinks is None:
        sinks = getattr(module, "sinks", None)
    return sinks if isinstance(sinks, torch.Tensor) else None


@functools.lru_cache(maxsize=None)
def _takes(paged_attention, parameter: str) -> bool:
    return parameter in inspect.signature(paged_attention).parameters


def _check_supported(backend, parameter: str, what: str) -> None:
    """At discovery, so that the engine fails at start-up rather than on its first step."""
    if not _takes(backend.paged_attention, parameter):
        name = getattr(backend, "__name__", type(backend).__name__)
        raise ValueError(
            f"this model's attention has {what}, which attention backend {name!r} does not "
            "implement; use attention_backend='triton' (GPU) or 'torch'"
        )


class OwnMaskError(ValueError):
    """The model hands the attention function a mask or bias of its own (see `_check_no_own_mask`);
    the start-up self-check sends such a model to the compat path, where its own attention applies it."""


def _check_no_own_mask(module: torch.nn.Module, attention_mask) -> None:
    """With our implementation Transformers' mask builders return None, so a mask that reaches us
    is one the model made itself (a learned bias, Doge's dynamic mask): the paged kernels cannot
    apply it, and ignoring it would change the tokens. Caught at start-up, never served."""
    if isinstance(attention_mask, torch.Tensor):
        raise OwnMaskError(
            f"{type(module).__name__} passes its own attention mask / bias to the attention function, which "
            "anymodel's paged attention cannot apply"
        )


def _dense_single_request(query, key, value, scale, causal, sliding_window, softcap, sinks=None, alibi=None):
    """Plain attention over one request's tokens ([1, H, T, D] in, [1, T, Hq, D] out)."""
    T = query.shape[2]
    pos = torch.arange(T, device=query.device)
    allowed = torch.ones(T, T, dtype=torch.bool, device=query.device)
    if causal:
        allowed &= pos[None, :] <= pos[:, None]
    if sliding_window is not None:
        dist = pos[:, None] - pos[None, :]
        allowed &= (dist if causal else dist.abs()) < sliding_window
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [1, T, H, D]
    bias = None if alibi is None else torch_ref.alibi_bias(alibi, pos[None], pos[None])
    out = torch_ref._masked_attention(q, k, v, allowed[None], scale, softcap, sinks, bias)
    return out


def register() -> str:
    """Register with Transformers (idempotent) and return the implementation name."""
    from transformers import AttentionInterface

    # Deliberately no AttentionMaskInterface entry: for an implementation absent from that registry
    # Transformers' mask builders exit early with `None`, so no [T, T] mask is ever materialised.
    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)
    return ATTN_IMPLEMENTATION
