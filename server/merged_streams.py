"""MergedStreams: the deltas of several RequestStreams (one per prompt) as one async iterator.

    stream 0 ─► pump task ─┐
    stream 1 ─► pump task ─┼─► one asyncio.Queue ─► ready: {prompt index: merged delta} + min-heap ─► __anext__
    stream k ─► pump task ─┘

Each delta costs O(log n) however many prompts a request has (waiting on every pending stream
at each step was O(n) per delta: quadratic for a list of prompts).
"""

from __future__ import annotations

import asyncio
import heapq

from .async_engine import RequestStream
from .delta import RequestDelta

_END = object()  # a pump's last item: its stream has finished


class MergedStreams:
    """`async for prompt_index, delta in merged`. `close()` aborts whatever has not finished.

    Order: of the prompts that have something ready, the lowest index comes first; a prompt's
    deltas that piled up meanwhile come as one (merged by concatenation, as RequestStream does).
    An engine error is raised once the deltas that arrived before it have been handed out.

    A plain class rather than an async generator: close() must be synchronous so that it can run
    from any `finally`, even in a task being cancelled.
    """

    def __init__(self, streams: list[RequestStream]):
        self.streams = streams
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._ready: dict[int, RequestDelta] = {}
        self._heap: list[int] = []  # the indices in _ready
        self._error: BaseException | None = None
        self._live = len(streams)
        self._pumps = [asyncio.ensure_future(self._pump(i, s)) for i, s in enumerate(streams)]

    async def _pump(self, i: int, stream: RequestStream) -> None:
        try:
            async for delta in stream:
                self._inbox.put_nowait((i, delta))
        except Exception as e:  # an engine error: the handler gets it from __anext__
            self._inbox.put_nowait((i, e))
        self._inbox.put_nowait((i, _END))

    def __aiter__(self) -> "MergedStreams":
        return self

    async def __anext__(self) -> tuple[int, RequestDelta]:
        self._take_all()
        while not self._heap and self._error is None and self._live:
            self._take(*await self._inbox.get())
            self._take_all()
        if self._heap:
            i = heapq.heappop(self._heap)
            return i, self._ready.pop(i)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise StopAsyncIteration

    def _take_all(self) -> None:
        while not self._inbox.empty():
            self._take(*self._inbox.get_nowait())

    def _take(self, i: int, item) -> None:
        if item is _END:
            self._live -= 1
        elif isinstance(item, BaseException):
            self._error = self._error or item
        elif i in self._ready:
            self._ready[i].merge(item)
        else:
            self._ready[i] = item
            heapq.heappush(self._heap, i)

    def close(self) -> None:
        for pump in self._pumps:
            pump.cancel()
        for stream in self.streams:
            stream.close()
