"""Prompt embeddings as input (enable_prompt_embeds, vLLM's EmbedsPrompt): generating from
`model.get_input_embeddings()(ids)` gives exactly the tokens of generating from `ids`, batched with
ordinary requests, with chunked prefill and under preemption, on the native model and the
Transformers backend; other embeddings give other tokens, and never meet the first ones' cached blocks."""

import pytest
import torch

from anymodel import LLM, SamplingParams
from anymodel.beam_search import BeamSearchParams
from tests.models.zoo import build_tiny_model, mixed_prompts
from tests.reference import llm_greedy

MAX_TOKENS = 8
SETTINGS = {
    "chunked": {"max_num_batched_tokens": 8},
    "preemption+chunked": {"num_kv_blocks": 12, "block_size": 8, "max_num_batched_tokens": 10},
}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A tiny Llama, 6 mixed-length prompts, and HF's lookup of each ([T, H], float32)."""
    path = build_tiny_model("llama", tmp_path_factory.mktemp("llama"))
    prompts = mixed_prompts(path, n=6, seed=3)
    return path, prompts, [hf_lookup(path, ids) for ids in prompts]


def hf_lookup(path, ids: list[int]) -> torch.Tensor:
    """`model.get_input_embeddings()(ids)` of plain Transformers: [T, H]."""
    from transformers import AutoModelForCausalLM

    embed = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).get_input_embeddings()
    with torch.no_grad():
        return embed(torch.tensor(ids))


def _greedy(llm, prompts, **params) -> list[list[int]]:
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, **params)
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, use_tqdm=False)]


@pytest.mark.parametrize("impl", ["auto", "transformers"])  # llama: native, then the Transformers backend
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_embeds_give_the_tokens_of_their_ids(case, impl, setting):
    path, prompts, embeds = case
    llm = LLM(str(path), dtype="float32", model_impl=impl, enable_prompt_embeds=True, **SETTINGS[setting])
    reference = llm_greedy(llm, prompts, MAX_TOKENS)
    # every other prompt as embeddings, batched with the ordinary ones
    mixed = [{"prompt_embeds": e} if i % 2 else ids for i, (ids, e) in enumerate(zip(prompts, embeds))]
    before = llm.engine.stats().num_preemptions_total
    assert _greedy(llm, mixed) == reference
    assert _greedy(llm, [{"prompt_embeds": e} for e in embeds]) == reference
    texts = [o.outputs[0].text for o in llm.generate([{"prompt_embeds": e} for e in embeds[:2]], use_tqdm=False,
                                                     sampling_params=SamplingParams(temperature=0, max_tokens=4))]
    assert texts == [o.outputs[0].text for o in llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4),
                                                             use_tqdm=False)]
    if "preemption" in setting:
        assert llm.engine.stats().num_preemptions_total > before  # recompute replayed the embeddings
    stats = llm.engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks


def test_other_embeddings_other_tokens_and_no_shared_blocks(case):
    path, prompts, embeds = case
    llm = LLM(str(path), dtype="float32", enable_prompt_embeds=True, block_size=4)
    ids, e = prompts[-1], embeds[-1]  # the longest prompt: several full blocks
    first = _greedy(llm, [{"prompt_embeds": e}])
    hits = llm.engine.stats().prefix_cache_hit_tokens_total
    assert _greedy(llm, [{"prompt_embeds": e.clone()}]) == first  # the same embeddings: cached blocks reused
    assert llm.engine.stats().prefix_cache_hit_tokens_total > hits
    hits = llm.engine.stats().prefix_cache_hit_tokens_total
    noisy = e + torch.randn(e.shape, generator=torch.Generator().manual_seed(0)) * e.std()
    assert _greedy(llm, [{"prompt_embeds": noisy}]) != first  # the embeddings are what the model reads
    # placeholder ids alike, embeddings not: nothing of the first prompt's blocks is shared
    assert llm.engine.stats().prefix_cache_hit_tokens_total == hits
    other = [ids[0] + 1] + ids[1:]  # another first token, same rest: its blocks must not be the first's
    assert _greedy(llm, [{"prompt_embeds": hf_lookup(path, other)}]) == llm_greedy(llm, [other], MAX_TOKENS)


def test_refusals_name_the_field(case, tiny_llm):
    path, prompts, embeds = case
    e = embeds[0]
    with pytest.raises(ValueError, match="enable_prompt_embeds"):
        tiny_llm.generate({"prompt_embeds": torch.zeros(3, e.shape[1])}, use_tqdm=False)
    llm = LLM(str(path), dtype="float32", enable_prompt_embeds=True)
    bad = {
        "shape": torch.zeros(3, e.shape[1] + 1),
        r"shape \[num_tokens": torch.zeros(e.shape[1]),
        "floating-point": torch.zeros(3, e.shape[1], dtype=torch.long),
        "non-finite": torch.full((3, e.shape[1]), float("nan")),
        "torch.Tensor": [[0.0] * e.shape[1]],
    }
    for match, value in bad.items():
        with pytest.raises(ValueError, match=match):
            llm.generate({"prompt_embeds": value}, use_tqdm=False)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        llm.generate({"prompt_embeds": e}, SamplingParams(prompt_logprobs=1), use_tqdm=False)
    with pytest.raises(ValueError, match="no other field"):
        llm.generate({"prompt_embeds": e, "prompt_token_ids": [5]}, use_tqdm=False)
    with pytest.raises(ValueError, match="beam_search does not take prompt_embeds"):
        llm.beam_search([{"prompt_embeds": e}], BeamSearchParams(beam_width=2, max_tokens=2))
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        llm.generate({"prompt_embeds": e}, SamplingParams(truncate_prompt_tokens=1), use_tqdm=False)
    # a bad one alongside good ones fails before any runs; the engine goes on serving
    assert _greedy(llm, [{"prompt_embeds": e}]) == llm_greedy(llm, [prompts[0]], MAX_TOKENS)


def test_engine_refusals(case, tmp_path):
    with pytest.raises(ValueError, match="enable_prompt_embeds.*tensor or pipeline"):
        LLM(None, enable_prompt_embeds=True, tensor_parallel_size=2)
    with pytest.raises(ValueError, match="enable_prompt_embeds.*generating model"):
        LLM(str(case[0]), task="embed", enable_prompt_embeds=True)
    with pytest.raises(ValueError, match="enable_prompt_embeds.*compat path"):
        LLM(str(build_tiny_model("bloom", tmp_path)), enable_prompt_embeds=True)


def test_gemma3_scaled_lookup(tmp_path):
    """Transformers' Gemma3 lookup includes the sqrt(H) scale: its backend takes it as is; the native
    model (scale after the lookup) refuses rather than scale twice."""
    path = build_tiny_model("gemma3_text", tmp_path)
    ids = mixed_prompts(path, n=3, seed=1)[-1]
    with pytest.raises(ValueError, match="model_impl='transformers'"):
        LLM(str(path), dtype="float32", enable_prompt_embeds=True)
    llm = LLM(str(path), dtype="float32", model_impl="transformers", enable_prompt_embeds=True)
    assert _greedy(llm, [{"prompt_embeds": hf_lookup(path, ids)}]) == llm_greedy(llm, [ids], MAX_TOKENS)


class _Lookups(torch.nn.Module):
    """A model that runs its embedding module `times` times per forward."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.embed, self.times = torch.nn.Embedding(10, 4), times

    def get_input_embeddings(self):
        return self.embed

    def forward(self, ids):
        return [self.embed(ids) for _ in range(self.times)]


def test_overwrite_needs_exactly_one_lookup():
    from anymodel.prompt_embeds import StepEmbeds, replaced_embeddings

    step = StepEmbeds(torch.tensor([1, 2]), torch.ones(2, 4))
    model = _Lookups(1)
    with replaced_embeddings(model, step):
        (h,) = model(torch.tensor([[0, 0, 0]]))
    assert torch.equal(h[0, 1:], torch.ones(2, 4)) and torch.equal(h[0, 0], model.embed.weight[0])
    for times in (0, 2):
        model = _Lookups(times)
        with pytest.raises(RuntimeError, match=f"ran {times} times"), replaced_embeddings(model, step):
            model(torch.tensor([[0, 0, 0]]))
