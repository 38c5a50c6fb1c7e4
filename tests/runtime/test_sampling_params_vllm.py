"""Issue 18, "Sampling": SamplingParams fields as vLLM has them.

logits_processors (per-request callables, 2 or 3 arguments, run after the built-in processors; one
that raises fails its request alone; they travel cloudpickled to rank workers), bad_words (compared
with Transformers' NoBadWordsLogitsProcessor), detokenize=False, spaces_between_special_tokens and
best_of (> n: the n best of best_of samples by cumulative logprob, vLLM v0). On hand-made logits
(the sampler), the embedded demo model (a 16-token char-level adder: "12+34=" -> "46") and the tiny
zoo Llama (a word-level tokenizer).
"""

from __future__ import annotations

import math

import pytest
import torch

from anymodel import LLM, SamplingParams
from anymodel.engine.detokenizer import Detokenizer
from anymodel.engine.request_checks import resolve_bad_words
from anymodel.errors import RequestFailedError
from anymodel.worker.sampler import SamplingRow, _apply_bad_words, _apply_penalties, sample

GREEDY = dict(temperature=0, max_tokens=6)


@pytest.fixture(scope="module")
def demo():
    return LLM()


def row(params: SamplingParams, prompt=(), output=(), blocked=(), seed=None) -> SamplingRow:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return SamplingRow(params, list(prompt), list(output), list(blocked), gen)


def text_of(llm, prompt, **kw):
    out = llm.generate([prompt], SamplingParams(**{**GREEDY, **kw}), use_tqdm=False)[0].outputs[0]
    return out


# ---- logits_processors: the sampler ------------------------------------------------------------------
def test_processors_of_two_and_three_arguments_get_their_rows_token_ids():
    seen = []

    def two(output_ids, logits):
        seen.append(("two", output_ids))
        logits[0] = 100.0
        return logits

    def three(prompt_ids, output_ids, logits):
        seen.append(("three", prompt_ids, output_ids))
        out = torch.full_like(logits, -1.0)
        out[2] = 5.0
        return out  # a new tensor, not the row edited in place

    logits = torch.zeros(3, 4)
    rows = [row(SamplingParams(temperature=0, logits_processors=[two]), prompt=[1], output=[2, 3]),
            row(SamplingParams(temperature=0), prompt=[1]),
            row(SamplingParams(temperature=0, logits_processors=[three]), prompt=[7, 8], output=[9])]
    assert sample(logits, rows).token_ids == [0, 0, 2]
    assert seen == [("two", (2, 3)), ("three", (7, 8), (9,))]  # tuples, as vLLM passes them
    assert torch.equal(logits, torch.zeros(3, 4))  # the caller's logits are left as they were


def test_processors_run_after_penalties_min_tokens_and_bad_words_in_list_order():
    got = {}

    def look(output_ids, logits):
        got["first"] = logits.clone()
        return logits + torch.tensor([0.0, 0.0, 0.0, 10.0])

    def then(output_ids, logits):
        got["second"] = logits.clone()
        return logits

    p = SamplingParams(temperature=0, repetition_penalty=2.0, logits_processors=[look, then],
                       bad_words_token_ids=[[1]], logit_bias={0: 1.0})
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    assert sample(logits, [row(p, prompt=[2], blocked=[0])]).token_ids == [3]
    # token 0: bias then blocked (min_tokens); 1: bad word; 2: penalised (2.0 / 2); 3: untouched
    assert got["first"].tolist() == [-math.inf, -math.inf, 1.0, 0.5]
    assert got["second"].tolist() == [-math.inf, -math.inf, 1.0, 10.5]


def test_processor_arity_is_checked_when_the_params_are_built():
    with pytest.raises(ValueError, match="logits_processors"):
        SamplingParams(logits_processors=[lambda logits: logits])
    with pytest.raises(ValueError, match="logits_processors"):
        SamplingParams(logits_processors=["not callable"])
    p = SamplingParams(logits_processors=[lambda ids, logits, scale=1.0: logits])  # defaults do not count
    assert len(p.logits_processors) == 1


def test_a_processor_returning_the_wrong_shape_is_a_type_error_naming_it():
    def short(output_ids, logits):
        return logits[:2]

    with pytest.raises(TypeError, match="short.*shape"):
        sample(torch.zeros(1, 4), [row(SamplingParams(temperature=0, logits_processors=[short]))])


# ---- logits_processors: end to end ---------------------------------------------------------------------
def test_a_processor_steers_generation(demo):
    nine = demo.get_tokenizer().convert_tokens_to_ids("9")

    def only_nines(output_ids, logits):
        out = torch.full_like(logits, -math.inf)
        out[nine] = 0.0
        return out

    assert text_of(demo, "12+34=", logits_processors=[only_nines], max_tokens=3).text == "999"
    assert text_of(demo, "12+34=").text == "46"


def test_a_raising_processor_fails_only_its_request(demo):
    calls = []

    def boom(prompt_ids, output_ids, logits):
        calls.append(1)
        raise RuntimeError("processor exploded")

    params = [SamplingParams(**GREEDY), SamplingParams(**GREEDY, logits_processors=[boom]), SamplingParams(**GREEDY)]
    with pytest.raises(RequestFailedError, match=r"prompt 1 of 3 .*processor exploded.*1 failed, 2 completed") as e:
        demo.generate(["12+34=", "5+7=", "9+9="], params, use_tqdm=False)
    outs = e.value.outputs
    assert outs[1] is None and [outs[0].outputs[0].text, outs[2].outputs[0].text] == ["46", "18"]
    assert not demo.engine.has_unfinished() and demo.engine.kv.num_free_blocks == demo.engine.kv.pool.num_blocks
    assert calls  # it did run


def test_processors_travel_cloudpickled_to_rank_workers():
    """Multiprocess executors send each step (its requests' SamplingParams included) with
    distributed_executor.dumps: cloudpickle carries lambdas and closures by value."""
    pytest.importorskip("cloudpickle")
    from anymodel.executor.distributed_executor import dumps, loads

    offset = 3.0
    p = SamplingParams(temperature=0, logits_processors=[lambda ids, logits: logits + offset * (torch.arange(4) == 2)])
    copy = loads(dumps(p))
    assert sample(torch.zeros(1, 4), [row(copy)]).token_ids == [2]


def test_processors_and_bad_words_run_under_tensor_parallelism(tiny_model_dir):
    """Two rank processes: the step's params reach them cloudpickled, closures included."""
    pytest.importorskip("cloudpickle")
    forced = 42

    def only(output_ids, logits):  # a closure: pickled by value
        out = torch.full_like(logits, -math.inf)
        out[forced] = 0.0
        return out

    llm = LLM(str(tiny_model_dir), tensor_parallel_size=2, dtype="float32", num_kv_blocks=64)
    try:
        kw = dict(max_tokens=4, ignore_eos=True)
        assert text_of(llm, "hello", logits_processors=[only], **kw).token_ids == [forced] * 4
        base = text_of(llm, "hello", **kw).token_ids
        banned = text_of(llm, "hello", bad_words_token_ids=[[base[0]]], **kw).token_ids
        assert banned[0] != base[0]
    finally:
        llm.engine.shutdown()


# ---- bad_words -------------------------------------------------------------------------------------------
def test_bad_words_mask_like_transformers_no_bad_words_processor():
    from transformers import NoBadWordsLogitsProcessor

    torch.manual_seed(0)
    V, words = 12, [[3], [4, 5], [6, 7, 8], [1, 5]]
    histories = [[], [4], [6, 7], [1, 4], [2, 6, 7], [9, 1], [4, 6, 7, 1]]
    eos = 11
    hf = NoBadWordsLogitsProcessor(words, eos_token_id=eos)
    p = SamplingParams(temperature=0, bad_words_token_ids=words)
    for history in histories:
        logits = torch.randn(1, V)
        ours = logits.clone()
        _apply_bad_words(ours, [row(p, output=history)])
        theirs = hf(torch.tensor([history], dtype=torch.long).reshape(1, len(history)), logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs)), history
        assert sample(logits, [row(p, output=history)]).token_ids == [int(theirs.argmax())]


def test_bad_words_become_token_sequences_with_and_without_a_leading_space(tiny_llm):
    tok = tiny_llm.get_tokenizer()
    p = resolve_bad_words(SamplingParams(bad_words=["hello world"]), tok)
    plain = tok.encode("hello world", add_special_tokens=False)
    spaced = tok.encode(" hello world", add_special_tokens=False)
    assert p.bad_words_token_ids[0] == plain
    assert (spaced in p.bad_words_token_ids) == (spaced[0] != plain[0] and len(spaced) == len(plain))


def test_bad_words_are_never_generated(tiny_llm):
    base = text_of(tiny_llm, "hello", max_tokens=8, ignore_eos=True)
    word = tiny_llm.get_tokenizer().decode(base.token_ids[:1]).strip()
    banned = resolve_bad_words(SamplingParams(bad_words=[word]), tiny_llm.get_tokenizer()).bad_words_token_ids
    out = text_of(tiny_llm, "hello", max_tokens=8, ignore_eos=True, bad_words=[word])
    assert out.token_ids[0] != base.token_ids[0] and [base.token_ids[0]] in banned
    assert not any(seq == [t] for seq in banned if len(seq) == 1 for t in out.token_ids)


def test_a_multi_token_bad_word_masks_only_its_last_token_after_its_prefix(demo):
    assert text_of(demo, "12+34=").text == "46"
    assert not text_of(demo, "12+34=", bad_words=["46"]).text.startswith("46")
    assert text_of(demo, "12+34=", bad_words=["47"]).text == "46"  # "4" alone is allowed


def test_bad_words_outside_the_vocabulary_or_blank_are_refused():
    with pytest.raises(ValueError, match="bad_words"):
        SamplingParams(bad_words=["  "])
    from anymodel.engine.request_checks import check_token_lists

    with pytest.raises(ValueError, match="bad_words"):
        check_token_lists(SamplingParams(bad_words_token_ids=[[99]]), 16)


# ---- the built-in processors against Transformers' on the same logits ---------------------------------
def test_repetition_penalty_equals_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(1)
    logits = torch.randn(1, 32) * 3
    prompt, output = [1, 5, 5, 9], [9, 30, 2]
    ours = _apply_penalties(logits.clone(), [row(SamplingParams(repetition_penalty=1.7), prompt=prompt, output=output)])
    theirs = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([prompt + output]), logits.clone())
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("name, value", [("top_k", 5), ("top_p", 0.7), ("min_p", 0.2)])
def test_truncation_keeps_the_tokens_transformers_keeps(name, value):
    """The tokens random sampling can draw (top-k / top-p / min-p) are exactly those Transformers'
    warpers leave finite; 200 seeded draws never leave that set and cover it."""
    from transformers import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warper = {"top_k": TopKLogitsWarper, "top_p": TopPLogitsWarper, "min_p": MinPLogitsWarper}[name](value)
    torch.manual_seed(2)
    logits = torch.randn(1, 12) * 2
    kept = set(torch.isfinite(warper(torch.zeros(1, 1, dtype=torch.long), logits.clone()))[0].nonzero()[:, 0].tolist())
    p = SamplingParams(temperature=1.0, **{name: value})
    drawn = {sample(logits, [row(p, seed=s)]).token_ids[0] for s in range(200)}
    assert 1 < len(kept) < 12  # the warper does cut, and leaves a choice
    assert drawn <= kept and len(drawn) >= min(len(kept), 3)


# ---- detokenize / spaces_between_special_tokens ---------------------------------------------------------
def test_detokenize_false_returns_tokens_and_logprobs_without_text(demo):
    full = text_of(demo, "12+34=", logprobs=2)
    bare = text_of(demo, "12+34=", logprobs=2, detokenize=False)
    assert bare.text == "" and bare.token_ids == full.token_ids
    assert [{t: lp.logprob for t, lp in d.items()} for d in bare.logprobs] == \
        [{t: lp.logprob for t, lp in d.items()} for d in full.logprobs]
    assert all(lp.decoded_token is None for d in bare.logprobs for lp in d.values())
    assert all(lp.decoded_token is not None for d in full.logprobs for lp in d.values())
    out = demo.generate(["12+34="], SamplingParams(**GREEDY, detokenize=False, prompt_logprobs=1), use_tqdm=False)[0]
    assert all(lp.decoded_token is None for d in out.prompt_logprobs[1:] for lp in d.values())


def test_detokenize_false_refuses_stop_strings():
    with pytest.raises(ValueError, match="detokenize"):
        SamplingParams(detokenize=False, stop=["x"])


class _RecordingTokenizer:
    def __init__(self):
        self.kwargs = []

    def decode(self, ids, **kw):
        self.kwargs.append(kw)
        return "".join(f"<{i}>" for i in ids)


def test_spaces_between_special_tokens_reaches_decode():
    for flag in (True, False):
        tok = _RecordingTokenizer()
        Detokenizer(tok, spaces_between_special_tokens=flag).add_tokens([1, 2])
        assert tok.kwargs and all(kw.get("spaces_between_special_tokens", True) is flag for kw in tok.kwargs)


# ---- best_of -----------------------------------------------------------------------------------------------
def test_best_of_returns_the_n_samples_with_the_highest_cumulative_logprob(demo):
    kw = dict(temperature=1.5, seed=7, max_tokens=4, ignore_eos=True)
    every = demo.generate(["12+34="], SamplingParams(n=5, logprobs=0, **kw), use_tqdm=False)[0].outputs
    best = demo.generate(["12+34="], SamplingParams(n=2, best_of=5, **kw), use_tqdm=False)[0].outputs
    ranked = sorted(every, key=lambda c: c.cumulative_logprob, reverse=True)[:2]
    assert [c.index for c in best] == [0, 1]
    assert [c.token_ids for c in best] == [c.token_ids for c in ranked]
    assert [c.cumulative_logprob for c in best] == pytest.approx([c.cumulative_logprob for c in ranked])
    assert best[0].logprobs is None  # logprobs were not asked for
    assert not demo.engine.has_unfinished()


def test_best_of_outputs_only_once_finished(demo):
    engine = demo.engine
    engine.add_request("bo", "12+34=", SamplingParams(n=1, best_of=3, temperature=1.0, seed=1, max_tokens=3,
                                                      ignore_eos=True))
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert len(outs) == 1 and outs[0].finished and len(outs[0].outputs) == 1


@pytest.mark.parametrize("kw, words", [
    (dict(n=3, best_of=2), "best_of"),
    (dict(n=1, best_of=2, temperature=0), "greedy"),
    (dict(best_of=0), "best_of"),
])
def test_bad_best_of_is_a_value_error(kw, words):
    with pytest.raises(ValueError, match=words):
        SamplingParams(**kw)


def test_best_of_is_bounded_by_max_num_seqs(demo):
    limit = demo.engine.args.max_num_seqs
    with pytest.raises(ValueError, match="best_of"):
        demo.generate(["1+1="], SamplingParams(best_of=limit + 1, temperature=1.0), use_tqdm=False)


# ---- server fields ---------------------------------------------------------------------------------------
def test_server_request_fields_reach_sampling_params():
    from anymodel.server.protocol import ChatCompletionRequest, CompletionRequest

    req = CompletionRequest.model_validate({"prompt": "x", "n": 1, "best_of": 3, "bad_words": ["a"],
                                            "spaces_between_special_tokens": False})
    p = SamplingParams(**req.sampling_kwargs())
    assert (p.best_of, p.bad_words, p.spaces_between_special_tokens) == (3, ["a"], False)
    with pytest.raises(ValueError, match="best_of"):
        CompletionRequest.model_validate({"prompt": "x", "best_of": 3, "stream": True})
    chat = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "bad_words": ["a"]})
    assert SamplingParams(**chat.sampling_kwargs()).bad_words == ["a"]
