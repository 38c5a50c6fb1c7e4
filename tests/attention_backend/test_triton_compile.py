"""The Triton kernels compile for real GPUs, on a machine without one.

The interpreter tests check the kernels' arithmetic but not what only the GPU compiler enforces
(tl.dot operand shapes and dtypes, layouts, shared memory). triton_aot.py compiles every kernel
ahead of time to a cubin for Hopper (sm_90), and Ampere (sm_80) where shared memory is tightest,
with ptxas from the Triton wheel, at the launch configs `launch_config` picks for representative
shapes; here each case must have compiled and fit the architecture's shared memory per block.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).with_name("triton_aot.py")
SHARED_LIMIT = {"sm90": 232448, "sm80": 166912}  # bytes per block with the opt-in carve-out
CASES = [
    *(f"attention/{s}/sm90" for s in ("llama-prefill-fp16", "llama-decode-split-bf16", "mha-decode-d64-bf16",
                                      "gemma2-prefill-d256-bf16", "gemma2-prefill-d256-fp32", "phi-prefill-d80-fp16",
                                      "mistral-decode-d128-fp32", "encoder-d96-group7-fp16",
                                      "gptoss-prefill-sinks-bf16", "gptoss-decode-split-sinks-bf16")),
    "attention/gemma2-prefill-d256-bf16/sm80",
    "attention/gemma2-prefill-d256-fp32/sm80",
    "reduce/d128-s8/sm90",
    "reduce/d80-s3/sm90",
    "store/bf16-to-bf16/sm90",
    "store/fp32-to-fp16/sm90",
]


@pytest.fixture(scope="module")
def compiled() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_case_was_tried(compiled):
    assert sorted(compiled) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_kernel_compiles_for_the_gpu(compiled, case):
    result = compiled[case]
    assert result["ok"], result.get("error")
    assert result["shared"] <= SHARED_LIMIT[case.rsplit("/", 1)[1]], result


def test_long_decode_with_few_programs_splits_keys(compiled):
    assert compiled["attention/llama-decode-split-bf16/sm90"]["config"]["num_splits"] > 1
    assert compiled["attention/mha-decode-d64-bf16/sm90"]["config"]["num_splits"] == 1  # short: no split
