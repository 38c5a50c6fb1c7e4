"""/metrics as a vLLM dashboard reads it: every family vLLM exposes, with its type and the
`model_name` label, and each one moves when requests run (scraped with prometheus_client's parser)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anymodel.outputs import EngineStats
from anymodel.server.metrics import ServerMetrics, token_buckets

GAUGES = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "gpu_cache_usage_perc",
          "num_free_blocks", "num_total_blocks")
COUNTERS = ("prompt_tokens", "generation_tokens", "num_preemptions", "prefix_cache_queries", "prefix_cache_hits",
            "request_success")
HISTOGRAMS = ("time_to_first_token_seconds", "inter_token_latency_seconds", "time_per_output_token_seconds",
              "e2e_request_latency_seconds", "request_queue_time_seconds", "request_inference_time_seconds",
              "request_prefill_time_seconds", "request_decode_time_seconds", "request_prompt_tokens",
              "request_generation_tokens", "iteration_tokens_total")


def _scrape(url: str) -> dict:
    """family name -> (type, {sample name: [(labels, value)]})"""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out = {}
    for family in text_string_to_metric_families(text):
        samples: dict = {}
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
        out[family.name] = (family.type, samples)
    return out


def _total(samples: dict, name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


def test_every_family_moves(demo_server, openai_client):
    before = _scrape(demo_server)
    prompt = "11+22=33+44=77+12+34="  # longer than a KV block (16 tokens): the second request hits the prefix cache
    extra = {"ignore_eos": True}
    openai_client.completions.create(model="anymodel-demo", prompt=prompt, max_tokens=4, temperature=0, extra_body=extra)
    stream = openai_client.completions.create(model="anymodel-demo", prompt=prompt, max_tokens=4, temperature=0,
                                              stream=True, extra_body=extra)
    assert sum(1 for c in stream if c.choices) >= 1
    after = _scrape(demo_server)
    for name in GAUGES:
        kind, samples = after[f"anymodel:{name}"]
        assert kind == "gauge" and all(labels["model_name"] == "anymodel-demo" for labels, _ in samples[f"anymodel:{name}"])
    assert _total(after["anymodel:num_total_blocks"][1], "anymodel:num_total_blocks") > 0
    for name in COUNTERS:
        kind, samples = after[f"anymodel:{name}"]
        key = f"anymodel:{name}_total"
        assert kind == "counter" and all(labels["model_name"] == "anymodel-demo" for labels, _ in samples[key])
        if name not in ("num_preemptions", "prefix_cache_hits"):  # these move only under KV pressure / reuse
            assert _total(samples, key) > _total(before.get(f"anymodel:{name}", ("", {}))[1], key), name
    hits = "anymodel:prefix_cache_hits_total"
    assert _total(after["anymodel:prefix_cache_hits"][1], hits) > _total(before["anymodel:prefix_cache_hits"][1], hits)
    reasons = {labels["finished_reason"] for labels, _ in after["anymodel:request_success"][1]["anymodel:request_success_total"]}
    assert "length" in reasons
    for name in HISTOGRAMS:
        kind, samples = after[f"anymodel:{name}"]
        count = f"anymodel:{name}_count"
        assert kind == "histogram", name
        assert _total(samples, count) > _total(before.get(f"anymodel:{name}", ("", {}))[1], count), name


def _stats() -> EngineStats:
    return EngineStats(num_running=1, num_waiting=2, num_free_blocks=3, num_total_blocks=4, prompt_tokens_total=5)


def test_vllm_prefix_gives_vllm_names():
    metrics = ServerMetrics(_stats, model_name="m", prefix="vllm", max_model_len=100)
    metrics.finished("stop")
    metrics.token_latency(True, 0.5)
    text = metrics.render().decode()
    assert 'vllm:num_requests_waiting{model_name="m"} 2.0' in text
    assert 'vllm:prompt_tokens_total{model_name="m"} 5.0' in text
    assert 'vllm:request_success_total{finished_reason="stop",model_name="m"} 1.0' in text
    assert 'vllm:time_to_first_token_seconds_count{model_name="m"} 1.0' in text
    assert "anymodel:" not in text


def test_prefix_switch_is_checked(monkeypatch):
    monkeypatch.setenv("ANYMODEL_METRICS_PREFIX", "vllm")
    assert "vllm:num_requests_running" in ServerMetrics(_stats).render().decode()
    monkeypatch.setenv("ANYMODEL_METRICS_PREFIX", "sglang")
    with pytest.raises(ValueError, match="ANYMODEL_METRICS_PREFIX must be one of"):
        ServerMetrics(_stats)


def test_token_buckets_follow_vllm():
    assert token_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert token_buckets(4096)[-1] == 2000
