"""The scheduler's waiting queue and preemption victim, per scheduling policy (vLLM's names).

    "fcfs"      arrival order; a preempted request goes back to the front; the newest running
                request is preempted first
    "priority"  lowest `priority` value first, ties by arrival; a preempted request goes back in
                that order; the running request with the highest (priority, arrival) — the least
                important, newest — is preempted first
"""

from __future__ import annotations

import bisect
from collections import deque

from anymodel.engine.request import Request

SCHEDULING_POLICIES = ("fcfs", "priority")


def priority_key(req: Request) -> tuple[int, float]:
    return (req.priority, req.arrival_time)


class PriorityQueue:
    """Waiting requests sorted by (priority, arrival_time); equal keys keep insertion order. The
    deque methods the scheduler uses, so that one scheduler serves both policies."""

    def __init__(self) -> None:
        self._items: list[Request] = []
        self._keys: list[tuple[int, float]] = []

    def append(self, req: Request) -> None:
        key = priority_key(req)
        i = bisect.bisect_right(self._keys, key)
        self._items.insert(i, req)
        self._keys.insert(i, key)

    appendleft = append  # a preempted request rejoins in its priority order

    def extendleft(self, reqs) -> None:
        """Back in front of their equal keys (deque.extendleft's order: the last given ends first),
        as requests the scheduler set aside this step (a LoRA slot they wait for)."""
        for req in reqs:
            key = priority_key(req)
            i = bisect.bisect_left(self._keys, key)
            self._items.insert(i, req)
            self._keys.insert(i, key)

    def popleft(self) -> Request:
        self._keys.pop(0)
        return self._items.pop(0)

    def remove(self, req: Request) -> None:
        i = self._items.index(req)
        del self._items[i], self._keys[i]

    def __getitem__(self, i: int) -> Request:
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(list(self._items))

    def __contains__(self, req: Request) -> bool:
        return req in self._items


def waiting_queue(policy: str) -> deque[Request] | PriorityQueue:
    return PriorityQueue() if policy == "priority" else deque()


def victim_index(running: list[Request], policy: str) -> int:
    """Index in `running` (oldest first) of the request to preempt."""
    if policy != "priority":
        return len(running) - 1  # the newest
    # the largest (priority, arrival); among equal keys the newest (the last in `running`)
    return max(range(len(running)), key=lambda j: (priority_key(running[j]), j))
