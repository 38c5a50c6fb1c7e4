"""`anymodel bench serve` against the real server (the demo model): every request completes with
the lengths asked for, the latency figures are consistent, and failures are counted, not fatal."""

from __future__ import annotations

import json
import re

import pytest

from anymodel.bench import run_bench
from anymodel.bench.serve import RequestResult, summarize


def _bench(tmp_path, *args: str) -> dict:
    out = tmp_path / "result.json"
    status = run_bench("serve", [*args, "--result-file", str(out)])
    report = json.loads(out.read_text())
    assert status == (0 if report["completed"] else 1)
    return report


def test_random_dataset_exact_lengths(demo_server, tmp_path, capsys):
    report = _bench(tmp_path, "--base-url", demo_server, "--num-prompts", "6", "--random-input-len", "8",
                    "--random-output-len", "5", "--random-vocab-size", "16", "--ignore-eos", "--max-concurrency", "3",
                    "--probe-health")
    assert (report["completed"], report["failed"]) == (6, 0)
    assert report["total_output_tokens"] == 30 and report["total_input_tokens"] == 48
    assert 0 < report["median_ttft_ms"] <= report["median_e2el_ms"]
    assert report["mean_itl_ms"] > 0 and report["mean_tpot_ms"] > 0
    assert report["output_throughput"] > 0 and report["config"]["request_rate"] == "inf"
    assert report["health_probes"] >= 1 and report["health_failures"] == 0 and report["p99_health_ms"] > 0
    assert "Serving Benchmark Result" in capsys.readouterr().out


def test_poisson_arrivals_chat_and_file(demo_server, tmp_path):
    from anymodel.demo import DEMO_MODEL_DIR

    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "12+34=", "max_tokens": 3}\n7+8=\n')
    report = _bench(tmp_path, "--base-url", demo_server, "--endpoint", "/v1/chat/completions", "--dataset", "file",
                    "--dataset-path", str(data), "--request-rate", "50", "--tokenizer", str(DEMO_MODEL_DIR),
                    "--random-output-len", "4", "--ignore-eos")
    assert (report["completed"], report["failed"]) == (2, 0)
    assert report["total_output_tokens"] == 3 + 4


def test_failures_are_counted(demo_server, tmp_path):
    # A prompt past the demo model's context is a 400 for that request; the run goes on.
    report = _bench(tmp_path, "--base-url", demo_server, "--num-prompts", "2", "--random-input-len", "100000",
                    "--random-output-len", "2", "--random-vocab-size", "16")
    assert (report["completed"], report["failed"]) == (0, 2)
    assert report["errors"] and all(e.startswith("HTTP 400") for e in report["errors"])


def test_random_dataset_needs_a_vocabulary(tmp_path):
    with pytest.raises(SystemExit, match="--tokenizer or --random-vocab-size"):
        run_bench("serve", ["--base-url", "http://127.0.0.1:9", "--num-prompts", "1"])


def test_summary_statistics():
    done = [RequestResult(ok=True, prompt_tokens=4, output_tokens=3, ttft=0.1, latency=0.5, itl=[0.2, 0.2]),
            RequestResult(ok=True, prompt_tokens=4, output_tokens=1, ttft=0.3, latency=0.3),
            RequestResult(ok=False, error="HTTP 500: x")]
    report = summarize(done, duration=2.0)
    assert (report["completed"], report["failed"], report["errors"]) == (2, 1, ["HTTP 500: x"])
    assert report["request_throughput"] == 1.0 and report["total_token_throughput"] == 6.0
    assert abs(report["mean_tpot_ms"] - 200.0) < 1e-9  # (0.5 - 0.1) / (3 - 1); one-token requests have no TPOT
    assert abs(report["median_ttft_ms"] - 200.0) < 1e-9 and abs(report["p99_e2el_ms"] - 500.0) < 1e-9


@pytest.mark.parametrize("args, message", [
    (["--num-prompts", "0"], "--num-prompts must be >= 1"),
    (["--random-range-ratio", "1.5"], "--random-range-ratio must be in [0, 1)"),
    (["--request-rate", "0"], "--request-rate must be > 0"),
    (["--max-concurrency", "0"], "--max-concurrency must be >= 1"),
    (["--dataset", "file"], "--dataset file needs --dataset-path"),
])
def test_bad_arguments_are_named(args, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        run_bench("serve", ["--random-vocab-size", "16", *args])
