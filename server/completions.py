"""POST /v1/completions (OpenAI's legacy text completions), streaming or not.

Choice index = prompt index * n + sample index, as OpenAI numbers them for a list of prompts.
"""

from __future__ import annotations

import time
from typing import AsyncIterator

from fastapi.responses import Response

from .delta import RequestDelta, SampleDelta
from .errors import APIError
from .protocol import (CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, UsageInfo,
                       random_id)
from .serving import GenerationHandler, clamp, json_response
from .sse import sse_data


class CompletionHandler(GenerationHandler):
    async def create(self, req: CompletionRequest) -> Response:
        self.check_model(req.model)
        _reject_unsupported(req)
        params = self.make_params(req, req.max_tokens, req.logprobs)
        prompts = req.prompts()
        echoes = [self._echo_text(p) if req.echo else "" for p in prompts]
        request_id = random_id("cmpl")
        merged = await self.start(request_id, prompts, params)
        if not req.stream:
            finals = await self.collect(merged)
            return json_response(self._response(request_id, req, finals, echoes))
        events = await self.first_then_rest(merged)
        return self.sse(self._chunks(request_id, req, events, echoes), merged)

    def _echo_text(self, prompt) -> str:
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt["prompt_token_ids"])

    def _response(self, request_id: str, req: CompletionRequest, finals: list[RequestDelta],
                  echoes: list[str]) -> CompletionResponse:
        choices = [
            self._choice(i * req.n + s.index, s, echoes[i])
            for i, final in enumerate(finals)
            for s in sorted(final.samples.values(), key=lambda s: s.index)
        ]
        return CompletionResponse(id=request_id, model=self.model_name, choices=choices, usage=self.usage(finals))

    def _choice(self, index: int, sample: SampleDelta, echo: str, offset: int = 0) -> CompletionChoice:
        logprobs = None
        if sample.logprobs is not None:
            logprobs = self._logprobs(sample, offset + len(echo))
        return CompletionChoice(index=index, text=echo + sample.text, logprobs=logprobs,
                                finish_reason=sample.finish_reason, stop_reason=sample.stop_reason)

    def _logprobs(self, sample: SampleDelta, offset: int) -> CompletionLogprobs:
        out = CompletionLogprobs()
        for token_id, entry in zip(sample.token_ids, sample.logprobs):
            token = self.token_str(token_id, entry)
            out.tokens.append(token)
            out.token_logprobs.append(clamp(entry[token_id].logprob) if token_id in entry else None)
            out.top_logprobs.append({self.token_str(t, entry): clamp(lp.logprob) for t, lp in entry.items()})
            out.text_offset.append(offset)
            offset += len(token)
        return out

    async def _chunks(self, request_id: str, req: CompletionRequest, events: AsyncIterator,
                      echoes: list[str]) -> AsyncIterator[str]:
        created = int(time.time())
        offsets: dict[int, int] = {}  # choice index -> characters sent (logprobs text_offset)
        prompt_tokens: dict[int, int] = {}
        completion_tokens = 0
        async for i, delta in events:
            prompt_tokens[i] = len(delta.prompt_token_ids)
            for sample in delta.samples.values():
                index = i * req.n + sample.index
                echo = echoes[i] if index not in offsets else ""
                choice = self._choice(index, sample, echo, offsets.get(index, 0))
                offsets[index] = offsets.get(index, 0) + len(choice.text)
                completion_tokens += len(sample.token_ids)
                yield sse_data(CompletionResponse(id=request_id, created=created, model=self.model_name,
                                                  choices=[choice]))
        if req.include_usage:
            usage = _usage(sum(prompt_tokens.values()), completion_tokens)
            yield sse_data(CompletionResponse(id=request_id, created=created, model=self.model_name,
                                              choices=[], usage=usage))


def _usage(prompt: int, completion: int) -> UsageInfo:
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _reject_unsupported(req: CompletionRequest) -> None:
    if req.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of is not supported (only best_of == n)", param="best_of")
    if req.echo and req.logprobs is not None:
        raise APIError(400, "echo together with logprobs is not supported (no prompt logprobs yet)", param="echo")
