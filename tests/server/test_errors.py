"""Every error case over raw HTTP: status code and the OpenAI error body."""

from __future__ import annotations

import httpx
import pytest

CHAT = [{"role": "user", "content": "1+1"}]


def post(url: str, path: str, **kw) -> httpx.Response:
    return httpx.post(f"{url}{path}", timeout=30, **kw)


def assert_error(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], error["message"]
    return error


@pytest.mark.parametrize("path, body, words", [
    ("/v1/completions", {}, ["prompt", "Field required"]),
    ("/v1/completions", {"prompt": "1+1=", "temperature": "hot"}, ["temperature"]),
    ("/v1/completions", {"prompt": "1+1=", "temperature": -1}, ["temperature", ">= 0"]),
    ("/v1/completions", {"prompt": "1+1=", "top_p": 0}, ["top_p"]),
    ("/v1/completions", {"prompt": "1+1=", "n": 0}, ["n must be"]),
    ("/v1/completions", {"prompt": "1+1=", "max_tokens": 0}, ["max_tokens"]),
    ("/v1/completions", {"prompt": "1+1=", "logprobs": 50}, ["logprobs"]),
    ("/v1/completions", {"prompt": "1+1=", "presence_penalty": 5}, ["presence_penalty"]),
    ("/v1/completions", {"prompt": "1+1=", "logit_bias": {"one": 5}}, ["logit_bias"]),
    ("/v1/completions", {"prompt": []}, ["prompt"]),
    ("/v1/completions", {"prompt": [10**9]}, ["prompt_token_ids"]),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, ["top_logprobs requires logprobs"]),
    ("/v1/chat/completions", {"messages": []}, ["messages"]),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, ["role"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, ["image_url"]),
    ("/tokenize", {}, ["prompt", "messages"]),
    ("/detokenize", {"tokens": [-5]}, ["tokens"]),
])
def test_invalid_request_is_400(demo_server, path, body, words):
    error = assert_error(post(demo_server, path, json=body), 400, *words)
    assert error["type"] == "invalid_request_error"


def test_invalid_json_is_400(demo_server):
    r = post(demo_server, "/v1/completions", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert_error(r, 400, "not valid JSON")


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"model": "nope", "prompt": "1+1="}),
    ("/v1/chat/completions", {"model": "nope", "messages": CHAT}),
    ("/tokenize", {"model": "nope", "prompt": "1"}),
])
def test_unknown_model_is_404(demo_server, path, body):
    error = assert_error(post(demo_server, path, json=body), 404, "`nope` does not exist")
    assert error["param"] == "model" and error["code"] == "model_not_found"


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_the_context_is_400_naming_both_lengths(demo_server, stream):
    max_len = httpx.get(f"{demo_server}/v1/models").json()["data"][0]["max_model_len"]
    prompt = "1" * (max_len + 5) + "+1="
    n = httpx.post(f"{demo_server}/tokenize", json={"prompt": prompt}).json()["count"]
    r = post(demo_server, "/v1/completions", json={"prompt": prompt, "stream": stream})
    assert_error(r, 400, str(n), str(max_len))


@pytest.mark.parametrize("path, field", [("/v1/completions", "max_tokens"), ("/v1/chat/completions", "max_completion_tokens")])
def test_max_tokens_beyond_the_context_is_400(demo_server, path, field):
    """vLLM's server rule: prompt + max_tokens must fit the context (the offline API clips instead)."""
    max_len = httpx.get(f"{demo_server}/v1/models").json()["data"][0]["max_model_len"]
    body = {"prompt": "12+34="} if "chat" not in path else {"messages": [{"role": "user", "content": "12+34"}]}
    n = httpx.post(f"{demo_server}/tokenize", json=body).json()["count"]
    r = post(demo_server, path, json={**body, field: max_len})
    assert_error(r, 400, "max_tokens", str(max_len), f"{n} input tokens")
    ok = post(demo_server, path, json={**body, field: max_len - n, "temperature": 0})
    assert ok.status_code == 200, ok.text


def test_unknown_route_and_wrong_method(demo_server):
    assert_error(httpx.get(f"{demo_server}/v1/nothing"), 404)
    assert_error(httpx.get(f"{demo_server}/v1/completions"), 405)


def test_server_still_serves_after_errors(demo_server):
    r = post(demo_server, "/v1/completions", json={"prompt": "12+34=", "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "46"
