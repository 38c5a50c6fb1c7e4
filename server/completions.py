"""POST /v1/completions (OpenAI's legacy text completions), streaming or not.

Choice index = prompt index * n + sample index, as OpenAI numbers them for a list of prompts.

echo=true puts the prompt (as the engine ran it, i.e. after truncate_prompt_tokens) before each
choice's text. With logprobs=k as well, the engine also scores the prompt (prompt_logprobs=k) and
the choice's `logprobs` covers the prompt tokens, then the completion tokens; the first prompt
token has no logprob (nothing predicts it). echo with max_tokens=0 returns the prompt alone, the
way loglikelihood evaluations (lm-eval) call it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi.responses import Response

from anymodel.outputs import PromptLogprobs

from .delta import RequestDelta, SampleDelta, TokenLogprobs
from .errors import APIError
from .protocol import (CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, UsageInfo,
                       random_id)
from .serving import (GenerationHandler, check_prompt_count, clamp, json_response, prompt_logprobs_field,
                      tokenized_all)
from .sse import sse_data

_ALIGN_SLACK = 8  # characters a prompt token may sit past the cursor in the echoed text (see _aligned_offsets)


@dataclass
class Echo:
    """The prompt as a choice echoes it: text, and tokens with their logprobs (entry 0 is None)."""

    text: str
    token_ids: list[int]
    logprobs: PromptLogprobs | None


class CompletionHandler(GenerationHandler):
    async def create(self, req: CompletionRequest, client_id: str | None = None, access=None) -> Response:
        """`client_id`: the X-Request-Id header, which names the response before the body's request_id;
        `access`: the access line's record of tokens and finish reasons."""
        lora = self.check_model(req.model)
        _reject_unsupported(req)
        req.check_prompt_logprobs()
        echo_only = req.echo and req.max_tokens == 0  # one token is generated, then dropped
        params = self.make_params(req, 1 if echo_only else req.max_tokens, req.logprobs, _prompt_logprobs(req))
        request_id = random_id("cmpl", client_id or req.request_id)
        given = req.prompts()  # (prompt_embeds decoded once, here)
        check_prompt_count(len(given), self.max_prompts, "prompt")  # before tokenizing them all
        prompts = await self.prepared(tokenized_all, given, req.add_special_tokens)
        if req.use_beam_search:
            merged = await self.start_beam(request_id, prompts, req, req.max_tokens, lora, params)
        else:
            merged = await self.start(request_id, prompts, params, lora, req.priority)
        if not req.stream:
            finals = await self.collect(merged)
            if echo_only:
                finals = [_without_generation(f) for f in finals]
            response = self._response(request_id, req, finals)
            self.note(access, response.usage.prompt_tokens, response.usage.completion_tokens,
                      [c.finish_reason for c in response.choices])
            return json_response(response)
        events = await self.first_then_rest(merged)
        return self.sse(self._chunks(request_id, req, events, echo_only, access), merged)

    def _echo(self, req: CompletionRequest, delta: RequestDelta) -> Echo | None:
        if not req.echo:
            return None
        text = delta.prompt if delta.prompt is not None else self.tokenizer.decode(delta.prompt_token_ids)
        return Echo(text, delta.prompt_token_ids, delta.prompt_logprobs)

    def _response(self, request_id: str, req: CompletionRequest, finals: list[RequestDelta]) -> CompletionResponse:
        choices = []
        for i, final in enumerate(finals):
            echo, prompt_lps = self._echo(req, final), prompt_logprobs_field(final.prompt_logprobs)
            for s in sorted(final.samples.values(), key=lambda s: s.index):
                choice = self._choice(i * req.n + s.index, s, req.logprobs, echo, as_ids=req.return_tokens_as_token_ids)
                if req.return_token_ids:
                    choice.prompt_token_ids, choice.token_ids = final.prompt_token_ids, s.token_ids
                choice.prompt_logprobs = prompt_lps
                choices.append(choice)
        return CompletionResponse(id=request_id, model=self.served_name(req), choices=choices, usage=self.usage(finals))

    def _choice(self, index: int, sample: SampleDelta, k: int | None, echo: Echo | None,
                offset: int = 0, as_ids: bool = False) -> CompletionChoice:
        """offset: characters of this choice already sent (streaming), where its text_offset counts from;
        as_ids: logprob tokens as "token_id:N" (return_tokens_as_token_ids)."""
        prefix = echo.text if echo is not None else ""
        logprobs = None
        if k is not None and (sample.logprobs is not None or echo is not None):
            logprobs = CompletionLogprobs()
            if echo is not None:
                self._add_prompt_logprobs(logprobs, echo, k, offset, as_ids)
            self._add_logprobs(logprobs, sample.token_ids, sample.logprobs, k, offset + len(prefix), as_ids)
        return CompletionChoice(index=index, text=prefix + sample.text, logprobs=logprobs,
                                finish_reason=sample.finish_reason, stop_reason=sample.stop_reason)

    def _add_prompt_logprobs(self, out: CompletionLogprobs, echo: Echo, k: int, offset: int, as_ids: bool) -> None:
        entries = echo.logprobs or [None] * len(echo.token_ids)
        tokens = [self.token_str(t, e) for t, e in zip(echo.token_ids, entries)]
        for token_id, entry, token, at in zip(echo.token_ids, entries, tokens, _aligned_offsets(echo.text, tokens)):
            self._append(out, token_id, entry, self.token_str(token_id, entry, as_ids), k, offset + at, as_ids)

    def _add_logprobs(self, out: CompletionLogprobs, token_ids: list[int], entries: list[TokenLogprobs] | None,
                      k: int, offset: int, as_ids: bool) -> None:
        for token_id, entry in zip(token_ids, entries or [None] * len(token_ids)):
            token = self.token_str(token_id, entry)
            self._append(out, token_id, entry, self.token_str(token_id, entry, as_ids), k, offset, as_ids)
            offset += len(token)

    def _append(self, out: CompletionLogprobs, token_id: int, entry: TokenLogprobs | None, token: str, k: int,
                offset: int, as_ids: bool) -> None:
        """One token: its logprob and the top k (prompt entries may hold more, if prompt_logprobs > k)."""
        out.tokens.append(token)
        out.text_offset.append(offset)
        if entry is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            return
        out.token_logprobs.append(clamp(entry[token_id].logprob) if token_id in entry else None)
        out.top_logprobs.append({self.token_str(t, entry, as_ids): clamp(lp.logprob) for t, lp in entry.items()
                                 if t == token_id or (lp.rank is not None and lp.rank <= k)})

    async def _chunks(self, request_id: str, req: CompletionRequest, events: AsyncIterator,
                      echo_only: bool, access=None) -> AsyncIterator[str]:
        created = int(time.time())
        offsets: dict[int, int] = {}  # choice index -> characters sent (logprobs text_offset)
        echoes: dict[int, Echo | None] = {}  # prompt index -> its echo, from its first delta (prompt logprobs)
        prompt_tokens: dict[int, int] = {}
        completion_tokens, reasons = 0, []
        async for i, delta in events:
            prompt_tokens[i] = len(delta.prompt_token_ids)
            echoes.setdefault(i, self._echo(req, delta))
            if echo_only:
                delta = _without_generation(delta)
            for sample in delta.samples.values():
                index = i * req.n + sample.index
                echo = echoes[i] if index not in offsets else None  # on a choice's first chunk
                choice = self._choice(index, sample, req.logprobs, echo, offsets.get(index, 0),
                                      req.return_tokens_as_token_ids)
                if req.return_token_ids:
                    choice.token_ids = sample.token_ids
                    choice.prompt_token_ids = delta.prompt_token_ids if index not in offsets else None
                offsets[index] = offsets.get(index, 0) + len(choice.text)
                completion_tokens += len(sample.token_ids)
                reasons.append(sample.finish_reason)
                usage = UsageInfo.of(sum(prompt_tokens.values()), completion_tokens) if req.continuous_usage else None
                yield sse_data(CompletionResponse(id=request_id, created=created, model=self.served_name(req),
                                                  choices=[choice], usage=usage))
        self.note(access, sum(prompt_tokens.values()), completion_tokens, reasons)
        if self.include_usage(req):
            usage = UsageInfo.of(sum(prompt_tokens.values()), completion_tokens)
            yield sse_data(CompletionResponse(id=request_id, created=created, model=self.served_name(req),
                                              choices=[], usage=usage))


def _aligned_offsets(text: str, tokens: list[str]) -> list[int]:
    """Where each token string starts in `text`, so text_offset indexes the echoed text.

    Token strings need not spell the text exactly: a special token the text lacks (<s>) or half of
    a multi-byte character ("\ufffd") does not move the cursor; the next token found within a few
    characters of it resynchronises.
    """
    offsets, cursor = [], 0
    for token in tokens:
        found = text.find(token, cursor, cursor + len(token) + _ALIGN_SLACK) if token else -1
        offsets.append(cursor if found < 0 else found)
        if found >= 0:
            cursor = found + len(token)
    return offsets


def _prompt_logprobs(req: CompletionRequest) -> int | None:
    """vLLM's rule: an explicit prompt_logprobs, else logprobs when echoing."""
    if req.prompt_logprobs is not None:
        return req.prompt_logprobs
    return req.logprobs if req.echo else None


def _without_generation(delta: RequestDelta) -> RequestDelta:
    """echo with max_tokens=0: the one token generated only to run the prompt is not returned."""
    for s in delta.samples.values():
        s.text, s.token_ids = "", []
        s.logprobs = [] if s.logprobs is not None else None
    return delta


def _reject_unsupported(req: CompletionRequest) -> None:
    # fields not implemented at all (suffix, best_of > n, ...) were refused by the request model
    if req.prompt_embeds is not None:
        for name in ("echo", "use_beam_search"):  # no prompt text to echo; beams extend token ids
            if getattr(req, name):
                raise APIError(400, f"{name} is not supported with prompt_embeds", param=name)
    if req.max_tokens == 0 and not req.echo:
        raise APIError(400, "max_tokens must be None or an integer >= 1 (0 only with echo=true), got 0",
                       param="max_tokens")
