"""POST /v1/chat/completions, streaming or not; and the chat-template rendering it shares with /tokenize.

The rendered prompt is tokenized here without special tokens, because the template already holds
any BOS it wants (the same rule as `LLM.chat`).
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator

import jinja2
from fastapi.responses import Response

from .chat_output import ChatOptions, ChatOutputPlan
from .delta import RequestDelta, SampleDelta
from .protocol import (ChatChoiceLogprobs, ChatCompletionChoice, ChatCompletionChunk,
                       ChatCompletionRequest, ChatCompletionResponse, ChatCompletionStreamChoice, ChatLogprobToken,
                       ChatMessage, ChatTopLogprob, DeltaMessage, UsageInfo, random_id)
from .serving import MIN_LOGPROB, GenerationHandler, clamp, json_response, prompt_logprobs_field
from .sse import sse_data


def render_chat(tokenizer: Any, messages: list[ChatMessage], chat_template: str | None, *,
                add_generation_prompt: bool = True, continue_final_message: bool = False,
                template_kwargs: dict | None = None) -> dict:
    """The engine prompt for a conversation: {"prompt": text, "prompt_token_ids": ids}."""
    conversation = [m.for_template() for m in messages]
    if not conversation:
        raise ValueError("messages must not be empty")
    try:
        text = tokenizer.apply_chat_template(
            conversation, chat_template=chat_template, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, tokenize=False, **(template_kwargs or {}))
    except jinja2.TemplateError as e:  # includes raise_exception() inside templates
        raise ValueError(f"chat template failed: {e}") from e
    return {"prompt": text, "prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)}



def render_chat_request(tokenizer: Any, req, chat_template: str | None) -> dict:
    """render_chat with a request's messages and template fields (chat completions and /tokenize share
    them); `add_special_tokens`: the tokenizer's special tokens on top of what the template wrote."""
    rendered = render_chat(tokenizer, req.messages, chat_template, add_generation_prompt=req.add_generation_prompt,
                           continue_final_message=req.continue_final_message, template_kwargs=req.template_kwargs())
    if getattr(req, "add_special_tokens", False):  # chat and /tokenize fields; other forms add none
        rendered["prompt_token_ids"] = tokenizer.encode(rendered["prompt"], add_special_tokens=True)
    return rendered


def echoed_text(req) -> str:
    """vLLM's chat echo: the last message's text when its role is the reply's (the assistant's, or with
    add_generation_prompt=False the last message's own), else nothing."""
    if not req.echo or not req.messages:
        return ""
    last = req.messages[-1].for_template()
    role = "assistant" if req.add_generation_prompt else last.get("role")
    content = last.get("content")
    return content if last.get("role") == role and isinstance(content, str) else ""

class ChatHandler(GenerationHandler):
    def __init__(self, *args, chat_template: str | None = None, options: ChatOptions | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.chat_template = chat_template  # None: the tokenizer's own
        self.options = options or ChatOptions()  # tool-call and reasoning parsers

    async def create(self, req: ChatCompletionRequest, client_id: str | None = None, access=None) -> Response:
        """`client_id`: the X-Request-Id header, which names the response before the body's request_id;
        `access`: the access line's record of tokens and finish reasons."""
        lora = self.check_model(req.model)
        req.check_prompt_logprobs()
        top_k = req.num_logprobs()
        plan = ChatOutputPlan.for_request(req, self.options, self.tokenizer)
        params = plan.constrain(self.make_params(req, req.max_new_tokens(), top_k, req.prompt_logprobs))
        prompt = await self.prepared(render_chat_request, req, self.chat_template)
        request_id = random_id("chatcmpl", client_id or req.request_id)
        if req.use_beam_search:
            merged = await self.start_beam(request_id, [prompt], req, req.max_new_tokens(), lora, params)
        else:
            merged = await self.start(request_id, [prompt], params, lora, req.priority)
        if not req.stream:
            finals = await self.collect(merged)
            response = self._response(request_id, req, finals[0], top_k, plan)
            self.note(access, response.usage.prompt_tokens, response.usage.completion_tokens,
                      [c.finish_reason for c in response.choices])
            return json_response(response)
        events = await self.first_then_rest(merged)
        return self.sse(self._chunks(request_id, req, events, top_k, plan, access), merged)

    def _response(self, request_id: str, req: ChatCompletionRequest, final: RequestDelta, top_k: int | None,
                  plan: ChatOutputPlan) -> ChatCompletionResponse:
        choices, ids = [], req.return_token_ids
        echo = echoed_text(req)
        for s in sorted(final.samples.values(), key=lambda s: s.index):
            message, finish_reason = plan.message(s.text, s.finish_reason)
            if echo:
                message.content = echo + (message.content or "")
            choices.append(ChatCompletionChoice(index=s.index, message=message,
                                                logprobs=self._logprobs(s, top_k, req.return_tokens_as_token_ids),
                                                finish_reason=finish_reason, stop_reason=s.stop_reason,
                                                token_ids=s.token_ids if ids else None))
        return ChatCompletionResponse(id=request_id, model=self.served_name(req), choices=choices,
                                      usage=self.usage([final]),
                                      prompt_logprobs=prompt_logprobs_field(final.prompt_logprobs),
                                      prompt_token_ids=final.prompt_token_ids if ids else None)

    def _logprobs(self, sample: SampleDelta, top_k: int | None, as_ids: bool = False) -> ChatChoiceLogprobs | None:
        if top_k is None or sample.logprobs is None:
            return None
        content = []
        for token_id, entry in zip(sample.token_ids, sample.logprobs):
            best = sorted(entry.items(), key=lambda kv: -kv[1].logprob)[:top_k]
            top = [self._top(t, lp.logprob, entry, as_ids) for t, lp in best]
            token = self.token_str(token_id, entry, as_ids)
            logprob = clamp(entry[token_id].logprob) if token_id in entry else MIN_LOGPROB
            content.append(ChatLogprobToken(token=token, logprob=logprob, bytes=list(token.encode()), top_logprobs=top))
        return ChatChoiceLogprobs(content=content)

    def _top(self, token_id: int, logprob: float, entry, as_ids: bool = False) -> ChatTopLogprob:
        token = self.token_str(token_id, entry, as_ids)
        return ChatTopLogprob(token=token, logprob=clamp(logprob), bytes=list(token.encode()))

    async def _chunks(self, request_id: str, req: ChatCompletionRequest, events: AsyncIterator,
                      top_k: int | None, plan: ChatOutputPlan, access=None) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(choices: list, usage: UsageInfo | None = None, prompt_ids: list[int] | None = None) -> str:
            return sse_data(ChatCompletionChunk(id=request_id, created=created, model=self.served_name(req),
                                                choices=choices, usage=usage, prompt_token_ids=prompt_ids))

        echo = echoed_text(req)
        for index in range(req.n):  # OpenAI opens every choice with the role (and vLLM's echo, if asked)
            yield chunk([ChatCompletionStreamChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
            if echo:
                yield chunk([ChatCompletionStreamChoice(index=index, delta=DeltaMessage(content=echo))])
        prompt_tokens = completion_tokens = 0
        streams = [plan.stream() for _ in range(req.n)]
        held: list[list[int]] = [[] for _ in range(req.n)]  # token ids of held-back deltas (return_token_ids)
        prompt_sent = False  # return_token_ids: prompt_token_ids go once, with the first chunk that has tokens
        reasons = []
        async for _, delta in events:
            prompt_tokens = len(delta.prompt_token_ids)
            for s in delta.samples.values():
                completion_tokens += len(s.token_ids)
                held[s.index] += s.token_ids
                message, finish_reason = streams[s.index].feed(s.text, s.finish_reason)
                logprobs = self._logprobs(s, top_k, req.return_tokens_as_token_ids)
                if message is None and finish_reason is None and logprobs is None:
                    continue  # held back (a marker may be starting)
                reasons.append(finish_reason)
                choice = ChatCompletionStreamChoice(
                    index=s.index, delta=message or DeltaMessage(), logprobs=logprobs,
                    finish_reason=finish_reason, stop_reason=s.stop_reason)
                prompt_ids = None
                if req.return_token_ids:
                    choice.token_ids, held[s.index] = held[s.index], []
                    prompt_ids, prompt_sent = (None if prompt_sent else delta.prompt_token_ids), True
                usage = UsageInfo.of(prompt_tokens, completion_tokens) if req.continuous_usage else None
                yield chunk([choice], usage, prompt_ids)
        self.note(access, prompt_tokens, completion_tokens, reasons)
        if self.include_usage(req):
            yield chunk([], UsageInfo.of(prompt_tokens, completion_tokens))

