"""Bad input to the offline API, with vLLM's exception types and the wording its users grep for:
a value of the wrong type is a TypeError, a wrong value a ValueError, and the checks hold under
`python -O` (no `assert` does validation anywhere in the runtime)."""

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest

from anymodel import SamplingParams

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


@pytest.mark.parametrize("kwargs, match", [
    ({"stop": 123}, r"stop must be None, a str or a list of str, got int 123"),
    ({"stop": ["ok", 7]}, "stop must be"),
    ({"stop_token_ids": "x"}, r"stop_token_ids must be None or a list of int, got str 'x'"),
    ({"stop_token_ids": [1, "a"]}, "stop_token_ids must be a list that contains only integers"),
    ({"temperature": "hot"}, "temperature must be a number, got str"),
    ({"top_p": None}, "top_p must be a number"),
])
def test_wrong_types_are_type_errors(kwargs, match):
    with pytest.raises(TypeError, match=match) as e:
        SamplingParams(**kwargs)
    assert isinstance(e.value, ValueError)  # bad input all the same: every `except ValueError` (HTTP 400) catches it


@pytest.mark.parametrize("name", ["temperature", "top_p", "repetition_penalty", "presence_penalty",
                                  "frequency_penalty", "min_p"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_are_rejected(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        SamplingParams(**{name: value})


def test_stop_token_ids_may_be_any_collection_of_ints():
    assert sorted(SamplingParams(stop_token_ids={3, 4}).stop_token_ids) == [3, 4]
    assert SamplingParams(stop_token_ids=(5,)).stop_token_ids == [5]


def test_empty_stop_string_and_logprobs_true():
    with pytest.raises(ValueError, match="stop cannot contain an empty string"):
        SamplingParams(stop=["a", ""])
    assert SamplingParams(logprobs=True, prompt_logprobs=True).logprobs == 1  # vLLM: True means 1


def test_prompt_errors_in_vllm_words(tiny_llm):
    engine = tiny_llm.engine
    p = SamplingParams(max_tokens=2)
    with pytest.raises(ValueError, match="The decoder prompt cannot be empty"):
        tiny_llm.generate({"prompt_token_ids": []}, p, use_tqdm=False)
    with pytest.raises(ValueError, match=f"Token id {engine.vocab_size} is out of vocabulary"):
        tiny_llm.generate({"prompt_token_ids": [5, engine.vocab_size]}, p, use_tqdm=False)
    with pytest.raises(ValueError, match="Token id -1 is out of vocabulary"):
        tiny_llm.generate([[5, -1]], p, use_tqdm=False)
    with pytest.raises(TypeError, match="prompt_token_ids must contain only integers"):
        tiny_llm.generate({"prompt_token_ids": [5, 2.5]}, p, use_tqdm=False)
    n = engine.max_model_len + 1
    with pytest.raises(ValueError, match=rf"The decoder prompt \(length {n}\) is longer than the maximum model "
                                         rf"length of {n - 1}\. Make sure that `max_model_len`"):
        tiny_llm.generate({"prompt_token_ids": [5] * n}, p, use_tqdm=False)
    # exactly max_model_len tokens leaves no room for the token a generation adds
    with pytest.raises(ValueError, match="longer than the maximum model length.*less the one token it generates"):
        tiny_llm.generate({"prompt_token_ids": [5] * (n - 1)}, p, use_tqdm=False)
    assert not engine.has_unfinished()
    assert tiny_llm.generate([[5, 6]], p, use_tqdm=False)[0].outputs[0].token_ids  # still serving


def test_max_logprobs_in_vllm_words(tiny_llm):
    with pytest.raises(ValueError, match="Requested sample logprobs of 21, which is greater than max allowed: 20"):
        tiny_llm.generate("hi", SamplingParams(max_tokens=1, logprobs=21), use_tqdm=False)
    vocab = tiny_llm.engine.vocab_size
    with pytest.raises(ValueError, match=f"Requested prompt logprobs of {vocab}, which is greater than max allowed: 20"):
        tiny_llm.generate("hi", SamplingParams(max_tokens=1, prompt_logprobs=-1), use_tqdm=False)


def test_no_assert_validates_anything_in_the_runtime():
    """`python -O` strips asserts: none may stand in for a check in the runtime package."""
    found = []
    for path in RUNTIME.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assert):
                found.append(f"{path.relative_to(RUNTIME)}:{node.lineno}")
    assert found == []


_UNDER_O = """
import math
from anymodel import SamplingParams
from anymodel.engine.request_checks import check_prompt
assert False, "asserts must be stripped in this run"
def raises(kind, fn):
    try:
        fn()
    except kind as e:
        return str(e)
    raise SystemExit(f"no {kind.__name__} from {fn}")
print(raises(TypeError, lambda: SamplingParams(stop=123)))
print(raises(TypeError, lambda: SamplingParams(stop_token_ids="x")))
print(raises(ValueError, lambda: SamplingParams(temperature=math.nan)))
print(raises(ValueError, lambda: check_prompt([], 100, 64, True)))
print(raises(ValueError, lambda: check_prompt([100], 100, 64, True)))
print(raises(ValueError, lambda: check_prompt([1] * 65, 100, 64, True)))
"""


def test_checks_hold_under_python_O():
    proc = subprocess.run([sys.executable, "-O", "-c", _UNDER_O], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["stop", "stop_token_ids", "temperature", "The", "Token", "The"]
    assert "cannot be empty" in lines[3] and "out of vocabulary" in lines[4] and "length 65" in lines[5]
