"""Malformed input is a 400 naming what is wrong, never a 500, and never closes the connection."""

from __future__ import annotations

import httpx
import pytest

from tests.server.test_errors import assert_error

SURROGATE = '"\\ud800"'  # JSON text of a lone UTF-16 surrogate: valid JSON, not valid Unicode


def raw_post(client: httpx.Client, path: str, body: str) -> httpx.Response:
    return client.post(path, content=body.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", f'{{"prompt": {SURROGATE}, "max_tokens": 2}}', "prompt"),
    ("/v1/completions", f'{{"prompt": ["ok", {SURROGATE}], "max_tokens": 2}}', "prompt"),
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": {SURROGATE}}}]}}', "messages"),
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": [{{"type": "text", "text": {SURROGATE}}}]}}]}}',
     "messages"),
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": "1+1"}}], "stop": [{SURROGATE}]}}', "stop"),
    ("/v1/embeddings", f'{{"input": {SURROGATE}}}', "input"),
    ("/v1/embeddings", f'{{"input": ["a", {SURROGATE}]}}', "input"),
    ("/pooling", f'{{"input": {SURROGATE}}}', "input"),
    ("/classify", f'{{"input": {SURROGATE}}}', "input"),
    ("/score", f'{{"text_1": "a", "text_2": {SURROGATE}}}', "text_2"),
    ("/rerank", f'{{"query": {SURROGATE}, "documents": ["a"]}}', "query"),
    ("/tokenize", f'{{"prompt": {SURROGATE}}}', "prompt"),
])
def test_lone_surrogate_is_400_naming_the_field(demo_server, path, body, param):
    with httpx.Client(base_url=demo_server, timeout=30) as client:
        error = assert_error(raw_post(client, path, body), 400, "lone surrogate", param)
    assert error["param"] == param


def chat_body(**fields) -> dict:
    return {"messages": [{"role": "user", "content": "1+1"}], "max_tokens": 2, **fields}


@pytest.mark.parametrize("body, words", [
    ({"messages": [{"role": "user", "content": 5}]}, ["messages.0.content"]),
    ({"messages": [{"role": "user", "content": None}]}, ["'user' message needs `content`"]),
    ({"messages": [{"role": "system", "content": None}, {"role": "user", "content": "1"}]}, ["'system'"]),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, ["string `text`", "5"]),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, ["string `text`"]),
    ({"messages": [{"role": "user", "content": ["1+1"]}]}, ["messages.0.content"]),
    (chat_body(chat_template_kwargs={"chat_template": "{{ 1 }}"}), ["chat_template_kwargs", "'chat_template'"]),
    (chat_body(chat_template_kwargs={"tokenize": True}), ["chat_template_kwargs", "'tokenize'"]),
    (chat_body(chat_template_kwargs={"messages": []}), ["chat_template_kwargs", "'messages'"]),
    (chat_body(chat_template_kwargs={"add_generation_prompt": False}), ["'add_generation_prompt'"]),
])
def test_malformed_chat_is_400(demo_server, body, words):
    r = httpx.post(f"{demo_server}/v1/chat/completions", json=body, timeout=30)
    assert_error(r, 400, *words)


def test_assistant_message_may_have_no_content(demo_server):
    messages = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": None},
                {"role": "user", "content": "2+2"}]
    r = httpx.post(f"{demo_server}/v1/chat/completions", json={"messages": messages, "max_tokens": 2}, timeout=30)
    assert r.status_code == 200, r.text


def test_harmless_template_kwargs_reach_the_template(demo_server):
    r = httpx.post(f"{demo_server}/v1/chat/completions", json=chat_body(chat_template_kwargs={"enable_thinking": False}),
                   timeout=30)
    assert r.status_code == 200, r.text


def local_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_errors_keep_the_connection_open(demo_server):
    """After each error the next request goes over the same TCP connection (same local port)."""
    bad = [("/v1/completions", f'{{"prompt": {SURROGATE}}}'), ("/v1/completions", '{"prompt": '),
           ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}'),
           ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "1"}], "tools": [{"type": "function"}]}'),
           ("/v1/completions", '{"prompt": "1+1=", "model": "nope"}')]
    with httpx.Client(base_url=demo_server, timeout=30) as client:
        first = client.get("/health")
        for path, body in bad:
            r = raw_post(client, path, body)
            assert r.status_code in (400, 404), r.text
            assert local_port(r) == local_port(first)
        assert client.get("/v1/nothing").status_code == 404
        assert client.get("/v1/completions").status_code == 405
        ok = client.post("/v1/completions", json={"prompt": "12+34=", "temperature": 0})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "46"
        assert local_port(ok) == local_port(first)
