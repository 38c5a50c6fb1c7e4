"""Pydantic models of the pooling endpoints, in OpenAI's (/v1/embeddings) and vLLM's shapes
(/score, /rerank (Jina / Cohere), /classify, /pooling)."""

from __future__ import annotations

import time
from typing import ClassVar, Literal, Optional, Union

from pydantic import BaseModel, Field, model_validator

from . import request_fields
from .chat_messages import ChatMessage, TemplateFields
from .protocol import APIRequest, random_id
from .request_fields import Unsupported

# a text, texts, token ids, or lists of token ids (OpenAI's embeddings `input`)
PoolingInput = Union[str, list[str], list[int], list[list[int]]]


class _Request(APIRequest):
    unsupported: ClassVar[dict[str, Unsupported]] = request_fields.POOLING

    model: Optional[str] = None
    truncate_prompt_tokens: Optional[int] = Field(None, ge=-1)  # vLLM: keep each prompt's last k tokens (-1: the most)
    priority: int = 0  # lower runs first, with --scheduling-policy priority; non-zero under fcfs: 400
    request_id: Optional[str] = None  # the response's id (after its prefix); X-Request-Id wins


class PoolingUsage(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int = 0


def _now() -> int:
    return int(time.time())


# ---- /v1/embeddings, /pooling ------------------------------------------------------------------------
class EmbeddingRequest(_Request, TemplateFields):
    """OpenAI's embeddings request, or vLLM's chat form: `messages` rendered by the chat template
    (without a generation prompt unless asked) and embedded as one input."""

    unsupported: ClassVar[dict[str, Unsupported]] = request_fields.EMBEDDING

    input: Optional[PoolingInput] = None
    messages: Optional[list[ChatMessage]] = None
    add_generation_prompt: bool = False  # vLLM's default for chat-style embeddings
    # None: True for `input` (the tokenizer's own), False for `messages` (the template writes them)
    add_special_tokens: Optional[bool] = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None
    normalize: Optional[bool] = None

    @model_validator(mode="after")
    def _one_input(self) -> "EmbeddingRequest":
        if (self.input is None) == (self.messages is None):
            raise ValueError("send exactly one of `input` or `messages`")
        return self


class EmbeddingData(BaseModel):
    index: int
    object: str = "embedding"
    embedding: Union[list[float], str]


class EmbeddingResponse(BaseModel):
    id: str = Field(default_factory=lambda: random_id("embd"))
    object: str = "list"
    created: int = Field(default_factory=_now)
    model: str
    data: list[EmbeddingData]
    usage: PoolingUsage


class PoolingRequest(_Request):
    input: PoolingInput
    encoding_format: Literal["float", "base64"] = "float"


class PoolingData(BaseModel):
    index: int
    object: str = "pooling"
    data: Union[list, str]


class PoolingResponse(BaseModel):
    id: str = Field(default_factory=lambda: random_id("pool"))
    object: str = "list"
    created: int = Field(default_factory=_now)
    model: str
    data: list[PoolingData]
    usage: PoolingUsage


# ---- /classify ---------------------------------------------------------------------------------------
class _Activation(BaseModel):
    """vLLM's per-request switch of the model's activation (softmax / sigmoid) on classify and score."""

    use_activation: Optional[bool] = None  # None: the model's default
    activation: Optional[bool] = None  # vLLM's older name of use_activation

    def activation_kwargs(self) -> dict:
        """The switches sent, for PoolingParams (which refuses the two disagreeing)."""
        return {k: v for k, v in (("use_activation", self.use_activation), ("activation", self.activation))
                if v is not None}


class ClassificationRequest(_Request, _Activation):
    input: Union[str, list[str]]


class ClassificationData(BaseModel):
    index: int
    label: Optional[str]
    probs: list[float]
    num_classes: int


class ClassificationResponse(BaseModel):
    id: str = Field(default_factory=lambda: random_id("classify"))
    object: str = "list"
    created: int = Field(default_factory=_now)
    model: str
    data: list[ClassificationData]
    usage: PoolingUsage


# ---- /score, /rerank ---------------------------------------------------------------------------------
class ScoreRequest(_Request, _Activation):
    text_1: Union[str, list[str]]
    text_2: Union[str, list[str]]


class ScoreData(BaseModel):
    index: int
    object: str = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str = Field(default_factory=lambda: random_id("score"))
    object: str = "list"
    created: int = Field(default_factory=_now)
    model: str
    data: list[ScoreData]
    usage: PoolingUsage


class RerankRequest(_Request, _Activation):
    query: str
    documents: list[str]
    top_n: Optional[int] = Field(None, ge=0)  # None or 0: every document
    return_documents: bool = True


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    document: Optional[RerankDocument] = None
    relevance_score: float


class RerankResponse(BaseModel):
    id: str = Field(default_factory=lambda: random_id("rerank"))
    model: str
    usage: PoolingUsage
    results: list[RerankResult]
