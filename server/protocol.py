"""Pydantic models of the OpenAI API subset we serve (plus vLLM's extra sampling fields).

Every request model screens its body first (request_fields.py): a field OpenAI or vLLM define that we
do not implement is a 400 naming it, a field nobody defines is ignored with a warning. Value ranges
are declared here for the OpenAPI schema (and checked by pydantic, which the app turns into a 400);
`SamplingParams` checks them again for the offline API, whose ValueError is a 400 too.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from typing import Any, ClassVar, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import request_fields
from .chat_messages import ChatMessage, TemplateFields
from .request_fields import Unsupported
from .structured import StructuredFields
from .tool_protocol import DeltaToolCall, NamedToolChoice, ToolCallOut


def random_id(prefix: str, given: str | None = None) -> str:
    """`prefix-<id>`: the client's id (X-Request-Id, else the body's request_id, as vLLM) or a new one."""
    return f"{prefix}-{given or uuid.uuid4().hex}"


# ----------------------------------------------------------------------------------------- common
class ErrorInfo(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[Union[str, int]] = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "UsageInfo":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class APIRequest(BaseModel):
    """A request body: screened against `unsupported` (this kind's table) before any field is read."""

    model_config = ConfigDict(extra="ignore")
    unsupported: ClassVar[dict[str, Unsupported]] = {}

    @model_validator(mode="before")
    @classmethod
    def _screen(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return request_fields.screen(cls.__name__, data, _null_is_default(cls), cls.unsupported)


@functools.cache
def _null_is_default(model: type[BaseModel]) -> dict[str, bool]:
    """Per field: does a null mean "the default"? Yes when it has one and None is not a value of
    its own (max_tokens: null is "as many as fit", not the default 16)."""
    return {name: not f.is_required() and type(None) not in get_args(f.annotation)
            for name, f in model.model_fields.items()}


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: with include_usage, the usage so far in every chunk


class SamplingRequest(APIRequest, StructuredFields):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: Optional[str] = None  # None: the served model (vLLM accepts this too)
    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1)  # 0 or -1: disabled
    min_p: float = Field(0.0, ge=0, le=1)
    seed: Optional[int] = Field(None, ge=0, le=2**64 - 1)
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    priority: int = 0  # lower runs first, with --scheduling-policy priority (vLLM's); non-zero under fcfs: 400
    return_token_ids: bool = False  # vLLM extra: prompt_token_ids and each choice's token_ids in the response
    request_id: Optional[str] = None  # vLLM extra: the response's id (after its prefix); X-Request-Id wins
    return_tokens_as_token_ids: bool = False  # vLLM extra: logprob tokens as "token_id:N"
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: Optional[dict[str, float]] = None  # OpenAI's string token ids -> bias, clamped to [-100, 100]
    allowed_token_ids: Optional[list[int]] = None  # vLLM extra
    truncate_prompt_tokens: Optional[int] = Field(None, ge=-1)  # vLLM extra: keep the last k prompt tokens (-1: the most)
    prompt_logprobs: Optional[int] = Field(None, ge=-1)  # vLLM extra: every prompt token's logprobs (not with stream)
    bad_words: Optional[list[str]] = None  # vLLM extra: words never generated
    spaces_between_special_tokens: bool = True  # vLLM extra, passed to the tokenizer's decode
    use_beam_search: bool = False  # vLLM extra: the n best beams (server/beam_search.py)
    length_penalty: float = 1.0  # vLLM extra, beam search only: score = cum_logprob / len ** length_penalty
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None  # OpenAI's end-user id: accepted, nothing to do with it
    parallel_tool_calls: Optional[bool] = None  # with tool_choice="required": False allows one call only

    @model_validator(mode="after")
    def _length_penalty_needs_beams(self) -> "SamplingRequest":
        if self.length_penalty != 1.0 and not self.use_beam_search:
            raise ValueError("length_penalty applies to beam search only: send use_beam_search=true with it")
        return self

    def sampling_kwargs(self) -> dict[str, Any]:
        return dict(
            logit_bias=logit_bias_ids(self.logit_bias), allowed_token_ids=self.allowed_token_ids,
            truncate_prompt_tokens=self.truncate_prompt_tokens,
            n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty, ignore_eos=self.ignore_eos, min_tokens=self.min_tokens,
            skip_special_tokens=self.skip_special_tokens, include_stop_str_in_output=self.include_stop_str_in_output,
            bad_words=self.bad_words, spaces_between_special_tokens=self.spaces_between_special_tokens,
            structured_outputs=self.structured_outputs_params(),
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """vLLM's continuous_usage_stats: every chunk carries the usage so far (needs include_usage)."""
        return self.include_usage and bool(self.stream_options.continuous_usage_stats)

    def check_prompt_logprobs(self) -> None:
        if self.prompt_logprobs is not None and self.stream:
            raise ValueError("prompt_logprobs is not available with stream=true")


def logit_bias_ids(bias: Optional[dict[str, float]]) -> Optional[dict[int, float]]:
    """OpenAI's {"50256": -100} -> {50256: -100.0}; values clamped to [-100, 100] as vLLM does."""
    if bias is None:
        return None
    out = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise ValueError(f"logit_bias keys must be token ids (integers, as strings in JSON), got {key!r}") from None
        if math.isnan(value):
            raise ValueError(f"logit_bias values must be numbers in [-100, 100], got {value} for token {key}")
        out[token] = min(100.0, max(-100.0, value))
    return out


# ------------------------------------------------------------------------------------ completions
class CompletionRequest(SamplingRequest):
    unsupported: ClassVar[dict[str, Unsupported]] = request_fields.COMPLETION

    prompt: Optional[Union[str, list[str], list[int], list[list[int]]]] = None  # None: prompt_embeds alone
    # vLLM extra (--enable-prompt-embeds): base64 of torch.save(tensor [T, hidden]) bytes, one or a list
    prompt_embeds: Optional[Union[str, list[str]]] = None
    max_tokens: Optional[int] = Field(16, ge=0)  # OpenAI's default for legacy completions; 0 only with echo
    logprobs: Optional[int] = Field(None, ge=-1)
    echo: bool = False
    add_special_tokens: bool = True  # vLLM: False leaves out the tokenizer's special tokens (BOS)
    best_of: Optional[int] = Field(None, ge=1)  # > n: the n best of best_of samples (by cumulative logprob)

    @model_validator(mode="after")
    def _check_prompt(self) -> "CompletionRequest":
        if self.prompt is None and self.prompt_embeds is None:
            raise ValueError("prompt: Field required (or prompt_embeds, with --enable-prompt-embeds)")
        return self

    @model_validator(mode="after")
    def _check_best_of(self) -> "CompletionRequest":
        if self.best_of is not None and self.best_of > self.n and self.stream:
            raise ValueError("best_of > n is not available with stream=true (the best samples are known at the end)")
        return self

    def sampling_kwargs(self) -> dict[str, Any]:
        return {**super().sampling_kwargs(), "best_of": self.best_of}

    def prompts(self) -> list[str | dict]:
        """Every prompt as the engine takes it: a string, {"prompt_token_ids": [...]} or {"prompt_embeds":
        tensor}; embeddings first, then `prompt` (vLLM's order)."""
        if self.prompt_embeds is None:
            return self._prompt_list()
        from anymodel.prompt_embeds import decode_base64_embeds

        data = [self.prompt_embeds] if isinstance(self.prompt_embeds, str) else self.prompt_embeds
        if not data:
            raise ValueError("prompt_embeds must not be empty")
        embeds = [{"prompt_embeds": decode_base64_embeds(d)} for d in data]
        return embeds + ([] if self.prompt is None else self._prompt_list())

    def _prompt_list(self) -> list[str | dict]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise ValueError("prompt must not be empty")
        if all(isinstance(t, int) for t in p):
            return [{"prompt_token_ids": list(p)}]
        return [x if isinstance(x, str) else {"prompt_token_ids": list(x)} for x in p]


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[Optional[float]] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[Optional[dict[str, float]]] = Field(default_factory=list)


class PromptLogprob(BaseModel):
    """vLLM's Logprob, as its `prompt_logprobs` field serializes it."""

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


# one entry per prompt token (the first is None: nothing predicts it), token id -> its logprob
PromptLogprobsField = Optional[list[Optional[dict[int, PromptLogprob]]]]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[Union[int, str]] = None
    prompt_logprobs: PromptLogprobsField = None  # vLLM extra, non-streaming only
    prompt_token_ids: Optional[list[int]] = None  # return_token_ids (streaming: in a choice's first chunk)
    token_ids: Optional[list[int]] = None  # return_token_ids (streaming: this chunk's)


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Optional[UsageInfo] = None


# ----------------------------------------------------------------------------------------- chat
class ChatCompletionRequest(SamplingRequest, TemplateFields):
    unsupported: ClassVar[dict[str, Unsupported]] = request_fields.CHAT

    messages: list[ChatMessage]
    max_tokens: Optional[int] = Field(None, ge=1)  # None: up to the model's context
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0)
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    add_special_tokens: bool = False  # vLLM: special tokens on top of what the chat template wrote
    echo: bool = False  # vLLM: the reply starts with the last message's content when its role is the reply's

    def max_new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def num_logprobs(self) -> Optional[int]:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return (self.top_logprobs or 0) if self.logprobs else None


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class ChatLogprobToken(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: Optional[list[ChatLogprobToken]] = None


class AssistantMessage(BaseModel):
    role: str = "assistant"
    content: Optional[str] = None
    reasoning_content: Optional[str] = None  # vLLM's, with --reasoning-parser
    tool_calls: list[ToolCallOut] = Field(default_factory=list)


class ChatCompletionChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChatChoiceLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[Union[int, str]] = None
    token_ids: Optional[list[int]] = None  # return_token_ids


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: Optional[UsageInfo] = None
    prompt_logprobs: PromptLogprobsField = None  # vLLM extra
    prompt_token_ids: Optional[list[int]] = None  # return_token_ids


class DeltaMessage(BaseModel):
    role: Optional[str] = None
    content: Optional[str] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[DeltaToolCall]] = None


class ChatCompletionStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: Optional[ChatChoiceLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[Union[int, str]] = None
    token_ids: Optional[list[int]] = None  # return_token_ids: the tokens since this choice's last chunk


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: Optional[UsageInfo] = None
    prompt_token_ids: Optional[list[int]] = None  # return_token_ids: in the first chunk with tokens


# --------------------------------------------------------------------------------------- models
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "anymodel"
    root: Optional[str] = None
    parent: Optional[str] = None  # a LoRA adapter's base model
    max_model_len: Optional[int] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------------------- tokenize/detokenize
class TokenizeRequest(APIRequest, TemplateFields):
    """vLLM's /tokenize: either `prompt` or chat `messages` (rendered by the chat template)."""

    unsupported: ClassVar[dict[str, Unsupported]] = request_fields.TOKENIZE

    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: Optional[bool] = None  # None: True for prompt, False for messages
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: Optional[list[str]] = None


class DetokenizeRequest(APIRequest):
    model: Optional[str] = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str
