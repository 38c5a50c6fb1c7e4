"""RequestDelta: what one engine step added to one request, as an object nobody mutates later.

The engine reports CUMULATIVE outputs, possibly as objects it keeps mutating on its own thread.
The engine thread turns each into a delta (new text, new token ids, new logprobs) before handing it
to the event loop, so the two threads never share a mutable object, and the copy is O(new tokens)
per step rather than O(all tokens). Deltas merge by concatenation, which lets a slow consumer
coalesce a backlog into one SSE chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anymodel.outputs import Logprob, PromptLogprobs, RequestOutput

TokenLogprobs = dict[int, Logprob]  # one generated position: token id -> Logprob


@dataclass
class SampleDelta:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprobs] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def merge(self, later: "SampleDelta") -> None:
        self.text += later.text
        self.token_ids += later.token_ids
        if later.logprobs is not None:
            self.logprobs = (self.logprobs or []) + later.logprobs
        self.finish_reason = later.finish_reason
        self.stop_reason = later.stop_reason


@dataclass
class RequestDelta:
    request_id: str
    prompt_token_ids: list[int]
    samples: dict[int, SampleDelta]  # only the samples that changed, by CompletionOutput.index
    finished: bool
    num_cached_tokens: int = 0
    prompt: str | None = None  # the prompt text the engine ran (None for token-id prompts)
    # Only on the first delta of a request that asked for them: complete by then (the prompt is
    # fully computed before the first token is sampled). [num_prompt_tokens], the first is None.
    prompt_logprobs: PromptLogprobs | None = None

    def merge(self, later: "RequestDelta") -> None:
        for index, sample in later.samples.items():
            if index in self.samples:
                self.samples[index].merge(sample)
            else:
                self.samples[index] = sample
        self.finished = later.finished
        self.num_cached_tokens = later.num_cached_tokens
        if self.prompt_logprobs is None:
            self.prompt_logprobs = later.prompt_logprobs

    @property
    def num_new_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.samples.values())


@dataclass
class DeltaTracker:
    """Engine-thread side: remembers how much of each sample was already handed out."""

    text_len: dict[int, int] = field(default_factory=dict)
    num_tokens: dict[int, int] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    prompt_token_ids: list[int] | None = None
    prompt_logprobs_sent: bool = False
    # The engine cuts a stop string out of text it may already have reported in part (a stop
    # string spanning tokens), so the last len(longest stop) - 1 characters are held back until
    # the sample finishes: text handed out is then always a prefix of the final text.
    holdback: int = 0

    @classmethod
    def for_stops(cls, stop: list[str] | None) -> "DeltaTracker":
        return cls(holdback=max((len(s) for s in stop or []), default=1) - 1)

    def delta(self, out: RequestOutput) -> RequestDelta:
        if self.prompt_token_ids is None:  # copied once; the prompt never changes
            self.prompt_token_ids = list(out.prompt_token_ids or [])
        samples = {}
        for comp in out.outputs:
            sample = self._sample_delta(comp)
            if sample is not None:
                samples[comp.index] = sample
        prompt_logprobs = None
        if (samples or out.finished) and not self.prompt_logprobs_sent and out.prompt_logprobs is not None:
            prompt_logprobs, self.prompt_logprobs_sent = list(out.prompt_logprobs), True  # its entries stay put
        return RequestDelta(out.request_id, self.prompt_token_ids, samples, out.finished, out.num_cached_tokens,
                            out.prompt, prompt_logprobs)

    def _sample_delta(self, comp) -> SampleDelta | None:
        if comp.index in self.finished:
            return None
        seen_text, seen_tokens = self.text_len.get(comp.index, 0), self.num_tokens.get(comp.index, 0)
        done = comp.finish_reason is not None
        visible = len(comp.text) if done else len(comp.text) - self.holdback
        new_text = comp.text[seen_text:visible] if visible > seen_text else ""
        new_tokens = list(comp.token_ids[seen_tokens:])
        if not new_text and not new_tokens and not done:
            return None
        self.text_len[comp.index] = seen_text + len(new_text)
        self.num_tokens[comp.index] = len(comp.token_ids)
        if done:
            self.finished.add(comp.index)
        logprobs = list(comp.logprobs[seen_tokens:]) if comp.logprobs is not None else None
        return SampleDelta(comp.index, new_text, new_tokens, logprobs, comp.finish_reason, comp.stop_reason)
