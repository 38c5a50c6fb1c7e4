"""Pooling models on the Transformers backend: embed, classify / score, reward.

    forward(input_ids[1, T], positions[1, T], attn_metadata, token_type_ids[1, T] | None) -> hidden[T, H]
    pool([PoolingInput(hidden[T_i, H], token_ids, ...)])                                -> [data_i]

The base model runs over all requests of a step as one flat row (our attention function keeps
requests apart, bidirectionally for encoders: it reads `module.is_causal`); the pooler then
reduces each request's rows to its output.

    TransformersForEmbedding                base model + pooler (no head)
    TransformersForSequenceClassification   base model + the checkpoint's HF head, run unchanged
    TransformersForReward                   base model + per-token hidden states / logits
    as_embedding_model / as_classification_model / as_reward_model
                                            a generative (or base) model turned into one of these
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from anymodel.adapters.causal_lm import run_base_model
from anymodel.adapters.pooler import Head, Pooler, PoolerConfig, PoolingInput, PoolingType, label_activation
from anymodel.adapters.sliding_windows import kernel_windows
from anymodel.model_protocol import ModelTraits


class TransformersPoolingModel(nn.Module):
    # no prefix caching (and the KV manager never prefix-caches pooling requests); the compat path
    # (`_mark_compat` in pooling_loader.py) sets paged_kv_cache=False on the instance
    traits = ModelTraits(paged_kv_cache=True, prefix_caching=False)

    def __init__(self, base_model: nn.Module, pooler: Pooler, config) -> None:
        super().__init__()
        self.model = base_model
        self.pooler = pooler  # a plain object: its head is registered below
        self.config = config
        if isinstance(pooler.head, nn.Module):  # e.g. `score` [H] -> [L]: moves with .to(device)
            self.head = pooler.head
        self.layer_windows = kernel_windows(config)  # each layer's sliding window (sliding_windows.py)

    def forward(self, input_ids, positions, attn_metadata, token_type_ids=None) -> torch.Tensor:
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if not self.traits.paged_kv_cache:
            return self._forward_per_request(input_ids, attn_metadata, kwargs)
        position_ids = hf_position_ids(self.model, input_ids, positions, attn_metadata)
        return run_base_model(self.model, self.layer_windows, input_ids, position_ids, attn_metadata, **kwargs)

    def _forward_per_request(self, input_ids, attn_metadata, kwargs) -> torch.Tensor:
        """Compat path (attention not reachable by ours, or recurrent layers such as Jamba's Mamba):
        each request alone through the model's own forward, no cache; exactly HF's unpadded run."""
        bounds = attn_metadata.query_start_loc.tolist()
        hidden = []
        for a, b in zip(bounds, bounds[1:]):
            extra = {k: v[:, a:b] for k, v in kwargs.items()}
            out = self.model(input_ids=input_ids[:, a:b], use_cache=False, return_dict=True, **extra)
            hidden.append(out.last_hidden_state[0])
        return torch.cat(hidden)  # [T, H]

    @torch.inference_mode()
    def pool(self, inputs: list[PoolingInput]) -> list[torch.Tensor]:
        return self.pooler(inputs)


class TransformersForEmbedding(TransformersPoolingModel):
    """Base model + pooler: CLS / MEAN / LAST ... then L2-normalised by default."""


class TransformersForReward(TransformersPoolingModel):
    """Per-token outputs (ALL / STEP): hidden states, or the LM head's logits when the pooler
    picks `returned_token_ids` (process reward models score the tokens of a vocabulary)."""


class TransformersForSequenceClassification(TransformersPoolingModel):
    """Base model + the HF `*ForSequenceClassification` head, whatever it is (BERT: CLS -> pooler ->
    classifier; RoBERTa / XLM-R: classification head over the sequence; ...). The head runs through
    the HF class's own forward with the base model swapped for a stub that returns the hidden
    states we computed, so the logits are exactly HF's."""

    def __init__(self, base_model: nn.Module, hf_model: nn.Module, config: PoolerConfig, activation) -> None:
        # hf_model keeps only its head: its base model slot now holds a stub (no parameters)
        setattr(hf_model, hf_model.base_model_prefix, _PrecomputedBase(base_model))
        super().__init__(base_model, Pooler(config, activation=activation, selects=False), hf_model.config)
        self.head_model = hf_model

    @torch.inference_mode()
    def pool(self, inputs: list[PoolingInput]) -> list[torch.Tensor]:
        for x in inputs:  # [T, H] -> the head's logits [num_labels]; the pooler then activates
            x.hidden = self._logits(x.hidden, x.token_ids)
        return self.pooler(inputs)

    def _logits(self, hidden: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
        stub = getattr(self.head_model, self.head_model.base_model_prefix)
        stub.hidden = hidden[None]  # [1, T, H]
        ids = torch.tensor([token_ids], device=hidden.device)
        try:
            return self.head_model(input_ids=ids, return_dict=True).logits[0]
        finally:
            stub.hidden = None


class _PrecomputedBase(nn.Module):
    """Stands in for the base model inside an HF head class: returns the engine's hidden states
    (and the base model's own `pooler` output on them, which BERT-style heads read)."""

    def __init__(self, base_model: nn.Module) -> None:
        super().__init__()
        self.__dict__["_pooler"] = getattr(base_model, "pooler", None)  # not re-registered
        self.hidden: torch.Tensor | None = None
        self.config = base_model.config

    def forward(self, *args, **kwargs) -> BaseModelOutputWithPooling:
        pooled = self._pooler(self.hidden) if callable(self._pooler) else None
        return BaseModelOutputWithPooling(last_hidden_state=self.hidden, pooler_output=pooled)


def hf_position_ids(base: nn.Module, input_ids, positions, attn_metadata) -> torch.Tensor:
    """Position ids as HF computes them for one unpadded sequence. RoBERTa-style embeddings count
    from padding_idx + 1 (and give pad tokens padding_idx), so they are rebuilt per request with
    the embeddings' own function; everyone else uses the runner's positions. Exact because a
    pooling prompt is computed whole in one step, from position 0."""
    embeddings = getattr(base, "embeddings", None)
    make = getattr(embeddings, "create_position_ids_from_input_ids", None)
    pad = getattr(embeddings, "padding_idx", None)
    if make is None or pad is None:
        return positions
    bounds = attn_metadata.query_start_loc.tolist()
    parts = [make(input_ids[:, a:b], pad) for a, b in zip(bounds, bounds[1:])]
    return torch.cat(parts, dim=1)  # [1, T]


# ---- turning a generative (or base) model into a pooling one --------------------------------------
def as_embedding_model(model: nn.Module, config: PoolerConfig, head: Head | None = None) -> TransformersForEmbedding:
    """Default (vLLM's): the last token's hidden state, L2-normalised. `head`: projections of the
    pooled embedding (sentence-transformers Dense modules)."""
    base = getattr(model, "model", model) if hasattr(model, "lm_head") else model
    return TransformersForEmbedding(base, Pooler(config, head=head), base.config)


def as_classification_model(model: nn.Module, score: nn.Module, config: PoolerConfig, activation):
    """Default: the last token's hidden state -> `score` head -> softmax over the labels."""
    base = getattr(model, "model", model) if hasattr(model, "lm_head") else model
    return TransformersPoolingModel(base, Pooler(config, head=score, activation=activation), base.config)


def as_reward_model(model: nn.Module, config: PoolerConfig, head: Head | None = None,
                    activation=label_activation) -> TransformersForReward:
    """Default: every token's hidden state (or the head's labels), activated as vLLM does (see
    default_config). A STEP pooler with `returned_token_ids` on a model with an LM head reads those
    tokens' logits instead (math-shepherd style process reward)."""
    if head is None and config.pooling_type is PoolingType.STEP and config.returned_token_ids:
        head = getattr(model, "compute_logits", None)
    base = getattr(model, "model", model) if hasattr(model, "lm_head") else model
    reward = TransformersForReward(base, Pooler(config, head=head, activation=activation), base.config)
    if head is not None and hasattr(model, "lm_head"):
        reward.lm = model  # keep the LM head alive (and visible to apply_model)
    return reward
