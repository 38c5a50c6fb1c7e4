"""Session fixtures: the demo model behind `anymodel serve` (a real subprocess), and an openai client.

The server starts as soon as collection shows a test that needs it, so its start-up (torch and
transformers imports, model load) overlaps with the tests that run before it.
"""

from __future__ import annotations

import pytest

from tests.server.servers import ServeProcess, client_for

_demo: ServeProcess | None = None


def _start_demo() -> ServeProcess:
    global _demo
    if _demo is None:
        _demo = ServeProcess("--seed", "0").start()  # no MODEL: the embedded demo model
    return _demo


def pytest_collection_finish(session) -> None:
    if any("demo_server" in getattr(item, "fixturenames", ()) for item in session.items):
        _start_demo()


def pytest_sessionfinish(session, exitstatus) -> None:
    if _demo is not None:
        _demo.stop()


@pytest.fixture(scope="session")
def demo_server() -> str:
    """Base URL of `anymodel serve` running the embedded demo model."""
    return _start_demo().wait()


@pytest.fixture(scope="session")
def openai_client(demo_server):
    with client_for(demo_server) as client:
        yield client
