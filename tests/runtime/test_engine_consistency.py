"""Strict consistency: greedy tokens equal plain Transformers greedy, also under preemption and
chunked prefill, for a batch of mixed-length prompts."""

import pytest

from anymodel import LLM
from tests.reference import greedy_case, llm_greedy

MAX_TOKENS = 10
SETTINGS = {
    "default": {},
    # 12 blocks of 8 tokens cannot hold 8 growing requests at once: preemption must happen.
    "preemption": {"num_kv_blocks": 12, "block_size": 8},
    "chunked": {"max_num_batched_tokens": 8},
    "preemption+chunked": {"num_kv_blocks": 12, "block_size": 8, "max_num_batched_tokens": 10},
    "no-prefix-cache": {"enable_prefix_caching": False, "block_size": 4},
}


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def model_and_reference(request, tmp_path_factory):
    return greedy_case(request.param, tmp_path_factory.mktemp(request.param), MAX_TOKENS, n=8, seed=1)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_greedy_matches_transformers(model_and_reference, setting):
    path, prompts, reference = model_and_reference
    llm = LLM(str(path), dtype="float32", **SETTINGS[setting])
    assert llm_greedy(llm, prompts, MAX_TOKENS) == reference
    stats = llm.engine.stats()
    if "preemption" in setting:
        assert stats.num_preemptions_total > 0
    assert stats.num_free_blocks == stats.num_total_blocks  # every block returned
    # Run again: prefix-cache hits (where enabled) must not change a token.
    assert llm_greedy(llm, prompts, MAX_TOKENS) == reference
    hits = llm.engine.stats().prefix_cache_hit_tokens_total - stats.prefix_cache_hit_tokens_total
    if not SETTINGS[setting].get("enable_prefix_caching", True):
        assert hits == 0
    elif "preemption" not in setting:  # (a 12-block cache evicts what the first run left)
        assert hits > 0  # the full blocks of every prompt were cached by the first run
