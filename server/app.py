"""build_app(engine_args) -> FastAPI: the OpenAI-compatible server around one AsyncEngine.

    GET  /health               200 while the engine loop runs (never needs the API key); HEAD too
    GET|POST /ping             the same (SageMaker's probe)
    GET  /load                 {"server_load": requests in flight} (server/request_tracking.py)
    GET  /tokenizer_info       the tokenizer as clients need it (--enable-tokenizer-info-endpoint)
    POST /invocations          SageMaker's endpoint, routed by the body's shape (server/invocations.py)
    GET  /v1/models            the served model (each --served-model-name) and its LoRA adapters; HEAD too
    POST /v1/completions       text completions, `stream: true` as SSE
    POST /v1/chat/completions  chat (tokenizer's template or --chat-template), SSE too
    POST /tokenize, /detokenize
    GET  /metrics              Prometheus text format, this app's own registry
    GET  /version              HEAD too

A fatal engine error (a tensor-parallel worker died) makes /health 503 and calls `on_fatal`, which
`anymodel serve` uses to stop the server and exit non-zero, so that an orchestrator restarts it.
"""

from __future__ import annotations

import copy
import logging
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from anymodel.config import EngineArgs

from .async_engine import AsyncEngine
from .chat import ChatHandler
from .chat_output import ChatOptions
from .completions import CompletionHandler
from .disconnect import unless_disconnected
from .errors import CatchAllMiddleware, error_response, install_error_handlers
from .lora_models import LoRAModulePath, ServedLoRAs, add_lora_routes, load_startup_loras
from .metrics import ServerMetrics
from .openapi import install_openapi
from .invocations import add_invocations_route
from .pooling_routes import invocation_routes
from .pooling_routes import router as pooling_router
from .protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, ModelCard, ModelList,
                       TokenizeRequest)
from .request_fields import MAX_PROMPTS_PER_REQUEST
from .request_tracking import RequestTracker, ServerLoad, access_record, client_request_id
from .serving import check_model, json_response, served_names
from .tokenization import TokenizationHandler
from .tokenizer_thread import TokenizerThread

logger = logging.getLogger("anymodel.server")


class APIKeyMiddleware:
    """Every route but /health and /ping needs `Authorization: Bearer KEY`.

    Plain ASGI rather than @app.middleware("http"): the latter wraps `receive`, which hides the
    client's disconnect from streaming responses.
    """

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ("/health", "/ping") or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(401, "Incorrect or missing API key; send `Authorization: Bearer <key>`.",
                                  code="invalid_api_key")
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        return secrets.compare_digest(given, self.expected)


def _server_tokenizer(tokenizer: Any) -> Any:
    # The engine thread uses its tokenizer at every step; a copy keeps the event loop's
    # tokenize/template calls off a shared (Rust-backed, not re-entrant) object.
    try:
        return copy.deepcopy(tokenizer)
    except Exception:
        return tokenizer


def _fatal_hook(on_fatal: Callable[[BaseException], None] | None) -> Callable[[BaseException], None]:
    """What the async engine calls (once, from its thread) when the engine can go on no longer."""

    def hook(error: BaseException) -> None:
        logger.critical("the engine failed and cannot recover (%s: %s); /health now answers 503%s",
                        type(error).__name__, error, "; the server shuts down" if on_fatal else "")
        if on_fatal is not None:
            on_fatal(error)

    return hook


@dataclass
class ServeOptions:
    """build_app's options beyond the engine's (the `anymodel serve` flags that shape the HTTP side)."""

    api_key: str | None = None
    max_prompts_per_request: int = MAX_PROMPTS_PER_REQUEST
    # called once if the engine dies for good (`anymodel serve` exits then)
    on_fatal: Callable[[BaseException], None] | None = None
    chat_options: ChatOptions = field(default_factory=ChatOptions)  # tool-call and reasoning parsers
    lora_modules: list[LoRAModulePath] = field(default_factory=list)  # adapters served by name (enable_lora)
    metrics_prefix: str | None = None  # "anymodel" or "vllm" (default $ANYMODEL_METRICS_PREFIX or "anymodel")
    enable_tokenizer_info_endpoint: bool = False  # GET /tokenizer_info (off, as in vLLM: it shows the template)
    enable_force_include_usage: bool = False  # every stream ends with a usage chunk, asked for or not


def build_app(engine_args: EngineArgs | None = None, *, engine: Any = None, **options: Any) -> FastAPI:
    """The server for `engine_args`; `engine`: an already-built Engine (tests pass fakes), by default
    one is built from engine_args; `options`: ServeOptions' fields (a TypeError names an unknown one)."""
    engine_args = engine_args or EngineArgs()
    opts = ServeOptions(**{k: v for k, v in options.items() if v is not None})
    _check_options(engine_args, opts)
    if engine is None:
        from anymodel.engine.engine import Engine

        engine = Engine(opts.chat_options.engine_args(engine_args))  # grammars start after the reasoning
    loras = ServedLoRAs(engine.model_name) if engine_args.enable_lora else None
    if loras is not None:
        load_startup_loras(engine, loras, opts.lora_modules)  # before the engine thread owns the engine
    async_engine = _start_engine(engine, engine_args, opts)
    app, load = _new_app(async_engine, engine_args, opts)
    _add_routes(app, engine, async_engine, engine_args, opts, loras)
    _add_ops_routes(app, async_engine, load)
    return app


def _check_options(engine_args: EngineArgs, opts: ServeOptions) -> None:
    if engine_args.skip_tokenizer_init:
        raise ValueError("skip_tokenizer_init=True is offline-only (LLM(...)): the server tokenizes prompts, renders "
                         "chat templates and returns text; serve without --skip-tokenizer-init")
    if opts.lora_modules and not engine_args.enable_lora:
        raise ValueError("--lora-modules needs --enable-lora")


def _start_engine(engine: Any, engine_args: EngineArgs, opts: ServeOptions) -> AsyncEngine:
    """The engine thread, with its metrics, stats line and fatal hook, started."""
    async_engine = AsyncEngine(engine)
    async_engine.metrics = ServerMetrics(lambda: async_engine.stats, engine.model_name, opts.metrics_prefix,
                                         engine.max_model_len)
    async_engine.on_fatal = _fatal_hook(opts.on_fatal)  # before start(): the engine thread may call it
    if not engine_args.disable_log_stats:
        from .stats_logger import StatsLogger

        async_engine.stats_logger = StatsLogger()
    async_engine.start()
    return async_engine


def _new_app(async_engine: AsyncEngine, engine_args: EngineArgs, opts: ServeOptions) -> tuple[FastAPI, ServerLoad]:
    """The FastAPI app: lifespan, shared state, error handling, schema and middleware."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        async_engine.shutdown()

    app = FastAPI(title="anymodel", description="OpenAI-compatible API", lifespan=lifespan)
    app.state.async_engine = async_engine
    app.state.max_prompts_per_request = opts.max_prompts_per_request
    app.state.chat_template = engine_args.chat_template
    install_error_handlers(app)
    install_openapi(app)
    if opts.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=opts.api_key)
    app.add_middleware(CatchAllMiddleware)  # it also covers the API-key check
    load = ServerLoad()
    app.add_middleware(RequestTracker, load=load)  # outermost: ids, /load and the access line see everything
    return app, load


def _add_routes(app: FastAPI, engine: Any, async_engine: AsyncEngine, engine_args: EngineArgs, opts: ServeOptions,
                loras: ServedLoRAs | None) -> None:
    """Completions, chat, models, tokenizer, LoRA, pooling and /invocations routes."""
    tokenizer = _server_tokenizer(engine.tokenizer)
    template = engine_args.chat_template
    prep = TokenizerThread(tokenizer)  # tokenize and render off the event loop, on its own copy
    completions = CompletionHandler(async_engine, engine.model_name, tokenizer, opts.max_prompts_per_request)
    chat = ChatHandler(async_engine, engine.model_name, tokenizer, chat_template=template,
                       options=opts.chat_options.for_engine(engine))
    for handler in (completions, chat):
        handler.loras, handler.prep, handler.force_include_usage = loras, prep, opts.enable_force_include_usage
    generation_routes = _add_openai_routes(app, completions, chat)
    _add_model_routes(app, served_names(engine), engine_args.model or engine.model_name, engine.max_model_len, loras)
    _add_tokenizer_routes(app, TokenizationHandler(prep.tokenizer, engine.max_model_len, template), prep,
                          served_names(engine), loras)
    if opts.enable_tokenizer_info_endpoint:
        info = TokenizationHandler(tokenizer, engine.max_model_len, template)
        app.add_api_route("/tokenizer_info", info.info, methods=["GET"])
    if loras is not None:
        add_lora_routes(app, loras, async_engine)
    app.include_router(pooling_router)  # /v1/embeddings, /pooling, /classify, /score, /rerank
    add_invocations_route(app, {**generation_routes, **invocation_routes()}, engine.task)


def _add_openai_routes(app: FastAPI, completions: CompletionHandler, chat: ChatHandler) -> dict:
    """The two routes; returns them for /invocations (kind -> (request model, endpoint))."""
    @app.post("/v1/completions")
    async def create_completion(body: CompletionRequest, raw: Request):
        return await unless_disconnected(raw, completions.create(body, client_request_id(raw), access_record(raw)))

    @app.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest, raw: Request):
        return await unless_disconnected(raw, chat.create(body, client_request_id(raw), access_record(raw)))

    return {"completions": (CompletionRequest, create_completion), "chat": (ChatCompletionRequest, create_chat_completion)}


def _with_head(app: FastAPI, path: str, endpoint: Callable) -> None:
    """HEAD beside a GET route (FastAPI adds none): load balancers and `curl -I` probe this way.
    Kept out of the schema, where it would repeat the GET operation's id."""
    app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)


def _add_model_routes(app: FastAPI, names: tuple[str, ...], root: str, max_model_len: int,
                      loras: ServedLoRAs | None) -> None:
    @app.get("/v1/models", response_model=ModelList)
    async def list_models():
        adapters = [ModelCard(id=r.lora_name, root=r.lora_path, parent=names[0], max_model_len=max_model_len)
                    for r in (loras.by_name.values() if loras is not None else ())]
        bases = [ModelCard(id=name, root=root, max_model_len=max_model_len) for name in names]
        return json_response(ModelList(data=[*bases, *adapters]))

    _with_head(app, "/v1/models", list_models)


def _add_tokenizer_routes(app: FastAPI, handler: TokenizationHandler, prep: TokenizerThread, names: tuple[str, ...],
                          loras: ServedLoRAs | None) -> None:
    def check(model: str | None) -> None:  # an adapter tokenizes as its base model
        loras.resolve(model) if loras is not None and model and model not in names else check_model(model, names)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        check(body.model)
        return json_response(await prep.call(handler.tokenize, body))

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        check(body.model)
        return json_response(await prep.call(handler.detokenize, body))


def _add_ops_routes(app: FastAPI, async_engine: AsyncEngine, load: ServerLoad) -> None:
    @app.get("/health", responses={503: {"description": "the engine loop is not running"}})
    async def health():
        if not async_engine.is_alive:
            return error_response(503, "the engine loop is not running")
        return Response(status_code=200)

    # SageMaker's health probe (vLLM serves it too), GET or POST
    app.add_api_route("/ping", health, methods=["GET"], responses={503: {"description": "engine down"}})
    app.add_api_route("/ping", health, methods=["POST"], include_in_schema=False)  # the GET documents it

    @app.get("/load")
    async def server_load():
        """Requests in flight (a stream counts until its last byte): vLLM's figure for load-aware routers."""
        return {"server_load": load.in_flight}

    # Prometheus text exposition format, not JSON
    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def metrics():
        return Response(content=async_engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def version():
        from anymodel import __version__

        return {"version": __version__}

    for path, endpoint in (("/health", health), ("/version", version)):
        _with_head(app, path, endpoint)
