"""Real servers on free 127.0.0.1 ports: the CLI in a subprocess, or an app in a uvicorn thread."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import uvicorn

STARTUP_TIMEOUT_S = 90.0


def client_for(url: str):
    """The official client for one of our servers (a context manager): no retries, 60 s a call."""
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of /metrics samples `anymodel:<name>` whose labels include `labels` (0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == f"anymodel:{name}" and labels.items() <= s.labels.items())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = STARTUP_TIMEOUT_S, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


class ThreadedServer:
    """uvicorn serving `app` in a thread, on a socket bound here (no port race)."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        wait_healthy(self.url, timeout=20)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


class ServeProcess:
    """`anymodel serve ...` in a subprocess on a free port; start() returns at once, wait() blocks."""

    def __init__(self, *args: str):
        import tempfile

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "anymodel.server.cli", "serve", *args, "--host", "127.0.0.1",
                    "--port", str(self.port), "--log-level", "warning"]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="anymodel-serve-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServeProcess":
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait(self) -> str:
        try:
            wait_healthy(self.url, proc=self.proc)
        except Exception as e:
            self.stop()
            with open(self.log.name) as f:
                raise RuntimeError(f"`{' '.join(self.cmd)}` did not start ({e}):\n{f.read()[-4000:]}") from None
        return self.url

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log.name)
