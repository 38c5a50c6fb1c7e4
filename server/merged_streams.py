"""MergedStreams: the deltas of several RequestStreams (one per prompt) in arrival order."""

from __future__ import annotations

import asyncio

from .async_engine import RequestStream
from .delta import RequestDelta


class MergedStreams:
    """`async for prompt_index, delta in merged`. `close()` aborts whatever has not finished.

    A plain class rather than an async generator: close() must be synchronous so that it can run
    from any `finally`, even in a task being cancelled.
    """

    def __init__(self, streams: list[RequestStream]):
        self.streams = streams
        self._pending: dict[asyncio.Future, int] = {}
        for i in range(len(streams)):
            self._arm(i)

    def _arm(self, i: int) -> None:
        if not self.streams[i].finished:
            self._pending[asyncio.ensure_future(self.streams[i].__anext__())] = i

    def __aiter__(self) -> "MergedStreams":
        return self

    async def __anext__(self) -> tuple[int, RequestDelta]:
        if not self._pending:
            raise StopAsyncIteration
        done, _ = await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
        fut = min(done, key=self._pending.__getitem__)  # lowest prompt index first: stable order
        i = self._pending.pop(fut)
        delta = fut.result()  # an engine error propagates to the handler
        self._arm(i)
        return i, delta

    def close(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        for stream in self.streams:
            stream.close()
