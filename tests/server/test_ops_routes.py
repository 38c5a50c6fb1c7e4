"""Routers' and proxies' view of the server: /ping, /load, X-Request-Id, one access line per
request, several served model names (any accepted as `model`, "" or none the served one), and
--root-path reaching uvicorn."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from anymodel.config import EngineArgs
from anymodel.server import cli
from anymodel.server.app import build_app
from anymodel.server.request_tracking import RequestTracker, ServerLoad
from tests.server.servers import ThreadedServer


@pytest.fixture(scope="module")
def named_server():
    with ThreadedServer(build_app(EngineArgs(served_model_name=["first", "second"], seed=0), api_key="k")) as server:
        yield server.url


AUTH = {"Authorization": "Bearer k"}


def _complete(url: str, **fields) -> httpx.Response:
    body = {"prompt": "12+34=", "max_tokens": 2, "temperature": 0, **fields}
    return httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=60)


def test_ping_is_health_without_the_key(named_server):
    assert httpx.get(f"{named_server}/ping").status_code == 200
    assert httpx.post(f"{named_server}/ping").status_code == 200
    assert httpx.get(f"{named_server}/load").status_code == 401  # everything else needs the key


def test_load_counts_requests_in_flight(named_server):
    assert httpx.get(f"{named_server}/load", headers=AUTH).json() == {"server_load": 0}  # probes do not count


def test_tracker_counts_until_the_last_byte():
    """A response counts from its request to the end of its body (a stream: its last chunk)."""
    load, seen = ServerLoad(), []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append(load.in_flight)
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        seen.append(load.in_flight)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def send(message):
        pass

    tracker = RequestTracker(app, load)
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
    asyncio.run(tracker(scope, None, send))
    asyncio.run(tracker({**scope, "path": "/health"}, None, send))
    assert seen == [1, 1, 0, 0] and load.in_flight == 0


def test_request_id_is_echoed_and_logged(named_server, caplog):
    with caplog.at_level(logging.INFO, logger="anymodel.access"):
        response = httpx.post(f"{named_server}/v1/completions", headers={**AUTH, "X-Request-Id": "trace-42"},
                              json={"prompt": "12+34=", "max_tokens": 1}, timeout=60)
        fresh = _complete(named_server)
        line = _access_line(caplog, "trace-42 POST /v1/completions 200 ")
    assert response.headers["x-request-id"] == "trace-42"
    assert len(fresh.headers["x-request-id"]) == 32  # one made up when the client sends none
    assert line.endswith(" prompt=7 generated=1 finish=length"), line


def test_access_line_counts_streams_too(named_server, caplog):
    with caplog.at_level(logging.INFO, logger="anymodel.access"):
        for path, body in (("/v1/completions", {"prompt": "12+34="}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "12+34"}]})):
            with httpx.stream("POST", f"{named_server}{path}", headers={**AUTH, "X-Request-Id": f"s{len(path)}"},
                              json={**body, "max_tokens": 3, "ignore_eos": True, "stream": True}, timeout=60) as r:
                r.read()
        for path in ("/v1/completions", "/v1/chat/completions"):
            line = _access_line(caplog, f"s{len(path)} POST {path} 200 ")
            assert " generated=3 finish=length" in line and " prompt=" in line, line


def _access_line(caplog, prefix: str) -> str:
    """The access line starting with `prefix`: written once the response's last byte is sent, which
    may be just after the client read it."""
    for _ in range(200):
        lines = [r.getMessage() for r in caplog.records if r.name == "anymodel.access"]
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no access line starts with {prefix!r}: {lines}")


def test_every_served_name_is_accepted(named_server):
    for model in ("first", "second", "", None):
        response = _complete(named_server, **({} if model is None else {"model": model}))
        assert response.status_code == 200 and response.json()["model"] == "first", (model, response.text)
    assert _complete(named_server, model="third").status_code == 404
    ids = [m["id"] for m in httpx.get(f"{named_server}/v1/models", headers=AUTH).json()["data"]]
    assert ids == ["first", "second"]


def test_served_model_name_is_checked():
    with pytest.raises(ValueError, match="served_model_name must be a non-empty name or a list of them"):
        EngineArgs(served_model_name=[])
    assert EngineArgs(served_model_name=["only"]).served_model_name == "only"


def test_root_path_reaches_uvicorn(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "engine_args_from", lambda ns: EngineArgs())
    monkeypatch.setattr("anymodel.server.app.build_app", lambda *a, **k: "app")
    monkeypatch.setattr(cli.ExitOnFatal, "run", lambda self, app, **config: seen.update(config) or 0)
    assert cli.main(["serve", "--root-path", "/llm", "--served-model-name", "a", "b"]) == 0
    assert seen["root_path"] == "/llm"
    ns = cli.build_parser().parse_args(["serve", "--served-model-name", "a", "b"])
    assert ns.served_model_name == ["a", "b"]


def test_invocations_route_by_body(demo_server):
    completion = httpx.post(f"{demo_server}/invocations", timeout=60,
                            json={"prompt": "12+34=", "max_tokens": 3, "temperature": 0}).json()
    direct = httpx.post(f"{demo_server}/v1/completions", timeout=60,
                        json={"prompt": "12+34=", "max_tokens": 3, "temperature": 0}).json()
    assert completion["object"] == "text_completion" and completion["choices"][0]["text"] == direct["choices"][0]["text"]
    chat = httpx.post(f"{demo_server}/invocations", timeout=60,
                      json={"messages": [{"role": "user", "content": "12+34"}], "max_tokens": 3}).json()
    assert chat["object"] == "chat.completion"
    for body, words in (({"nothing": 1}, "routes by the body's fields"), ([1, 2], "JSON object"),
                        ({"prompt": "1", "max_tokens": "many"}, "max_tokens")):
        response = httpx.post(f"{demo_server}/invocations", json=body, timeout=60)
        assert response.status_code == 400 and words in response.json()["error"]["message"], response.text


def test_tokenizer_info_only_when_enabled(named_server):
    assert httpx.get(f"{named_server}/tokenizer_info", headers=AUTH).status_code == 404
    app = build_app(EngineArgs(seed=0), enable_tokenizer_info_endpoint=True)
    with ThreadedServer(app) as server:
        info = httpx.get(f"{server.url}/tokenizer_info").json()
        tokens = httpx.post(f"{server.url}/tokenize", json={"prompt": "12+34="}).json()
    assert info["vocab_size"] == 16 and info["tokenizer_class"]  # the demo model's 16 tokens
    assert info["eos_token"] and info["chat_template"] and info["model_max_length"] == tokens["max_model_len"]


def test_client_request_ids_name_the_response(named_server):
    """vLLM's rule: X-Request-Id, else the body's request_id, else a new id, after the endpoint's prefix;
    the same id sent twice at once still runs as two requests."""
    by_body = _complete(named_server, request_id="mine").json()
    assert by_body["id"] == "cmpl-mine"
    headed = httpx.post(f"{named_server}/v1/chat/completions", timeout=60,
                        headers={**AUTH, "X-Request-Id": "hdr"},
                        json={"messages": [{"role": "user", "content": "12+34"}], "max_tokens": 2, "request_id": "x"})
    assert headed.json()["id"] == "chatcmpl-hdr" and headed.headers["x-request-id"] == "hdr"
    twice = _complete(named_server, request_id="dup", prompt=["12+34=", "7+8="], n=2).json()
    assert twice["id"] == "cmpl-dup" and len(twice["choices"]) == 4
    assert len(_complete(named_server).json()["id"]) == len("cmpl-") + 32  # a new one


def test_health_answers_while_a_prompt_is_tokenized(monkeypatch):
    """Prompts are tokenized on the tokenizer thread (server/tokenizer_thread.py): while one is held
    there, the event loop still answers /health, and the request completes once it is let go."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    app = build_app(EngineArgs(seed=0))
    tokenizer_class = type(app.state.async_engine.engine.tokenizer)
    original, entered, gate = tokenizer_class.encode, threading.Event(), threading.Event()

    def held_encode(self, text, *args, **kwargs):
        if text == "12+34=":
            entered.set()
            gate.wait(30)
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(tokenizer_class, "encode", held_encode)
    with ThreadedServer(app) as server, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{server.url}/v1/completions", timeout=60,
                              json={"prompt": "12+34=", "max_tokens": 2})
        assert entered.wait(30)
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200  # the loop is not blocked
        assert not pending.done()
        gate.set()
        assert pending.result().status_code == 200
