"""Errors the engine raises or reports, shared by the offline API, the executors and the server.

    ValueError          bad input: the request is refused before it runs (HTTP 400)
    ArgumentTypeError   bad input of the wrong type (stop=123): a TypeError, as vLLM raises, and a
                        ValueError, so that every handler of bad input (HTTP 400) catches it too
    RequestFailedError  one request failed while running (its sampling or output); only it ends (HTTP 500)
    EngineFatalError    the engine cannot go on (a worker process died): every request fails, the
                        server reports /health 503 and exits so that an orchestrator restarts it
"""

from __future__ import annotations


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (vLLM raises TypeError; code that catches bad input as
    ValueError still catches it)."""


class RequestFailedError(RuntimeError):
    """One request failed inside a step; the other requests of that step go on."""

    def __init__(self, request_id: str, message: str):
        super().__init__(f"request {request_id!r} failed: {message}")
        self.request_id = request_id


class EngineFatalError(RuntimeError):
    """The engine can run no further step (e.g. a tensor/pipeline-parallel worker died)."""


class WorkerDiedError(EngineFatalError):
    """A worker process (a tensor/pipeline-parallel rank) exited or stopped answering."""
