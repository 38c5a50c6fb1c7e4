"""ServerMetrics: Prometheus metrics of one app, in its own CollectorRegistry.

Engine state (running/waiting, KV blocks, token counters) is read on scrape from the last
EngineStats snapshot the engine thread published, because the engine itself must only be touched
by that thread. Latencies are observed by the engine thread as outputs leave the engine.
Names follow vLLM's (`vllm:` -> `anymodel:`) so existing dashboards need one substitution.
"""

from __future__ import annotations

from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from anymodel.outputs import EngineStats

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
               2.5, 5.0, 10.0, 20.0, 80.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0)


class _EngineStatsCollector:
    def __init__(self, stats: Callable[[], Optional[EngineStats]]):
        self._stats = stats

    def collect(self):
        s = self._stats()
        if s is None:  # engine thread has not published yet
            return
        gauges = [
            ("num_requests_running", "Requests in the running batch.", s.num_running),
            ("num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting),
            ("kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).", s.kv_cache_usage),
            ("num_free_blocks", "Free KV cache blocks.", s.num_free_blocks),
            ("num_total_blocks", "Total KV cache blocks.", s.num_total_blocks),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"anymodel:{name}", doc, value=value)
        counters = [
            ("prompt_tokens", "Prefill tokens processed.", s.prompt_tokens_total),
            ("generation_tokens", "Generated tokens.", s.generation_tokens_total),
            ("num_preemptions", "Requests preempted (KV blocks reclaimed).", s.num_preemptions_total),
            ("prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache.", s.prefix_cache_hit_tokens_total),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(f"anymodel:{name}", doc, value=value)


class ServerMetrics:
    def __init__(self, stats: Callable[[], Optional[EngineStats]]):
        self.registry = CollectorRegistry()
        self.ttft = Histogram("anymodel:time_to_first_token_seconds", "Time from arrival to the first token.",
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram("anymodel:inter_token_latency_seconds", "Time between outputs of one request.",
                             buckets=ITL_BUCKETS, registry=self.registry)
        self.e2e = Histogram("anymodel:e2e_request_latency_seconds", "Time from arrival to the last token.",
                             buckets=E2E_BUCKETS, registry=self.registry)
        self.finished = Counter("anymodel:request_success", "Requests that left the engine, by reason.",
                                ["finished_reason"], registry=self.registry)
        self.registry.register(_EngineStatsCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)
