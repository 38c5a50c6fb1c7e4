"""`anymodel bench throughput|latency` runs on the tiny preset and reports every figure; speed itself
is never asserted (benchmarks print ratios, tests check structure)."""

import json
import math
import subprocess
import sys

import torch

from anymodel.bench.floor import decode_weight_bytes
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
    assert report["floor"] is None  # the bandwidth floor is a batch-1 (latency) figure
    for name, result in report["results"].items():
        assert all(result[f] > 0 for f in FIGURES), name
        assert result["tokens"] == {"matching_prompts": 3, "num_prompts": 3, "first_mismatch": None}, name
    assert {"anymodel-native / hf-generate", "anymodel-native / hf-continuous-batching",
            "anymodel-transformers / anymodel-native"} <= set(report["ratios"])
    printed = capsys.readouterr().out
    assert "anymodel-native / hf-generate" in printed and "TTFT ms" in printed


def test_latency_batch_one(tmp_path, capsys):
    """Batch 1, with the bandwidth floor: the tiny preset's weight matrices (2 layers of q/k/v/o and
    gate/up/down, and the LM head; no embedding table, no norms) over the bandwidth measured."""
    out = tmp_path / "latency.json"
    argv = ["latency", "--preset", "tiny", "--output-len", "3", "--repeats", "2", "--bandwidth-mb", "8", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["num_prompts"] == 1 and list(report["results"]) == ["anymodel-native"]
    result = report["results"]["anymodel-native"]
    assert result["decode_tok_s"] > 0
    layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128  # q, o, k, v, gate, up, down
    floor = report["floor"]
    assert floor["weight_bytes"] == 4 * (2 * layer + 512 * 64)  # float32
    assert floor["bandwidth"] > 0
    assert math.isclose(floor["floor_ms"], 1e3 * floor["weight_bytes"] / floor["bandwidth"])
    assert math.isclose(result["floor_fraction"], floor["floor_ms"] / result["itl_ms"])
    assert "floor/step" in capsys.readouterr().out


def test_decode_weight_bytes_counts_a_tied_head_once():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.proj = torch.nn.Linear(4, 3)  # 12 weights; its 1-D bias is not a matrix
            self.norm = torch.nn.LayerNorm(4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    assert decode_weight_bytes(Tied()) == 4 * (12 + 40)
    untied = Tied()
    untied.head.weight = torch.nn.Parameter(torch.zeros(10, 4))
    assert decode_weight_bytes(untied) == 4 * (12 + 40)
    del untied.head
    assert decode_weight_bytes(untied) == 4 * 12  # the embedding alone is never streamed


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


def test_random_range_ratio_is_checked(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["throughput", "--preset", "tiny", "--random-range-ratio", "1.0"])
    assert "--random-range-ratio must be in [0, 1), got 1.0" in capsys.readouterr().err
