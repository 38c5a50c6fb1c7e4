"""RequestTracker: the ASGI layer that gives every HTTP request an id, counts the ones in flight
(`/load`, vLLM's server-load figure for routers) and writes one access line when each ends.

    X-Request-Id: the client's (honoured, as vLLM does) or a new one; echoed on the response.
    in flight:    requests whose response has not ended (a stream counts until its last byte),
                  probes (/health, /ping, /load, /metrics) left out.
    access line:  INFO anymodel.access: <id> <method> <path> <status> <ms> ms [prompt=P generated=G finish=R]
                  (logger "anymodel.access"; the bracket from the handler's AccessRecord, on generation routes)

Plain ASGI, like the API-key check: @app.middleware("http") would wrap `receive` and hide a
client's disconnect from streaming responses.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("anymodel.access")
PROBES = frozenset({"/health", "/ping", "/load", "/metrics"})
HEADER = b"x-request-id"


@dataclass
class ServerLoad:
    in_flight: int = 0  # requests whose response has not ended (probes left out)


@dataclass
class AccessRecord:
    """What a handler tells the access line about its request (request.state.access)."""

    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    finish_reasons: list[str] = field(default_factory=list)

    def done(self, prompt_tokens: int, generated_tokens: int, finish_reasons) -> None:
        self.prompt_tokens, self.generated_tokens = prompt_tokens, generated_tokens
        self.finish_reasons = sorted({r for r in finish_reasons if r})

    def text(self) -> str:
        if self.prompt_tokens is None:
            return ""
        return (f" prompt={self.prompt_tokens} generated={self.generated_tokens} "
                f"finish={','.join(self.finish_reasons) or '-'}")


def client_request_id(request) -> str | None:
    """The client's X-Request-Id, if it sent one (a starlette Request whose scope this tracker saw)."""
    return getattr(request.state, "client_request_id", None)


def access_record(request) -> AccessRecord | None:
    """Where a handler notes tokens and finish reasons for the access line."""
    return getattr(request.state, "access", None)


class RequestTracker:
    def __init__(self, app: ASGIApp, load: ServerLoad):
        self.app = app
        self.load = load

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id = dict(scope["headers"]).get(HEADER, b"").decode("latin-1")
        request_id = client_id or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["client_request_id"] = request_id, client_id or None
        state["access"] = access = AccessRecord()
        counted = scope["path"] not in PROBES
        start, status = time.perf_counter(), 500

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER, request_id.encode("latin-1"))]
            await send(message)

        self.load.in_flight += counted
        try:
            await self.app(scope, receive, tracked_send)
        finally:
            self.load.in_flight -= counted
            if counted:
                access_log.info("%s %s %s %d %.1f ms%s", request_id, scope["method"], scope["path"], status,
                                (time.perf_counter() - start) * 1000, access.text())
