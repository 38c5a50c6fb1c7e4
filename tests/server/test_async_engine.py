"""AsyncEngine against FakeEngine: streaming, abort, failures, one owner thread, no busy loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from anymodel.errors import RequestFailedError, WorkerDiedError
from anymodel.outputs import RequestOutput
from anymodel.params import SamplingParams
from anymodel.server.async_engine import AsyncEngine, EngineDeadError, EngineStepError, RequestStepError

from tests.server.fake_engine import FakeEngine


def run(coro, timeout: float = 20.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.fixture
def engines():
    fake = FakeEngine()
    eng = AsyncEngine(fake)
    eng.start()
    yield fake, eng
    eng.shutdown()


async def _text(stream) -> str:
    return "".join(d.samples[0].text for d in [d async for d in stream] if 0 in d.samples)


async def _wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_stream_yields_the_whole_text_then_finishes(engines):
    fake, eng = engines

    async def go():
        stream = await eng.add("r1", "ab", SamplingParams(max_tokens=5))
        return await _text(stream), stream.finished

    assert run(go()) == ("cdefg", True)


def test_invalid_prompt_raises_value_error_and_loop_goes_on(engines):
    fake, eng = engines

    async def go():
        with pytest.raises(ValueError, match="max_model_len"):
            await eng.add("bad", "x" * 100, SamplingParams())
        return await _text(await eng.add("ok", "ab", SamplingParams(max_tokens=2)))

    assert run(go()) == "cd"


def test_close_mid_stream_aborts_the_request(engines):
    fake, eng = engines

    async def go():
        stream = await eng.add("long", "SLOW a", SamplingParams(max_tokens=50))
        await stream.__anext__()
        stream.close()
        await _wait_until(lambda: not fake.requests)
        return fake.steps

    steps = run(go())
    assert steps < 50  # aborted, not run to max_tokens


def test_step_failure_fails_in_flight_requests_and_the_loop_survives(engines):
    fake, eng = engines

    async def go():
        stream = await eng.add("boom", "FAIL2 a", SamplingParams(max_tokens=10))
        with pytest.raises(EngineStepError, match="injected failure"):
            async for _ in stream:
                pass
        return await _text(await eng.add("after", "ab", SamplingParams(max_tokens=3)))

    assert run(go()) == "cde"
    assert eng.is_alive


def test_only_the_engine_thread_touches_the_engine(engines):
    fake, eng = engines

    async def go():
        streams = [await eng.add(f"r{i}", "ab", SamplingParams(max_tokens=4)) for i in range(5)]
        streams[0].close()
        return await asyncio.gather(*[_text(s) for s in streams[1:]])

    assert run(go()) == ["cdef"] * 4
    assert len(fake.owner) == 1 and threading.get_ident() not in fake.owner


def test_idle_loop_blocks_instead_of_spinning(engines):
    fake, eng = engines
    run(_text_of(eng))
    time.sleep(0.1)
    before = (fake.idle_checks, fake.steps)
    time.sleep(0.5)
    assert (fake.idle_checks, fake.steps) == before


async def _text_of(eng):
    return await _text(await eng.add("x", "ab", SamplingParams(max_tokens=3)))


def test_shutdown_fails_open_streams_and_refuses_new_ones():
    fake = FakeEngine()
    eng = AsyncEngine(fake)
    eng.start()

    async def go():
        stream = await eng.add("slow", "SLOW a", SamplingParams(max_tokens=60))
        await stream.__anext__()
        await asyncio.get_running_loop().run_in_executor(None, eng.shutdown)
        with pytest.raises(EngineDeadError):
            async for _ in stream:
                pass
        with pytest.raises(EngineDeadError):
            await eng.add("late", "ab", SamplingParams())

    run(go())
    assert not eng.is_alive


def test_slow_reader_gets_the_backlog_coalesced(engines):
    fake, eng = engines

    async def go():
        stream = await eng.add("r", "ab", SamplingParams(max_tokens=8, n=2))
        await _wait_until(lambda: stream._queue.qsize() == 8)  # all 8 steps queued before we read
        deltas = [d async for d in stream]
        return deltas

    deltas = run(go())
    assert len(deltas) == 1 and deltas[0].finished
    assert deltas[0].samples[0].text == "cdefghij" and len(deltas[0].samples[1].token_ids) == 8


# ---- issue 13: one request's failure, and the engine's death ----------------------------------------


class FaultyEngine(FakeEngine):
    """"ERR" in a prompt: that request fails inside the step (its output carries the error, as the
    real Engine reports it); "DIE": step() raises WorkerDiedError; `dead`: check_health raises it."""

    def __init__(self):
        super().__init__()
        self.dead = False
        self.health_checks = 0

    def step(self):
        if any("DIE" in r["prompt"] for r in self.requests.values()):
            raise WorkerDiedError("rank 1 exited with code -9")
        failed = [rid for rid, r in self.requests.items() if "ERR" in r["prompt"] and r["out"][0]]
        outputs = super().step()
        for rid in failed:
            r = self.requests.pop(rid, None) or {"prompt": "", "ids": []}
            outputs = [o for o in outputs if o.request_id != rid]
            outputs.append(RequestOutput(rid, r["prompt"], r["ids"], [], True,
                                         error=RequestFailedError(rid, "sampling failed: injected")))
        return outputs

    def check_health(self):
        self.health_checks += 1
        if self.dead:
            raise WorkerDiedError("rank 1 stopped answering")


@pytest.fixture
def faulty():
    fake = FaultyEngine()
    eng = AsyncEngine(fake)
    fatal: list[BaseException] = []
    eng.on_fatal = fatal.append
    eng.health_check_interval = 0.02
    eng.start()
    yield fake, eng, fatal
    eng.shutdown()


def test_one_failed_request_gets_its_error_and_the_others_stream_on(faulty):
    fake, eng, fatal = faulty

    async def go():
        good = [await eng.add(f"ok{i}", "SLOW ab", SamplingParams(max_tokens=4)) for i in range(2)]
        bad = await eng.add("bad", "ERR ab", SamplingParams(max_tokens=4))
        with pytest.raises(RequestFailedError, match="'bad' failed: sampling failed: injected") as e:
            async for _ in bad:
                pass
        assert isinstance(e.value, RequestStepError)  # the app's 500 for a step error, in-band on a stream
        return await asyncio.gather(*[_text(s) for s in good])

    assert run(go()) == ["cdef", "cdef"]
    assert eng.is_alive and not fatal


def test_worker_death_in_a_step_fails_every_request_and_stops_the_loop(faulty):
    fake, eng, fatal = faulty

    async def go():
        streams = [await eng.add(f"r{i}", "SLOW ab", SamplingParams(max_tokens=50)) for i in range(3)]
        await streams[0].__anext__()
        await eng.add("die", "DIE", SamplingParams(max_tokens=5))
        for stream in streams:
            with pytest.raises(WorkerDiedError, match="rank 1 exited"):
                async for _ in stream:
                    pass
        await _wait_until(lambda: fatal)
        with pytest.raises(EngineDeadError):
            await eng.add("late", "ab", SamplingParams())

    run(go())
    assert not eng.is_alive
    assert len(fatal) == 1 and isinstance(fatal[0], WorkerDiedError)


def test_worker_death_while_idle_is_found_by_the_health_check(faulty):
    fake, eng, fatal = faulty
    assert run(_text_of(eng)) == "cde"

    async def go():
        await _wait_until(lambda: fake.health_checks >= 2)  # idle: checked again and again
        assert eng.is_alive
        fake.dead = True
        await _wait_until(lambda: fatal)

    run(go())
    assert not eng.is_alive
    assert len(fatal) == 1 and "stopped answering" in str(fatal[0])


def test_an_ordinary_step_error_is_not_fatal(faulty):
    fake, eng, fatal = faulty

    async def go():
        stream = await eng.add("boom", "FAIL1 a", SamplingParams(max_tokens=10))
        with pytest.raises(EngineStepError, match="injected failure"):
            async for _ in stream:
                pass

    run(go())
    assert eng.is_alive and not fatal


def test_real_engine_one_request_fails_the_other_streams_on(monkeypatch):
    """The demo Engine behind the loop, one request's sampling made to raise: only its stream fails."""
    from anymodel.worker import model_runner, sampler
    from anymodel.config import EngineArgs
    from anymodel.engine.engine import Engine

    real = sampler.sample

    def faulty(logits, rows, generator=None):
        if any(r.params.seed == 1234 for r in rows):
            raise RuntimeError("injected sampling fault")
        return real(logits, rows, generator)

    monkeypatch.setattr(model_runner, "sample", faulty)
    eng = AsyncEngine(Engine(EngineArgs()))
    eng.start()
    try:
        async def go():
            good = await eng.add("good", "12+34=", SamplingParams(temperature=0, max_tokens=8))
            bad = await eng.add("bad", "5+7=", SamplingParams(temperature=0, max_tokens=8, seed=1234))
            with pytest.raises(RequestFailedError, match="'bad' failed: sampling failed: RuntimeError: injected"):
                async for _ in bad:
                    pass
            return await _text(good)

        assert run(go()) == "46"
        assert eng.is_alive
    finally:
        eng.shutdown()


def test_a_health_check_bug_is_logged_not_fatal(faulty, monkeypatch):
    fake, eng, fatal = faulty
    calls = []

    def broken():
        calls.append(1)
        raise KeyError("bug in check_health")

    monkeypatch.setattr(fake, "check_health", broken)

    async def go():
        await _wait_until(lambda: len(calls) >= 2)  # still checking: the loop survived the first
        return await _text_of(eng)

    assert run(go()) == "cde"
    assert eng.is_alive and not fatal
