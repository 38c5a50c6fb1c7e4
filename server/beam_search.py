"""use_beam_search on /v1/completions and /v1/chat/completions: vLLM's request fields, the search of
runtime/beam_search.py driven through the async engine (one batched step of one-token requests per
generated position), each prompt's `n` best beams as its choices.

BeamStreams offers what MergedStreams does (iterate (prompt index, delta), `streams`, `close()`), so
the handlers answer and stream it unchanged: each prompt's one final delta once its search ends.
A choice's text and token_ids are the generated ones, the ending EOS only with
include_stop_str_in_output (vLLM's server); finish_reason "stop" (EOS, stop_reason its id) or "length".
"""

from __future__ import annotations

import asyncio
from typing import Any

from anymodel.beam_search import BeamSearchInstance, BeamSearchParams, make_instances, step_params

from .delta import RequestDelta, SampleDelta
from .errors import APIError
from .merged_streams import MergedStreams

# Sampling fields beam search does not apply: a request that sets one to anything but its default is a
# 400 naming it (vLLM silently drops them).
_NOT_WITH_BEAMS = ("top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "presence_penalty",
                   "frequency_penalty", "repetition_penalty", "min_tokens", "logit_bias", "allowed_token_ids",
                   "bad_words", "best_of", "prompt_logprobs", "echo", "truncate_prompt_tokens", "priority")


def beam_params(req, max_tokens: int | None, max_model_len: int) -> BeamSearchParams:
    """vLLM's to_beam_search_params: beam_width = n; a field beam search would ignore is refused."""
    fields = type(req).model_fields
    for name in _NOT_WITH_BEAMS:
        if name in req.model_fields_set and name in fields and getattr(req, name) != fields[name].default:
            raise APIError(400, f"{name} does not apply to beam search (use_beam_search=true); leave it unset",
                           param=name)
    try:
        return BeamSearchParams(beam_width=req.n, max_tokens=max_tokens or max_model_len, ignore_eos=req.ignore_eos,
                                temperature=req.temperature, length_penalty=req.length_penalty,
                                include_stop_str_in_output=req.include_stop_str_in_output)
    except ValueError as e:
        raise APIError(400, str(e), param="length_penalty") from e


class BeamStreams:
    def __init__(self, engine, request_id: str, prompts: list[dict], params: BeamSearchParams, tokenizer: Any):
        core = engine.engine  # the Engine: its EOS ids and caps are fixed at construction
        self.engine, self.request_id, self.prompts, self.tokenizer = engine, request_id, prompts, tokenizer
        try:
            self.instances = make_instances([p["prompt_token_ids"] for p in prompts], params, core.eos_token_ids,
                                            engine.max_model_len, core.args.max_logprobs)
        except ValueError as e:
            raise APIError(400, str(e), param="n") from e
        self.streams = prompts  # len(): how many prompts (the handlers read it)
        self._results = self._run()
        self._open: MergedStreams | None = None
        self._closed = False

    def __aiter__(self) -> "BeamStreams":
        return self

    async def __anext__(self) -> tuple[int, RequestDelta]:
        return await self._results.__anext__()

    def close(self) -> None:
        """The client is gone: abort the step in flight and start no other."""
        self._closed = True
        if self._open is not None:
            self._open.close()

    async def _run(self):
        from .serving import GenerationHandler, add_all

        sampling, step = step_params(self.instances), 0
        while any(not inst.done for inst in self.instances):
            live = [inst for inst in self.instances if not inst.done]
            batch = [{"prompt_token_ids": seq} for inst in live for seq in inst.pending()]
            self._open = MergedStreams(await add_all(self.engine, f"{self.request_id}-step{step}", batch, sampling))
            finals = await GenerationHandler.collect(self._open)
            if self._closed:
                return
            entries = iter([f.samples[0].logprobs[0] for f in finals])
            for inst in live:
                inst.advance([next(entries) for _ in inst.beams])
            step += 1
            await asyncio.sleep(0)
        for i, inst in enumerate(self.instances):
            yield i, self._delta(inst, self.prompts[i])

    def _delta(self, inst: BeamSearchInstance, prompt: dict) -> RequestDelta:
        samples = {}
        for j, (_, seq) in enumerate(inst.finished):
            tokens = inst.text_tokens(seq, with_prompt=False)
            samples[j] = SampleDelta(j, self.tokenizer.decode(tokens), tokens, seq.logprobs[:len(tokens)],
                                     seq.finish_reason, seq.stop_reason)
        return RequestDelta(self.request_id, inst.prompt_token_ids, samples, True, prompt=prompt.get("prompt"))
