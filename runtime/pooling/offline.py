"""The pooling half of the offline API, in vLLM's shape (mixed into LLM):

    llm.embed(texts)            -> [EmbeddingRequestOutput]       .outputs.embedding  list[float]
    llm.classify(texts)         -> [ClassificationRequestOutput]  .outputs.probs      list[float]
    llm.score(text_1, text_2)   -> [ScoringRequestOutput]         .outputs.score      float
    llm.reward(texts)           -> [PoolingRequestOutput]         .outputs.data       tensor
    llm.encode(prompts, pooling_task=...) -> [PoolingRequestOutput]

score pairs 1:1, 1:N (one text_1 against every text_2) or N:N (zipped); a cross-encoder reads each
pair as one prompt (with the tokenizer's token_type_ids), an embedding model gives the cosine
similarity of the two embeddings.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from anymodel.outputs import (
    ClassificationOutput,
    ClassificationRequestOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    PoolingRequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from anymodel.params import PoolingParams

POOLING_REQUEST_TASKS = ("encode", "embed", "classify", "score", "reward")
VLLM_TASK_NAMES = {"token_classify": "reward"}  # vLLM's newer name of a reward request (per-token labels)


class PoolingMixin:
    def encode(self, prompts, pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
               use_tqdm: bool = True, pooling_task: str | None = None, *,
               truncate_prompt_tokens: int | None = None) -> list[PoolingRequestOutput]:
        """The model's raw pooler output for each prompt, in input order.

        pooling_task: the kind of request ("embed", "classify", "score", "reward", or "encode": the
        pooler's output as configured); None means "encode" for a model that answers one kind of
        request, and is an error (vLLM's) for one that answers several (a cross-encoder: score and classify).

        truncate_prompt_tokens=k keeps each prompt's last k tokens (-1: as many as the model takes);
        it overrides the pooling_params' own value.
        """
        if pooling_task is None:
            pooling_task = _default_pooling_task(self.engine.task)
        pooling_task = VLLM_TASK_NAMES.get(pooling_task, pooling_task)
        if pooling_task not in POOLING_REQUEST_TASKS:
            raise ValueError(f"unsupported pooling_task {pooling_task!r}; supported: {list(POOLING_REQUEST_TASKS)}")
        from anymodel.llm import _as_list, _broadcast

        prompts = _as_list(prompts)
        params = _broadcast(pooling_params or PoolingParams(), len(prompts))
        params = [_for_task(p, pooling_task, truncate_prompt_tokens) for p in params]
        return self._run(prompts, params, use_tqdm)

    def embed(self, prompts, pooling_params=None, use_tqdm: bool = True, *,
              truncate_prompt_tokens: int | None = None) -> list[EmbeddingRequestOutput]:
        outs = self.encode(prompts, pooling_params, use_tqdm, pooling_task="embed",
                           truncate_prompt_tokens=truncate_prompt_tokens)
        return [EmbeddingRequestOutput(o.request_id, o.prompt_token_ids, EmbeddingOutput(_vector(o, "embed").tolist()))
                for o in outs]

    def classify(self, prompts, pooling_params=None, use_tqdm: bool = True, *,
                 truncate_prompt_tokens: int | None = None) -> list[ClassificationRequestOutput]:
        outs = self.encode(prompts, pooling_params, use_tqdm, pooling_task="classify",
                           truncate_prompt_tokens=truncate_prompt_tokens)
        return [ClassificationRequestOutput(o.request_id, o.prompt_token_ids,
                                            ClassificationOutput(_vector(o, "classify").tolist()))
                for o in outs]

    def reward(self, prompts, pooling_params=None, use_tqdm: bool = True, *,
               truncate_prompt_tokens: int | None = None) -> list[PoolingRequestOutput]:
        return self.encode(prompts, pooling_params, use_tqdm, pooling_task="reward",
                           truncate_prompt_tokens=truncate_prompt_tokens)

    def score(self, text_1, text_2, pooling_params: PoolingParams | None = None,
              use_tqdm: bool = True, *, truncate_prompt_tokens: int | None = None) -> list[ScoringRequestOutput]:
        left, right = _pairs(text_1, text_2)
        if self.engine.task == "embed":
            return self._embedding_score(left, right, pooling_params, use_tqdm, truncate_prompt_tokens)
        if self.engine.task != "score":
            raise ValueError(f"score needs a cross-encoder (task 'score') or an embedding model (task 'embed'); "
                             f"this model runs task {self.engine.task!r}")
        prompts = [self._pair_prompt(a, b) for a, b in zip(left, right)]
        outs = self.encode(prompts, pooling_params, use_tqdm, pooling_task="score",
                           truncate_prompt_tokens=truncate_prompt_tokens)
        return [ScoringRequestOutput(o.request_id, o.prompt_token_ids, ScoringOutput(_scalar(o))) for o in outs]

    def _pair_prompt(self, a: str, b: str) -> dict:
        """One cross-encoder prompt: the pair tokenized together ([CLS] a [SEP] b [SEP] for BERT)."""
        if not (isinstance(a, str) and isinstance(b, str)):
            raise ValueError("score with a cross-encoder takes texts (str) for text_1 and text_2")
        if self.engine.tokenizer is None:
            raise ValueError("score with a cross-encoder tokenizes each pair, and this LLM has no tokenizer "
                             "(skip_tokenizer_init=True)")
        enc = self.engine.tokenizer(a, b)
        prompt = {"prompt": a + "\n" + b, "prompt_token_ids": list(enc["input_ids"])}
        if enc.get("token_type_ids") is not None:
            prompt["token_type_ids"] = list(enc["token_type_ids"])
        return prompt

    def _embedding_score(self, left, right, pooling_params, use_tqdm, truncate) -> list[ScoringRequestOutput]:
        outs = self.embed(list(left) + list(right), pooling_params, use_tqdm, truncate_prompt_tokens=truncate)
        n = len(left)
        results = []
        for a, b in zip(outs[:n], outs[n:]):
            sim = torch.nn.functional.cosine_similarity(
                torch.tensor(a.outputs.embedding), torch.tensor(b.outputs.embedding), dim=0
            )
            results.append(ScoringRequestOutput(f"{a.request_id}_{b.request_id}",
                                                a.prompt_token_ids + b.prompt_token_ids, ScoringOutput(sim.item())))
        return results


def _default_pooling_task(model_task: str) -> str:
    from anymodel.pooling.tasks import SERVES

    kinds = [k for k in SERVES.get(model_task, ()) if k != "encode"]
    if len(kinds) > 1:
        raise ValueError(
            "pooling_task required for `LLM.encode`\nPlease use one of the more specific methods or set the "
            f"pooling_task when using `LLM.encode` (this model answers {kinds}):\n"
            '  - For classification logits, use `LLM.classify(...)` or `pooling_task="classify"`.\n'
            '  - For similarity scores, use `LLM.score(...)` or `pooling_task="score"`.\n'
            '  - For the pooler\'s output as configured, `pooling_task="encode"`.')
    return "encode"


def _for_task(params: PoolingParams, task: str, truncate: int | None = None) -> PoolingParams:
    if not isinstance(params, PoolingParams):
        raise ValueError(f"pooling_params must be PoolingParams, got {type(params).__name__}")
    if truncate is None:
        truncate = params.truncate_prompt_tokens
    return dataclasses.replace(params, task=task, truncate_prompt_tokens=truncate)  # validates truncate


def _pairs(text_1, text_2) -> tuple[list, list]:
    left = [text_1] if isinstance(text_1, (str, dict)) else list(text_1)
    right = [text_2] if isinstance(text_2, (str, dict)) else list(text_2)
    if not left or not right:
        raise ValueError("score needs at least one text in text_1 and in text_2")
    if len(left) == 1:
        left = left * len(right)  # 1:N
    if len(left) != len(right):
        raise ValueError(f"text_1 has {len(left)} texts and text_2 {len(right)}: pass one text_1 (1:N) "
                         "or as many as text_2 (N:N)")
    return left, right


def _vector(out: PoolingRequestOutput, task: str) -> torch.Tensor:
    data = out.outputs.data
    if data.dim() != 1:
        raise ValueError(f"{task} gives one vector per prompt, but this model's pooler gives shape "
                         f"{tuple(data.shape)} (pooling_type ALL / STEP): use encode() instead")
    return data


def _scalar(out: PoolingRequestOutput) -> float:
    data = out.outputs.data
    if data.numel() != 1:
        raise ValueError(f"score needs a 1-label cross-encoder; this model gives {data.numel()} values per pair "
                         "(use classify())")
    return data.item()
