"""Issue 13: no request can break the engine, and nothing is silently ignored.

A fault while sampling or processing ONE request's output fails that request alone (its blocks
freed, a RequestFailedError for its caller); every other request of the step finishes with the
tokens it would have had. Values that would crash a step are refused up front with a ValueError.
Runs on the embedded demo model (a 16-token char-level adder: "12+34=" -> "46").
"""

from __future__ import annotations

import math

import pytest

from anymodel import LLM, SamplingParams
from anymodel.worker import model_runner, sampler
from anymodel.errors import RequestFailedError
from anymodel.engine.output_processor import OutputProcessor

PROMPTS = ["12+34=", "5+7=", "100+23=", "9+9="]
ANSWERS = ["46", "12", "123", "18"]
GREEDY = dict(temperature=0, max_tokens=8)


@pytest.fixture(scope="module")
def demo():
    return LLM()


def _clean(llm: LLM) -> None:
    """Nothing left behind: no request in the scheduler, every KV block back in the pool."""
    engine = llm.engine
    assert not engine.has_unfinished()
    assert not engine.outputs.groups and not engine.pooling.requests
    assert engine.kv.num_free_blocks == engine.kv.pool.num_blocks


def _greedy(llm, prompts, **kw):
    return llm.generate(prompts, SamplingParams(**{**GREEDY, **kw}), use_tqdm=False)


# ---- one request's fault fails that request only ------------------------------------------------
def _fail_rows_with_seed(monkeypatch, seed: int) -> None:
    """Sampling raises whenever a row with this seed is in the batch (batched or alone)."""
    real = sampler.sample

    def faulty(logits, rows, generator=None):
        if any(r.params.seed == seed for r in rows):
            raise RuntimeError("injected sampling fault")
        return real(logits, rows, generator)

    monkeypatch.setattr(model_runner, "sample", faulty)


def test_a_sampling_fault_fails_only_its_request(demo, monkeypatch):
    _fail_rows_with_seed(monkeypatch, 1234)
    params = [SamplingParams(**GREEDY, seed=1234 if i == 2 else None) for i in range(len(PROMPTS))]
    with pytest.raises(RequestFailedError, match=r"prompt 2 of 4 .*injected sampling fault.*1 failed, 3 completed") as e:
        demo.generate(PROMPTS, params, use_tqdm=False)
    outs = e.value.outputs
    assert outs[2] is None
    assert [o.outputs[0].text for i, o in enumerate(outs) if i != 2] == [a for i, a in enumerate(ANSWERS) if i != 2]
    _clean(demo)
    monkeypatch.undo()
    assert [o.outputs[0].text for o in _greedy(demo, PROMPTS)] == ANSWERS  # the engine serves on


def test_seeded_rows_keep_their_stream_when_the_batch_falls_back(demo, monkeypatch):
    """Row-by-row re-sampling restores each seeded generator: the other requests' samples are the
    ones they get without the fault."""
    params = [SamplingParams(temperature=1.0, max_tokens=6, seed=s, repetition_penalty=1.3, min_tokens=2)
              for s in (7, 1234, 8)]
    clean = demo.generate(PROMPTS[:3], params, use_tqdm=False)
    _fail_rows_with_seed(monkeypatch, 1234)
    with pytest.raises(RequestFailedError) as e:
        demo.generate(PROMPTS[:3], params, use_tqdm=False)
    got = e.value.outputs
    assert [got[0].outputs[0].token_ids, got[2].outputs[0].token_ids] == \
        [clean[0].outputs[0].token_ids, clean[2].outputs[0].token_ids]
    _clean(demo)


def test_sample_leaves_the_callers_logits_unchanged():
    """What makes row-by-row re-sampling exact: penalties and blocked tokens work on a copy."""
    import torch

    logits = torch.randn(2, 16)
    before = logits.clone()
    rows = [sampler.SamplingRow(SamplingParams(temperature=0, repetition_penalty=1.5, presence_penalty=1.0),
                                [1, 2, 3], [4, 4], [5], None) for _ in range(2)]
    sampler.sample(logits, rows)
    assert torch.equal(logits, before)


def test_an_output_processing_fault_fails_only_its_request(demo, monkeypatch):
    real = OutputProcessor._append

    def faulty(self, state, token, logprobs):
        if state.request.params.stop == ["FAULT"] and state.request.num_output_tokens == 1:
            raise RuntimeError("injected detokenizer fault")
        return real(self, state, token, logprobs)

    monkeypatch.setattr(OutputProcessor, "_append", faulty)
    params = [SamplingParams(**GREEDY, stop=["FAULT"] if i == 1 else None) for i in range(len(PROMPTS))]
    with pytest.raises(RequestFailedError, match="prompt 1 of 4.*injected detokenizer fault") as e:
        demo.generate(PROMPTS, params, use_tqdm=False)
    assert [o and o.outputs[0].text for o in e.value.outputs] == [ANSWERS[0], None, ANSWERS[2], ANSWERS[3]]
    _clean(demo)


def test_a_failed_sample_of_n_fails_its_whole_request(demo, monkeypatch):
    """One of n samples failing ends the request (its siblings are aborted, blocks freed)."""
    real = OutputProcessor._append

    def faulty(self, state, token, logprobs):
        if state.request.request_id.endswith("#1"):
            raise RuntimeError("injected fault in sample 1")
        return real(self, state, token, logprobs)

    monkeypatch.setattr(OutputProcessor, "_append", faulty)
    with pytest.raises(RequestFailedError, match="sample 1"):
        demo.generate(["12+34="], SamplingParams(n=3, temperature=1.0, max_tokens=8), use_tqdm=False)
    _clean(demo)


def test_a_fault_while_building_the_output_fails_only_its_request(demo, monkeypatch):
    real = OutputProcessor._make_output

    def faulty(self, group):
        if group.prompt == "5+7=":
            raise RuntimeError("injected output fault")
        return real(self, group)

    monkeypatch.setattr(OutputProcessor, "_make_output", faulty)
    with pytest.raises(RequestFailedError, match="prompt 1 of 4.*injected output fault") as e:
        _greedy(demo, PROMPTS)
    assert [o and o.outputs[0].text for o in e.value.outputs] == [ANSWERS[0], None, ANSWERS[2], ANSWERS[3]]
    _clean(demo)


def test_engine_step_reports_the_failure_on_the_output(demo, monkeypatch):
    """The engine's own contract (used by the server): a finished RequestOutput carrying `error`."""
    _fail_rows_with_seed(monkeypatch, 99)
    engine = demo.engine
    engine.add_request("ok", "12+34=", SamplingParams(**GREEDY))
    engine.add_request("bad", "5+7=", SamplingParams(**GREEDY, seed=99))
    finals = {}
    while engine.has_unfinished():
        finals.update({o.request_id: o for o in engine.step() if o.finished})
    assert finals["ok"].error is None and finals["ok"].outputs[0].text == "46"
    assert isinstance(finals["bad"].error, RequestFailedError) and finals["bad"].error.request_id == "bad"
    assert [c.finish_reason for c in finals["bad"].outputs] == ["error"]  # readers of outputs alone see it end
    _clean(demo)


def test_the_error_output_has_no_samples_when_building_them_failed(demo, monkeypatch):
    monkeypatch.setattr(OutputProcessor, "_completion", lambda *a: 1 / 0)
    demo.engine.add_request("x", "12+34=", SamplingParams(**GREEDY))
    out = demo.engine.step()[0]
    assert out.finished and out.outputs == [] and "ZeroDivisionError" in str(out.error)
    _clean(demo)


# ---- logprobs beyond the vocabulary --------------------------------------------------------------
def test_logprobs_20_on_a_16_token_vocabulary(demo):
    out = _greedy(demo, PROMPTS, logprobs=20, prompt_logprobs=20)
    assert [o.outputs[0].text for o in out] == ANSWERS
    step = out[0].outputs[0].logprobs[0]
    assert len(step) == 16 and sorted(lp.rank for lp in step.values()) == list(range(1, 17))
    assert all(len(p) == 16 for p in out[0].prompt_logprobs[1:])


def test_logprobs_minus_one_without_a_cap():
    llm = LLM(max_logprobs=-1)
    out = _greedy(llm, ["12+34="], logprobs=-1, prompt_logprobs=-1)[0]
    step = out.outputs[0].logprobs[0]
    assert len(step) == 16
    assert math.isclose(sum(math.exp(lp.logprob) for lp in step.values()), 1.0, rel_tol=1e-4)
    assert out.outputs[0].text == "46"
    # larger than the vocabulary is allowed without a cap, and returns the whole vocabulary
    assert len(_greedy(llm, ["1+1="], logprobs=1000)[0].outputs[0].logprobs[0]) == 16


# ---- bounds the engine knows ---------------------------------------------------------------------
def test_n_is_bounded_by_max_num_seqs():
    llm = LLM(max_num_seqs=4)
    with pytest.raises(ValueError, match=r"n=10000000 is more than this engine's max_num_seqs \(4\)"):
        llm.generate(["1+1="], SamplingParams(n=10_000_000), use_tqdm=False)
    assert len(llm.generate(["1+1="], SamplingParams(n=4, max_tokens=2), use_tqdm=False)[0].outputs) == 4
    _clean(llm)


def test_max_tokens_far_past_the_context_stops_at_the_context(demo):
    """Offline, vLLM's way: max_tokens is capped by the context (the server answers 400 instead)."""
    out = _greedy(demo, ["12+34="], max_tokens=10**9, ignore_eos=True)[0]
    assert out.outputs[0].finish_reason == "length"
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == demo.engine.max_model_len
    _clean(demo)


@pytest.mark.parametrize("kw, name", [
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stop_token_ids": [10**12]}, "stop_token_ids"),
    ({"stop_token_ids": [16]}, "stop_token_ids"),
    ({"logit_bias": {16: 1.0}}, "logit_bias"),
    ({"logit_bias": {-1: 1.0}}, "logit_bias"),
    ({"allowed_token_ids": [10**12]}, "allowed_token_ids"),
])
def test_token_ids_outside_the_vocabulary_are_refused(demo, kw, name):
    with pytest.raises(ValueError, match=rf"{name} token ids must be in \[0, 16\)"):
        _greedy(demo, ["1+1="], min_tokens=1, **kw)
    _clean(demo)


@pytest.mark.parametrize("kw, name", [
    ({"temperature": math.inf}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"top_p": math.nan}, "top_p"),
    ({"min_p": math.nan}, "min_p"),
    ({"presence_penalty": math.inf}, "presence_penalty"),
    ({"frequency_penalty": math.nan}, "frequency_penalty"),
    ({"repetition_penalty": math.inf}, "repetition_penalty"),
    ({"repetition_penalty": math.nan}, "repetition_penalty"),
    ({"temperature": "hot"}, "temperature"),
    ({"seed": 2**64}, r"seed must be None or an integer in \[0, 2\*\*64 - 1\]"),
    ({"seed": -1}, r"seed must be None or an integer in \[0, 2\*\*64 - 1\]"),
    ({"seed": 1.5}, "seed"),
    ({"stop_token_ids": ["a"]}, "stop_token_ids"),
    ({"n": True}, "n"),
])
def test_non_finite_and_out_of_range_values_are_refused(kw, name):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kw)


def test_the_largest_seed_runs_with_n_samples(demo):
    out = demo.generate(["1+1="], SamplingParams(n=2, seed=2**64 - 1, max_tokens=3), use_tqdm=False)[0]
    assert len(out.outputs) == 2
    _clean(demo)


# ---- nothing silently ignored --------------------------------------------------------------------
def test_unknown_sampling_params_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="use_beam_search"):
        SamplingParams(use_beam_search=True)


@pytest.mark.parametrize("seed", [None, 2**64, -1, 1.5])
def test_engine_seed_out_of_range_is_a_value_error(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64 - 1\]"):
        LLM(seed=seed)


def test_unknown_llm_keyword_is_named():
    with pytest.raises(TypeError, match="no_such_option"):  # vLLM's EngineArgs raises TypeError too
        LLM(no_such_option=1)


CHAT = [{"role": "user", "content": "12+34"}]


def test_chat_takes_vllm_keywords(demo, monkeypatch):
    seen = {}
    tok = demo.get_tokenizer()
    real = type(tok).apply_chat_template

    def spy(self, conversation, **kw):
        seen.update(kw)
        return real(self, conversation, **kw)

    monkeypatch.setattr(type(tok), "apply_chat_template", spy)
    out = demo.chat(CHAT, SamplingParams(**GREEDY), use_tqdm=False, chat_template_kwargs={"enable_thinking": False})
    assert out[0].outputs[0].text == "46"
    assert seen["enable_thinking"] is False and seen["continue_final_message"] is False


def test_chat_refuses_what_it_cannot_honour(demo):
    with pytest.raises(TypeError, match="template_kw"):
        demo.chat(CHAT, use_tqdm=False, template_kw=1)
    with pytest.raises(ValueError, match="add_generation_prompt=False"):
        demo.chat(CHAT, use_tqdm=False, continue_final_message=True)
    for key in ("chat_template", "tokenize", "messages"):
        with pytest.raises(ValueError, match=f"chat_template_kwargs must not set '{key}'"):
            demo.chat(CHAT, use_tqdm=False, chat_template_kwargs={key: "x"})
    _clean(demo)


def test_a_pooling_fault_fails_only_its_request(monkeypatch):
    llm = LLM(task="embed")
    model = llm.apply_model(lambda m: m)[0]
    real = model.pool
    bad = llm.get_tokenizer().encode("5+7=")

    def faulty(inputs):
        if any(x.token_ids == bad for x in inputs):
            raise RuntimeError("injected pooler fault")
        return real(inputs)

    clean = llm.embed(PROMPTS, use_tqdm=False)
    monkeypatch.setattr(model, "pool", faulty)
    with pytest.raises(RequestFailedError, match="prompt 1 of 4.*pooling failed.*injected pooler fault") as e:
        llm.embed(PROMPTS, use_tqdm=False)
    got = e.value.outputs
    assert got[1] is None
    assert [got[i].outputs.data.tolist() for i in (0, 2, 3)] == [clean[i].outputs.embedding for i in (0, 2, 3)]
    _clean(llm)
