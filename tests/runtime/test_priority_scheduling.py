"""scheduling_policy="priority" (vLLM's): lower priority value first, ties by arrival; under KV
pressure the least important running request is preempted; under "fcfs" a non-zero priority is
vLLM's ValueError. Scheduler-level cases on hand-made requests, then the tiny model end to end."""

import pytest

from anymodel import LLM, SamplingParams
from anymodel.engine.request import Request, RequestStatus
from anymodel.engine.request_queue import PriorityQueue
from anymodel.engine.scheduler import Scheduler
from anymodel.kv_cache import KVCacheManager
from tests.runtime.test_scheduler import run_step, summary

_clock = iter(range(1, 10**6))


def make(rid: str, n: int, priority: int) -> Request:
    return Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=100), max_tokens=100,
                   arrival_time=float(next(_clock)), priority=priority)


def test_waiting_queue_orders_by_priority_then_arrival():
    q = PriorityQueue()
    reqs = [make(rid, 2, p) for rid, p in (("a", 2), ("b", 0), ("c", 1), ("d", 0))]
    for r in reqs:
        q.append(r)
    assert [r.request_id for r in q] == ["b", "d", "c", "a"]
    q.remove(reqs[3])
    assert q.popleft().request_id == "b" and [r.request_id for r in q] == ["c", "a"] and len(q) == 2


def test_admission_follows_priority():
    sched = Scheduler(KVCacheManager(16, 4), max_num_seqs=2, max_num_batched_tokens=64, policy="priority")
    for rid, p in (("a", 3), ("b", 1), ("c", 2), ("d", 1)):
        sched.add(make(rid, 2, p))
    assert summary(run_step(sched)) == [("b", 2), ("d", 2)]
    assert [r.request_id for r in sched.waiting] == ["c", "a"]


def _pressure(policy: str):
    """a (priority 1) runs first, b (priority 0) joins; 3 blocks of 2 tokens run out when b grows."""
    sched = Scheduler(KVCacheManager(3, 2, enable_prefix_caching=False), max_num_seqs=8, max_num_batched_tokens=64,
                      policy=policy)
    a, b = make("a", 2, 1 if policy == "priority" else 0), make("b", 2, 0)
    sched.add(a)
    run_step(sched)  # a: 2 tokens computed (1 block), 3 known
    sched.add(b)
    assert summary(run_step(sched)) == [("a", 1), ("b", 2)]  # 3 blocks in use
    return sched, a, b, run_step(sched)  # a fits its block; b needs a 4th block


def test_priority_preempts_the_least_important_even_if_scheduled_earlier():
    sched, a, b, out = _pressure("priority")
    assert [r.request_id for r in out.preempted] == ["a"]  # scheduled before b in this step: taken back
    assert summary(out) == [("b", 1)]
    assert a.status is RequestStatus.PREEMPTED and a.num_computed_tokens == 0
    assert [r.request_id for r in sched.running] == ["b"] and [r.request_id for r in sched.waiting] == ["a"]


def test_fcfs_preempts_the_newest():
    sched, a, b, out = _pressure("fcfs")
    assert [r.request_id for r in out.preempted] == ["b"] and summary(out) == [("a", 1)]


def test_preempted_request_rejoins_in_priority_order():
    sched, a, b, _ = _pressure("priority")
    sched.add(make("c", 2, 0))
    sched.add(make("d", 2, 5))
    assert [r.request_id for r in sched.waiting] == ["c", "a", "d"]


# ---- end to end ---------------------------------------------------------------------------------
def _first_scheduled_order(outs) -> list[int]:
    return sorted(range(len(outs)), key=lambda i: outs[i].metrics.scheduled_ts)


def test_generate_runs_in_priority_order(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), dtype="float32", max_num_seqs=1, scheduling_policy="priority")
    prompts = ["one two", "three", "four five six", "seven"]
    p = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    outs = llm.generate(prompts, p, priority=[1, 0, 1, 0], use_tqdm=False)
    assert _first_scheduled_order(outs) == [1, 3, 0, 2]  # lower first, ties by arrival
    plain = llm.generate(prompts, p, use_tqdm=False)  # priority 0 for all: arrival order
    assert _first_scheduled_order(plain) == [0, 1, 2, 3]
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in plain]


def test_priority_needs_the_priority_policy(tiny_llm):
    with pytest.raises(ValueError, match="Got priority 1 but Priority scheduling is not enabled"):
        tiny_llm.generate(["a", "b"], SamplingParams(max_tokens=1), priority=[0, 1], use_tqdm=False)
    assert not tiny_llm.engine.has_unfinished()
    assert tiny_llm.generate(["a"], SamplingParams(max_tokens=1), priority=[0], use_tqdm=False)  # 0 is fine
    with pytest.raises(ValueError, match="one integer per prompt"):
        tiny_llm.generate(["a", "b"], SamplingParams(max_tokens=1), priority=[0], use_tqdm=False)
    with pytest.raises(TypeError, match="priority must be an integer"):
        tiny_llm.generate(["a"], SamplingParams(max_tokens=1), priority=[0.5], use_tqdm=False)
    with pytest.raises(ValueError, match="unsupported scheduling_policy 'lifo'"):
        LLM(scheduling_policy="lifo")


@pytest.mark.parametrize("policy", ["priority", "fcfs"])
def test_kv_pressure_preempts_by_policy(tiny_model_dir, policy):
    """Two requests that need 4 blocks each share 6: one is preempted. Under "priority" it is the
    less important one (the first); under "fcfs" the newest (the second). Either way the tokens are
    those of a run without pressure."""
    p = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    prompts = [{"prompt_token_ids": [5 + i % 40 for i in range(20)]}, {"prompt_token_ids": [9 + i % 30 for i in range(20)]}]
    llm = LLM(str(tiny_model_dir), dtype="float32", num_kv_blocks=6, block_size=16, scheduling_policy=policy,
              enable_prefix_caching=False)
    outs = llm.generate(prompts, p, priority=[1, 0] if policy == "priority" else None, use_tqdm=False)
    assert llm.engine.stats().num_preemptions_total >= 1
    first_done = min(range(2), key=lambda i: outs[i].metrics.last_token_ts)
    assert first_done == (1 if policy == "priority" else 0)  # the request never preempted finishes first
    roomy = LLM(str(tiny_model_dir), dtype="float32", num_kv_blocks=64, block_size=16)
    ref = roomy.generate(prompts, p, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in ref]
