"""The server says what it does: OpenAPI documents 400 (not 422), value ranges and text /metrics;
HEAD on the probe routes; 405 carries Allow; a list of prompts is linear and capped by a flag."""

from __future__ import annotations

import httpx
import pytest

from tests.server.test_errors import assert_error


@pytest.fixture(scope="module")
def schema(demo_server) -> dict:
    return httpx.get(f"{demo_server}/openapi.json", timeout=30).json()


def test_openapi_documents_400_with_the_error_body_and_no_422(schema):
    posts = {path: ops["post"] for path, ops in schema["paths"].items() if "post" in ops}
    assert {"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/tokenize", "/rerank"} <= set(posts)
    for path, op in posts.items():
        assert "422" not in op["responses"], path
        content = op["responses"]["400"]["content"]["application/json"]["schema"]
        assert content == {"$ref": "#/components/schemas/ErrorResponse"}, path
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ErrorResponse" in components
    assert set(components["ErrorInfo"]["properties"]) == {"message", "type", "param", "code"}
    assert "422" not in str(schema["paths"])


def test_openapi_request_schema_has_value_ranges(schema):
    props = schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert props["temperature"]["minimum"] == 0
    assert props["top_p"]["exclusiveMinimum"] == 0 and props["top_p"]["maximum"] == 1
    assert props["n"]["minimum"] == 1
    assert props["presence_penalty"]["minimum"] == -2 and props["presence_penalty"]["maximum"] == 2
    assert props["frequency_penalty"]["minimum"] == -2 and props["frequency_penalty"]["maximum"] == 2
    chat = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["max_completion_tokens"]["anyOf"][0]["minimum"] == 1


def test_metrics_is_documented_as_text(schema, demo_server):
    content = schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "application/json" not in content and all(kind.startswith("text/plain") for kind in content)
    assert httpx.get(f"{demo_server}/metrics", timeout=30).headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("body, words", [
    ({"temperature": -0.5}, ["temperature must be >= 0"]),
    ({"top_p": 0}, ["top_p must be > 0"]),
    ({"top_p": 1.5}, ["top_p must be <= 1"]),
    ({"n": 0}, ["n must be >= 1, got 0"]),
    ({"presence_penalty": -3}, ["presence_penalty must be >= -2"]),
    ({"frequency_penalty": 2.5}, ["frequency_penalty must be <= 2"]),
    ({"repetition_penalty": 0}, ["repetition_penalty must be > 0"]),
    ({"min_p": 2}, ["min_p must be <= 1"]),
])
def test_range_errors_are_400_naming_the_field(demo_server, body, words):
    r = httpx.post(f"{demo_server}/v1/completions", json={"prompt": "1+1=", **body}, timeout=30)
    error = assert_error(r, 400, *words)
    assert error["param"] == next(iter(body))


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/version"])
def test_head_is_answered(demo_server, path):
    r = httpx.head(f"{demo_server}{path}", timeout=30)
    assert r.status_code == 200 and r.content == b""


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/v1/completions", "POST"), ("DELETE", "/v1/chat/completions", "POST"),
    ("POST", "/health", "GET, HEAD"), ("PUT", "/v1/models", "GET, HEAD"),
])
def test_405_says_what_is_allowed(demo_server, method, path, allow):
    r = httpx.request(method, f"{demo_server}{path}", timeout=30)
    assert_error(r, 405)
    assert r.headers["allow"] == allow


def test_thousands_of_prompts_in_one_request(demo_server):
    """Each delta is O(log n) in MergedStreams: 2048 prompts (the default cap) finish like any request."""
    n = 2048
    r = httpx.post(f"{demo_server}/v1/completions", json={"prompt": [[5, 6, 7]] * n, "max_tokens": 1}, timeout=120)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == list(range(n))
    assert r.json()["usage"]["completion_tokens"] == n


def test_stream_of_many_prompts_gives_every_choice(demo_server):
    n, seen = 300, set()
    body = {"prompt": [[5, 6, 7]] * n, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{demo_server}/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                seen.update(c["index"] for c in httpx.Response(200, content=line[6:]).json()["choices"])
    assert seen == set(range(n))


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"prompt": [[5, 6]] * 2049, "max_tokens": 1}, "prompt"),
    ("/v1/completions", {"prompt": ["1+1="] * 2049, "max_tokens": 1}, "prompt"),
    ("/v1/embeddings", {"input": ["a"] * 2049}, "input"),
    ("/score", {"text_1": "a", "text_2": ["b"] * 2049}, "text_2"),
    ("/rerank", {"query": "a", "documents": ["b"] * 2049}, "documents"),
])
def test_too_many_prompts_is_400_naming_the_flag(demo_server, path, body, param):
    r = httpx.post(f"{demo_server}{path}", json=body, timeout=60)
    error = assert_error(r, 400, "2049", "--max-prompts-per-request", "2048")
    assert error["param"] == param
