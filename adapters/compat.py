"""The compat path: models whose attention does not go through Transformers' attention interface.

Such a model (Bloom, Falcon, older remote code) cannot read our paged cache, so it runs through
its own forward with its own Transformers cache, one request at a time: slow, but token-identical.
The engine still schedules it (continuous batching, chunked prefill, preemption); each request's
HF cache lives here, keyed by request id, and is dropped when the request finishes or is preempted.
Prefix caching is off for these models, since their K/V never enter our blocks.
"""

from __future__ import annotations

import inspect
import logging

import torch

from anymodel.adapters.causal_lm import TransformersForCausalLM

logger = logging.getLogger("anymodel")


class CompatCausalLM(TransformersForCausalLM):
    supports_prefix_caching = False
    uses_paged_kv_cache = False

    def __init__(self, base_model, lm_head, config) -> None:
        super().__init__(base_model, lm_head, config)
        self.caches: dict[str, object] = {}
        params = inspect.signature(base_model.forward).parameters
        self._takes_positions = "position_ids" in params
        # Transformers >= 5.2x renamed `past_key_values` to `cache` (in and out); accept either.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata) -> torch.Tensor:
        starts = attn_metadata.query_start_loc.tolist()
        context = attn_metadata.context_lens.tolist()
        hidden = []
        for i, rid in enumerate(attn_metadata.request_ids):
            s, e = starts[i], starts[i + 1]
            cache = self.caches.pop(rid, None) if context[i] > 0 else None
            if context[i] > 0 and cache is None:
                raise RuntimeError(f"compat path: request {rid} resumed without its cache")
            kwargs = {"position_ids": positions[:, s:e]} if self._takes_positions else {}
            kwargs[self._cache_arg] = cache
            out = self.model(input_ids=input_ids[:, s:e], use_cache=True, return_dict=True, **kwargs)
            self.caches[rid] = getattr(out, "cache", None) or out.past_key_values
            hidden.append(out.last_hidden_state[0])
        return torch.cat(hidden)

    def release(self, request_ids) -> None:
        for rid in request_ids:
            self.caches.pop(rid, None)


def load_compat_causal_lm(cls: type, model_dir, config, dtype: torch.dtype) -> CompatCausalLM:
    logger.warning(
        "anymodel: %s does not support the Transformers attention backend; running it on the slow compat "
        "path (its own attention and cache, one request at a time, no prefix caching)",
        cls.__name__,
    )
    hf = cls.from_pretrained(model_dir, config=config, dtype=dtype)
    hf.eval()
    return CompatCausalLM(hf.base_model, hf.get_output_embeddings(), hf.config)
