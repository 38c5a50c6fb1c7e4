"""Token-budget scheduler: one path, driven by `num_computed_tokens`, for every kind of work.

Each step every running request asks for `num_tokens - num_computed_tokens` tokens (a decode asks
for one, a prompt for its remainder, capped by the budget: chunked prefill), oldest first. When the
KV cache cannot hold them, the newest running request is preempted (scheduling_policy="priority":
the least important one): its blocks are freed and it is recomputed later from its prompt and the
tokens it already produced. Waiting requests are admitted in the policy's order (request_queue.py),
after a prefix-cache lookup, only while no preemption happened this step; with LoRA (`max_loras`),
a waiting request whose adapter would be one more than the running requests hold slots for waits
(the ones behind it may still start).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anymodel.kv_cache import KVCacheManager
from anymodel.engine.request import Request, RequestStatus
from anymodel.engine.request_queue import victim_index, waiting_queue


@dataclass
class ScheduledRequest:
    request: Request
    num_tokens: int  # tokens computed this step, starting at request.num_computed_tokens

    @property
    def samples(self) -> bool:
        """True when this step reaches the end of the known tokens, so a new token is sampled."""
        r = self.request
        return not r.is_pooling and r.num_computed_tokens + self.num_tokens == r.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    block_tables: dict[str, list[int]] = field(default_factory=dict)
    preempted: list[Request] = field(default_factory=list)
    # Requests finished or aborted since the previous step: workers drop their per-request state.
    finished_req_ids: set[str] = field(default_factory=set)
    # Structured outputs: token bitmask rows of the constrained requests that sample (structured_output/)
    grammar_bitmask: object | None = None

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def released_req_ids(self) -> set[str]:
        """Requests whose per-request worker state is no longer valid (finished or preempted)."""
        return self.finished_req_ids | {r.request_id for r in self.preempted}


class Scheduler:
    def __init__(
        self,
        kv: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool = True,
        policy: str = "fcfs",  # or "priority" (runtime/engine/request_queue.py)
        max_loras: int | None = None,
    ) -> None:
        self.kv = kv
        self.max_loras = max_loras  # distinct adapters among running requests (None: no LoRA limit)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.policy = policy
        self.waiting = waiting_queue(policy)
        self.running: list[Request] = []
        self.num_preemptions = 0
        self.num_prefix_cache_hit_tokens = 0  # prompt tokens a first schedule found cached
        self.num_prefix_cache_query_tokens = 0  # prompt tokens a first schedule looked up
        self._finished_ids: set[str] = set()

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_req_ids=self._finished_ids)
        self._finished_ids = set()
        budget = self._schedule_running(out, self.max_num_batched_tokens)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        for s in out.scheduled:
            out.block_tables[s.request.request_id] = self.kv.block_ids(s.request.request_id)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if n <= 0:
                i += 1
                continue
            while not self.kv.allocate_slots(req, n):
                j = victim_index(self.running, self.policy)
                victim = self.running.pop(j)
                if j < i:  # scheduled earlier in this step (priority policy): its tokens return to the budget
                    budget += sum(s.num_tokens for s in out.scheduled if s.request is victim)
                    i -= 1
                self._preempt(victim, out)
                if victim is req:
                    break
            else:
                out.scheduled.append(ScheduledRequest(req, n))
                budget -= n
                i += 1
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        skipped: list[Request] = []  # their adapter needs a slot no running request frees this step
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            if not self._lora_fits(req):
                skipped.append(self.waiting.popleft())
                continue
            computed, num_cached = self.kv.get_computed_blocks(req)
            n = req.num_tokens - num_cached
            if n > budget and (req.is_pooling or not self.enable_chunked_prefill):
                break  # whole prompts only; wait for a step with enough budget
            n = min(n, budget)
            if not self.kv.allocate_slots(req, n, computed):
                break
            self.waiting.popleft()
            req.num_computed_tokens = num_cached
            if req.status is RequestStatus.WAITING:
                req.num_cached_tokens = num_cached
                self.num_prefix_cache_hit_tokens += num_cached
                self.num_prefix_cache_query_tokens += req.num_tokens
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            out.scheduled.append(ScheduledRequest(req, n))
            budget -= n
        self.waiting.extendleft(reversed(skipped))

    def _lora_fits(self, req: Request) -> bool:
        if self.max_loras is None or not req.lora_int_id:
            return True
        active = {r.lora_int_id for r in self.running if r.lora_int_id}
        return req.lora_int_id in active or len(active) < self.max_loras

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        self.waiting.appendleft(req)
        self.num_preemptions += 1
        out.preempted.append(req)
        out.scheduled = [s for s in out.scheduled if s.request is not req]

    def update(self, out: SchedulerOutput) -> None:
        """Advance computed-token counts after the model ran the step."""
        for s in out.scheduled:
            s.request.num_computed_tokens += s.num_tokens

    def finish(self, req: Request, status: RequestStatus) -> None:
        """Remove a request (finished or aborted) and free its blocks at once."""
        req.status = status
        self._finished_ids.add(req.request_id)
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.kv.free(req)
