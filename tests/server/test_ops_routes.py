"""Routers' and proxies' view of the server: /ping, /load, X-Request-Id, one access line per
request, several served model names (any accepted as `model`, "" or none the served one), and
--root-path reaching uvicorn."""

from __future__ import annotations

import asyncio
import logging

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
    assert response.headers["x-request-id"] == "trace-42"
    assert len(fresh.headers["x-request-id"]) == 32  # one made up when the client sends none
    lines = [r.getMessage() for r in caplog.records if r.name == "anymodel.access"]
    assert any(line.startswith("trace-42 POST /v1/completions 200 ") for line in lines), lines


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
