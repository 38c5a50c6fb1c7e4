"""The pooling endpoints, as one APIRouter over the app's AsyncEngine (`app.state.async_engine`):

    POST /v1/embeddings   OpenAI: input, encoding_format (float | base64), dimensions
    POST /pooling         the raw pooler output (vLLM)
    POST /classify        probs + label per input (vLLM)
    POST /score           text_1 x text_2 -> scores, 1:1, 1:N, N:N (vLLM)
    POST /rerank          query + documents -> results sorted by relevance_score, top_n (Jina / Cohere);
                          also /v1/rerank and /v2/rerank

Each input becomes one engine request; all of a call's requests are added before any is awaited,
so they run in the same engine steps.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response

from anymodel.params import PoolingParams

from .disconnect import unless_disconnected
from .pooling_protocol import (ClassificationData, ClassificationRequest, ClassificationResponse, EmbeddingData,
                               EmbeddingRequest, EmbeddingResponse, PoolingData, PoolingRequest, PoolingResponse,
                               PoolingUsage, RerankDocument, RerankRequest, RerankResponse, RerankResult, ScoreData,
                               ScoreRequest, ScoreResponse)
from .protocol import random_id
from .request_tracking import client_request_id
from .request_fields import MAX_PROMPTS_PER_REQUEST
from .serving import add_all, check_model, check_prompt_count, json_response, served_names

router = APIRouter()


class PoolingHandler:
    def __init__(self, async_engine: Any, max_prompts: int = MAX_PROMPTS_PER_REQUEST,
                 chat_template: str | None = None):
        self.engine = async_engine
        self.chat_template = chat_template  # the server's --chat-template (None: the tokenizer's own)
        self.max_prompts = max_prompts
        self.model_name = async_engine.engine.model_name
        self.served_names = served_names(async_engine)
        self.task = async_engine.engine.task
        self.config = async_engine.engine.hf_config
        try:  # the engine thread tokenizes with its own; Rust tokenizers are not re-entrant
            self.tokenizer = copy.deepcopy(async_engine.engine.tokenizer)
        except Exception:
            self.tokenizer = async_engine.engine.tokenizer

    def inputs(self, value, body=None, param: str = "input") -> list:
        """A request's `input` as engine prompts, within --max-prompts-per-request; texts tokenized
        without special tokens when the body says add_special_tokens=false."""
        prompts = _prompts(value)
        check_prompt_count(len(prompts), self.max_prompts, param)
        if getattr(body, "add_special_tokens", None) is False:
            prompts = [{"prompt": p, "prompt_token_ids": self.tokenizer.encode(p, add_special_tokens=False)}
                       if isinstance(p, str) else p for p in prompts]
        return prompts

    def chat_input(self, body) -> list:
        """vLLM's chat-style embeddings: the conversation rendered by the served chat template, one prompt."""
        from .chat import render_chat_request

        return [render_chat_request(self.tokenizer, body, self.chat_template)]

    async def run(self, prompts: list, params: PoolingParams, priority: int = 0) -> list:
        """Every prompt's PoolingRequestOutput, in order; aborts the rest if one fails."""
        streams = await add_all(self.engine, random_id("pool"), prompts, params, priority=priority)
        try:
            results = []
            for stream in streams:
                async for out in stream:
                    final = out
                results.append(final)
            return results
        finally:
            for stream in streams:
                stream.close()

    async def embed(self, prompts: list, params: PoolingParams | None = None) -> list[torch.Tensor]:
        params = params or PoolingParams()
        params.task = "embed"
        return [out.outputs.data for out in await self.run(prompts, params)]

    async def scores(self, text_1, text_2, truncate: int | None = None, param: str = "text_2",
                     activation: dict | None = None, priority: int = 0) -> tuple[list[float], int]:
        """(scores, prompt tokens) of the pairs, by cross-encoder or by embedding cosine; `activation`:
        the request's use_activation / activation (cross-encoders only)."""
        from anymodel.pooling.offline import _pairs

        left, right = _pairs(text_1, text_2)
        check_prompt_count(len(left), self.max_prompts, param)
        if self.task == "embed":
            if activation:
                raise ValueError(f"{next(iter(activation))} applies to a cross-encoder's score; this model scores "
                                 "by embedding cosine similarity")
            params = PoolingParams(task="embed", truncate_prompt_tokens=truncate)
            outs = await self.run(list(left) + list(right), params, priority)
            n = len(left)
            sims = [torch.nn.functional.cosine_similarity(a.outputs.data, b.outputs.data, dim=0).item()
                    for a, b in zip(outs[:n], outs[n:])]
            return sims, _tokens(outs)
        if self.task != "score":
            raise ValueError(f"score needs a cross-encoder (task 'score') or an embedding model (task 'embed'); "
                             f"this model runs task {self.task!r}")
        params = PoolingParams(task="score", truncate_prompt_tokens=truncate, **(activation or {}))
        outs = await self.run([self._pair(a, b) for a, b in zip(left, right)], params, priority)
        values = []
        for out in outs:
            if out.outputs.data.numel() != 1:
                raise ValueError("score needs a 1-label cross-encoder; use /classify")
            values.append(out.outputs.data.item())
        return values, _tokens(outs)

    def _pair(self, a: str, b: str) -> dict:
        enc = self.tokenizer(a, b)
        prompt = {"prompt_token_ids": list(enc["input_ids"])}
        if enc.get("token_type_ids") is not None:
            prompt["token_type_ids"] = list(enc["token_type_ids"])
        return prompt


def _handler(raw: Request) -> PoolingHandler:
    state = raw.app.state
    if getattr(state, "pooling_handler", None) is None:
        state.pooling_handler = PoolingHandler(state.async_engine,
                                               getattr(state, "max_prompts_per_request", MAX_PROMPTS_PER_REQUEST),
                                               getattr(state, "chat_template", None))
    return state.pooling_handler


def _prompts(value) -> list:
    """OpenAI `input`: a text, texts, token ids, or lists of token ids -> engine prompts."""
    if isinstance(value, str):
        return [value]
    if not value:
        raise ValueError("input must not be empty")
    if all(isinstance(t, int) for t in value):
        return [list(value)]
    return [list(v) if isinstance(v, list) else v for v in value]


def _tokens(outs) -> int:
    return sum(len(o.prompt_token_ids) for o in outs)


def _usage(n: int) -> PoolingUsage:
    return PoolingUsage(prompt_tokens=n, total_tokens=n)


def _encode(data: torch.Tensor, fmt: str):
    if fmt == "base64":  # OpenAI's: little-endian float32 bytes
        return base64.b64encode(data.float().contiguous().numpy().astype("<f4").tobytes()).decode()
    return data.tolist()


# ---- routes ------------------------------------------------------------------------------------------
@router.post("/v1/embeddings")
async def create_embedding(body: EmbeddingRequest, raw: Request):
    return await unless_disconnected(raw, _embeddings(_handler(raw), body, client_request_id(raw)))


async def _embeddings(h: PoolingHandler, body: EmbeddingRequest, client_id: str | None) -> Response:
    check_model(body.model, h.served_names)
    params = PoolingParams(dimensions=body.dimensions, normalize=body.normalize, task="embed",
                           truncate_prompt_tokens=body.truncate_prompt_tokens)
    prompts = h.chat_input(body) if body.messages is not None else h.inputs(body.input, body)
    outs = await h.run(prompts, params, body.priority)
    data = [EmbeddingData(index=i, embedding=_encode(o.outputs.data, body.encoding_format)) for i, o in enumerate(outs)]
    return json_response(EmbeddingResponse(id=random_id("embd", client_id or body.request_id), model=h.model_name,
                                           data=data, usage=_usage(_tokens(outs))))


@router.post("/pooling")
async def create_pooling(body: PoolingRequest, raw: Request):
    return await unless_disconnected(raw, _pooling(_handler(raw), body, client_request_id(raw)))


async def _pooling(h: PoolingHandler, body: PoolingRequest, client_id: str | None) -> Response:
    check_model(body.model, h.served_names)
    params = PoolingParams(task="encode", truncate_prompt_tokens=body.truncate_prompt_tokens)
    outs = await h.run(h.inputs(body.input), params, body.priority)
    data = [PoolingData(index=i, data=_encode(o.outputs.data, body.encoding_format)) for i, o in enumerate(outs)]
    return json_response(PoolingResponse(id=random_id("pool", client_id or body.request_id), model=h.model_name,
                                         data=data, usage=_usage(_tokens(outs))))


@router.post("/classify")
async def create_classify(body: ClassificationRequest, raw: Request):
    return await unless_disconnected(raw, _classify(_handler(raw), body, client_request_id(raw)))


async def _classify(h: PoolingHandler, body: ClassificationRequest, client_id: str | None) -> Response:
    check_model(body.model, h.served_names)
    params = PoolingParams(task="classify", truncate_prompt_tokens=body.truncate_prompt_tokens,
                           **body.activation_kwargs())
    outs = await h.run(h.inputs(body.input), params, body.priority)
    labels = getattr(h.config, "id2label", None) or {}
    data = []
    for i, o in enumerate(outs):
        probs = o.outputs.data.tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        data.append(ClassificationData(index=i, label=labels.get(best), probs=probs, num_classes=len(probs)))
    return json_response(ClassificationResponse(id=random_id("classify", client_id or body.request_id),
                                                model=h.model_name, data=data, usage=_usage(_tokens(outs))))


@router.post("/score")
@router.post("/v1/score")
async def create_score(body: ScoreRequest, raw: Request):
    return await unless_disconnected(raw, _score(_handler(raw), body, client_request_id(raw)))


async def _score(h: PoolingHandler, body: ScoreRequest, client_id: str | None) -> Response:
    check_model(body.model, h.served_names)
    values, tokens = await h.scores(body.text_1, body.text_2, body.truncate_prompt_tokens,
                                    activation=body.activation_kwargs(), priority=body.priority)
    data = [ScoreData(index=i, score=v) for i, v in enumerate(values)]
    return json_response(ScoreResponse(id=random_id("score", client_id or body.request_id), model=h.model_name,
                                       data=data, usage=_usage(tokens)))


@router.post("/rerank")
@router.post("/v1/rerank")
@router.post("/v2/rerank")
async def create_rerank(body: RerankRequest, raw: Request):
    return await unless_disconnected(raw, _rerank(_handler(raw), body, client_request_id(raw)))


async def _rerank(h: PoolingHandler, body: RerankRequest, client_id: str | None) -> Response:
    check_model(body.model, h.served_names)
    if not body.documents:
        raise ValueError("documents must not be empty")
    if body.top_n is not None and body.top_n < 0:
        raise ValueError(f"top_n must be None or an integer >= 0, got {body.top_n}")
    values, tokens = await h.scores(body.query, body.documents, body.truncate_prompt_tokens, "documents",
                                    body.activation_kwargs(), body.priority)
    order = sorted(range(len(values)), key=lambda i: -values[i])[: body.top_n or None]
    results = [RerankResult(index=i, relevance_score=values[i],
                            document=RerankDocument(text=body.documents[i]) if body.return_documents else None)
               for i in order]
    return json_response(RerankResponse(id=random_id("rerank", client_id or body.request_id), model=h.model_name,
                                        usage=_usage(tokens), results=results))


def invocation_routes() -> dict:
    """/invocations' pooling targets (server/invocations.py): kind -> (request model, endpoint)."""
    return {"embeddings": (EmbeddingRequest, create_embedding), "pooling": (PoolingRequest, create_pooling),
            "classify": (ClassificationRequest, create_classify), "score": (ScoreRequest, create_score),
            "rerank": (RerankRequest, create_rerank)}
