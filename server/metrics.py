"""ServerMetrics: Prometheus metrics of one app, in its own CollectorRegistry, with vLLM's families.

Names, types, label names and buckets follow vLLM's (v1) so that a Grafana dashboard or an
autoscaler written for vLLM reads them unchanged: with `--metrics-prefix vllm` (or
ANYMODEL_METRICS_PREFIX=vllm) the names are vLLM's exactly; by default the prefix is `anymodel:`.
Every family carries the `model_name` label.

    engine state, read on scrape from the engine thread's last EngineStats snapshot:
      gauges    num_requests_running, num_requests_waiting, kv_cache_usage_perc
                (and gpu_cache_usage_perc, its older name), num_free_blocks, num_total_blocks
      counters  prompt_tokens, generation_tokens, num_preemptions, prefix_cache_queries,
                prefix_cache_hits (tokens)
    observed by the engine thread as steps run and outputs leave the engine:
      counter   request_success{finished_reason}
      histograms time_to_first_token_seconds, inter_token_latency_seconds (and
                time_per_output_token_seconds, its older name), e2e_request_latency_seconds,
                request_queue_time_seconds, request_inference_time_seconds,
                request_prefill_time_seconds, request_decode_time_seconds,
                request_prompt_tokens, request_generation_tokens, iteration_tokens_total
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from anymodel.outputs import EngineStats

METRICS_PREFIXES = ("anymodel", "vllm")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)


def token_buckets(max_model_len: int) -> list[int]:
    """vLLM's 1-2-5 series up to the context length (request and iteration token counts)."""
    out, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > max_model_len:
                return out
            out.append(m * scale)
        scale *= 10


def default_prefix() -> str:
    prefix = os.environ.get("ANYMODEL_METRICS_PREFIX", "anymodel")
    if prefix not in METRICS_PREFIXES:
        raise ValueError(f"ANYMODEL_METRICS_PREFIX must be one of {list(METRICS_PREFIXES)}, got {prefix!r}")
    return prefix


class _EngineStatsCollector:
    def __init__(self, stats: Callable[[], Optional[EngineStats]], prefix: str, model_name: str):
        self._stats, self._prefix, self._model = stats, prefix, model_name

    def _family(self, kind, name: str, doc: str, value: float):
        family = kind(f"{self._prefix}:{name}", doc, labels=["model_name"])
        family.add_metric([self._model], value)
        return family

    def collect(self):
        s = self._stats()
        if s is None:  # engine thread has not published yet
            return
        for name, doc, value in (
            ("num_requests_running", "Requests in the running batch.", s.num_running),
            ("num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting),
            ("kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).", s.kv_cache_usage),
            ("gpu_cache_usage_perc", "kv_cache_usage_perc's older name (vLLM v0 dashboards).", s.kv_cache_usage),
            ("num_free_blocks", "Free KV cache blocks.", s.num_free_blocks),
            ("num_total_blocks", "Total KV cache blocks.", s.num_total_blocks),
        ):
            yield self._family(GaugeMetricFamily, name, doc, value)
        for name, doc, value in (
            ("prompt_tokens", "Prefill tokens processed.", s.prompt_tokens_total),
            ("generation_tokens", "Generated tokens.", s.generation_tokens_total),
            ("num_preemptions", "Requests preempted (KV blocks reclaimed).", s.num_preemptions_total),
            ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_query_tokens_total),
            ("prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hit_tokens_total),
        ):
            yield self._family(CounterMetricFamily, name, doc, value)


class ServerMetrics:
    def __init__(self, stats: Callable[[], Optional[EngineStats]], model_name: str = "anymodel",
                 prefix: str | None = None, max_model_len: int = 2048):
        prefix = prefix or default_prefix()
        if prefix not in METRICS_PREFIXES:
            raise ValueError(f"metrics prefix must be one of {list(METRICS_PREFIXES)}, got {prefix!r}")
        self.registry = CollectorRegistry()
        self.model_name = model_name
        tokens = token_buckets(max_model_len)

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(f"{prefix}:{name}", doc, ["model_name"], buckets=buckets,
                             registry=self.registry).labels(model_name)

        self.ttft = histogram("time_to_first_token_seconds", "Time from arrival to the first token.", TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between outputs of one request.", ITL_BUCKETS)
        self.tpot = histogram("time_per_output_token_seconds", "inter_token_latency_seconds' older name.", ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Time from arrival to the last token.", REQUEST_BUCKETS)
        self.queue = histogram("request_queue_time_seconds", "Time waiting before the first step.", REQUEST_BUCKETS)
        self.inference = histogram("request_inference_time_seconds", "Time from the first step to the last token.",
                                   REQUEST_BUCKETS)
        self.prefill = histogram("request_prefill_time_seconds", "Time from the first step to the first token.",
                                 REQUEST_BUCKETS)
        self.decode = histogram("request_decode_time_seconds", "Time from the first to the last token.",
                                REQUEST_BUCKETS)
        self.prompt_tokens = histogram("request_prompt_tokens", "Prompt tokens of each finished request.", tokens)
        self.generation_tokens = histogram("request_generation_tokens", "Generated tokens of each finished request.",
                                           tokens)
        self.iteration_tokens = histogram("iteration_tokens_total", "Tokens computed in each engine step.", tokens)
        self._finished = Counter(f"{prefix}:request_success", "Requests that left the engine, by reason.",
                                 ["model_name", "finished_reason"], registry=self.registry)
        self.registry.register(_EngineStatsCollector(stats, prefix, model_name))

    def finished(self, reason: str) -> None:
        self._finished.labels(self.model_name, reason).inc()

    def token_latency(self, first: bool, seconds: float) -> None:
        if first:
            self.ttft.observe(seconds)
        else:
            self.itl.observe(seconds)
            self.tpot.observe(seconds)

    def request_done(self, output, e2e: float) -> None:
        """A finished request: its end-to-end time, token counts and (from `output.metrics`, the
        engine's own timestamps) its queue, prefill, decode and inference times."""
        self.e2e.observe(e2e)
        prompt = getattr(output, "prompt_token_ids", None)
        if prompt is not None:
            self.prompt_tokens.observe(len(prompt))
        outputs = getattr(output, "outputs", None)
        if isinstance(outputs, list):  # a RequestOutput's samples (a pooling output has one PoolingOutput)
            self.generation_tokens.observe(sum(len(o.token_ids or ()) for o in outputs))
        m = getattr(output, "metrics", None)
        if m is None or not m.scheduled_ts:
            return
        self.queue.observe(m.scheduled_ts - m.queued_ts)
        if m.first_token_ts:
            self.prefill.observe(m.first_token_ts - m.scheduled_ts)
            self.decode.observe(m.last_token_ts - m.first_token_ts)
            self.inference.observe(m.last_token_ts - m.scheduled_ts)

    def step(self, num_tokens: int) -> None:
        if num_tokens:
            self.iteration_tokens.observe(num_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
