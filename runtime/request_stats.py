"""`RequestOutput.metrics`: one request's timeline, in vLLM's names (vllm.v1.metrics.stats).

    arrival_time (wall clock, time.time())          when add_request took it
    queued_ts    (monotonic, as every *_ts below)   when it joined the waiting queue
    scheduled_ts                                    its first step (any of its n samples)
    first_token_ts / last_token_ts                  its first / latest generated token
    first_token_latency                             seconds from arrival to the first token

The engine-side timestamps use time.monotonic() (as vLLM's engine core does): subtract them from
each other, not from arrival_time. vLLM v0's names are properties over the same values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class RequestStateStats:
    num_generation_tokens: int = 0
    arrival_time: float = 0.0
    queued_ts: float = 0.0
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    first_token_latency: float = 0.0

    @classmethod
    def arrived(cls) -> "RequestStateStats":
        """A request that arrives (and is queued) now."""
        return cls(arrival_time=time.time(), queued_ts=time.monotonic())

    def scheduled(self, now: float) -> None:
        if not self.scheduled_ts:
            self.scheduled_ts = now

    def token(self, now: float) -> None:
        """One generated token (of any sample) recorded at monotonic time `now`."""
        if not self.first_token_ts:
            self.first_token_ts = now
            self.first_token_latency = now - self.queued_ts
        self.last_token_ts = now
        self.num_generation_tokens += 1

    # vLLM v0's RequestMetrics names
    @property
    def first_scheduled_time(self) -> float | None:
        return self.scheduled_ts or None

    @property
    def first_token_time(self) -> float | None:
        return self.first_token_ts or None

    @property
    def last_token_time(self) -> float:
        return self.last_token_ts

    @property
    def time_in_queue(self) -> float | None:
        return self.scheduled_ts - self.queued_ts if self.scheduled_ts else None
