"""Structured outputs over HTTP with the openai client: response_format (json_object, json_schema,
text), the extra body `structured_outputs` and vLLM's legacy guided_* fields, on chat and
completions; bad constraints are 400s naming the field."""

from __future__ import annotations

import httpx
import openai
import pytest

from anymodel.config import EngineArgs
from anymodel.server.app import build_app
from tests.models.zoo import build_tiny_model
from tests.server.servers import ThreadedServer, client_for
from tests.structured.cases import CHECKS, CHOICES, GRAMMAR, REGEX, SCHEMA, valid_json

MSG = [{"role": "user", "content": "Tell me about the cat"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = build_tiny_model("llama", tmp_path_factory.mktemp("so-server"))
    # compact JSON by default (engine option): free whitespace lets a random model pad until max_tokens
    args = EngineArgs(model=str(path), dtype="float32", structured_outputs_config={"disable_any_whitespace": True})
    with ThreadedServer(build_app(args)) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def client(server):
    with client_for(server) as c:
        yield c


def _chat(client, n: int = 4, **kwargs):
    kwargs = {"max_tokens": 64, "temperature": 1.0, "seed": 3, **kwargs}
    return client.chat.completions.create(model=None, messages=MSG, n=n, **kwargs).choices


def _check(choices, check) -> None:
    stopped = [c for c in choices if c.finish_reason == "stop"]
    assert stopped, [c.finish_reason for c in choices]
    texts = [c.message.content if hasattr(c, "message") else c.text for c in stopped]
    assert all(check(t) for t in texts), texts


def test_response_format_json_schema(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    _check(_chat(client, response_format=fmt, extra_body={"structured_outputs": None}), CHECKS["json"])


def test_response_format_json_object_and_text(client):
    choices = _chat(client, n=6, response_format={"type": "json_object"}, max_tokens=96)
    assert all(valid_json(c.message.content, None) for c in choices if c.finish_reason == "stop")
    plain = _chat(client, n=1, response_format={"type": "text"}, temperature=0)
    assert plain[0].message.content is not None


@pytest.mark.parametrize("extra, kind", [
    ({"structured_outputs": {"regex": REGEX}}, "regex"),
    ({"structured_outputs": {"choice": CHOICES}}, "choice"),
    ({"guided_json": SCHEMA}, "json"),
    ({"guided_regex": REGEX}, "regex"),
    ({"guided_choice": CHOICES}, "choice"),
    ({"guided_grammar": GRAMMAR}, "grammar"),
])
def test_extra_body_fields_on_chat(client, extra, kind):
    _check(_chat(client, extra_body=extra), CHECKS[kind])


def test_completions_with_guided_choice_and_json_schema(client):
    r = client.completions.create(model=None, prompt="The answer:", max_tokens=16, n=3, temperature=1.0,
                                  extra_body={"guided_choice": CHOICES})
    _check(r.choices, CHECKS["choice"])
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    r = client.completions.create(model=None, prompt="JSON:", max_tokens=64, n=3, temperature=1.0, seed=1,
                                  extra_body={"response_format": fmt})
    _check(r.choices, CHECKS["json"])


def test_streaming_json_schema(client):
    stream = client.chat.completions.create(model=None, messages=MSG, max_tokens=64, temperature=0, stream=True,
                                            extra_body={"guided_choice": CHOICES})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text in CHOICES


@pytest.mark.parametrize("body, param, message", [
    ({"guided_regex": "(ab"}, None, "regex is invalid"),
    ({"guided_json": {"type": "nonsense"}}, None, "json is invalid"),
    ({"guided_grammar": "root ::= nothing"}, None, "grammar is invalid"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_regex", "one structured-output constraint"),
    ({"structured_outputs": {"regex": "a", "json": {}}}, "structured_outputs", "exactly one constraint"),
    ({"structured_outputs": {"regexp": "a"}}, "structured_outputs", "unknown field"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema.schema"),
    ({"response_format": {"type": "xml"}}, None, "response_format"),
    ({"guided_decoding_backend": "outlines"}, None, "guided_decoding_backend"),
])
def test_bad_constraints_are_400(server, body, param, message):
    r = httpx.post(f"{server}/v1/chat/completions", json={"messages": MSG, "max_tokens": 4, **body}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"]
    if param is not None:
        assert error["param"] == param


def test_openai_client_bad_schema_is_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="invalid"):
        client.chat.completions.create(model=None, messages=MSG, extra_body={"guided_regex": "[a-"})
