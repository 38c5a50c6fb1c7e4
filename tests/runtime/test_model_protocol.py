"""Every model kind the worker builds satisfies runtime/model_protocol.py and declares its traits:
native, Transformers backend, compat path, pooling (paged and compat). Tiny zoo models on CPU."""

import pytest

from anymodel import LLM
from anymodel.model_protocol import ModelTraits, PoolingModel, RunnableModel, StatefulModel, traits_of
from tests.models.zoo import cached_model

KV = dict(num_kv_blocks=64, dtype="float32")
PAGED = ModelTraits(paged_kv_cache=True, prefix_caching=True, per_request_state=False)
POOLING = ModelTraits(paged_kv_cache=True, prefix_caching=False, per_request_state=False)
POOLING_COMPAT = ModelTraits(paged_kv_cache=False, prefix_caching=False, per_request_state=False)
COMPAT = ModelTraits(paged_kv_cache=False, prefix_caching=False, per_request_state=True)

# (zoo arch, checkpoint kind, LLM kwargs) -> (model class, its traits, the protocols it satisfies)
CASES = {
    "native": (("llama", "causal_lm", {"model_impl": "native"}), ("LlamaForCausalLM", PAGED, {RunnableModel})),
    "transformers": (("llama", "causal_lm", {"model_impl": "transformers"}),
                     ("TransformersForCausalLM", PAGED, {RunnableModel})),
    "compat": (("bloom", "causal_lm", {}), ("CompatCausalLM", COMPAT, {RunnableModel, StatefulModel})),
    "pooling": (("llama", "embed", {}), ("TransformersForEmbedding", POOLING, {PoolingModel})),
    "pooling-compat": (("bloom", "embed", {}), ("TransformersForEmbedding", POOLING_COMPAT, {PoolingModel})),
}
PROTOCOLS = (RunnableModel, PoolingModel, StatefulModel)


def _describe(model) -> tuple:
    return type(model).__name__, model.traits, {p for p in PROTOCOLS if isinstance(model, p)}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_model_declares_its_traits_and_protocols(kind):
    (arch, checkpoint, kwargs), expected = CASES[kind]
    llm = LLM(str(cached_model(arch, for_task=checkpoint)), **KV, **kwargs)
    assert llm.apply_model(_describe) == [expected]
    assert llm.engine.traits == expected[1]  # what the engine sizes its cache and prefix sharing by
    # the old attribute probes are gone: a model says what it is through `traits` alone
    old = ("uses_paged_kv_cache", "supports_prefix_caching")
    assert llm.apply_model(lambda m: [a for a in old if hasattr(m, a)]) == [[]]


def test_prefix_caching_needs_the_paged_cache():
    with pytest.raises(ValueError, match="prefix_caching needs paged_kv_cache"):
        ModelTraits(paged_kv_cache=False)
    assert ModelTraits(paged_kv_cache=False, prefix_caching=False).per_request_state is False


def test_traits_of_tolerates_a_model_without_traits():
    class Bare:
        traits = "not traits"

    assert traits_of(object()) == ModelTraits() == traits_of(Bare())
