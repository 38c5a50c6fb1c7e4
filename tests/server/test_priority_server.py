"""A request's `priority` on the server (vLLM's field): honoured with --scheduling-policy priority,
a 400 under fcfs, and refused where it cannot apply (beam search); the same for structured-output
constraints with beam search."""

from __future__ import annotations

import httpx
import pytest

from anymodel.config import EngineArgs
from anymodel.server.app import build_app
from tests.server.servers import ThreadedServer


@pytest.fixture(scope="module")
def priority_server():
    with ThreadedServer(build_app(EngineArgs(scheduling_policy="priority", seed=0))) as server:
        yield server.url


def _complete(url: str, **fields) -> httpx.Response:
    body = {"model": "anymodel-demo", "prompt": "12+34=", "max_tokens": 4, "temperature": 0, **fields}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


def test_priority_is_served_with_the_priority_policy(priority_server):
    plain = _complete(priority_server).json()["choices"][0]["text"]
    for priority in (-5, 0, 7):
        response = _complete(priority_server, priority=priority)
        assert response.status_code == 200 and response.json()["choices"][0]["text"] == plain
    chat = httpx.post(f"{priority_server}/v1/chat/completions", timeout=60, json={
        "model": "anymodel-demo", "messages": [{"role": "user", "content": "12+34"}], "max_tokens": 4, "priority": 3})
    assert chat.status_code == 200


def test_priority_under_fcfs_is_a_400(demo_server):
    response = _complete(demo_server, priority=1)
    assert response.status_code == 400 and "Priority scheduling is not enabled" in response.json()["error"]["message"]
    assert _complete(demo_server, priority=0).status_code == 200  # the default is fine


@pytest.mark.parametrize("field, value", [("priority", 2), ("guided_regex", "[0-9]+"),
                                          ("response_format", {"type": "json_object"})])
def test_beam_search_refuses_what_its_steps_would_drop(priority_server, field, value):
    response = _complete(priority_server, use_beam_search=True, n=2, **{field: value})
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"] or "structured-output" in response.json()["error"]["message"]
