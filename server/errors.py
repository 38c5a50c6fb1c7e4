"""Every error leaves the server in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

The `openai` client maps the status code to its exception class (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 500 InternalServerError) and shows `message`.

No error closes the client's keep-alive connection: an exception no handler knows becomes a 500
in CatchAllMiddleware, which answers and returns (Starlette's own last-resort handler re-raises,
and uvicorn then drops the connection).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from anymodel.errors import EngineFatalError

from .async_engine import EngineDeadError, EngineStepError
from .protocol import ErrorInfo, ErrorResponse
from .request_fields import FieldError

logger = logging.getLogger("anymodel.server")

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 422: "invalid_request_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | int | None = None) -> dict:
    info = ErrorInfo(message=message, type=_TYPES.get(status, "invalid_request_error"), param=param,
                     code=code if code is not None else status)
    return ErrorResponse(error=info).model_dump()


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


_BOUNDS = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"), "less_than_equal": ("le", "<="),
           "less_than": ("lt", "<")}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # loc is then a character position, not a field
            error = (err.get("ctx") or {}).get("error", "")
            parts.append(f"request body is not valid JSON ({error}, near character {err['loc'][-1]})")
            continue
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = param or (loc[0] if loc else None)
        parts.append(_one_error(".".join(loc) or "body", err))
    return "; ".join(parts) or "invalid request", param


def _one_error(where: str, err: dict) -> str:
    """A range error in the engine's words ("n must be >= 1, got 0"); others as pydantic says them."""
    kind, ctx = err.get("type"), err.get("ctx") or {}
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        key, op = _BOUNDS[kind]
        return f"{where} must be {op} {ctx[key]}, got {err.get('input')!r}"
    return f"{where}: {err.get('msg', 'invalid').removeprefix('Value error, ')}"


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(FieldError)  # an unimplemented field, or text that is not Unicode
    async def _field_error(_: Request, exc: FieldError):
        return error_response(400, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)  # bad JSON and bad field types alike
    async def _invalid(_: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param)

    @app.exception_handler(ValueError)  # SamplingParams / Engine.add_request reject the input
    async def _value_error(_: Request, exc: ValueError):
        return error_response(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        response = error_response(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = _allowed_methods(request)
        return response

    @app.exception_handler(EngineStepError)
    @app.exception_handler(EngineDeadError)
    @app.exception_handler(EngineFatalError)  # logged once by the engine loop: no traceback per request
    async def _engine(_: Request, exc: Exception):
        return error_response(500, str(exc))


class CatchAllMiddleware:
    """Any other exception: a 500 in OpenAI's shape, and the connection stays open.

    Added last, so it wraps everything but Starlette's ServerErrorMiddleware (which never sees an
    exception now). If the response had started already (a stream), no status can be sent any
    more: the exception goes on to uvicorn, which logs it and closes that one connection.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            await error_response(500, f"internal error: {type(exc).__name__}: {exc}")(scope, receive, send)
