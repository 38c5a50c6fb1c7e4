"""GenerationHandler: what /v1/completions and /v1/chat/completions share.

    request ─► check model ─► SamplingParams ─► AsyncEngine.add (one per prompt) ─► MergedStreams
        stream=false: collect every delta, answer one JSON body
        stream=true:  wait for the first delta (so a failing first step is still a 500), then SSE
"""

from __future__ import annotations

import asyncio
import uuid
import logging
from typing import Any, AsyncIterator

from fastapi.responses import Response

from anymodel.errors import EngineFatalError
from anymodel.params import SamplingParams, truncated_prompt_len

from .async_engine import AsyncEngine, EngineDeadError, EngineStepError, RequestStream
from .delta import RequestDelta, TokenLogprobs
from .errors import APIError, error_body
from .merged_streams import MergedStreams
from .protocol import PromptLogprob, SamplingRequest, UsageInfo
from .request_fields import MAX_PROMPTS_PER_REQUEST
from .sse import DONE, SSEResponse, sse_data

logger = logging.getLogger("anymodel.server")

MIN_LOGPROB = -9999.0  # -inf is not valid JSON; vLLM clamps the same way


def json_response(model) -> Response:
    # pydantic writes the JSON itself (NaN/inf-safe, no jsonable_encoder round trip)
    return Response(content=model.model_dump_json(), media_type="application/json")


async def _with_first(first: Any, rest: AsyncIterator) -> AsyncIterator:
    yield first
    async for item in rest:
        yield item


class GenerationHandler:
    loras = None  # server/lora_models.ServedLoRAs: `model` may name a LoRA adapter
    force_include_usage = False  # --enable-force-include-usage: every stream ends with a usage chunk
    prep = None  # server/tokenizer_thread.TokenizerThread: tokenize off the event loop (None: inline)

    async def prepared(self, fn, *args):
        """fn(tokenizer, *args): on the tokenizer thread when the app has one, else inline."""
        if self.prep is None:
            return fn(self.tokenizer, *args)
        return await self.prep.run(fn, *args)

    def include_usage(self, req: SamplingRequest) -> bool:
        return req.include_usage or self.force_include_usage

    @staticmethod
    def note(access, prompt_tokens: int, generated_tokens: int, finish_reasons) -> None:
        """Tell the access line (server/request_tracking.AccessRecord) what the request did."""
        if access is not None:
            access.done(prompt_tokens, generated_tokens, finish_reasons)

    def __init__(self, engine: AsyncEngine, model_name: str, tokenizer: Any,
                 max_prompts: int = MAX_PROMPTS_PER_REQUEST):
        self.engine = engine
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.max_prompts = max_prompts

    def served_name(self, req) -> str:
        """The `model` a response names: the LoRA adapter the request picked, else the served model (vLLM's rule)."""
        if self.loras is not None and req.model in self.loras.by_name:
            return req.model
        return self.model_name

    def check_model(self, name: str | None):
        """404 for a model this server does not serve; the LoRARequest when `name` is an adapter."""
        served = served_names(self.engine)
        if self.loras is not None and name not in served and name:
            return self.loras.resolve(name)
        check_model(name, served)
        return None

    def make_params(self, req: SamplingRequest, max_tokens: int | None, logprobs: int | None,
                    prompt_logprobs: int | None = None) -> SamplingParams:
        """The request's SamplingParams; a field the request did not send takes the model's default
        (generation_config.json, as `LLM.get_default_sampling_params()`; vLLM's rule), else ours."""
        kwargs = dict(max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs, **req.sampling_kwargs())
        sent = req.model_fields_set | ({"max_tokens"} if "max_completion_tokens" in req.model_fields_set else set())
        kwargs.update({name: value for name, value in self.default_sampling_params.items() if name not in sent})
        cap = self.default_sampling_params.get("max_tokens")
        if cap is not None and kwargs["max_tokens"] is not None:  # vLLM's get_max_tokens: the model's
            kwargs["max_tokens"] = min(kwargs["max_tokens"], cap)  # max_new_tokens caps a request's too
        return SamplingParams(**kwargs)

    @property
    def default_sampling_params(self) -> dict:
        """The engine's request defaults from generation_config.json (set at construction: safe to read here)."""
        return getattr(getattr(self.engine, "engine", None), "default_sampling_params", None) or {}

    async def start(self, request_id: str, prompts: list, params: SamplingParams, lora_request=None,
                    priority: int = 0) -> MergedStreams:
        check_prompt_count(len(prompts), self.max_prompts, "prompt")
        prompts = [self._tokenized(p) for p in prompts]
        for p in prompts:  # (a prompt_embeds tensor: one placeholder token per row)
            self._check_context(len(p["prompt_token_ids"] if "prompt_embeds" not in p else p["prompt_embeds"]), params)
        await self._check_expressible(params)
        return MergedStreams(await add_all(self.engine, request_id, prompts, params, lora_request, priority))

    async def _check_expressible(self, params: SamplingParams) -> None:
        """A constraint the vocabulary cannot begin is a 400 (ValueError) before the request is queued:
        its grammar is compiled here, off the event loop and the engine thread (structured_output/)."""
        structured = getattr(getattr(self.engine, "engine", None), "structured", None)
        if params.structured_outputs is not None and structured is not None:
            await asyncio.to_thread(structured.check_expressible, params.structured_outputs)

    async def start_beam(self, request_id: str, prompts: list, req: SamplingRequest, max_tokens: int | None,
                         lora_request=None, sampling: SamplingParams | None = None):
        """use_beam_search: each prompt's `n` best beams (server/beam_search.py), streamed like `start`'s.
        `sampling`: the request's sampling params, only to refuse what beam steps would drop."""
        from .beam_search import BeamStreams, beam_params

        if lora_request is not None:
            raise APIError(400, "use_beam_search with a LoRA adapter is not supported yet; ask for the base model",
                           param="use_beam_search")
        if sampling is not None and sampling.structured_outputs is not None:
            raise APIError(400, "use_beam_search with a structured-output constraint (response_format, guided_*, "
                           "structured_outputs, tool_choice required or named) is not supported yet",
                           param="use_beam_search")
        check_prompt_count(len(prompts), self.max_prompts, "prompt")
        params = self.make_params(req, max_tokens, None)  # max_tokens as a sampling request would get it
        prompts = [self._tokenized(p) for p in prompts]
        for p in prompts:
            self._check_context(len(p["prompt_token_ids"]), params)
        return BeamStreams(self.engine, request_id, prompts, beam_params(req, params.max_tokens,
                                                                         self.engine.max_model_len), self.tokenizer)

    def _tokenized(self, prompt) -> Any:
        return tokenized(self.tokenizer, prompt)

    def _check_context(self, num_prompt_tokens: int, params: SamplingParams) -> None:
        """An explicit max_tokens that cannot fit beside the prompt is a 400 (vLLM's server rule);
        the offline API instead stops such a request at the context length, as the server does with
        the model's default max_tokens (generation_config.json's max_new_tokens)."""
        limit = self.engine.max_model_len
        # the engine's rule; a generation's longest prompt leaves room for one token (Engine.max_prompt_len)
        n = truncated_prompt_len(num_prompt_tokens, params.truncate_prompt_tokens, limit - 1)
        default = self.default_sampling_params.get("max_tokens")
        if params.max_tokens not in (None, default) and n < limit and n + params.max_tokens > limit:
            raise APIError(400, f"'max_tokens' or 'max_completion_tokens' is too large: {params.max_tokens}. This "
                                f"model's maximum context length is {limit} tokens and your request has {n} input "
                                f"tokens ({params.max_tokens} > {limit} - {n})", param="max_tokens")

    @staticmethod
    async def collect(merged: MergedStreams) -> list[RequestDelta]:
        """Every prompt's whole result: its deltas merged."""
        finals: dict[int, RequestDelta] = {}
        try:
            async for i, delta in merged:
                if i in finals:
                    finals[i].merge(delta)
                else:
                    finals[i] = delta
        finally:
            merged.close()
        return [finals[i] for i in range(len(merged.streams))]

    @staticmethod
    def usage(finals: list[RequestDelta]) -> UsageInfo:
        prompt = sum(len(f.prompt_token_ids) for f in finals)
        completion = sum(len(s.token_ids) for f in finals for s in f.samples.values())
        return UsageInfo.of(prompt, completion)

    async def first_then_rest(self, merged: MergedStreams) -> AsyncIterator[tuple[int, RequestDelta]]:
        try:
            first = await merged.__anext__()
        except BaseException:
            merged.close()
            raise
        return _with_first(first, merged)

    def sse(self, chunks: AsyncIterator[str], merged: MergedStreams) -> SSEResponse:
        return SSEResponse(_sse_body(chunks), on_close=merged.close)

    def token_str(self, token_id: int, entry: TokenLogprobs | None = None, as_ids: bool = False) -> str:
        """The token's text in logprobs; `as_ids` (return_tokens_as_token_ids): vLLM's "token_id:N"."""
        if as_ids:
            return f"token_id:{token_id}"
        lp = entry.get(token_id) if entry else None
        if lp is not None and lp.decoded_token is not None:
            return lp.decoded_token
        return self.tokenizer.decode([token_id])


async def add_all(engine: AsyncEngine, request_id: str, prompts: list, params: Any,
                  lora_request: Any = None, priority: int = 0) -> list[RequestStream]:
    """One engine request per prompt ("{request_id}-{i}"), all or none.

    The adds go out together: one engine-loop round trip, not one per prompt (each would wait for
    the step in progress)."""
    unique = uuid.uuid4().hex[:8]  # a client may send one request_id / X-Request-Id twice: engine ids stay apart
    adds = [asyncio.ensure_future(engine.add(f"{request_id}-{unique}-{i}", p, params, lora_request, priority))
            for i, p in enumerate(prompts)]
    try:
        await asyncio.wait(adds)
        error = next((a.exception() for a in adds if a.exception() is not None), None)
        if error is not None:  # one prompt was rejected: the others must not run on
            raise error
    except BaseException:  # also when cancelled (client gone)
        _undo(adds)
        raise
    return [a.result() for a in adds]


def check_prompt_count(count: int, limit: int, param: str) -> None:
    if count > limit:
        raise APIError(400, f"{count} prompts in one request; this server takes at most {limit} "
                            f"(--max-prompts-per-request); split the list over several requests", param=param)


def served_names(engine: Any) -> tuple[str, ...]:
    """Every name a request may send as `model` (--served-model-name a b ...); the first is answered."""
    inner = getattr(engine, "engine", engine)  # an AsyncEngine holds the Engine
    return tuple(getattr(inner, "served_model_names", None) or (inner.model_name,))


def check_model(name: str | None, served: str | tuple[str, ...]) -> None:
    """404 for a model this server does not serve; no name (or "") means the served one (as in vLLM)."""
    served = (served,) if isinstance(served, str) else served
    if name and name not in served:
        names = ", ".join(f"`{n}`" for n in served)
        raise APIError(404, f"The model `{name}` does not exist; this server serves {names}.",
                       param="model", code="model_not_found")


def _undo(adds: list[asyncio.Future]) -> None:
    """Abort every request these adds started (or cancel the add, which aborts it itself)."""
    for add in adds:
        if not add.done():
            add.cancel()
        elif not add.cancelled() and add.exception() is None:
            add.result().close()


def clamp(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB)


def prompt_logprobs_field(entries) -> list[dict[int, PromptLogprob] | None] | None:
    """The engine's prompt logprobs in vLLM's response shape, -inf clamped (not valid JSON)."""
    if entries is None:
        return None
    return [None if entry is None else
            {t: PromptLogprob(logprob=clamp(lp.logprob), rank=lp.rank, decoded_token=lp.decoded_token)
             for t, lp in entry.items()}
            for entry in entries]


async def _sse_body(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for text in chunks:
            yield text
    except (EngineStepError, EngineDeadError) as e:  # headers are out: report in-band, then end
        logger.warning("stream failed: %s", e)
        yield sse_data(error_body(500, str(e)))
    except EngineFatalError as e:  # the engine is gone and the server exits: no [DONE], the stream did not end
        logger.warning("stream cut by a fatal engine error: %s", e)
        yield sse_data(error_body(500, str(e)))
        return
    yield DONE


def tokenized(tokenizer: Any, prompt, add_special_tokens: bool = True) -> Any:
    """Text prompts are tokenized here (as the engine would: `tokenizer.encode`), so that the
    request's length is known before it is queued; token ids and prompt dicts pass through."""
    if isinstance(prompt, str):
        return {"prompt": prompt, "prompt_token_ids": tokenizer.encode(prompt, add_special_tokens=add_special_tokens)}
    if isinstance(prompt, list):
        return {"prompt_token_ids": prompt}
    return prompt


def tokenized_all(tokenizer: Any, prompts: list, add_special_tokens: bool = True) -> list:
    return [tokenized(tokenizer, p, add_special_tokens) for p in prompts]
