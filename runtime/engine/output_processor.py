"""Turns sampled tokens into finished-or-not requests and vLLM-shaped outputs.

A user request is a RequestGroup of n child Requests (one per sample; best_of of them when best_of
> n, and then only its n best by cumulative logprob come out, once all are done); each child has its
own detokenizer (none with detokenize=False) and stop checks. Stop order per new token: stop_token_ids, EOS, stop strings, length.

Each request's work here (logprob dicts, detokenizing, stop checks, building its output) runs under
its own guard: an exception fails that request's group alone (status FINISHED_ERROR, and one final
RequestOutput carrying a RequestFailedError), never the step. The runner reports the requests whose
sampling failed (RunnerOutput.failed) and they end the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import logging
import time

from anymodel.engine.detokenizer import Detokenizer, NoDetokenizer
from anymodel.errors import RequestFailedError
from anymodel.outputs import CompletionOutput, Logprob, RequestOutput
from anymodel.params import RequestOutputKind, SamplingParams
from anymodel.request_stats import RequestStateStats
from anymodel.engine.request import Request, RequestStatus

logger = logging.getLogger("anymodel")


@dataclass
class ChildState:
    request: Request
    detok: Detokenizer | NoDetokenizer
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float = 0.0
    sent_tokens: int = 0  # for DELTA outputs
    sent_chars: int = 0


@dataclass(eq=False)
class RequestGroup:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[Request]
    tokenizer: object
    states: list[ChildState] = field(default_factory=list)
    prompt_logprobs: list | None = None
    error: RequestFailedError | None = None  # set once one of its children failed; the group is over
    metrics: RequestStateStats = field(default_factory=RequestStateStats.arrived)  # RequestOutput.metrics

    def __post_init__(self) -> None:
        p = self.params
        # a prompt given as embeddings has placeholder ids: no context for the first token's text
        context = [] if any(c.prompt_embeds is not None for c in self.children) else self.prompt_token_ids
        for child in self.children:
            detok = (Detokenizer(self.tokenizer, p.skip_special_tokens, list(p.stop), p.include_stop_str_in_output,
                                 prompt_ids=context,
                                 spaces_between_special_tokens=p.spaces_between_special_tokens)
                     if p.detokenize and self.tokenizer is not None else NoDetokenizer())
            self.states.append(ChildState(child, detok, [] if p.logprobs is not None else None))
        if p.prompt_logprobs is not None:
            self.prompt_logprobs = [None] * len(self.prompt_token_ids)

    @property
    def finished(self) -> bool:
        return all(c.is_finished for c in self.children)


class OutputProcessor:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.groups: dict[str, RequestGroup] = {}
        self._child: dict[str, tuple[RequestGroup, ChildState]] = {}

    def add(self, group: RequestGroup) -> None:
        if group.request_id in self.groups:
            raise ValueError(f"request_id {group.request_id!r} is already in use")
        self.groups[group.request_id] = group
        for state in group.states:
            self._child[state.request.request_id] = (group, state)

    def pop(self, request_id: str) -> RequestGroup | None:
        group = self.groups.pop(request_id, None)
        for state in group.states if group else []:
            self._child.pop(state.request.request_id, None)
        return group

    def mark_scheduled(self, sched) -> None:
        """Right after scheduling: the first step of a group is its metrics' scheduled_ts."""
        now = time.monotonic()
        for s in sched.scheduled:
            entry = self._child.get(s.request.request_id)
            if entry is not None:
                entry[0].metrics.scheduled(now)

    def apply(self, sched, result) -> list[tuple[Request, RequestStatus]]:
        """Record this step's tokens; returns the children that finished (to free their blocks),
        the children of failed groups among them (FINISHED_ERROR)."""
        finished = []
        for rid, reason in result.failed.items():  # sampling raised for these (model_runner)
            finished += self._fail(rid, reason)
        for rid, (start, entries) in result.prompt_logprobs.items():
            finished += self._guarded(rid, self._record_prompt_logprobs, rid, start, entries)
        for rid, token in result.sampled.items():
            finished += self._guarded(rid, self._record_token, rid, token, result.logprobs.get(rid))
        return finished

    def _guarded(self, rid: str, fn, *args) -> list[tuple[Request, RequestStatus]]:
        """fn(*args) for the child `rid`; if it raises, that child's group fails (and only it)."""
        entry = self._child.get(rid)
        if entry is None or entry[0].error is not None:  # its group failed earlier in this step
            return []
        try:
            return fn(*args)
        except Exception as e:
            logger.exception("anymodel: processing the output of request %r failed", rid)
            return self._fail(rid, f"{type(e).__name__}: {e}")

    def _record_prompt_logprobs(self, rid: str, start: int, entries) -> list:
        group, _ = self._child[rid]
        for j, entry in enumerate(entries):
            group.prompt_logprobs[start + j] = self._logprob_dict(entry, group.params.detokenize)
        return []

    def _record_token(self, rid: str, token: int, logprobs) -> list:
        group, state = self._child[rid]
        group.metrics.token(time.monotonic())
        status = self._append(state, token, logprobs)
        return [] if status is None else [(state.request, status)]

    def _fail(self, rid: str, reason: str) -> list[tuple[Request, RequestStatus]]:
        """Child `rid` failed: its group ends with an error; its unfinished children are returned
        (FINISHED_ERROR) so that the engine frees their blocks."""
        entry = self._child.get(rid)
        if entry is None:
            return []
        group = entry[0]
        if group.error is None:
            group.error = RequestFailedError(group.request_id, reason)
        return [(c, RequestStatus.FINISHED_ERROR) for c in group.children if not c.is_finished]

    def _append(self, state: ChildState, token: int, logprobs) -> RequestStatus | None:
        r, p = state.request, state.request.params
        r.append_token(token)
        if logprobs is not None:  # also without `logprobs` when best_of > n (the sampled token's alone)
            if state.logprobs is not None:
                state.logprobs.append(self._logprob_dict(logprobs, p.detokenize))
            state.cumulative_logprob += logprobs[token][0]
        stop_str = state.detok.add_tokens([token])
        can_stop = r.num_output_tokens >= p.min_tokens
        if can_stop and token in p.stop_token_ids:
            r.stop_reason = token
        elif can_stop and not p.ignore_eos and token in r.eos_token_ids:
            r.stop_reason = None
        elif can_stop and stop_str is not None:
            r.stop_reason = stop_str
            return RequestStatus.FINISHED_STOPPED
        elif r.num_output_tokens >= r.max_tokens:
            state.detok.flush()
            return RequestStatus.FINISHED_LENGTH
        else:
            return None
        state.detok.flush()
        return RequestStatus.FINISHED_STOPPED

    def _logprob_dict(self, entry: dict[int, tuple[float, int]], decode: bool) -> dict[int, Logprob]:
        decode = decode and self.tokenizer is not None  # none: no decoded_token (skip_tokenizer_init)
        return {t: Logprob(lp, rank, self.tokenizer.decode([t]) if decode else None) for t, (lp, rank) in entry.items()}

    def collect(self, sched) -> tuple[list[RequestOutput], list[tuple[Request, RequestStatus]]]:
        """Outputs for the groups that progressed this step; finished groups are dropped. Also
        returns the children of groups whose output could not be built (they failed here)."""
        outputs, failed, seen = [], [], set()
        for s in sched.scheduled:
            entry = self._child.get(s.request.request_id)
            if entry is None or id(entry[0]) in seen:
                continue
            group = entry[0]
            seen.add(id(group))
            try:
                out = self._make_output(group)
            except Exception as e:
                logger.exception("anymodel: building the output of request %r failed", group.request_id)
                failed += self._fail(s.request.request_id, f"{type(e).__name__}: {e}")
                out = None
            if group.error is not None:
                out = self._error_output(group)
            if out is not None:
                outputs.append(out)
            if group.error is not None or group.finished:
                self.pop(group.request_id)
        return outputs, failed

    def _error_output(self, group: RequestGroup) -> RequestOutput:
        """The one (final) output of a failed group: the error, and what each sample had produced
        (finish_reason "error") when that can still be built, so that a reader of `outputs` alone
        sees a finished request; none when building them is what failed."""
        try:
            delta = group.params.output_kind is RequestOutputKind.DELTA
            completions = [replace(self._completion(i, st, delta), finish_reason="error")
                           for i, st in enumerate(group.states)]
        except Exception:
            completions = []
        return RequestOutput(request_id=group.request_id, prompt=group.prompt, prompt_token_ids=group.prompt_token_ids,
                             outputs=completions, finished=True, error=group.error, metrics=replace(group.metrics))

    def _make_output(self, group: RequestGroup) -> RequestOutput | None:
        kind, p = group.params.output_kind, group.params
        if (kind is RequestOutputKind.FINAL_ONLY or p.picks_best) and not group.finished:
            return None
        states = group.states
        if p.picks_best:  # vLLM v0: the n samples with the highest cumulative logprob, best first
            states = sorted(states, key=lambda st: st.cumulative_logprob, reverse=True)[: p.n]
        completions = [self._completion(i, st, kind is RequestOutputKind.DELTA) for i, st in enumerate(states)]
        return RequestOutput(
            request_id=group.request_id,
            prompt=group.prompt,
            prompt_token_ids=group.prompt_token_ids,
            outputs=completions,
            finished=group.finished,
            prompt_logprobs=group.prompt_logprobs,
            num_cached_tokens=group.children[0].num_cached_tokens,
            metrics=replace(group.metrics),  # a snapshot: later steps do not change an output already given
        )

    def _completion(self, index: int, st: ChildState, delta: bool) -> CompletionOutput:
        r = st.request
        tokens, text, logprobs = r.output_token_ids, st.detok.text, st.logprobs
        if delta:
            tokens, text = tokens[st.sent_tokens :], text[st.sent_chars :]
            logprobs = logprobs[st.sent_tokens :] if logprobs is not None else None
            st.sent_tokens, st.sent_chars = r.num_output_tokens, len(st.detok.text)
        finish = r.status.value if r.is_finished else None
        return CompletionOutput(
            index=index,
            text=text,
            token_ids=list(tokens),
            cumulative_logprob=st.cumulative_logprob if st.logprobs is not None or r.params.picks_best else None,
            logprobs=logprobs,
            finish_reason=finish,
            stop_reason=r.stop_reason,
        )
