"""KV cache sizing: gpu_memory_utilization on GPU (a profiling step, then what is left), 1 GiB or
kv_cache_memory / num_kv_blocks on CPU."""

import pytest
import torch

from anymodel import LLM, SamplingParams
from anymodel.attention_backend import torch_ref
from anymodel.config import EngineArgs
from anymodel.executor.uniproc import UniProcExecutor
from anymodel.worker.kv_budget import kv_budget
from anymodel.worker.model_runner import ModelRunner


def test_budget_arithmetic():
    gib = 2**30
    # 80 GiB card at 0.9: 1 GiB outside torch, a 20 GiB peak that included a 2 GiB scratch cache
    assert kv_budget(80 * gib, 0.9, 1 * gib, 20 * gib, 2 * gib) == int(0.9 * 80 * gib) - 19 * gib
    assert kv_budget(10 * gib, 0.5, 0, 6 * gib, 0) < 0  # the weights alone exceed the share


@pytest.mark.parametrize("value", [0, 1.5, -0.1, "0.9"])
def test_utilization_is_validated(value):
    with pytest.raises(ValueError, match=r"gpu_memory_utilization must be in \(0, 1\]"):
        EngineArgs(gpu_memory_utilization=value)


def test_profile_step_runs_the_largest_step_and_frees_its_cache(tiny_llm):
    """A runner of its own over the served model (`apply_model`), with a cache of its own allocated."""
    runner = ModelRunner(tiny_llm.apply_model(lambda m: m)[0], torch.device("cpu"), 16, torch_ref)
    layers = runner.discover_layers()
    runner.allocate_kv_cache(layers, 4)
    before = runner.kv_caches
    scratch = runner.profile_step(layers, num_tokens=40, num_logit_rows=8)
    assert scratch == runner.bytes_per_block(layers) * 3  # 40 tokens in 16-token blocks
    assert runner.kv_caches is before
    assert runner.kv_memory_budget(layers, 0.9, 40, 8) is None  # CPU: nothing to measure
    out = tiny_llm.generate("hello", SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 3


def test_too_small_a_budget_is_a_clear_error(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(UniProcExecutor, "kv_memory_budget", lambda self, *a: 100)
    with pytest.raises(ValueError, match=r"gpu_memory_utilization=0.9 leaves 0.00 GiB .* raise gpu_memory_utilization"):
        LLM(str(tiny_model_dir), dtype="float32")


def test_budget_sizes_the_cache(tiny_model_dir, monkeypatch):
    calls = []

    def budget(self, layers, util, tokens, rows):
        calls.append((util, tokens, rows))
        return 5 * self.bytes_per_block(layers) + 1

    monkeypatch.setattr(UniProcExecutor, "kv_memory_budget", budget)
    llm = LLM(str(tiny_model_dir), dtype="float32", gpu_memory_utilization=0.5, max_num_seqs=4,
              max_num_batched_tokens=512)
    assert calls == [(0.5, 512, 4)]
    assert llm.engine.stats().num_total_blocks == 5


@pytest.mark.gpu
def test_gpu_cache_fills_the_share(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), dtype="float32", device="cuda", gpu_memory_utilization=0.3)
    total = torch.cuda.mem_get_info()[1]
    assert torch.cuda.memory_reserved() <= 0.3 * total + 2**28
    assert llm.engine.stats().num_total_blocks > 1000
    assert llm.generate("hello", SamplingParams(max_tokens=2), use_tqdm=False)[0].outputs[0].token_ids
