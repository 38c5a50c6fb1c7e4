"""The compat path: models whose attention does not go through Transformers' attention interface.

Such a model (Bloom, Falcon, older remote code), or one with recurrent state our paged cache cannot
hold (Mamba, Jamba and other SSM hybrids, MiniMax's linear attention; see loader.recurrent_state),
runs through its own forward with its own Transformers cache: token-identical, but slower than the
paged path. The engine still schedules it (continuous batching, chunked prefill, preemption); each
request's HF cache lives here, keyed by request id, and is dropped when the request finishes or is
preempted. Prefix caching is off for these models, since their K/V never enter our blocks. A
recurrent model's later prefill chunks rerun the request from its first token (`replay_prefill`).

Each forward gets what Transformers' `generate` gives it, where its signature takes it: an
`attention_mask` of ones over past + new tokens (zeros on left padding), `position_ids` and
`cache_position`; old remote code builds its 4-D mask from that 2-D mask. A model that returns
legacy tuple caches ((k, v) per layer) gets tuples back, while ours stay DynamicCaches, so its
decode steps batch too.

Within one step, prefill chunks run one request at a time. The decode rows (one new token on an
existing cache) run as ONE batched forward, as HF `generate` does with left padding: each
request's per-layer K/V [1, H, L_i, D] is left-padded with zeros to [B, H, max L, D], the
`attention_mask` [B, max L + 1] zeroes the padding, `position_ids` [B, 1] are the true positions,
and the grown cache is cut back into per-request views without the padding afterwards. Whether a
model can be batched is decided once, at construction (see `_batching_blocker`); models that
cannot (no `attention_mask` or `position_ids`, sliding / linear-attention caches, unknown cache
types) keep the per-request loop.
"""

from __future__ import annotations

import inspect
import logging

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from anymodel.adapters.causal_lm import TransformersForCausalLM, decoder_of
from anymodel.model_protocol import ModelTraits

logger = logging.getLogger("anymodel")

# Model types without position ids whose only positional signal is ALiBi, which survives left
# padding: Bloom builds it from the attention mask's cumsum, MPT relative to the last key; both
# give the same per-key bias differences (all softmax sees) with or without padding.
_POSITIONS_FROM_ALIBI = frozenset({"bloom", "mpt"})


class CompatCausalLM(TransformersForCausalLM):
    # its own HF caches, one per request id (dropped by `release`), never our blocks
    traits = ModelTraits(paged_kv_cache=False, prefix_caching=False, per_request_state=True)

    def __init__(self, base_model, lm_head, config) -> None:
        super().__init__(base_model, lm_head, config)
        self.caches: dict[str, object] = {}
        # Recurrent layers (Mamba, linear attention) continue their state one token at a time only:
        # Transformers' `generate` never hands them a multi-token chunk on top of a state, and Mamba
        # or MiniMax would silently restart from zeros. A prefill chunk that continues a request
        # (chunked prefill) is therefore run again from the request's first token, exactly the
        # one-shot prefill Transformers does; `history` keeps each such request's token ids.
        from anymodel.model_facts import recurrent_state

        self.replay_prefill = recurrent_state(type(base_model), config) is not None
        self.history: dict[str, list[torch.Tensor]] = {}  # request id -> its token ids so far, [1, q] each
        params = inspect.signature(base_model.forward).parameters
        self._takes_positions = "position_ids" in params
        # What Transformers' `generate` passes besides the ids, where the forward takes it: old
        # remote code builds its 4-D mask from a 2-D `attention_mask` over past + new tokens.
        self._takes_mask = "attention_mask" in params
        self._takes_cache_position = "cache_position" in params
        # Legacy remote code returns (and may only accept) a tuple of (k, v) per layer; ours stay
        # DynamicCaches (batchable), converted at the call. Learnt from the first cache returned.
        self._tuple_cache = False
        # Transformers >= 5.2x renamed `past_key_values` to `cache` (in and out); accept either.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        blocker = _batching_blocker(params, config)
        self.batch_decode = blocker is None
        name = type(base_model).__name__
        if self.batch_decode:
            logger.info("anymodel: compat path for %s: decode steps batched (left-padded HF cache)", name)
        else:
            logger.info("anymodel: compat path for %s: one request at a time (%s)", name, blocker)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata) -> torch.Tensor:
        starts = attn_metadata.query_start_loc.tolist()
        context = attn_metadata.context_lens.tolist()
        rids = attn_metadata.request_ids
        hidden: list[torch.Tensor | None] = [None] * len(rids)  # per request: [q_i, H]
        decode = [
            i for i, rid in enumerate(rids) if starts[i + 1] - starts[i] == 1 and context[i] > 0 and rid in self.caches
        ]
        if self.batch_decode and len(decode) > 1 and self._caches_batchable([rids[i] for i in decode]):
            rows = torch.tensor([starts[i] for i in decode], device=input_ids.device)
            out = self._decode_batch([rids[i] for i in decode], input_ids[0, rows], positions[0, rows])
            for j, i in enumerate(decode):
                hidden[i] = out[j : j + 1]
        for i, rid in enumerate(rids):
            if hidden[i] is None:
                s, e = starts[i], starts[i + 1]
                hidden[i] = self._run_one(rid, input_ids[:, s:e], positions[:, s:e], context[i])
        return torch.cat(hidden)

    def _run_one(self, rid: str, ids: torch.Tensor, pos: torch.Tensor, context: int) -> torch.Tensor:
        """One request's chunk, ids/pos [1, q], on its own cache -> hidden [q, H]."""
        cache = self.caches.pop(rid, None) if context > 0 else None
        if context > 0 and cache is None:
            raise RuntimeError(f"compat path: request {rid} resumed without its cache")
        q = ids.shape[1]
        if self.replay_prefill:
            seen = self.history.pop(rid, []) if context > 0 else []
            self.history[rid] = seen + [ids]
            if context > 0 and q > 1:  # see __init__: the whole request so far, from no state
                ids = torch.cat(self.history[rid], dim=1)
                pos = torch.arange(ids.shape[1], device=ids.device)[None]
                cache = None
        past = 0 if cache is None else context
        # Recurrent layers read a mask over the new tokens only (Mamba multiplies its states by it),
        # and `generate` drops it after the prompt: none for them.
        mask = None if self.replay_prefill else torch.ones(1, past + ids.shape[1], dtype=torch.long, device=ids.device)
        out = self._call(ids, pos, cache, mask, torch.arange(past, past + ids.shape[1], device=ids.device))
        self.caches[rid] = self._keep(_returned_cache(out))
        return out.last_hidden_state[0, -q:]

    def _call(self, ids, pos, cache, mask, cache_position):
        """The base model's forward with what `generate` gives it (each where the forward takes it):
        ids/pos [B, q], mask [B, past + q] (0 on left padding) or None, cache_position [q]."""
        kwargs = {"position_ids": pos} if self._takes_positions else {}
        if self._takes_mask and mask is not None:
            kwargs["attention_mask"] = mask
        if self._takes_cache_position:
            kwargs["cache_position"] = cache_position
        if self._tuple_cache and isinstance(cache, DynamicCache):
            cache = tuple((layer.keys, layer.values) for layer in cache.layers)
        kwargs[self._cache_arg] = cache
        return self.model(input_ids=ids, use_cache=True, return_dict=True, **kwargs)

    def _keep(self, cache):
        """A returned legacy tuple cache -> a DynamicCache (views of the same tensors)."""
        legacy = isinstance(cache, (tuple, list)) and len(cache) > 0
        if legacy and all(isinstance(kv, (tuple, list)) and len(kv) == 2 for kv in cache):
            if not self._tuple_cache:
                logger.info("anymodel: compat path: the model returns tuple caches; converted at each call")
            self._tuple_cache = True
            return _cache_of([_layer(k, v) for k, v in cache])
        return cache

    def _decode_batch(self, rids: list[str], ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One token for each of B requests, ids/pos [B], in one forward -> hidden [B, H]."""
        caches = [self.caches.pop(rid) for rid in rids]
        if self.replay_prefill:
            for b, rid in enumerate(rids):
                self.history[rid].append(ids[b : b + 1, None])
        width = max(c.get_seq_length() for c in caches)
        pads = [width - c.get_seq_length() for c in caches]  # zeros before each request's K/V
        # [B, width + 1]: 0 on the padding, 1 on the cached tokens and on the new one
        pad = torch.tensor(pads, device=ids.device)[:, None]
        mask = (torch.arange(width + 1, device=ids.device)[None] >= pad).long()
        # cache_position: the new token's slot in the padded cache, as `generate` counts it
        step = torch.tensor([width], device=ids.device)
        out = self._call(ids[:, None], pos[:, None], _left_padded(caches, width), mask, step)
        grown = self._keep(_returned_cache(out))
        for b, rid in enumerate(rids):
            self.caches[rid] = _unpadded(grown, b, pads[b])
        return out.last_hidden_state[:, 0]

    def _caches_batchable(self, rids: list[str]) -> bool:
        """Runtime guard for what construction cannot see (remote code may build any cache type):
        every cache a DynamicCache of initialised full-attention DynamicLayers of batch 1. Once
        one is not, the per-request loop is used from then on."""
        if all(_is_plain_dynamic(self.caches[rid]) for rid in rids):
            return True
        kind = next(type(self.caches[rid]).__name__ for rid in rids if not _is_plain_dynamic(self.caches[rid]))
        logger.warning("anymodel: compat path: %s cache cannot be batched; one request at a time from now on", kind)
        self.batch_decode = False
        return False

    def release(self, request_ids) -> None:
        for rid in request_ids:
            self.caches.pop(rid, None)
            self.history.pop(rid, None)


def _batching_blocker(params, config) -> str | None:
    """Why this base model's decode steps cannot be batched with left padding, or None if they can."""
    if "attention_mask" not in params:
        return "its forward takes no attention_mask"
    if "cache" not in params and "past_key_values" not in params:
        return "its forward takes no cache"
    if "position_ids" not in params and getattr(config, "model_type", None) not in _POSITIONS_FROM_ALIBI:
        return "its forward takes no position_ids, so positions would count the padding"
    try:
        layers = DynamicCache(config=config).layers  # what the model builds: one layer per type
    except Exception as e:  # a config the cache cannot read: not a cache we know
        return f"cannot build its cache ({e})"
    odd = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
    return f"its cache has {', '.join(odd)} layers" if odd else None


def _is_plain_dynamic(cache) -> bool:
    return (
        type(cache) is DynamicCache
        and len(cache.layers) > 0
        and all(type(l) is DynamicLayer and l.is_initialized and l.keys.shape[0] == 1 for l in cache.layers)
    )


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _left_padded(caches: list[DynamicCache], width: int) -> DynamicCache:
    """B per-request caches, each layer [1, H, L_b, D], -> one cache of layers [B, H, width, D] with
    zeros before each request's K/V (zeros, not garbage: a masked NaN would survive 0 * NaN)."""
    layers = []
    for per_request in zip(*(c.layers for c in caches)):  # one model layer across the requests
        keys = _stack_left_padded([layer.keys for layer in per_request], width)
        values = _stack_left_padded([layer.values for layer in per_request], width)
        layers.append(_layer(keys, values))
    return _cache_of(layers)


def _stack_left_padded(tensors: list[torch.Tensor], width: int) -> torch.Tensor:
    """[1, H, L_b, D] each -> [B, H, width, D], request b's tokens at the right end."""
    first = tensors[0]
    out = first.new_zeros(len(tensors), first.shape[1], width, first.shape[3])
    for b, t in enumerate(tensors):
        out[b, :, width - t.shape[2] :] = t[0]
    return out


def _unpadded(cache: DynamicCache, b: int, pad: int) -> DynamicCache:
    """Request b's part of a batched cache, [1, H, width + 1 - pad, D] per layer. Views: the
    batched tensors are freed once every request has moved on to its next step's copy."""
    return _cache_of([_layer(l.keys[b : b + 1, :, pad:], l.values[b : b + 1, :, pad:]) for l in cache.layers])


def _layer(keys: torch.Tensor, values: torch.Tensor) -> DynamicLayer:
    # Set directly rather than through `update`, which would copy them once more (cat onto empty).
    layer = DynamicLayer()
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    return layer


def _cache_of(layers: list[DynamicLayer]) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = layers
    return cache


def load_compat_causal_lm(cls: type, model_dir, config, dtype: torch.dtype, why: str | None = None) -> CompatCausalLM:
    """`why`: the caller's reason (the start-up self-check's); else the loader's."""
    from anymodel.model_facts import recurrent_state, unsupported_attention

    why = (why or recurrent_state(cls, config) or unsupported_attention(config)
           or f"{cls.__name__} does not support the Transformers attention backend")
    logger.warning(
        "anymodel: %s; running it on the slower compat path (its own attention and cache: decode steps batched "
        "where the model allows, prefill one request at a time, no prefix caching)",
        why,
    )
    from anymodel.adapters.computed_buffers import load_pretrained

    hf, _ = load_pretrained(cls, model_dir, config, dtype)
    return CompatCausalLM(decoder_of(hf), hf.get_output_embeddings(), hf.config)
