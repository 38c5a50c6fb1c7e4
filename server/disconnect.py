"""Cancel a handler when its client goes away, so its engine requests are aborted at once.

Uvicorn keeps running a handler whose client disconnected; a non-streaming completion would go
on generating (and holding KV blocks) for nobody. The handler is raced against the ASGI
`http.disconnect` message; cancelling it lands in its `finally`, which aborts its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable

from fastapi import Request
from starlette.responses import Response

CLIENT_CLOSED = 499  # nginx's "client closed request"; nobody reads it


async def _wait_for_disconnect(request: Request) -> None:
    # the body has been read already, so the next message can only be the disconnect
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, handler: Awaitable[Response]) -> Response:
    task = asyncio.ensure_future(handler)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return Response(status_code=CLIENT_CLOSED)
    return task.result()
