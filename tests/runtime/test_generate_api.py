"""The offline API end to end on a tiny model: sampling knobs, stops, n, logprobs, ordering."""

import math

import pytest
import torch

from anymodel import SamplingParams


def gen(llm, prompts, **kw):
    return llm.generate(prompts, SamplingParams(**kw), use_tqdm=False)


def test_results_come_back_in_input_order(tiny_llm):
    prompts = ["hello world", "a", "the quick brown fox jumps", "b c"]
    outs = gen(tiny_llm, prompts, temperature=0, max_tokens=4)
    assert [o.prompt for o in outs] == prompts
    single = [gen(tiny_llm, [p], temperature=0, max_tokens=4)[0].outputs[0].token_ids for p in prompts]
    assert [o.outputs[0].token_ids for o in outs] == single  # batching does not change tokens


def test_seeded_sampling_reproduces(tiny_llm):
    a = gen(tiny_llm, ["hello", "world"], temperature=1.0, seed=123, max_tokens=8)
    b = gen(tiny_llm, ["hello", "world"], temperature=1.0, seed=123, max_tokens=8)
    c = gen(tiny_llm, ["hello", "world"], temperature=1.0, seed=124, max_tokens=8)
    ids = lambda outs: [o.outputs[0].token_ids for o in outs]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_temperature_zero_equals_top_k_one(tiny_llm):
    greedy = gen(tiny_llm, ["the cat"], temperature=0, max_tokens=8)[0].outputs[0].token_ids
    top1 = gen(tiny_llm, ["the cat"], temperature=0.8, top_k=1, seed=5, max_tokens=8)[0].outputs[0].token_ids
    assert greedy == top1


def test_n_samples_differ_and_reproduce(tiny_llm):
    out = gen(tiny_llm, ["hello"], n=3, temperature=1.0, seed=7, max_tokens=8)[0]
    again = gen(tiny_llm, ["hello"], n=3, temperature=1.0, seed=7, max_tokens=8)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    assert [c.token_ids for c in out.outputs] == [c.token_ids for c in again.outputs]


def test_max_tokens_and_length_finish(tiny_llm):
    out = gen(tiny_llm, ["hello"], temperature=0, max_tokens=5, ignore_eos=True)[0].outputs[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


def test_stop_string_cuts_text(tiny_llm):
    full = gen(tiny_llm, ["hello"], temperature=0, max_tokens=12, ignore_eos=True)[0].outputs[0]
    assert len(full.text) >= 4
    stop = full.text[2:4]
    cut = gen(tiny_llm, ["hello"], temperature=0, max_tokens=12, ignore_eos=True, stop=[stop])[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == full.text[: full.text.index(stop)]
    kept = gen(tiny_llm, ["hello"], temperature=0, max_tokens=12, ignore_eos=True, stop=[stop],
               include_stop_str_in_output=True)[0].outputs[0]
    assert kept.text == full.text[: full.text.index(stop) + len(stop)]


def test_stop_token_ids_and_min_tokens(tiny_llm):
    full = gen(tiny_llm, ["hello"], temperature=0, max_tokens=8, ignore_eos=True)[0].outputs[0]
    target = full.token_ids[3]
    first = full.token_ids.index(target)
    out = gen(tiny_llm, ["hello"], temperature=0, max_tokens=8, ignore_eos=True, stop_token_ids=[target])[0].outputs[0]
    assert out.token_ids == full.token_ids[: first + 1] and out.stop_reason == target
    late = gen(tiny_llm, ["hello"], temperature=0, max_tokens=8, ignore_eos=True, stop_token_ids=[target],
               min_tokens=8)[0].outputs[0]
    assert len(late.token_ids) == 8 and target not in late.token_ids  # blocked until min_tokens


def test_logprobs_match_transformers(tiny_llm, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    out = gen(tiny_llm, ["hello world"], temperature=0, max_tokens=3, logprobs=2, prompt_logprobs=1)[0]
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = out.prompt_token_ids + out.outputs[0].token_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
    n = len(out.prompt_token_ids)
    for step, (tok, entry) in enumerate(zip(out.outputs[0].token_ids, out.outputs[0].logprobs)):
        assert math.isclose(entry[tok].logprob, float(ref[n - 1 + step, tok]), abs_tol=1e-4)
        assert entry[tok].rank == 1 and len(entry) == 2  # greedy: the chosen token is the top one
    assert out.prompt_logprobs[0] is None
    for i in range(1, n):
        tok = out.prompt_token_ids[i]
        assert math.isclose(out.prompt_logprobs[i][tok].logprob, float(ref[i - 1, tok]), abs_tol=1e-4)
    assert math.isclose(out.outputs[0].cumulative_logprob,
                        sum(e[t].logprob for t, e in zip(out.outputs[0].token_ids, out.outputs[0].logprobs)), abs_tol=1e-5)


def test_chat_uses_template(tiny_llm):
    out = tiny_llm.chat([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    tok = tiny_llm.get_tokenizer()
    expected = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert out[0].prompt == expected
