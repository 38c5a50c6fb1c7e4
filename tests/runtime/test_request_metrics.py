"""RequestOutput.metrics: vLLM's RequestStateStats (arrival, queued, first scheduled, first and last
token), filled by the engine as the request moves; checked by order, never by durations."""

import time

from anymodel import LLM, SamplingParams
from anymodel.request_stats import RequestStateStats


def test_metrics_follow_the_request(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), dtype="float32", max_num_seqs=1)
    before = time.time()
    a, b = llm.generate(["one two three", "four"], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                        use_tqdm=False)
    for out in (a, b):
        m = out.metrics
        assert isinstance(m, RequestStateStats)
        assert before <= m.arrival_time <= time.time()  # wall clock, as vLLM's arrival_time
        assert 0 < m.queued_ts <= m.scheduled_ts <= m.first_token_ts <= m.last_token_ts  # monotonic clock
        assert m.num_generation_tokens == 4
        assert m.first_token_latency == m.first_token_ts - m.queued_ts
        # vLLM v0's names over the same values
        assert (m.first_scheduled_time, m.first_token_time, m.last_token_time) == (
            m.scheduled_ts, m.first_token_ts, m.last_token_ts)
        assert m.time_in_queue == m.scheduled_ts - m.queued_ts
    # max_num_seqs=1: b waits in the queue until a is done
    assert b.metrics.scheduled_ts >= a.metrics.last_token_ts and b.metrics.queued_ts <= a.metrics.scheduled_ts


def test_metrics_count_every_sample_and_snapshot_each_output(tiny_llm):
    engine = tiny_llm.engine
    engine.add_request("m", "hello", SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=3, ignore_eos=True))
    seen = []
    while engine.has_unfinished():
        seen += [o.metrics for o in engine.step() if o.request_id == "m"]
    assert [m.num_generation_tokens for m in seen] == [2, 4, 6]  # n=2 samples, one token each per step
    assert seen[0].first_token_ts == seen[-1].first_token_ts and seen[0].last_token_ts < seen[-1].last_token_ts
    assert len({id(m) for m in seen}) == 3  # each output holds its own snapshot


def test_a_request_that_never_ran_has_no_schedule_time():
    m = RequestStateStats.arrived()
    assert m.first_scheduled_time is None and m.first_token_time is None and m.time_in_queue is None
