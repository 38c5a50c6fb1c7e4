"""Issue 18, "Done when": small scripts written as a vLLM user writes them, with only the import line
changed (`from vllm import ...` -> `from anymodel import ...`), one per group of the issue: engine
arguments, sampling, beam search, chat, observability. Each asserts what the script asked for
happened. The model is the embedded demo adder (12+34= -> 46); beam search runs the tiny llama."""

from __future__ import annotations

import logging

import pytest

from anymodel.demo import DEMO_MODEL_DIR

MODEL = str(DEMO_MODEL_DIR)


@pytest.fixture(scope="module")
def llm():
    from anymodel import LLM

    return LLM(model=MODEL, dtype="float", seed=0, max_model_len=64, enforce_eager=True, gpu_memory_utilization=0.5,
               tokenizer_mode="auto", generation_config="auto", disable_log_stats=True, swap_space=4)


def test_script_engine_arguments(llm):
    from anymodel import LLM, SamplingParams

    # vllm: llm = LLM(model=..., dtype="float", ...); defaults from the model's generation_config
    defaults = llm.get_default_sampling_params()
    assert isinstance(defaults, SamplingParams)
    outputs = llm.generate(["12+34="], SamplingParams(temperature=0.0, max_tokens=4))
    assert outputs[0].outputs[0].text == "46"
    # random weights, nothing read from disk but the config (vLLM's benchmark setting)
    bench = LLM(model=MODEL, load_format="dummy", max_model_len=64)
    assert len(bench.generate(["12+34="], SamplingParams(max_tokens=3, ignore_eos=True))[0].outputs[0].token_ids) == 3
    # token ids in, token ids out
    raw = LLM(model=MODEL, skip_tokenizer_init=True, max_model_len=64)
    ids = llm.get_tokenizer().encode("12+34=")
    out = raw.generate([{"prompt_token_ids": ids}], SamplingParams(temperature=0, max_tokens=4))[0].outputs[0]
    assert out.text == "" and llm.get_tokenizer().decode(out.token_ids, skip_special_tokens=True) == "46"
    with pytest.raises(TypeError, match="no_such_flag"):
        LLM(model=MODEL, no_such_flag=True)


def test_script_sampling(llm):
    from anymodel import SamplingParams
    from anymodel.params import RequestOutputKind

    params = SamplingParams(n=2, best_of=3, temperature=0.8, top_p=0.95, top_k=20, seed=1, max_tokens=4, logprobs=2,
                            stop=["6"], include_stop_str_in_output=True, output_kind=RequestOutputKind.FINAL_ONLY)
    (out,) = llm.generate(["12+34="], params, use_tqdm=False)
    assert len(out.outputs) == 2 and all(len(c.logprobs) == len(c.token_ids) for c in out.outputs)
    assert all(c.finish_reason in ("stop", "length") for c in out.outputs)
    assert all(c.text.endswith("6") for c in out.outputs if c.stop_reason == "6")

    def ban_four(token_ids, logits):  # vLLM's per-request logits processor
        logits[llm.get_tokenizer().convert_tokens_to_ids("4")] = float("-inf")
        return logits

    greedy = dict(temperature=0, max_tokens=2)
    banned = llm.generate(["12+34="], SamplingParams(logits_processors=[ban_four], **greedy), use_tqdm=False)
    assert not banned[0].outputs[0].text.startswith("4")
    worded = llm.generate(["12+34="], SamplingParams(bad_words=["46"], **greedy), use_tqdm=False)
    assert worded[0].outputs[0].text != "46"


def test_script_beam_search(tmp_path):
    from anymodel import LLM, BeamSearchParams
    from tests.models.zoo import build_tiny_model

    path = build_tiny_model("llama", tmp_path / "m")
    llm = LLM(str(path), dtype="float32", num_kv_blocks=64)
    # vllm: from vllm.sampling_params import BeamSearchParams; outputs = llm.beam_search(prompts, params)
    outputs = llm.beam_search([{"prompt": "The cat"}, "Hello"], BeamSearchParams(beam_width=3, max_tokens=5))
    for output in outputs:
        assert len(output.sequences) == 3
        best = output.sequences[0]
        assert best.text and best.cum_logprob < 0 and best.finish_reason in ("stop", "length")
        scores = [s.cum_logprob / len(s.logprobs) for s in output.sequences]  # length_penalty=1.0
        assert scores == sorted(scores, reverse=True)


def test_script_chat(llm):
    from anymodel import SamplingParams

    conversations = [[{"role": "user", "content": "12+34"}], [{"role": "user", "content": "12+34"}]]
    outputs = llm.chat(conversations, SamplingParams(temperature=0, max_tokens=4), use_tqdm=False,
                       add_generation_prompt=True, chat_template_kwargs={"enable_thinking": False})
    assert [o.outputs[0].text for o in outputs] == ["46", "46"]
    assert llm.get_tokenizer() is not None


def test_script_observability(caplog):
    from anymodel import LLM, SamplingParams

    with caplog.at_level(logging.INFO, logger="anymodel"):
        llm = LLM(model=MODEL, max_model_len=64)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    # the start-up facts: which implementation runs, the attention backend, dtype, layout, KV cache, length
    for fact in ("native for LlamaForCausalLM", "attention backend", "dtype float32", "tensor_parallel_size=1",
                 "max_model_len 64", "KV blocks"):
        assert fact in logged, fact
    report = llm.describe()  # what runs and why, per module
    for line in ("decision      native", "KV cache", "LlamaDecoderLayer (native code)"):
        assert line in report, line
    out = llm.generate(["12+34="], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    assert out.finished and out.prompt_token_ids
