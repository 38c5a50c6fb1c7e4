"""Server-sent events: `data: {json}\n\n` per chunk, `data: [DONE]\n\n` at the end."""

from __future__ import annotations

from typing import AsyncIterator, Callable

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"


def sse_data(chunk: BaseModel | dict) -> str:
    if isinstance(chunk, BaseModel):
        return f"data: {chunk.model_dump_json()}\n\n"
    import json

    return f"data: {json.dumps(chunk)}\n\n"


class SSEResponse(StreamingResponse):
    """A stream that runs `on_close` however it ends: done, client gone, or server shutting down.

    Starlette cancels the body iterator when the client disconnects, but an async generator that
    was suspended at `yield` only runs its `finally` when garbage-collected; `on_close` (abort the
    engine requests) must not wait for that.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
