"""A fatal engine error stops `anymodel serve` with a non-zero exit (an orchestrator restarts it);
an unexpected server bug is a 500 that keeps the client's connection."""

from __future__ import annotations

import json
import logging
import re
import threading

import httpx
import pytest

from anymodel.errors import WorkerDiedError
from anymodel.server.app import build_app
from anymodel.server.cli import ExitOnFatal
from tests.server.fake_engine import FakeEngine
from tests.server.servers import ThreadedServer, free_port, wait_healthy


class DyingEngine(FakeEngine):
    """step() raises WorkerDiedError, as the real engine does when a tensor-parallel rank exits,
    for a prompt holding "DIE<k>" once it has k tokens ("DIE" alone: at once)."""

    def step(self):
        for r in self.requests.values():
            m = re.search(r"DIE(\d*)", r["prompt"])
            if m and len(r["out"][0]) >= int(m.group(1) or 0):
                raise WorkerDiedError("rank 1 exited with signal 9")
        return super().step()


def test_build_app_sets_the_engine_hook_which_logs_and_calls_on_fatal(caplog):
    seen = []
    app = build_app(engine=FakeEngine(), on_fatal=seen.append)
    try:
        error = WorkerDiedError("rank 1 exited")
        with caplog.at_level(logging.CRITICAL, logger="anymodel.server"):
            app.state.async_engine.on_fatal(error)
        assert seen == [error]
        assert "cannot recover" in caplog.text and "rank 1 exited" in caplog.text
    finally:
        app.state.async_engine.shutdown()


def test_a_dead_worker_makes_health_503():
    with ThreadedServer(build_app(engine=DyingEngine())) as server:
        r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "DIE ab", "max_tokens": 3}, timeout=10)
        assert r.status_code == 500 and "rank 1 exited" in r.json()["error"]["message"]
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 503


def test_a_dead_worker_cuts_a_stream_with_an_error_event_and_no_done():
    with ThreadedServer(build_app(engine=DyingEngine())) as server:
        body = {"prompt": "DIE2 ab", "max_tokens": 10, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=10) as r:
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == "cd"
    assert "rank 1 exited" in json.loads(events[-1])["error"]["message"]


def test_serve_exits_1_when_the_engine_dies():
    """ExitOnFatal is what `anymodel serve` runs: uvicorn stops and the exit status is 1."""
    exit_on_fatal = ExitOnFatal()
    app = build_app(engine=DyingEngine(), on_fatal=exit_on_fatal)
    port = free_port()
    result = []
    thread = threading.Thread(target=lambda: result.append(
        exit_on_fatal.run(app, host="127.0.0.1", port=port, log_level="critical")), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout=20)
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "DIE ab", "max_tokens": 3}, timeout=10)
    assert r.status_code == 500
    thread.join(timeout=20)
    assert result == [1] and isinstance(exit_on_fatal.error, WorkerDiedError)


def test_a_clean_stop_exits_0():
    exit_on_fatal = ExitOnFatal()
    app = build_app(engine=FakeEngine(), on_fatal=exit_on_fatal)
    port, result = free_port(), []
    thread = threading.Thread(target=lambda: result.append(
        exit_on_fatal.run(app, host="127.0.0.1", port=port, log_level="critical")), daemon=True)
    thread.start()
    wait_healthy(f"http://127.0.0.1:{port}", timeout=20)
    exit_on_fatal.server.should_exit = True
    thread.join(timeout=20)
    assert result == [0]


@pytest.fixture(scope="module")
def fake_url():
    with ThreadedServer(build_app(engine=FakeEngine())) as server:
        yield server.url


def test_unexpected_error_is_a_500_that_keeps_the_connection(fake_url):
    with httpx.Client(base_url=fake_url, timeout=10) as client:
        bad = client.post("/v1/completions", json={"prompt": "CRASH", "max_tokens": 2})
        assert bad.status_code == 500
        assert bad.json()["error"]["type"] == "server_error" and "injected tokenizer crash" in bad.json()["error"]["message"]
        ok = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 2})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "cd"
        port = [r.extensions["network_stream"].get_extra_info("client_addr")[1] for r in (bad, ok)]
        assert port[0] == port[1]
