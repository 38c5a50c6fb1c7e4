"""`python -m anymodel.bench lora` runs on the tiny preset and reports both figures and their ratio
(speed itself is never asserted)."""

import json
import subprocess
import sys

from anymodel.bench.lora import main


def test_lora_bench_reports_the_ratio(tmp_path, capsys):
    out = tmp_path / "lora.json"
    argv = ["--preset", "tiny", "--num-prompts", "4", "--num-adapters", "2", "--rank", "4", "--input-len", "8",
            "--output-len", "3", "--repeats", "1", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report["output_tok_s"]) == {"base", "adapters"} and all(v > 0 for v in report["output_tok_s"].values())
    assert report["ratio"] == report["output_tok_s"]["adapters"] / report["output_tok_s"]["base"]
    assert "adapters / base" in capsys.readouterr().out


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "anymodel.bench", "lora", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--num-adapters" in done.stdout
