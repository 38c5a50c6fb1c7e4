"""Structured outputs offline: every constrained output that ends with `stop` satisfies its
constraint (random tiny model, sampled), bad specs are ValueErrors at submit, the legacy spellings
work, and matchers stay in step under preemption."""

from __future__ import annotations

import re

import pytest

from anymodel import GuidedDecodingParams, LLM, SamplingParams, StructuredOutputsParams
from anymodel.sampling_params import StructuredOutputsParams as FromSamplingParamsModule
from tests.models.zoo import build_tiny_model
from tests.structured.cases import CHECKS, CONSTRAINTS, SCHEMA, valid_json

N = 12  # samples per constraint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model("llama", tmp_path_factory.mktemp("so-llama"))


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(str(model_dir), dtype="float32", max_num_seqs=32)


def _params(kind: str, seed: int, max_tokens: int = 64, **so) -> SamplingParams:
    if kind.startswith("json"):  # free whitespace would let a random model pad forever
        so.setdefault("disable_any_whitespace", True)
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens,
                          structured_outputs=StructuredOutputsParams(**{kind: CONSTRAINTS[kind]}, **so))


def _check_outputs(kind: str, outs) -> int:
    """Every output that stopped satisfies the constraint; returns how many stopped."""
    stopped = [o.outputs[0] for o in outs if o.outputs[0].finish_reason == "stop"]
    bad = [c.text for c in stopped if not CHECKS[kind](c.text)]
    assert not bad, f"{kind}: invalid outputs that finished with stop: {bad}"
    return len(stopped)


@pytest.mark.parametrize("kind", list(CHECKS))
def test_every_stopped_output_is_valid(llm, kind):
    outs = llm.generate(["The quick brown fox"] * N, [_params(kind, seed) for seed in range(N)], use_tqdm=False)
    # once the grammar is complete EOS is the only token; json_object's free strings often run to max_tokens
    assert _check_outputs(kind, outs) >= (1 if kind == "json_object" else N // 2)


def test_compact_json_and_greedy(llm):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "tag": {"enum": ["x", "yy"]}},
              "required": ["ok", "tag"], "additionalProperties": False}
    so = StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    out = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=64, structured_outputs=so), use_tqdm=False)[0]
    text = out.outputs[0].text
    assert out.outputs[0].finish_reason == "stop" and valid_json(text, schema)
    assert "\n" not in text and "  " not in text


def test_legacy_guided_decoding_spelling(llm):
    p = SamplingParams(temperature=0, max_tokens=16, guided_decoding=GuidedDecodingParams(choice=["yes", "no"]))
    assert p.structured_outputs is not None and p.guided_decoding is None
    assert llm.generate("Hi", p, use_tqdm=False)[0].outputs[0].text in ("yes", "no")
    assert FromSamplingParamsModule is StructuredOutputsParams


@pytest.mark.parametrize("so, match", [
    (dict(json={"type": "nonsense"}), "json is invalid"),
    (dict(json="{not json"), "not valid JSON"),
    (dict(regex="(ab"), "regex is invalid"),
    (dict(grammar="root ::= undefined_rule"), "grammar is invalid"),
])
def test_bad_spec_is_a_value_error_at_submit(llm, so, match):
    with pytest.raises(ValueError, match=match):
        llm.generate(["a", "b"], SamplingParams(structured_outputs=StructuredOutputsParams(**so)), use_tqdm=False)
    assert not llm.engine.has_unfinished()


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "exactly one constraint"),
    (dict(json=SCHEMA, regex="a"), "exactly one constraint"),
    (dict(choice=[]), "non-empty list of strings"),
    (dict(choice=["a", 1]), "non-empty list of strings"),
    (dict(regex=""), "non-empty string"),
    (dict(json=3), "JSON schema"),
    (dict(regex="a", backend="outlines"), "backend must be one of"),
    (dict(regex="a", whitespace_pattern=r"\s*"), "whitespace_pattern"),
])
def test_params_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StructuredOutputsParams(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ignore_eos=True), "ignore_eos"),
    (dict(min_tokens=2), "min_tokens"),
    (dict(guided_decoding=StructuredOutputsParams(regex="b")), "not both"),
])
def test_sampling_params_combinations(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(structured_outputs=StructuredOutputsParams(regex="a"), **kwargs)


def test_structured_outputs_from_dict_refuses_unknown_keys():
    assert SamplingParams(structured_outputs={"regex": "a+"}).structured_outputs.regex == "a+"
    with pytest.raises(ValueError, match="unknown field"):
        StructuredOutputsParams.from_dict({"regex": "a", "jsonn": {}})


@pytest.mark.parametrize("kwargs, match", [
    (dict(guided_decoding_backend="guidance"), "not supported"),
    (dict(structured_outputs_config={"backend": "lm-format-enforcer"}), "must be one of"),
    (dict(structured_outputs_config={"backend": "xgrammar", "enable_in_reasoning": True}), "unsupported key"),
])
def test_engine_backend_options(kwargs, match):
    from anymodel.config import EngineArgs

    with pytest.raises(ValueError, match=match):
        EngineArgs(**kwargs)
    assert EngineArgs(guided_decoding_backend="xgrammar").structured_outputs_config.backend == "xgrammar"


def test_preemption_keeps_matchers_in_step(model_dir):
    """A KV cache too small for every request at once: requests are preempted and recomputed, and
    their outputs still satisfy the constraint (the matcher followed the accepted tokens only)."""
    llm = LLM(str(model_dir), dtype="float32", num_kv_blocks=24, block_size=4, max_num_seqs=16)
    params = [_params("json", seed, max_tokens=48) for seed in range(N)]
    outs = llm.generate(["Once upon a time there was"] * N, params, use_tqdm=False)
    assert llm.engine.stats().num_preemptions_total > 0
    assert _check_outputs("json", outs) >= 1


def test_unconstrained_requests_beside_constrained_ones_are_unchanged(llm):
    """A constrained request in the batch does not change another request's (greedy) tokens."""
    plain = SamplingParams(temperature=0, max_tokens=12)
    alone = llm.generate("Paris is the capital", plain, use_tqdm=False)[0].outputs[0].token_ids
    mixed = llm.generate(["Paris is the capital", "x"], [plain, _params("regex", 0)], use_tqdm=False)
    assert mixed[0].outputs[0].token_ids == alone


def test_vocabulary_that_cannot_express_the_constraint_fails_the_request_alone(tmp_path):
    """A WordPiece vocabulary without braces or quotes: a JSON request ends with a clear error (no
    hang), and an unconstrained request beside it completes."""
    from anymodel.errors import RequestFailedError
    from tests.pooling.encoders import build_tokenizer

    model = build_tiny_model("llama", tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    build_tokenizer("bert").save_pretrained(str(model))
    llm = LLM(str(model), dtype="float32")
    params = [SamplingParams(max_tokens=8, structured_outputs=StructuredOutputsParams(json_object=True)),
              SamplingParams(max_tokens=8)]
    with pytest.raises(RequestFailedError, match="no token that continues the constraint") as err:
        llm.generate(["the cat", "the dog"], params, use_tqdm=False)
    assert err.value.outputs[0] is None and err.value.outputs[1].outputs[0].finish_reason == "length"


def test_padded_vocab_and_tensor_and_pipeline_parallel(tmp_path):
    """TinyPlan: logits 385 wide over a 384-token tokenizer (the mask never allows the padding),
    remote code with its own TP / PP plans and uneven vocab shards. Under TP=2 and PP=2 (one process
    per rank) every sampling rank masks with the bitmask from the scheduler output: the constrained
    tokens equal the single process's, and every stopped output is valid."""
    model = build_tiny_model("tinyplan", tmp_path)
    so = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=48, structured_outputs=so) for s in range(4)]
    prompts = ["hi", "cat", "the dog", "x"]
    engine = dict(dtype="float32", trust_remote_code=True, model_impl="transformers", num_kv_blocks=64)
    single = LLM(str(model), **engine).generate(prompts, params, use_tqdm=False)
    assert _check_outputs("json", single) >= 1
    assert all(t < 384 for o in single for t in o.outputs[0].token_ids)
    for layout in (dict(tensor_parallel_size=2), dict(pipeline_parallel_size=2)):  # PP: the last stage samples
        parallel = LLM(str(model), **layout, **engine)
        try:
            outs = parallel.generate(prompts, params, use_tqdm=False)
        finally:
            parallel.engine.shutdown()
        assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in single], layout


def _forcing(token_ids: list[int]):
    """A request logits processor that makes the first len(token_ids) outputs exactly these tokens."""
    def force(output_ids, logits):
        if len(output_ids) < len(token_ids):
            logits[:] = float("-inf")
            logits[token_ids[len(output_ids)]] = 0.0
        return logits
    return force


def test_grammar_starts_after_the_reasoning(model_dir):
    """structured_outputs_config reasoning_parser: the reasoning (forced here, and outside the
    grammar) is free; the grammar applies from </think> on, and from the first token when the
    prompt already closed the reasoning."""
    llm = LLM(str(model_dir), dtype="float32", structured_outputs_config={"reasoning_parser": "deepseek_r1"})
    tok = llm.get_tokenizer()
    thought = tok.encode("<think>zz!", add_special_tokens=False) + tok.encode("</think>", add_special_tokens=False)
    so = StructuredOutputsParams(regex=CONSTRAINTS["regex"])
    params = SamplingParams(temperature=0, max_tokens=40, structured_outputs=so, logits_processors=[_forcing(thought)])
    out = llm.generate("Question?", params, use_tqdm=False)[0].outputs[0]
    assert out.token_ids[:len(thought)] == thought and out.finish_reason == "stop"
    assert out.text.startswith("<think>zz!</think>") and CHECKS["regex"](out.text[len("<think>zz!</think>"):])
    closed = {"prompt_token_ids": tok.encode("Question? <think>") + tok.encode("</think>", add_special_tokens=False)}
    plain = SamplingParams(temperature=0, max_tokens=40, structured_outputs=so)
    assert CHECKS["regex"](llm.generate(closed, plain, use_tqdm=False)[0].outputs[0].text)


def test_structural_tag(llm):
    """vLLM's structural tag: begin / schema / end, with triggers."""
    import json as _json

    tag = {"structures": [{"begin": "<f>", "schema": {"enum": ["a", "b"]}, "end": "</f>"}], "triggers": ["<f>"]}
    so = StructuredOutputsParams(structural_tag=_json.dumps(tag))
    # a logits processor forces the trigger; the tag's grammar then spells a value and the end
    force = llm.get_tokenizer().encode("<f>", add_special_tokens=False)
    params = SamplingParams(temperature=0, max_tokens=24, structured_outputs=so, logits_processors=[_forcing(force)])
    text = llm.generate("x", params, use_tqdm=False)[0].outputs[0].text
    assert text.startswith('<f>"a"</f>') or text.startswith('<f>"b"</f>'), text


def test_a_request_waiting_for_its_grammar_does_not_hold_up_others(llm, monkeypatch):
    """Its compile is held back: the plain request beside it runs to the end meanwhile; released,
    the constrained one runs too."""
    import threading

    from anymodel.structured_output.compiler import GrammarCompiler

    release, compile_ = threading.Event(), GrammarCompiler._compile
    monkeypatch.setattr(GrammarCompiler, "_compile", lambda self, g: release.wait(30) and compile_(self, g))
    engine = llm.engine
    so = StructuredOutputsParams(regex=r"[xyz]{3}!")  # a spec no other test compiled (not cached)
    engine.add_request("slow", "a", SamplingParams(temperature=0, max_tokens=8, structured_outputs=so))
    engine.add_request("plain", "b", SamplingParams(temperature=0, max_tokens=4))
    done = {}
    for _ in range(50):
        done.update({o.request_id: o for o in engine.step() if o.finished})
        if "plain" in done:
            break
    assert "plain" in done and "slow" not in done and engine.has_unfinished()
    release.set()
    while engine.has_unfinished():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert re.fullmatch(r"[xyz]{3}!", done["slow"].outputs[0].text)
