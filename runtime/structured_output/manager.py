"""The engine's structured-output state: one grammar matcher per constrained request.

    add_request:  check(params)       parse the spec (ValueError), start its compile (compiler.py)
                  park(request)       held out of the scheduler until its grammar is compiled
    each step:    take_ready()        requests whose grammar is ready go to the scheduler
                  bitmask(sched)      one row per constrained request that samples this step
                  accept(result)      the matcher advances on each accepted token
    finish/abort: remove(request)

Matchers live in the engine process only; the bitmask travels to every worker inside the
scheduler output, so every tensor-parallel rank (and the last pipeline stage) masks the same way.
A preempted request keeps its matcher: recomputing its KV does not change the tokens it accepted.
A matcher whose count of accepted tokens ever differs from the request's output (it cannot, but a
wrong mask would be silent) is rebuilt by replaying the output tokens into a fresh one. On a
reasoning model (config reasoning_parser) the grammar starts after the reasoning (reasoning.py).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, wait
from dataclasses import dataclass, field, replace

from anymodel.engine.request import Request
from anymodel.structured_output.bitmask import GrammarBitmask, rows_allowing_any
from anymodel.structured_output.config import StructuredOutputsConfig, check_backend
from anymodel.structured_output.params import StructuredOutputsParams
from anymodel.structured_output.reasoning import ReasoningEnd

logger = logging.getLogger("anymodel")
IDLE_WAIT_S = 0.05  # nothing else to run: wait this long for a compile before the step returns


@dataclass
class GrammarState:
    future: Future  # -> xgrammar CompiledGrammar
    matcher: object | None = None  # xgrammar GrammarMatcher, made when the grammar is ready
    num_accepted: int = 0  # output tokens the matcher consumed
    start: int | None = 0  # output index where the constraint begins; None: still reasoning (reasoning.py)


@dataclass
class StructuredOutputManager:
    tokenizer: object
    vocab_size: int  # the model's logits width
    eos_token_ids: frozenset[int]
    config: StructuredOutputsConfig | None = None
    states: dict[str, GrammarState] = field(default_factory=dict)
    parked: list[Request] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # request id -> why, reported with the next step
    _compiler: object | None = None
    _reasoning: ReasoningEnd | None = None
    _batch: object | None = None  # xgrammar BatchGrammarMatcher, made on first use

    def __post_init__(self) -> None:
        from anymodel.structured_output.compiler import GrammarCompiler

        # made now (cheap: xgrammar's vocabulary scan waits for the first compile, in its pool), so that
        # the engine thread and the server's pre-check (check_expressible) share one compiler and cache
        self._compiler = GrammarCompiler(self.tokenizer, self.vocab_size, self.eos_token_ids)
        name = self.config.reasoning_parser if self.config is not None else None
        if name is not None:
            self._reasoning = ReasoningEnd.for_parser(name, self.tokenizer)

    @property
    def compiler(self):
        return self._compiler

    def check(self, params: StructuredOutputsParams) -> StructuredOutputsParams:
        """The request's constraint with the engine's defaults applied; parsed now (ValueError for an
        invalid one), its compile started."""
        check_backend(params.backend, "structured_outputs.backend")
        if self.tokenizer is None:
            raise ValueError("structured_outputs match text, and this engine has no tokenizer "
                             "(skip_tokenizer_init=True)")
        cfg = self.config
        if cfg is not None and (cfg.disable_any_whitespace or cfg.disable_additional_properties):
            params = replace(params, disable_any_whitespace=params.disable_any_whitespace or cfg.disable_any_whitespace,
                             disable_additional_properties=params.disable_additional_properties
                             or cfg.disable_additional_properties)
        self.compiler.submit(params)
        return params

    def check_expressible(self, params: StructuredOutputsParams) -> None:
        """ValueError when the vocabulary has no first token for the constraint (the server calls this
        off the engine thread before it queues a request, so that such a request is a 400). Waits for
        the compile, which the request would wait for anyway; the engine then finds it cached."""
        import xgrammar as xgr

        params = self.check(params)
        matcher = xgr.GrammarMatcher(self.compiler.submit(params).result())
        bitmask = xgr.allocate_token_bitmask(1, self.compiler.vocab_size)
        matcher.fill_next_token_bitmask(bitmask)
        if not rows_allowing_any(bitmask)[0]:
            raise ValueError(f"structured outputs {params.kind}: the model's vocabulary has no token that can "
                             "begin the constraint")

    def park(self, request: Request) -> bool:
        """Track a request with a constraint; True when it waits here for its grammar."""
        so = getattr(request.params, "structured_outputs", None)
        if so is None:
            return False
        state = GrammarState(self.compiler.submit(so))
        if self._reasoning is not None and not self._reasoning.ended_in_prompt(request.prompt_token_ids):
            state.start = None
        self.states[request.request_id] = state
        self.parked.append(request)
        return True

    def take_ready(self, idle: bool) -> list[Request]:
        """Parked requests whose grammar compiled (or failed: they go on to fail in the step).
        idle: the scheduler has nothing else, so wait a little for a compile instead of spinning."""
        if idle and self.parked:
            wait([self.states[r.request_id].future for r in self.parked], timeout=IDLE_WAIT_S,
                 return_when="FIRST_COMPLETED")
        ready = [r for r in self.parked if self.states[r.request_id].future.done()]
        if ready:
            self.parked = [r for r in self.parked if not self.states[r.request_id].future.done()]
        return ready

    def bitmask(self, sched) -> GrammarBitmask | None:
        """Rows for the constrained requests that sample this step; [R, ceil(V / 32)] int32, filled by
        xgrammar's batch matcher (its threads work on the rows together)."""
        todo = [s.request for s in sched.scheduled if s.samples and self._constrained_now(s.request)]
        matchers, ids = [], []
        for req in todo:
            try:
                matchers.append(self._matcher(req))
                ids.append(req.request_id)
            except Exception as e:
                self.failed[req.request_id] = f"structured output failed: {type(e).__name__}: {e}"
        if not matchers:
            return None
        import xgrammar as xgr

        bitmask = xgr.allocate_token_bitmask(len(matchers), self.compiler.vocab_size)
        if self._batch is None:
            self._batch = xgr.BatchGrammarMatcher()
        self._batch.batch_fill_next_token_bitmask(matchers, bitmask)
        alive = rows_allowing_any(bitmask)  # a row with no token is a dead end
        for rid, ok in zip(ids, alive):
            if not ok:
                self.failed[rid] = ("structured output failed: the model's vocabulary has no token that continues "
                                    "the constraint here")
        return GrammarBitmask({rid: i for i, (rid, ok) in enumerate(zip(ids, alive)) if ok}, bitmask)

    def _constrained_now(self, req: Request) -> bool:
        """Has a grammar and is past its reasoning (the end marker's tokens seen: the grammar starts there)."""
        state = self.states.get(req.request_id)
        if state is None:
            return False
        if state.start is None:
            state.start = self._reasoning.end_in_output(req.output_token_ids)
        return state.start is not None

    def _matcher(self, req: Request):
        """The request's matcher, in step with its output tokens (made or rebuilt by replay)."""
        import xgrammar as xgr

        state = self.states[req.request_id]
        if state.matcher is None or state.num_accepted != req.num_output_tokens - state.start:
            state.matcher, state.num_accepted = xgr.GrammarMatcher(state.future.result()), 0
            for token in req.output_token_ids[state.start:]:
                self._advance(state, token)
        return state.matcher

    @staticmethod
    def _advance(state: GrammarState, token: int) -> None:
        if not state.matcher.accept_token(token):
            raise ValueError(f"token {token} does not continue the constraint")
        state.num_accepted += 1

    def accept(self, sampled: dict[str, int]) -> dict[str, str]:
        """Advance each constrained request's matcher on its new token. Returns the requests that
        fail (with this step's fill failures): {request id: why}."""
        failed, self.failed = self.failed, {}
        for rid, token in sampled.items():
            state = self.states.get(rid)
            if state is None or rid in failed or state.matcher is None:
                continue
            try:
                self._advance(state, token)
            except Exception as e:
                failed[rid] = f"structured output failed: {e}"
        return failed

    def remove(self, request: Request) -> None:
        self.states.pop(request.request_id, None)
        if request in self.parked:
            self.parked.remove(request)

    @property
    def num_parked(self) -> int:
        return len(self.parked)
