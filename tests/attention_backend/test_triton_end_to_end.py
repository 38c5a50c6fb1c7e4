"""A tiny model generating through the Triton kernels (the interpreter on CPU) gives the torch
backend's tokens: the kernels are wired in behind the same registered attention function."""

import pytest

from anymodel import LLM, SamplingParams
from anymodel.worker.cuda_graph import GraphSpec, capture_sizes, eager_capture
from tests.models.zoo import build_tiny_model, mixed_prompts


def _runner(worker):
    """The worker's ModelRunner (collective_rpc hands each worker to the function)."""
    return worker.runner


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
        assert llm.collective_rpc(_runner)[0].backend.__name__.endswith(backend if backend == "triton" else "torch_ref")
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        runs[backend] = [o.outputs[0].token_ids for o in outs]
    assert runs["triton"] == runs["torch"]


def test_decode_graph_path_through_triton(tmp_path, monkeypatch, device):
    """Decode graphs' padding rows through the kernels (eager_capture: the graph path without the
    recording; tests/runtime/test_cuda_graph.py has the rest): slot -1 stores nothing, seq_len-1
    rows attend one junk key, the launch is sized for the whole context, and tokens do not change."""
    monkeypatch.setenv("ANYMODEL_TRITON_ON_CPU", "1")
    path = build_tiny_model("llama", tmp_path / "llama")
    prompts = [{"prompt_token_ids": p[:8]} for p in mixed_prompts(path, n=3, seed=1)]
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in (3, 2, 4)]
    kwargs = dict(dtype="float32", model_impl="native", block_size=4, max_num_seqs=4, attention_backend="triton",
                  device=device.type)
    expected = [o.outputs[0].token_ids for o in LLM(str(path), **kwargs).generate(prompts, params, use_tqdm=False)]
    llm = LLM(str(path), **kwargs)
    runner = llm.collective_rpc(_runner)[0]
    runner.capture_decode_graphs(GraphSpec(capture_sizes(4), llm.engine.max_model_len, eager_capture))
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)] == expected
    assert runner.graphs.num_replays == 3  # steps of 3 (padded to 4), 2 and 1 requests
