"""`anymodel bench throughput|latency` runs on the tiny preset and reports every figure; speed itself
is never asserted (benchmarks print ratios, tests check structure)."""

import json
import subprocess
import sys

from anymodel.bench.generation import FIGURES, main

SYSTEMS = ["hf-generate", "anymodel-native", "anymodel-transformers", "hf-continuous-batching"]


def test_throughput_against_transformers(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["throughput", "--preset", "tiny", "--num-prompts", "3", "--input-len", "8", "--output-len", "4",
            "--repeats", "1", "--compare", "hf", "--model-impl", "both", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert list(report["results"]) == SYSTEMS
    assert report["reference"] == "hf-generate"
    for name, result in report["results"].items():
        assert all(result[f] > 0 for f in FIGURES), name
        assert result["tokens"] == {"matching_prompts": 3, "num_prompts": 3, "first_mismatch": None}, name
    assert {"anymodel-native / hf-generate", "anymodel-native / hf-continuous-batching",
            "anymodel-transformers / anymodel-native"} <= set(report["ratios"])
    printed = capsys.readouterr().out
    assert "anymodel-native / hf-generate" in printed and "TTFT ms" in printed


def test_latency_batch_one(tmp_path):
    out = tmp_path / "latency.json"
    assert main(["latency", "--preset", "tiny", "--output-len", "3", "--repeats", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_prompts"] == 1 and list(report["results"]) == ["anymodel-native"]
    assert report["results"]["anymodel-native"]["decode_tok_s"] > 0


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "anymodel.bench.generation", "latency", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--model-impl" in done.stdout


def test_variable_length_prompts(tmp_path):
    """--random-range-ratio draws prompt lengths from a range; every system still agrees token for token."""
    out = tmp_path / "bench.json"
    argv = ["throughput", "--preset", "tiny", "--num-prompts", "4", "--input-len", "10", "--random-range-ratio", "0.5",
            "--output-len", "3", "--repeats", "1", "--compare", "hf", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["random_range_ratio"] == 0.5
    for name, result in report["results"].items():
        assert result["tokens"]["matching_prompts"] == 4, name


def test_package_entry_point_lists_every_kind():
    done = subprocess.run([sys.executable, "-m", "anymodel.bench"], capture_output=True, text=True)
    assert done.returncode != 0 and "throughput" in done.stderr and "serve" in done.stderr
    done = subprocess.run([sys.executable, "-m", "anymodel.bench", "serve", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--request-rate" in done.stdout
