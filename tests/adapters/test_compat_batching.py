"""The compat path (adapters/compat.py) batches decode steps: all requests decoding in a step run
in ONE forward of the HF base model on a left-padded cache, and the tokens stay those of plain
Transformers greedy (one prompt at a time), also with chunked prefill mixed in and under preemption."""

import inspect

import pytest
from transformers.cache_utils import DynamicCache

from anymodel import LLM
from anymodel.adapters.compat import _batching_blocker
from tests.reference import greedy_case, llm_greedy

MAX_TOKENS = 10
SETTINGS = {
    "default": {},
    # prefill chunks of the long prompts share steps with the short prompts' decodes
    "chunked": {"max_num_batched_tokens": 16},
    # 12 blocks of 8 tokens cannot hold 8 growing requests at once: preemption must happen
    "preemption": {"num_kv_blocks": 12, "block_size": 8},
    "preemption+chunked": {"num_kv_blocks": 12, "block_size": 8, "max_num_batched_tokens": 10},
}


@pytest.fixture(scope="module", params=["bloom", "falcon"])
def model_and_reference(request, tmp_path_factory):
    return greedy_case(request.param, tmp_path_factory.mktemp(request.param), MAX_TOKENS, n=8, seed=5)  # 1..65 tokens


def _record_steps(model) -> list[dict]:
    """Wrap the adapter's step forward and its HF base model's forward: per engine step, the
    query and context lengths of its requests and the input_ids shape [B, q] of every base call."""
    steps: list[dict] = []
    step_forward, base_forward = model.forward, model.model.forward

    def counted_step(input_ids, positions, meta):
        steps.append({"qlens": meta.query_lens.tolist(), "context": meta.context_lens.tolist(), "calls": []})
        return step_forward(input_ids, positions, meta)

    def counted_base(*args, **kwargs):
        steps[-1]["calls"].append(tuple(kwargs["input_ids"].shape))
        return base_forward(*args, **kwargs)

    model.forward, model.model.forward = counted_step, counted_base
    return steps


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_batched_decode_matches_transformers(model_and_reference, setting):
    path, prompts, reference = model_and_reference
    llm = LLM(str(path), dtype="float32", seed=0, **SETTINGS[setting])
    assert llm.apply_model(lambda m: (type(m).__name__, m.batch_decode)) == [("CompatCausalLM", True)]
    steps = llm.apply_model(_record_steps)[0]
    assert llm_greedy(llm, prompts, MAX_TOKENS) == reference
    batched = 0
    for step in steps:
        decodes = sum(q == 1 and c > 0 for q, c in zip(step["qlens"], step["context"]))
        # every decode of the step in one base forward [decodes, 1]; prefill chunks one each
        assert len(step["calls"]) == len(step["qlens"]) - decodes + (decodes > 0), step
        if decodes > 1:
            assert (decodes, 1) in step["calls"], step
            batched += 1
    assert batched >= MAX_TOKENS - 2  # most steps decode several requests at once
    stats = llm.engine.stats()
    if "preemption" in setting:
        assert stats.num_preemptions_total > 0
    assert llm.apply_model(lambda m: len(m.caches)) == [0]  # every per-request HF cache released


def test_per_request_mode_matches_transformers(model_and_reference):
    """The fallback loop (models that cannot be batched) gives the same tokens, one call per row."""
    path, prompts, reference = model_and_reference
    llm = LLM(str(path), dtype="float32", seed=0, **SETTINGS["preemption+chunked"])
    llm.apply_model(lambda m: setattr(m, "batch_decode", False))
    steps = llm.apply_model(_record_steps)[0]
    assert llm_greedy(llm, prompts, MAX_TOKENS) == reference
    assert all(len(s["calls"]) == len(s["qlens"]) for s in steps)


def test_unbatchable_cache_falls_back_at_runtime(model_and_reference):
    """A cache the batcher does not recognise (remote code may return anything) switches the
    model to the per-request loop instead of being padded wrongly."""
    path, prompts, reference = model_and_reference
    llm = LLM(str(path), dtype="float32", seed=0)

    def mark_caches_unknown(model):
        run_one = model._run_one

        def run_one_marking(rid, *args):
            hidden = run_one(rid, *args)
            model.caches[rid].__class__ = _UnknownCache  # same data, a type the batcher does not know
            return hidden

        model._run_one = run_one_marking

    llm.apply_model(mark_caches_unknown)
    assert llm_greedy(llm, prompts, MAX_TOKENS) == reference
    assert llm.apply_model(lambda m: m.batch_decode) == [False]


class _UnknownCache(DynamicCache):
    pass


class _Config:
    model_type = "custom"

    def get_text_config(self, decoder=False):
        raise TypeError("not a Transformers config")


def test_batching_blocker_reasons():
    def params(fn):
        return inspect.signature(fn).parameters

    def full(input_ids, cache=None, attention_mask=None, position_ids=None): ...
    def no_mask(input_ids, cache=None, position_ids=None): ...
    def no_positions(input_ids, cache=None, attention_mask=None): ...

    assert "attention_mask" in _batching_blocker(params(no_mask), _Config())
    assert "position_ids" in _batching_blocker(params(no_positions), _Config())
    assert "cannot build its cache" in _batching_blocker(params(full), _Config())
    from transformers import MistralConfig

    sliding = MistralConfig(num_hidden_layers=2, sliding_window=8)
    assert "DynamicSlidingWindowLayer" in _batching_blocker(params(full), sliding)
    assert _batching_blocker(params(full), MistralConfig(num_hidden_layers=2, sliding_window=None)) is None


# Mamba (v1) and MiniMax's lightning attention restart from zeros when handed several tokens on top
# of a state; Jamba's Mamba layers too. Chunked prefill must not reach them that way.
@pytest.mark.parametrize("arch", ["mamba", "jamba", "minimax"])
@pytest.mark.parametrize("setting", ["chunked", "preemption+chunked"])
def test_recurrent_chunked_prefill_matches_transformers(arch, setting, tmp_path):
    path, prompts, reference = greedy_case(arch, tmp_path / arch, MAX_TOKENS, n=8, seed=5)
    llm = LLM(str(path), dtype="float32", seed=0, **SETTINGS[setting])
    assert llm.apply_model(lambda m: (type(m).__name__, m.replay_prefill)) == [("CompatCausalLM", True)]
    steps = llm.apply_model(_record_steps)[0]
    assert llm_greedy(llm, prompts, MAX_TOKENS) == reference
    assert any(q > 1 and c > 0 for s in steps for q, c in zip(s["qlens"], s["context"]))  # really chunked
    assert llm.apply_model(lambda m: (len(m.caches), len(m.history))) == [(0, 0)]  # all released
