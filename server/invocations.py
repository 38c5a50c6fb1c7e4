"""POST /invocations: SageMaker's one endpoint, routed by the body's shape to the route that
takes it (vLLM serves it too):

    "messages"            -> /v1/chat/completions
    "prompt" / "prompt_embeds" -> /v1/completions
    "input"               -> /v1/embeddings (embedding models), /classify (classifiers), else /pooling
    "text_1" / "queries"  -> /score
    "query"+"documents"   -> /rerank

The body is validated by the target's own request model, so errors read as they would there.
"""

from __future__ import annotations

import json
from typing import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from .errors import APIError
from .protocol import ErrorResponse

Route = tuple[type[BaseModel], Callable[[BaseModel, Request], Awaitable]]


def add_invocations_route(app: FastAPI, routes: dict[str, Route], task: str) -> None:
    """`routes`: kind ("chat", "completions", "embeddings", "classify", "pooling", "score", "rerank")
    -> (request model, endpoint(body, raw)); `task`: the engine's, which decides where `input` goes."""

    @app.post("/invocations", responses={400: {"model": ErrorResponse, "description": "a body no route takes, or "
                                                                                      "one its route refuses"}})
    async def invocations(raw: Request):
        try:
            body = json.loads(await raw.body())
        except ValueError as e:
            raise APIError(400, f"the request body is not JSON: {e}") from None
        kind = _kind(body, task)
        model, endpoint = routes[kind]
        try:
            request = model.model_validate(body)
        except ValidationError as e:
            raise RequestValidationError(e.errors()) from None
        return await endpoint(request, raw)


def _kind(body, task: str) -> str:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    if "messages" in body:
        return "chat"
    if "prompt" in body or "prompt_embeds" in body:
        return "completions"
    if "input" in body:
        return {"embed": "embeddings", "classify": "classify"}.get(task, "pooling")
    if "text_1" in body or "queries" in body:
        return "score"
    if "query" in body and "documents" in body:
        return "rerank"
    raise APIError(400, "/invocations routes by the body's fields: send `messages` (chat), `prompt` (completions), "
                        "`input` (embeddings / classify / pooling), `text_1` or `queries` (score), or `query` with "
                        "`documents` (rerank)")
