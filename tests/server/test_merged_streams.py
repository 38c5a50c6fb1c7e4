"""MergedStreams: lowest ready prompt first, a backlog merged into one delta, an engine error only
after the deltas that came before it, close() aborts what is left; thousands of streams stay cheap."""

from __future__ import annotations

import asyncio

import pytest

from anymodel.server.async_engine import EngineStepError, RequestStream
from anymodel.server.delta import RequestDelta, SampleDelta
from anymodel.server.merged_streams import MergedStreams


def delta(text: str, finished: bool = False) -> RequestDelta:
    return RequestDelta("r", [1], {0: SampleDelta(0, text, [ord(c) for c in text], None)}, finished)


def make(n: int):
    aborted: list[str] = []
    queues = [asyncio.Queue() for _ in range(n)]
    streams = [RequestStream(f"r-{i}", q, aborted.append) for i, q in enumerate(queues)]
    return MergedStreams(streams), queues, aborted


async def settle() -> None:
    for _ in range(5):  # let the pump tasks move what is queued
        await asyncio.sleep(0)


def run(coro):
    return asyncio.run(coro)


def test_lowest_ready_index_first_and_backlog_merged():
    async def main():
        merged, queues, _ = make(3)
        queues[2].put_nowait(delta("a"))
        queues[0].put_nowait(delta("b"))
        await settle()
        queues[2].put_nowait(delta("c", finished=True))
        await settle()
        out = [(i, d.samples[0].text) for i, d in [await merged.__anext__(), await merged.__anext__()]]
        queues[0].put_nowait(delta("d", finished=True))
        queues[1].put_nowait(delta("e", finished=True))
        out += [(i, d.samples[0].text) async for i, d in merged]
        return out

    assert run(main()) == [(0, "b"), (2, "ac"), (0, "d"), (1, "e")]


def test_an_error_comes_after_the_deltas_before_it():
    async def main():
        merged, queues, _ = make(2)
        queues[1].put_nowait(delta("x"))
        queues[0].put_nowait(EngineStepError("boom"))
        await settle()
        first = await merged.__anext__()
        with pytest.raises(EngineStepError, match="boom"):
            await merged.__anext__()
        merged.close()
        return first

    i, d = run(main())
    assert (i, d.samples[0].text) == (1, "x")


def test_close_aborts_the_unfinished_and_stops_the_pumps():
    async def main():
        merged, queues, aborted = make(3)
        queues[1].put_nowait(delta("done", finished=True))
        await settle()
        merged.close()
        await settle()
        return aborted, [p.done() for p in merged._pumps]

    aborted, done = run(main())
    assert sorted(aborted) == ["r-0", "r-2"] and all(done)


def test_thousands_of_streams():
    async def main(n=5000):
        merged, queues, _ = make(n)
        for i in reversed(range(n)):
            queues[i].put_nowait(delta(str(i % 10), finished=True))
        return [i async for i, _ in merged]

    assert run(main()) == list(range(5000))
