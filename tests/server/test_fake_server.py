"""The HTTP server around FakeEngine: the failure and disconnect paths a real model cannot stage.

FakeEngine continues a prompt through the alphabet ("ab" -> "cdef..."); "FAIL<k>" in a prompt
makes step() raise after k tokens, "SLOW" makes each step take 50 ms.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from anymodel.server.app import build_app
from tests.server.fake_engine import FakeEngine
from tests.server.servers import ThreadedServer, metric


@pytest.fixture(scope="module")
def fake():
    engine = FakeEngine()
    with ThreadedServer(build_app(engine=engine)) as server:
        yield engine, server.url


def sse_events(response: httpx.Response, limit: int = 1000) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
        assert len(events) < limit
    return events


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_failing_step_is_a_500_in_openai_shape(fake):
    _, url = fake
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "FAIL a", "max_tokens": 5}, timeout=10)
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error" and "injected failure" in r.json()["error"]["message"]


def test_failing_first_step_of_a_stream_is_still_a_500(fake):
    _, url = fake
    body = {"messages": [{"role": "user", "content": "FAIL"}], "stream": True}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 500 and "injected failure" in r.json()["error"]["message"]


def test_failure_mid_stream_sends_an_error_event_then_done(fake):
    _, url = fake
    body = {"prompt": "SLOW FAIL3 a", "max_tokens": 10, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert events[-1] == "[DONE]" and "injected failure" in events[-2]["error"]["message"]
    assert "".join(e["choices"][0]["text"] for e in events[:-2]) == "bcd"  # what came before the failure


def test_bad_requests_do_not_disturb_a_running_stream(fake):
    _, url = fake
    bad = [{"prompt": "ab", "temperature": -1}, {"prompt": "x" * 100}, {"prompt": "ab", "model": "nope"},
           {"prompt": 5}, {"prompt": "FAIL"}]
    body = {"prompt": "SLOW ab", "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=20) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        # "FAIL" fails the step it runs in, which may hold the stream too: send it only afterwards
        codes = [httpx.post(f"{url}/v1/completions", json=b, timeout=10).status_code for b in bad[:-1]]
        rest = [line for line in lines if line.startswith("data: ")]
    assert codes == [400, 400, 404, 400]
    texts = [json.loads(x[6:])["choices"][0]["text"] for x in [first, *rest] if x != "data: [DONE]"]
    assert "".join(texts) == "cdefghij"


def test_disconnected_plain_request_is_aborted(fake):
    engine, url = fake
    steps = engine.steps
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json={"prompt": "SLOW a", "max_tokens": 55}, timeout=0.3)
    wait_until(lambda: not engine.requests, timeout=2.0)  # it would run 3 s if not aborted
    assert engine.steps - steps < 40


def test_stream_closed_early_is_aborted(fake):
    engine, url = fake
    steps = engine.steps
    body = {"prompt": "SLOW a", "max_tokens": 55, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    wait_until(lambda: not engine.requests, timeout=2.0)
    assert engine.steps - steps < 40


def test_several_prompts_times_n(fake):
    _, url = fake
    body = {"prompt": ["ab", "wx"], "n": 2, "max_tokens": 3}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=10).json()
    assert [c["text"] for c in r["choices"]] == ["cde", "dfh", "yza", "zbd"]
    assert r["usage"] == {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16}
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=10) as s:
        events = sse_events(s)
    texts = {}
    for e in events[:-1]:
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
    assert [texts[i] for i in range(4)] == ["cde", "dfh", "yza", "zbd"]


def test_one_bad_prompt_in_a_list_rejects_all_and_leaves_nothing_running(fake):
    engine, url = fake
    r = httpx.post(f"{url}/v1/completions", json={"prompt": ["SLOW ab", "x" * 100], "max_tokens": 50}, timeout=10)
    assert r.status_code == 400 and "max_model_len" in r.json()["error"]["message"]
    wait_until(lambda: not engine.requests, timeout=2.0)


def test_metrics_show_an_idle_engine_after_everything(fake):
    engine, url = fake
    def idle() -> bool:
        text = httpx.get(f"{url}/metrics", timeout=5).text
        return metric(text, "num_requests_running") == 0 and metric(text, "num_free_blocks") == engine.num_blocks

    wait_until(idle)
    assert metric(httpx.get(f"{url}/metrics", timeout=5).text, "request_success_total", finished_reason="abort") > 0
