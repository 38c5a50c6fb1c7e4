"""Usage in streams as vLLM sends it: the final usage chunk (include_usage), the usage so far in
every chunk (continuous_usage_stats), and --enable-force-include-usage; the usage always adds up."""

from __future__ import annotations

import json

import httpx
import pytest

from anymodel.config import EngineArgs
from anymodel.server.app import build_app
from tests.server.servers import ThreadedServer

CHAT = [{"role": "user", "content": "12+34"}]


def _stream(url: str, path: str, **fields) -> list[dict]:
    body = {"max_tokens": 4, "temperature": 0, "stream": True, "ignore_eos": True, **fields}
    body.update({"messages": CHAT} if path.endswith("chat/completions") else {"prompt": "12+34="})
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_continuous_usage_counts_up(demo_server, path):
    chunks = _stream(demo_server, path, stream_options={"include_usage": True, "continuous_usage_stats": True})
    final = chunks[-1]
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 4
    counted = [c["usage"]["completion_tokens"] for c in chunks if c["choices"] and c.get("usage")]
    assert counted and counted == sorted(counted) and counted[-1] == 4
    prompt = final["usage"]["prompt_tokens"]
    assert all(c["usage"]["total_tokens"] == prompt + c["usage"]["completion_tokens"] for c in chunks if c.get("usage")
               and c["usage"]["prompt_tokens"])


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_usage_only_when_asked(demo_server, path):
    assert not any(c.get("usage") for c in _stream(demo_server, path))
    plain = _stream(demo_server, path, stream_options={"include_usage": True})
    assert [bool(c.get("usage")) for c in plain].count(True) == 1 and plain[-1]["usage"]["completion_tokens"] == 4


def test_force_include_usage():
    with ThreadedServer(build_app(EngineArgs(seed=0), enable_force_include_usage=True)) as server:
        for path in ("/v1/completions", "/v1/chat/completions"):
            chunks = _stream(server.url, path)
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
