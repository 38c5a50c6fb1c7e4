"""Scheduler: token budget, chunked prefill, FCFS admission, preemption of the newest request."""

from anymodel.kv_cache import KVCacheManager
from anymodel.params import SamplingParams
from anymodel.engine.request import Request, RequestStatus
from anymodel.engine.scheduler import Scheduler


def make(rid: str, n: int) -> Request:
    return Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=100), max_tokens=100)


def run_step(sched: Scheduler, new_token: int = 7):
    """Schedule, then pretend the model ran: advance counts and sample for requests that finished a prompt."""
    out = sched.schedule()
    sampling = [s.request for s in out.scheduled if s.samples]  # decided before the counts advance
    sched.update(out)
    for r in sampling:
        r.append_token(new_token)
    return out


def summary(out):
    return [(s.request.request_id, s.num_tokens) for s in out.scheduled]


def test_prefill_then_decode_under_budget():
    sched = Scheduler(KVCacheManager(16, 4, enable_prefix_caching=False), max_num_seqs=8, max_num_batched_tokens=32)
    for rid, n in (("a", 5), ("b", 3)):
        sched.add(make(rid, n))
    assert summary(run_step(sched)) == [("a", 5), ("b", 3)]
    assert summary(run_step(sched)) == [("a", 1), ("b", 1)]


def test_chunked_prefill_splits_long_prompt_and_decodes_first():
    sched = Scheduler(KVCacheManager(16, 4, enable_prefix_caching=False), max_num_seqs=8, max_num_batched_tokens=4)
    sched.add(make("a", 2))
    assert summary(run_step(sched)) == [("a", 2)]
    sched.add(make("b", 10))
    out = run_step(sched)
    assert summary(out) == [("a", 1), ("b", 3)]  # running decode first, then a chunk of b
    assert not out.scheduled[1].samples
    assert summary(run_step(sched)) == [("a", 1), ("b", 3)]
    out = run_step(sched)
    assert summary(out) == [("a", 1), ("b", 3)]
    assert sched.running[1].num_computed_tokens == 9
    out = run_step(sched)
    assert summary(out) == [("a", 1), ("b", 1)]
    assert b_req(sched).num_output_tokens == 1  # the last chunk (1 token) sampled


def b_req(sched):
    return next(r for r in sched.running if r.request_id == "b")


def test_without_chunking_a_long_prompt_waits_for_budget():
    sched = Scheduler(KVCacheManager(16, 4), max_num_seqs=8, max_num_batched_tokens=4, enable_chunked_prefill=False)
    sched.add(make("a", 6))
    assert run_step(sched).is_empty


def test_max_num_seqs_limits_admission_fcfs():
    sched = Scheduler(KVCacheManager(16, 4), max_num_seqs=2, max_num_batched_tokens=64)
    for rid in "abc":
        sched.add(make(rid, 2))
    assert summary(run_step(sched)) == [("a", 2), ("b", 2)]
    assert [r.request_id for r in sched.waiting] == ["c"]


def test_preempts_newest_and_recomputes_later():
    # 3 blocks of 2 tokens: a (2 tokens) and b (2 tokens) fill two blocks; decode needs more.
    kv = KVCacheManager(3, 2, enable_prefix_caching=False)
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=64)
    a, b = make("a", 2), make("b", 2)
    sched.add(a)
    sched.add(b)
    run_step(sched)  # both prefilled, each sampled one token: 3 tokens each now
    out = run_step(sched)  # a gets block 3 of 3; b cannot grow -> b (newest) preempted
    assert [r.request_id for r in out.preempted] == ["b"]
    assert summary(out) == [("a", 1)]
    assert b.status is RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert b.output_token_ids == [7]  # its output survives, to be recomputed
    assert [r.request_id for r in sched.waiting] == ["b"]
    sched.finish(a, RequestStatus.FINISHED_LENGTH)
    out = run_step(sched)
    assert summary(out) == [("b", 3)]  # prompt + its generated token, in one recompute
    assert b.output_token_ids == [7, 7]  # ... after which it samples its next token


def test_finish_frees_blocks_at_once():
    kv = KVCacheManager(4, 2)
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=64)
    r = make("a", 5)
    sched.add(r)
    run_step(sched)
    assert kv.num_free_blocks == 1
    sched.finish(r, RequestStatus.FINISHED_ABORTED)
    assert kv.num_free_blocks == 4 and not sched.running
