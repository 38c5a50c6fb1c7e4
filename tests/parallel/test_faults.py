"""A dead tensor-parallel rank (OOM killer, segfault) ends the engine loudly: every call, the one in
flight included, raises WorkerDiedError naming the rank and its signal, and check_health() reports
it; nothing hangs and no rank outlives it. One engine start per test (tiny llama, TP=2)."""

import os
import signal
import time

import pytest

from anymodel import LLM, SamplingParams
from anymodel.errors import WorkerDiedError
from tests.parallel import probes
from tests.parallel.test_parallel_engine import ENGINE, _alive
from tests.parallel.tiny_models import build, prompts

PARAMS = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
# Generous: the point is "no hang" (a gloo collective would wait 30 minutes), not a timing.
PROMPT_S = 30.0


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build("llama", tmp_path_factory.mktemp("llama"))


def _generate(llm):
    return llm.generate([{"prompt_token_ids": p} for p in prompts(2)], PARAMS, use_tqdm=False)


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
