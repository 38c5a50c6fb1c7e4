"""A dead tensor-parallel rank (OOM killer, segfault) ends the engine loudly: every call, the one in
flight included, raises WorkerDiedError naming the rank and its signal, and check_health() reports
it; nothing hangs and no rank outlives it. One engine start per test (tiny llama, TP=2)."""

import os
import signal
import time

import pytest

from anymodel import LLM
from anymodel.errors import WorkerDiedError
from tests.parallel import probes
from tests.parallel.test_parallel_engine import ENGINE, _alive
from tests.models.zoo import build_tiny_model, mixed_prompts
from tests.reference import greedy_outputs

# Generous: the point is "no hang" (a gloo collective would wait 30 minutes), not a timing.
PROMPT_S = 30.0


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_tiny_model("llama", tmp_path_factory.mktemp("llama"))


def _generate(llm):
    return greedy_outputs(llm, mixed_prompts(n=2, seed=1), 4)


def _assert_dead_everywhere(llm, pids):
    """Every later call fails at once with the same error, and every rank process is gone."""
    for call in (llm.engine.check_health, lambda: _generate(llm), lambda: llm.apply_model(probes.pid)):
        with pytest.raises(WorkerDiedError, match=r"rank 1 \(pid \d+\) was killed by signal SIGKILL.*restart"):
            call()
    assert not [p for p in pids if _alive(p)], "a rank outlived the dead one"


def test_killed_idle_rank_fails_the_next_call_and_the_health_check(llama):
    llm = LLM(str(llama), tensor_parallel_size=2, **ENGINE)
    try:
        assert len(_generate(llm)) == 2
        llm.engine.check_health()  # healthy: no error
        pids = llm.apply_model(probes.pid)
        os.kill(pids[1], signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(WorkerDiedError) as info:
            _generate(llm)
        assert time.monotonic() - started < PROMPT_S
        assert f"rank 1 (pid {pids[1]}) was killed by signal SIGKILL" in str(info.value)
        _assert_dead_everywhere(llm, pids)
    finally:
        llm.engine.shutdown()  # after a death: does not raise, does not hang


def test_rank_killed_inside_a_collective_fails_the_call_in_flight(llama):
    llm = LLM(str(llama), tensor_parallel_size=2, **ENGINE)
    try:
        pids = llm.apply_model(probes.pid)
        started = time.monotonic()
        with pytest.raises(WorkerDiedError, match=r"rank 1 .*SIGKILL"):
            llm.apply_model(probes.die_on_rank_1_in_a_collective)  # rank 0 is left inside all_reduce
        assert time.monotonic() - started < PROMPT_S
        _assert_dead_everywhere(llm, pids)
    finally:
        llm.engine.shutdown()


def test_clean_shutdown_is_not_a_death(llama):
    llm = LLM(str(llama), tensor_parallel_size=2, **ENGINE)
    llm.engine.shutdown()
    llm.engine.check_health()  # ranks exited because we asked: healthy, nothing to watch


def _rank_pids(server_pid: int) -> list[int]:
    """The rank processes under `anymodel serve`: children of its multiprocessing fork server."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    children = {pid for pid, ppid in parents.items() if ppid == server_pid}
    return sorted(pid for pid, ppid in parents.items() if ppid in children)


def test_server_with_a_killed_rank_fails_the_stream_and_exits_1(llama):
    """End to end: `anymodel serve -tp 2`, SIGKILL one rank while a completion streams: the stream
    ends with the error naming the rank, /health never answers 200 again (503 until the process
    ends; the exit is quick, so 503 itself is left to tests/server/test_fatal.py), and the process
    exits 1 for an orchestrator to restart it."""
    import httpx

    from tests.server.servers import ServeProcess

    server = ServeProcess(str(llama), "-tp", "2", "--model-impl", "transformers", "--dtype", "float32").start()
    try:
        url = server.wait()
        ranks = _rank_pids(server.proc.pid)
        assert len(ranks) == 2, ranks
        body = {"prompt": "hello", "max_tokens": 400, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # streaming: steps are running
            os.kill(ranks[1], signal.SIGKILL)
            rest = "\n".join(lines)
        assert "was killed by signal SIGKILL" in rest and "[DONE]" not in rest, rest[-2000:]
        statuses = _health_until_exit(server.proc, url)
        assert server.proc.wait(timeout=30) == 1
        assert 200 not in statuses, statuses
        with open(server.log.name) as f:
            log = f.read()
        assert "Traceback" not in log, log[-3000:]
        assert not [p for p in ranks if _alive(p)], "a rank outlived the server"
    finally:
        server.stop()


def _health_until_exit(proc, url: str, timeout: float = 60.0) -> set[int]:
    import httpx

    statuses, deadline = set(), time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            statuses.add(httpx.get(f"{url}/health", timeout=2).status_code)
        except httpx.HTTPError:  # the server is going away
            pass
        time.sleep(0.02)
    return statuses
