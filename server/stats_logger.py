"""StatsLogger: vLLM's periodic engine line, from the engine thread's EngineStats snapshots.

    INFO ... Avg prompt throughput: 512.0 tokens/s, Avg generation throughput: 96.3 tokens/s,
             Running: 4 reqs, Waiting: 0 reqs, KV cache usage: 12.5%, Prefix cache hit rate: 40.0%

Every `interval` seconds (ANYMODEL_LOG_STATS_INTERVAL, default 10, as VLLM_LOG_STATS_INTERVAL)
while the engine has work or moved since the last line; an idle server stays quiet.
`anymodel serve --disable-log-stats` turns it off.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from anymodel.outputs import EngineStats

logger = logging.getLogger("anymodel")


def default_interval() -> float:
    raw = os.environ.get("ANYMODEL_LOG_STATS_INTERVAL", "10")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"ANYMODEL_LOG_STATS_INTERVAL must be a number of seconds > 0, got {raw!r}")
    return value


@dataclass
class StatsLogger:
    interval: float = field(default_factory=default_interval)
    _last: EngineStats | None = None
    _last_time: float = 0.0

    def maybe_log(self, stats: EngineStats, now: float | None = None) -> str | None:
        """The line logged now, or None (too soon since the last one, or nothing happened)."""
        now = time.monotonic() if now is None else now
        if self._last is None:
            self._last, self._last_time = stats, now
            return None
        elapsed = now - self._last_time
        if elapsed < self.interval:
            return None
        before, self._last, self._last_time = self._last, stats, now
        prompt = stats.prompt_tokens_total - before.prompt_tokens_total
        generated = stats.generation_tokens_total - before.generation_tokens_total
        if not (prompt or generated or stats.num_running or stats.num_waiting):
            return None
        queries = stats.prefix_cache_query_tokens_total - before.prefix_cache_query_tokens_total
        hits = stats.prefix_cache_hit_tokens_total - before.prefix_cache_hit_tokens_total
        line = (f"Avg prompt throughput: {prompt / elapsed:.1f} tokens/s, Avg generation throughput: "
                f"{generated / elapsed:.1f} tokens/s, Running: {stats.num_running} reqs, Waiting: "
                f"{stats.num_waiting} reqs, KV cache usage: {100 * stats.kv_cache_usage:.1f}%, Prefix cache hit rate: "
                f"{100 * hits / queries if queries else 0.0:.1f}%")
        logger.info(line)
        return line
