"""The Ray executor: a clear error without Ray; a local Ray cluster run (slow, optional)."""

import os
import sys

import pytest

from anymodel import LLM
from tests.models.zoo import build_tiny_model, mixed_prompts
from tests.reference import llm_greedy


def test_missing_ray_is_a_clear_error(monkeypatch):
    from anymodel.executor import ray_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"needs Ray: pip install 'anymodel\[ray\]'.*'mp'"):
        ray_executor._import_ray()


def _slow_requested(config) -> bool:
    expr = config.getoption("markexpr") or ""
    return os.environ.get("ANYMODEL_RUN_SLOW") == "1" or ("slow" in expr and "not slow" not in expr)


@pytest.mark.slow
def test_ray_tensor_parallel_equals_single_process(tmp_path, request):
    """Starts a local Ray instance (~1 min here): opt in with `-m slow` or ANYMODEL_RUN_SLOW=1."""
    if not _slow_requested(request.config):
        pytest.skip("slow: run with -m slow or ANYMODEL_RUN_SLOW=1")
    pytest.importorskip("ray")
    path = build_tiny_model("llama", tmp_path / "llama")
    engine = dict(model_impl="transformers", dtype="float32", num_kv_blocks=96)
    prompts = mixed_prompts(n=6, seed=1)
    expected = llm_greedy(LLM(str(path), **engine), prompts, 8)
    llm = LLM(str(path), tensor_parallel_size=2, distributed_executor_backend="ray", **engine)
    try:
        assert llm_greedy(llm, prompts, 8) == expected
        assert llm.apply_model(lambda m: tuple(m.model.layers[0].self_attn.q_proj.weight.shape)) == [(32, 64)] * 2
    finally:
        llm.engine.shutdown()
    import ray

    assert not ray.is_initialized()  # the executor started Ray, so it stopped it
