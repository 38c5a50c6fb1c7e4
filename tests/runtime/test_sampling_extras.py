"""logit_bias, allowed_token_ids, truncate_prompt_tokens and prompt logprobs: on hand-made logits
(the sampler) and end to end on the tiny model (the offline LLM)."""

import math

import pytest
import torch

from anymodel import SamplingParams
from anymodel.params import PoolingParams
from anymodel.worker.sampler import SamplingRow, sample

LOGITS = torch.tensor([[1.0, 3.0, 2.0, 0.5], [0.1, 0.2, 4.0, 3.9]])


def row(params: SamplingParams, seed=None) -> SamplingRow:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return SamplingRow(params, [], [], [], gen)


def greedy(**kw) -> SamplingParams:
    return SamplingParams(temperature=0, **kw)


def gen(llm, prompts, **kw):
    return llm.generate(prompts, SamplingParams(**{"temperature": 0, "max_tokens": 6, **kw}), use_tqdm=False)


# ---- sampler ----------------------------------------------------------------------------------------
def test_logit_bias_is_added_per_row_under_greedy():
    rows = [row(greedy(logit_bias={3: 100})), row(greedy()), row(greedy(logit_bias={2: -0.2}))]
    out = sample(LOGITS[[0, 1, 1]].clone(), rows)
    assert out.token_ids == [3, 2, 3]  # row 2: 4.0 - 0.2 < 3.9


def test_logit_bias_applies_to_random_sampling():
    p = SamplingParams(temperature=1.0, logit_bias={0: 100})
    assert {sample(LOGITS.clone(), [row(p, seed=s), row(p, seed=s + 1)]).token_ids[0] for s in range(10)} == {0}


def test_allowed_token_ids_restrict_greedy_and_random_rows():
    rows = [row(greedy(allowed_token_ids=[0, 3])), row(greedy())]
    assert sample(LOGITS.clone(), rows).token_ids == [0, 2]
    p = SamplingParams(temperature=1.0, allowed_token_ids=[1, 3])
    seen = {sample(torch.zeros(1, 50), [row(p, seed=s)]).token_ids[0] for s in range(40)}
    assert seen == {1, 3}


def test_bias_and_allowed_combine_and_logprobs_stay_raw():
    p = greedy(allowed_token_ids=[0, 3], logit_bias={3: 1.0}, logprobs=1)
    out = sample(LOGITS[:1].clone(), [row(p)])
    assert out.token_ids == [3]  # 0.5 + 1.0 > 1.0
    raw = torch.log_softmax(LOGITS[0], -1)
    assert math.isclose(out.logprobs[0][3][0], float(raw[3]), rel_tol=1e-6)  # vLLM's default: raw logprobs


@pytest.mark.parametrize("kw, words", [
    (dict(logit_bias={1: 100.5}), ["logit_bias", "[-100, 100]"]),
    (dict(logit_bias={1: float("nan")}), ["logit_bias", "[-100, 100]"]),
    (dict(logit_bias={"1": 1.0}), ["logit_bias", "integer token ids"]),
    (dict(logit_bias=[1, 2]), ["logit_bias", "dict"]),
    (dict(allowed_token_ids=[]), ["allowed_token_ids", "non-empty"]),
    (dict(allowed_token_ids=[1.5]), ["allowed_token_ids"]),
    (dict(truncate_prompt_tokens=0), ["truncate_prompt_tokens", "-1", ">= 1"]),
    (dict(truncate_prompt_tokens=-2), ["truncate_prompt_tokens"]),
])
def test_bad_values_name_the_argument(kw, words):
    with pytest.raises(ValueError) as e:
        SamplingParams(**kw)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_pooling_params_validate_truncation():
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        PoolingParams(truncate_prompt_tokens=0)
    assert PoolingParams(truncate_prompt_tokens=-1).truncate_prompt_tokens == -1


# ---- end to end: generation ---------------------------------------------------------------------------
def test_logit_bias_makes_greedy_pick_the_token(tiny_llm):
    plain = gen(tiny_llm, ["the cat"], ignore_eos=True)[0].outputs[0].token_ids
    target = next(t for t in range(10, 300) if t not in plain)
    out = gen(tiny_llm, ["the cat"], ignore_eos=True, logit_bias={target: 100})[0].outputs[0].token_ids
    assert out == [target] * 6
    banned = gen(tiny_llm, ["the cat"], ignore_eos=True, logit_bias={plain[0]: -100})[0].outputs[0].token_ids
    assert banned[0] != plain[0]


def test_allowed_token_ids_restrict_generated_tokens(tiny_llm):
    allowed = [40, 41, 42, 77]
    outs = gen(tiny_llm, ["hello world", "a"], temperature=1.0, seed=3, max_tokens=12, ignore_eos=True,
               allowed_token_ids=allowed)
    assert all(set(o.outputs[0].token_ids) <= set(allowed) for o in outs)
    greedy_out = gen(tiny_llm, ["hello world"], allowed_token_ids=[77], ignore_eos=True)[0].outputs[0].token_ids
    assert greedy_out == [77] * 6


@pytest.mark.parametrize("kw, name", [(dict(logit_bias={10**6: 1.0}), "logit_bias"),
                                      (dict(allowed_token_ids=[5, 10**6]), "allowed_token_ids")])
def test_out_of_vocab_token_ids_are_rejected(tiny_llm, kw, name):
    with pytest.raises(ValueError, match=rf"{name} token ids must be in \[0, 384\)"):
        gen(tiny_llm, ["hi"], **kw)
    assert not tiny_llm.engine.has_unfinished()


def test_truncation_equals_running_the_truncated_prompt(tiny_llm):
    ids = tiny_llm.get_tokenizer().encode("the quick brown fox jumps over the lazy dog")
    truncated = gen(tiny_llm, [ids], truncate_prompt_tokens=5)[0]
    direct = gen(tiny_llm, [ids[-5:]])[0]
    assert truncated.prompt_token_ids == ids[-5:]
    assert truncated.outputs[0].token_ids == direct.outputs[0].token_ids
    # a text prompt keeps the BOS its tokenizer adds, as vLLM's tokenizer-side truncation does
    assert ids[0] == tiny_llm.get_tokenizer().bos_token_id
    text = gen(tiny_llm, ["the quick brown fox jumps over the lazy dog"], truncate_prompt_tokens=5)[0]
    with_bos = gen(tiny_llm, [ids[:1] + ids[-4:]])[0]
    assert text.prompt_token_ids == ids[:1] + ids[-4:]
    assert text.outputs[0].token_ids == with_bos.outputs[0].token_ids
    assert text.prompt == tiny_llm.get_tokenizer().decode(ids[-4:])
    short = gen(tiny_llm, [ids], truncate_prompt_tokens=100)[0]  # longer than the prompt: untouched
    assert short.prompt_token_ids == ids


def test_truncation_lets_an_overlong_prompt_run(tiny_llm):
    max_len = tiny_llm.engine.max_model_len
    ids = [40 + i % 50 for i in range(max_len + 20)]
    with pytest.raises(ValueError, match="max_model_len"):
        gen(tiny_llm, [ids], max_tokens=1)
    out = gen(tiny_llm, [ids], max_tokens=1, truncate_prompt_tokens=-1)[0]  # -1: the longest prompt allowed
    assert out.prompt_token_ids == ids[-(max_len - 1):]
    with pytest.raises(ValueError, match=rf"truncate_prompt_tokens must be -1 or in \[1, {max_len - 1}\]"):
        gen(tiny_llm, [ids], truncate_prompt_tokens=max_len)


def test_prompt_logprobs_survive_a_prefix_cache_hit(tiny_llm):
    prompt = "the quick brown fox jumps over the lazy dog and the cat"  # several 16-token blocks
    first = gen(tiny_llm, [prompt], max_tokens=1, prompt_logprobs=1)[0].prompt_logprobs
    again = gen(tiny_llm, [prompt], max_tokens=1, prompt_logprobs=1)[0].prompt_logprobs
    assert first[0] is None and all(e is not None for e in first[1:])
    assert [e and {t: round(lp.logprob, 4) for t, lp in e.items()} for e in again] == \
        [e and {t: round(lp.logprob, 4) for t, lp in e.items()} for e in first]


# ---- end to end: pooling ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_embed_llm(tiny_model_dir):
    from anymodel import LLM

    return LLM(str(tiny_model_dir), task="embed", dtype="float32", num_kv_blocks=64)


def test_embed_truncation_equals_embedding_the_truncated_prompt(tiny_embed_llm):
    ids = tiny_embed_llm.get_tokenizer().encode("the quick brown fox jumps over the lazy dog")
    cut = tiny_embed_llm.embed([ids], use_tqdm=False, truncate_prompt_tokens=4)[0]
    direct = tiny_embed_llm.embed([ids[-4:]], use_tqdm=False)[0]
    assert cut.prompt_token_ids == ids[-4:]
    assert torch.allclose(torch.tensor(cut.outputs.embedding), torch.tensor(direct.outputs.embedding), atol=1e-5)
    via_params = tiny_embed_llm.embed([ids], PoolingParams(truncate_prompt_tokens=4), use_tqdm=False)[0]
    assert via_params.outputs.embedding == cut.outputs.embedding
    limit = tiny_embed_llm.engine.max_prompt_len(PoolingParams())
    long = tiny_embed_llm.embed([[40] * (limit + 3)], use_tqdm=False, truncate_prompt_tokens=-1)[0]
    assert len(long.prompt_token_ids) == limit
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        tiny_embed_llm.embed([ids], use_tqdm=False, truncate_prompt_tokens=0)


def test_logprobs_are_capped_by_max_logprobs(tiny_llm):
    with pytest.raises(ValueError, match=r"logprobs=50 is more than this engine's max_logprobs \(20\)"):
        gen(tiny_llm, ["hi"], logprobs=50)
    with pytest.raises(ValueError, match=r"prompt_logprobs=384 is more than this engine's max_logprobs \(20\)"):
        gen(tiny_llm, ["hi"], prompt_logprobs=-1)  # -1: the whole vocabulary (384 tokens)
    assert not tiny_llm.engine.has_unfinished()


def test_minus_one_returns_the_whole_vocabulary(tiny_model_dir):
    from anymodel import LLM

    llm = LLM(str(tiny_model_dir), dtype="float32", max_logprobs=-1)
    out = gen(llm, ["the quick brown fox"], max_tokens=2, logprobs=-1, prompt_logprobs=-1)[0]
    step = out.outputs[0].logprobs[0]
    assert len(step) == 384  # every token of the vocabulary, each with its rank
    assert sorted(lp.rank for lp in step.values()) == list(range(1, 385))
    assert math.isclose(sum(math.exp(lp.logprob) for lp in step.values()), 1.0, rel_tol=1e-4)
    assert all(len(p) == 384 for p in out.prompt_logprobs[1:])
