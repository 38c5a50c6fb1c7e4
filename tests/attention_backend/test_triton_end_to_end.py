"""A tiny model generating through the Triton kernels (the interpreter on CPU) gives the torch
backend's tokens: the kernels are wired in behind the same registered attention function."""

import pytest

from anymodel import LLM, SamplingParams
from tests.models.zoo import build_tiny_model, mixed_prompts


@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt_oss"])  # window; gpt_oss: sinks + window
def test_triton_backend_matches_torch_backend(arch, tmp_path, monkeypatch, device):
    monkeypatch.setenv("ANYMODEL_TRITON_ON_CPU", "1")
    path = build_tiny_model(arch, tmp_path / arch)
    prompts = [p[:12] for p in mixed_prompts(path, n=3, seed=2)]  # interpreter: keep it tiny
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    runs = {}
    for backend in ("torch", "triton"):
        llm = LLM(str(path), dtype="float32", attention_backend=backend, block_size=4, device=device.type,
                  model_impl="transformers")
        assert llm.engine.executor.worker.runner.backend.__name__.endswith(backend if backend == "triton" else "torch_ref")
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        runs[backend] = [o.outputs[0].token_ids for o in outs]
    assert runs["triton"] == runs["torch"]
