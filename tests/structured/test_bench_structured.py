"""`python -m anymodel.bench structured` at CI size: both systems run, the ratio is printed."""

from __future__ import annotations

import re

from anymodel.bench.structured import main


def test_bench_structured_prints_the_ratio(capsys):
    assert main(["--preset", "tiny", "--num-prompts", "2", "--output-len", "4", "--repeats", "1",
                 "--tokenizer-vocab", "300"]) == 0
    out = capsys.readouterr().out
    rates = dict(re.findall(r"^\s+(unconstrained|json_schema)\s+([\d.]+) output tok/s", out, re.M))
    assert set(rates) == {"unconstrained", "json_schema"} and all(float(v) > 0 for v in rates.values())
    ratio = float(re.search(r"ratio json_schema / unconstrained: ([\d.]+)", out).group(1))
    assert abs(ratio - float(rates["json_schema"]) / float(rates["unconstrained"])) < 0.01
