"""--api-key: every route but /health needs `Authorization: Bearer KEY` (401 in OpenAI's shape)."""

from __future__ import annotations

import httpx
import openai
import pytest

from anymodel.server import cli
from anymodel.server.app import build_app
from tests.server.fake_engine import FakeEngine
from tests.server.servers import ThreadedServer

KEY = "sk-test-123"


@pytest.fixture(scope="module")
def keyed_url():
    with ThreadedServer(build_app(engine=FakeEngine(), api_key=KEY)) as server:
        yield server.url


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/metrics"),
    ("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/v1/unknown"),
])
@pytest.mark.parametrize("header", [None, "Bearer wrong", KEY, f"Basic {KEY}"])
def test_missing_or_wrong_key_is_401(keyed_url, method, path, header):
    headers = {"Authorization": header} if header else {}
    r = httpx.request(method, f"{keyed_url}{path}", headers=headers, json={"prompt": "ab"}, timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_health_needs_no_key(keyed_url):
    assert httpx.get(f"{keyed_url}/health").status_code == 200
    assert httpx.head(f"{keyed_url}/health").status_code == 200


@pytest.mark.parametrize("size", [10, 200_000])  # the 401 comes before the body is read
def test_401_keeps_the_connection(keyed_url, size):
    with httpx.Client(base_url=keyed_url, timeout=10) as client:
        denied = client.post("/v1/completions", json={"prompt": "a" * size})
        ok = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 2},
                         headers={"Authorization": f"Bearer {KEY}"})
        ports = [r.extensions["network_stream"].get_extra_info("client_addr")[1] for r in (denied, ok)]
    assert denied.status_code == 401 and ok.status_code == 200
    assert ports[0] == ports[1]


def test_right_key_is_served(keyed_url):
    client = openai.OpenAI(base_url=f"{keyed_url}/v1", api_key=KEY, max_retries=0)
    assert client.completions.create(model="fake", prompt="ab", max_tokens=3).choices[0].text == "cde"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed_url}/v1", api_key="nope", max_retries=0).models.list()


def test_cli_passes_the_key_and_address_to_the_server(monkeypatch):
    import uvicorn

    import anymodel.server.app as app_module

    seen = {}

    class Server:  # uvicorn.Server as ExitOnFatal drives it
        def __init__(self, config):
            app, kw = config
            seen.update(app=app, **kw)
            self.started = False

        def run(self):
            self.started = True

    monkeypatch.setattr(app_module, "build_app", lambda args, api_key=None, **kw: seen.update(args=args, key=api_key)
                        or "app")
    monkeypatch.setattr(uvicorn, "Config", lambda app, **kw: (app, kw))
    monkeypatch.setattr(uvicorn, "Server", Server)
    assert cli.main(["serve", "--api-key", KEY, "--host", "127.0.0.1", "--port", "1234", "--seed", "5"]) == 0
    assert (seen["key"], seen["app"], seen["host"], seen["port"], seen["args"].seed) == (KEY, "app", "127.0.0.1", 1234, 5)


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("ANYMODEL_API_KEY", "from-env")
    assert cli.build_parser().parse_args(["serve"]).api_key == "from-env"
