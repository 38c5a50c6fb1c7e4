"""Which implementation a model gets, and the errors when it can't get one."""

import pytest

from anymodel import LLM
from tests.models.zoo import build_custom_model, build_tiny_model
from tests.reference import greedy_case, llm_greedy


def test_custom_model_runs_on_the_adapter(tmp_path):
    path = build_custom_model(tmp_path / "custom")
    llm = LLM(str(path), trust_remote_code=True, dtype="float32")
    assert llm.apply_model(lambda m: type(m).__name__) == ["TransformersForCausalLM"]
    # The module attends through our function: the scaling it passes is its own (0.7/sqrt(d)).
    attn = llm.apply_model(lambda m: m.model.config._attn_implementation)[0]
    assert attn == "anymodel_paged"


def test_incompatible_model_without_compat_path_lists_requirements(tmp_path):
    path = build_tiny_model("bloom", tmp_path / "bloom")
    with pytest.raises(ValueError) as err:
        LLM(str(path), model_impl="transformers", enable_compat_path=False)
    message = str(err.value)
    assert "**kwargs" in message and "ALL_ATTENTION_FUNCTIONS" in message and "_supports_attention_backend" in message


def test_compat_path_frees_its_caches_and_matches_hf(tmp_path):
    path, prompts, reference = greedy_case("falcon", tmp_path / "falcon", 8, n=4, seed=3)
    llm = LLM(str(path), dtype="float32", num_kv_blocks=10, block_size=8, max_num_batched_tokens=12)
    assert llm.apply_model(lambda m: type(m).__name__) == ["CompatCausalLM"]
    assert llm_greedy(llm, prompts, 8) == reference
    assert llm.apply_model(lambda m: len(m.caches)) == [0]  # every per-request HF cache released
    assert not llm.engine.kv.enable_prefix_caching  # its K/V never enter our blocks
