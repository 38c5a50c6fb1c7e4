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
    """render_chat with a request's messages and template fields (chat completions and /tokenize share them)."""
    return render_chat(tokenizer, req.messages, chat_template, add_generation_prompt=req.add_generation_prompt,
                       continue_final_message=req.continue_final_message, template_kwargs=req.template_kwargs())

class ChatHandler(GenerationHandler):
    def __init__(self, *args, chat_template: str | None = None, options: ChatOptions | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.chat_template = chat_template  # None: the tokenizer's own
        self.options = options or ChatOptions()  # tool-call and reasoning parsers

    async def create(self, req: ChatCompletionRequest) -> Response:
        lora = self.check_model(req.model)
        req.check_prompt_logprobs()
        top_k = req.num_logprobs()
        plan = ChatOutputPlan.for_request(req, self.options, self.tokenizer)
        params = plan.constrain(self.make_params(req, req.max_new_tokens(), top_k, req.prompt_logprobs))
        prompt = render_chat_request(self.tokenizer, req, self.chat_template)
        request_id = random_id("chatcmpl")
        if req.use_beam_search:
            merged = await self.start_beam(request_id, [prompt], req, req.max_new_tokens(), lora, params)
        else:
            merged = await self.start(request_id, [prompt], params, lora, req.priority)
        if not req.stream:
            finals = await self.collect(merged)
            return json_response(self._response(request_id, finals[0], top_k, plan))
        events = await self.first_then_rest(merged)
        return self.sse(self._chunks(request_id, req, events, top_k, plan), merged)

    def _response(self, request_id: str, final: RequestDelta, top_k: int | None,
                  plan: ChatOutputPlan) -> ChatCompletionResponse:
        choices = []
        for s in sorted(final.samples.values(), key=lambda s: s.index):
            message, finish_reason = plan.message(s.text, s.finish_reason)
            choices.append(ChatCompletionChoice(index=s.index, message=message, logprobs=self._logprobs(s, top_k),
                                                finish_reason=finish_reason, stop_reason=s.stop_reason))
        return ChatCompletionResponse(id=request_id, model=self.model_name, choices=choices,
                                      usage=self.usage([final]),
                                      prompt_logprobs=prompt_logprobs_field(final.prompt_logprobs))

    def _logprobs(self, sample: SampleDelta, top_k: int | None) -> ChatChoiceLogprobs | None:
        if top_k is None or sample.logprobs is None:
            return None
        content = []
        for token_id, entry in zip(sample.token_ids, sample.logprobs):
            best = sorted(entry.items(), key=lambda kv: -kv[1].logprob)[:top_k]
            top = [self._top(t, lp.logprob, entry) for t, lp in best]
            token = self.token_str(token_id, entry)
            logprob = clamp(entry[token_id].logprob) if token_id in entry else MIN_LOGPROB
            content.append(ChatLogprobToken(token=token, logprob=logprob, bytes=list(token.encode()), top_logprobs=top))
        return ChatChoiceLogprobs(content=content)

    def _top(self, token_id: int, logprob: float, entry) -> ChatTopLogprob:
        token = self.token_str(token_id, entry)
        return ChatTopLogprob(token=token, logprob=clamp(logprob), bytes=list(token.encode()))

    async def _chunks(self, request_id: str, req: ChatCompletionRequest, events: AsyncIterator,
                      top_k: int | None, plan: ChatOutputPlan) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(choices: list, usage: UsageInfo | None = None) -> str:
            return sse_data(ChatCompletionChunk(id=request_id, created=created, model=self.model_name,
                                                choices=choices, usage=usage))

        for index in range(req.n):  # OpenAI opens every choice with the role
            yield chunk([ChatCompletionStreamChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
        prompt_tokens = completion_tokens = 0
        streams = [plan.stream() for _ in range(req.n)]
        async for _, delta in events:
            prompt_tokens = len(delta.prompt_token_ids)
            for s in delta.samples.values():
                completion_tokens += len(s.token_ids)
                message, finish_reason = streams[s.index].feed(s.text, s.finish_reason)
                logprobs = self._logprobs(s, top_k)
                if message is None and finish_reason is None and logprobs is None:
                    continue  # held back (a marker may be starting)
                choice = ChatCompletionStreamChoice(
                    index=s.index, delta=message or DeltaMessage(), logprobs=logprobs,
                    finish_reason=finish_reason, stop_reason=s.stop_reason)
                yield chunk([choice])
        if req.include_usage:
            total = prompt_tokens + completion_tokens
            yield chunk([], UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                      total_tokens=total))
