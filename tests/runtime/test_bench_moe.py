"""`anymodel bench moe` runs on a tiny MoE and reports every experts path with its ratios; speed
itself is never asserted (benchmarks print ratios, tests check structure and tokens)."""

import json

from anymodel.bench.moe import DENSE, PATHS, WORKLOADS, main


def test_moe_paths_compared_in_one_process(tmp_path, capsys):
    out = tmp_path / "moe.json"
    argv = ["--experts", "4", "--hidden", "64", "--moe-intermediate", "32", "--layers", "1", "--vocab", "256",
            "--output-len", "3", "--repeats", "1", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert list(report["results"]) == [f"{w} {p}" for w in WORKLOADS for p in (*PATHS, DENSE)]
    for name, result in report["results"].items():
        assert result["output_tok_s"] > 0 and result["decode_tok_s"] > 0, name
        assert result["tokens"]["first_mismatch"] is None, name  # every path: the same greedy tokens
    assert report["experts_modules"] == {"Qwen3MoeExperts: anymodel experts function": 1}
    assert set(report["ratios"]) == {f"{w}: anymodel / {p}" for w in WORKLOADS for p in (*PATHS[1:], DENSE)}
    assert "b16: anymodel / eager" in capsys.readouterr().out


def test_bad_arguments_are_named(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["--top-k", "5", "--experts", "4"])
    assert "--top-k (5) must be <= --experts (4)" in capsys.readouterr().err
