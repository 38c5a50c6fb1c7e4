"""The server's periodic engine line (vLLM's): rates over the interval, quiet when idle, off with
--disable-log-stats."""

from __future__ import annotations

import pytest

from anymodel.config import EngineArgs
from anymodel.outputs import EngineStats
from anymodel.server.app import build_app
from anymodel.server.stats_logger import StatsLogger


def _stats(prompt=0, generated=0, running=0, waiting=0, free=10, queries=0, hits=0) -> EngineStats:
    return EngineStats(num_running=running, num_waiting=waiting, num_free_blocks=free, num_total_blocks=10,
                       prompt_tokens_total=prompt, generation_tokens_total=generated,
                       prefix_cache_query_tokens_total=queries, prefix_cache_hit_tokens_total=hits)


def test_rates_over_the_interval(caplog):
    log = StatsLogger(interval=10)
    assert log.maybe_log(_stats(), now=0) is None  # the first snapshot is the baseline
    assert log.maybe_log(_stats(prompt=50), now=5) is None  # too soon
    line = log.maybe_log(_stats(prompt=200, generated=40, running=2, waiting=1, free=5, queries=100, hits=25), now=20)
    assert line == ("Avg prompt throughput: 10.0 tokens/s, Avg generation throughput: 2.0 tokens/s, Running: 2 reqs, "
                    "Waiting: 1 reqs, KV cache usage: 50.0%, Prefix cache hit rate: 25.0%")
    assert line in caplog.text
    same = _stats(prompt=200, generated=40, free=10, queries=100, hits=25)
    assert log.maybe_log(same, now=40) is None  # nothing moved and nothing runs: an idle server stays quiet


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("ANYMODEL_LOG_STATS_INTERVAL", "2.5")
    assert StatsLogger().interval == 2.5
    monkeypatch.setenv("ANYMODEL_LOG_STATS_INTERVAL", "often")
    with pytest.raises(ValueError, match="ANYMODEL_LOG_STATS_INTERVAL must be a number of seconds > 0"):
        StatsLogger()


def test_disable_log_stats_turns_it_off():
    on, off = build_app(EngineArgs(seed=0)), build_app(EngineArgs(seed=0, disable_log_stats=True))
    try:
        assert isinstance(on.state.async_engine.stats_logger, StatsLogger)
        assert off.state.async_engine.stats_logger is None
    finally:
        on.state.async_engine.shutdown()
        off.state.async_engine.shutdown()
