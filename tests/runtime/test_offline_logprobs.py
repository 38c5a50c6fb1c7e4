"""logprobs / prompt_logprobs in vLLM's shape: per position a dict token -> Logprob(logprob, rank,
decoded_token), the sampled (or prompt) token first and always present with its rank, the top k
ranked 1..k; logprobs=-1 the whole vocabulary; decoded_token None with detokenize=False."""

import math

import torch

from anymodel import LLM, SamplingParams
from anymodel.outputs import Logprob
from anymodel.worker.sampler import top_logprobs


def test_sampled_token_rank_counts_ties_as_vllm():
    lp = torch.log_softmax(torch.tensor([2.0, 2.0, 1.0, 0.0]), -1)
    assert top_logprobs(lp, 1, 0) == {1: (float(lp[1]), 2)}  # tied with token 0: vLLM counts the tokens >= it
    out = top_logprobs(lp, 3, 2)
    assert list(out)[0] == 3 and set(out) == {0, 1, 3}  # sampled first, then the top 2
    assert [r for _, r in out.values()] == [4, 1, 2]
    assert [r for _, r in top_logprobs(lp, 2, 3).values()] == [3, 1, 2]  # in the top k: its top-k rank


def test_random_sampling_logprobs_match_the_full_distribution(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), dtype="float32", max_logprobs=-1)
    tok = llm.get_tokenizer()
    kw = dict(temperature=1.5, seed=11, max_tokens=8, ignore_eos=True)
    full = llm.generate("hello there", SamplingParams(logprobs=-1, **kw), use_tqdm=False)[0].outputs[0]
    top2 = llm.generate("hello there", SamplingParams(logprobs=2, **kw), use_tqdm=False)[0].outputs[0]
    none = llm.generate("hello there", SamplingParams(logprobs=0, **kw), use_tqdm=False)[0].outputs[0]
    assert full.token_ids == top2.token_ids == none.token_ids  # the same seeded samples
    outside_top2 = 0
    for t, whole, two, only in zip(full.token_ids, full.logprobs, top2.logprobs, none.logprobs):
        assert len(whole) == llm.engine.vocab_size
        assert math.isclose(sum(math.exp(e.logprob) for e in whole.values()), 1.0, rel_tol=1e-4)
        by_rank = sorted(whole, key=lambda i: -whole[i].logprob)
        assert list(two)[0] == t and list(only) == [t]  # sampled first; logprobs=0: it alone
        assert two[t].rank == 1 + sum(whole[i].logprob > whole[t].logprob for i in whole)
        top = [i for i in two if i != t or two[t].rank <= 2]
        assert sorted(top, key=lambda i: two[i].rank) == by_rank[:2] and [two[i].rank for i in by_rank[:2]] == [1, 2]
        assert len(two) == (3 if two[t].rank > 2 else 2)
        outside_top2 += two[t].rank > 2
        for i, e in two.items():
            assert isinstance(e, Logprob) and e.decoded_token == tok.decode([i])
            assert math.isclose(e.logprob, whole[i].logprob, abs_tol=1e-5)
    assert math.isclose(top2.cumulative_logprob, sum(lp[t].logprob for t, lp in zip(top2.token_ids, top2.logprobs)),
                        abs_tol=1e-5)
    assert outside_top2 > 0  # temperature 1.5 on a near-uniform model: some samples fall outside the top 2


def test_prompt_logprobs_shape(tiny_llm):
    out = tiny_llm.generate("one two three", SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False),
                            use_tqdm=False)[0]
    ids = out.prompt_token_ids
    assert len(out.prompt_logprobs) == len(ids) and out.prompt_logprobs[0] is None
    for i in range(1, len(ids)):
        (entry,) = out.prompt_logprobs[i].items()  # prompt_logprobs=0: the prompt token alone
        assert entry[0] == ids[i] and entry[1].rank >= 1 and entry[1].decoded_token is None
