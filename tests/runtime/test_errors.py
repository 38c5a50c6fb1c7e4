"""Bad input: a ValueError naming the argument and the allowed values; the engine keeps serving."""

import pytest

from anymodel import LLM, SamplingParams


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"n": 0}, "n"),
        ({"logprobs": -2}, "logprobs"),
        ({"prompt_logprobs": 1.5}, "prompt_logprobs"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ],
)
def test_sampling_params_reject_invalid(kwargs, names):
    with pytest.raises(ValueError, match=names):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "translate"}, r"task.*supported: \['auto', 'generate'"),
        ({"model_impl": "vllm"}, r"model_impl.*supported: \['auto', 'transformers', 'native'\]"),
        ({"dtype": "int3"}, "dtype"),
        ({"attention_backend": "magic"}, "attention_backend"),
        ({"block_size": 0}, "block_size"),
        ({"max_logprobs": -3}, r"max_logprobs must be -1 \(no cap\) or an integer >= 0"),
    ],
)
def test_engine_args_reject_invalid(kwargs, match, tiny_model_dir):
    with pytest.raises(ValueError, match=match):
        LLM(str(tiny_model_dir), **kwargs)


def test_unknown_engine_argument_is_a_type_error(tiny_model_dir):
    with pytest.raises(TypeError, match=r"no_such_flag.*supported: \["):  # as vLLM's EngineArgs dataclass
        LLM(str(tiny_model_dir), no_such_flag=1)


def test_missing_model_path():
    with pytest.raises(ValueError, match="no such directory"):
        LLM("/definitely/not/here")


def test_native_impl_without_native_model(tiny_model_dir, monkeypatch):
    from anymodel import native_overrides

    monkeypatch.setattr(native_overrides, "NATIVE_MODELS", {})
    with pytest.raises(ValueError, match="model_impl='native'"):
        LLM(str(tiny_model_dir), model_impl="native")


def test_prompt_too_long_names_both_lengths(tiny_llm):
    n = tiny_llm.engine.max_model_len + 5
    with pytest.raises(ValueError, match=rf"The decoder prompt \(length {n}\) is longer than the maximum model length of {n - 5}"):
        tiny_llm.generate({"prompt_token_ids": [3] * n}, use_tqdm=False)


def test_bad_token_ids_and_empty_prompt(tiny_llm):
    with pytest.raises(ValueError, match="prompt_token_ids"):
        tiny_llm.generate({"prompt_token_ids": [10**9]}, use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        tiny_llm.generate({"prompt_token_ids": []}, use_tqdm=False)


def test_engine_keeps_serving_after_bad_request(tiny_llm):
    engine = tiny_llm.engine
    engine.add_request("good", "hello", SamplingParams(temperature=0, max_tokens=3))
    with pytest.raises(ValueError):
        engine.add_request("bad", {"prompt_token_ids": [-1]}, SamplingParams())
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("good", "again", SamplingParams())
    finished = []
    for _ in range(20):
        finished += [o for o in engine.step() if o.finished]
        if not engine.has_unfinished():
            break
    assert [o.request_id for o in finished] == ["good"]
    assert len(finished[0].outputs[0].token_ids) == 3
