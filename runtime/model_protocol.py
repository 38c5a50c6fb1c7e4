"""What the engine and the model runner need of a model, as types instead of attribute probes.

Every model the worker builds (the Transformers adapters, the compat path, the native classes, the
pooling adapters) satisfies `RunnableModel`; pooling models also `PoolingModel`. The classes do not
inherit from these protocols (structural typing): they declare `traits` and the methods.

    forward(input_ids [1, T], positions [1, T] (or [3, T] M-RoPE), attn_metadata) -> hidden [T, H]
    compute_logits(hidden [S, H]) -> logits [S, V]          (generating models, last PP stage)
    pool([PoolingInput]) -> [tensor]                          (pooling models)
    release(request_ids)                                      (models that keep per-request state)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class ModelTraits:
    """How the engine must treat a model's KV state."""

    paged_kv_cache: bool = True  # K/V live in our paged cache (False: the compat path keeps its own)
    prefix_caching: bool = True  # cached blocks may be shared between requests with a common prefix
    per_request_state: bool = False  # holds state per request id: the runner calls `release` for finished ones

    def __post_init__(self) -> None:
        if self.prefix_caching and not self.paged_kv_cache:  # shared blocks hold no K/V then
            raise ValueError("ModelTraits: prefix_caching needs paged_kv_cache")


@runtime_checkable
class RunnableModel(Protocol):
    traits: ModelTraits

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata, **kwargs) -> torch.Tensor: ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class PoolingModel(Protocol):
    traits: ModelTraits

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata, **kwargs) -> torch.Tensor: ...

    def pool(self, inputs: list) -> list[torch.Tensor]: ...


@runtime_checkable
class StatefulModel(Protocol):
    """A model with per-request state outside the paged cache (the compat path's HF caches)."""

    def release(self, request_ids: Iterable[str]) -> None: ...


def traits_of(model) -> ModelTraits:
    """The model's traits (the one place that tolerates a model without them: plain defaults)."""
    traits = getattr(model, "traits", None)
    return traits if isinstance(traits, ModelTraits) else ModelTraits()
