"""AsyncEngine: one thread owns the synchronous Engine; coroutines talk to it through queues.

    event loop (any number of coroutines)           engine thread (exactly one; Engine is not thread-safe)
    add() / abort() ── Command: queue.Queue ───►    apply all pending commands, then engine.step()
    RequestStream   ◄─ asyncio.Queue per request ── RequestDelta (call_soon_threadsafe)
                                                    publish an EngineStats snapshot for /metrics

With no unfinished request the thread blocks on the command queue, so an idle server uses no CPU;
it wakes every `health_check_interval` seconds to call `engine.check_health()` (when the engine has
one: a dead worker rank is found while idle, not at the next request).

Failures, narrowest first:
- one request failed inside a step (its output carries a RequestFailedError): only its stream gets
  the error (a RequestStepError, HTTP 500); the other requests stream on;
- step() raised an ordinary exception: the requests it was running fail (HTTP 500); the loop goes on;
- step() or check_health() raised an EngineFatalError (a worker died): every request in flight gets
  that error at once, the loop stops (`is_alive` False: /health answers 503) and `on_fatal(error)`
  is called once, so that the CLI can exit and an orchestrator restart the server.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from anymodel.errors import EngineFatalError, RequestFailedError
from anymodel.outputs import EngineStats, RequestOutput

from .delta import DeltaTracker, RequestDelta
from .metrics import ServerMetrics

logger = logging.getLogger("anymodel.server")


class EngineStepError(RuntimeError):
    """The engine raised while this request was in flight (HTTP 500)."""


class EngineDeadError(RuntimeError):
    """The engine loop is not running (shut down, or crashed) (HTTP 500)."""


class RequestStepError(EngineStepError, RequestFailedError):
    """One request failed inside a step and only it ended: the engine's RequestFailedError, as an
    EngineStepError so that the app answers 500 (or ends a started stream in-band) like any step error."""

    def __init__(self, error: RequestFailedError):
        RuntimeError.__init__(self, str(error))
        self.request_id = error.request_id


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    _settle(future, None, error)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the waiting coroutine was cancelled meanwhile
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


@dataclass
class _Request:
    """Engine-thread bookkeeping of one request: where its outputs go, and its timings."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    arrival: float
    tracker: DeltaTracker = field(default_factory=DeltaTracker)
    last_token_time: float | None = None

    def send(self, item: RequestDelta | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # its event loop is closed: nobody is listening any more
            pass

    def resolve(self, ack: asyncio.Future, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(_resolve, ack, error)
        except RuntimeError:
            pass


@dataclass(frozen=True)
class AddCommand:
    """Add a request; `ack` resolves on the caller's loop once the engine accepted (or refused) it."""

    request_id: str
    prompt: Any
    params: Any
    request: _Request
    ack: asyncio.Future
    lora_request: Any = None  # anymodel.LoRARequest (None: the base model)
    priority: int = 0  # scheduling_policy="priority": lower runs first


@dataclass(frozen=True)
class CallCommand:
    """fn(engine) on the engine thread (e.g. loading a LoRA adapter); `ack` gets its result or error."""

    fn: Callable[[Any], Any]
    loop: asyncio.AbstractEventLoop
    ack: asyncio.Future


@dataclass(frozen=True)
class AbortCommand:
    request_id: str


@dataclass(frozen=True)
class StopCommand:
    """Stop the loop once the commands queued before it are applied."""


Command = Union[AddCommand, AbortCommand, CallCommand, StopCommand]


class RequestStream:
    """Event-loop side of one request: `async for delta in stream` until it finishes.

    Whoever stops iterating early must call `close()` (it aborts the request and frees its KV
    blocks); after the final delta it is a no-op.
    """

    def __init__(self, request_id: str, q: asyncio.Queue, abort: Callable[[str], None]):
        self.request_id = request_id
        self.finished = False
        self._queue = q
        self._abort = abort
        self._pending_error: BaseException | None = None

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestDelta:
        if self._pending_error is not None:
            self._fail(self._pending_error)
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._fail(item)
        # a slow reader takes the whole backlog at once: deltas merge by concatenation
        while not item.finished and not self._queue.empty():
            later = self._queue.get_nowait()
            if isinstance(later, BaseException):
                self._pending_error = later
                break
            item.merge(later)
        self.finished = item.finished
        return item

    def _fail(self, error: BaseException) -> None:
        self.finished = True  # the engine thread already dropped it
        self._pending_error = None
        raise error

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self._abort(self.request_id)


class AsyncEngine:
    def __init__(self, engine: Any, metrics: ServerMetrics | None = None):
        self.engine = engine
        self.metrics = metrics
        self.stats: EngineStats | None = None  # last snapshot; replaced whole, so readers need no lock
        self._commands: queue.Queue[Command] = queue.Queue()
        self._requests: dict[str, _Request] = {}  # engine thread only
        self._lock = threading.Lock()  # orders "closed" against new adds
        self._closed = False
        # Called once (from the engine thread) after an EngineFatalError stopped the loop.
        self.on_fatal: Callable[[BaseException], None] | None = None
        self.health_check_interval = 1.0  # seconds between engine.check_health() calls while idle
        self._thread = threading.Thread(target=self._run, name="anymodel-engine", daemon=True)

    # ------------------------------------------------------------------ event-loop side
    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._commands.put(StopCommand())
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.engine.shutdown()  # worker processes of a multiprocess/Ray executor

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len  # set at construction, safe to read from the event loop

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    async def call(self, fn: Callable[[Any], Any]) -> Any:
        """fn(engine) between steps, on the engine thread; its exception is raised here."""
        loop = asyncio.get_running_loop()
        ack = loop.create_future()
        with self._lock:
            if self._closed:
                raise EngineDeadError("the engine loop is not running")
            self._commands.put(CallCommand(fn, loop, ack))
        return await ack

    async def add(self, request_id: str, prompt: Any, params: Any, lora_request: Any = None,
                  priority: int = 0) -> RequestStream:
        """Hand a request to the engine; raises the engine's ValueError for invalid input."""
        loop = asyncio.get_running_loop()
        ack = loop.create_future()
        tracker = DeltaTracker.for_stops(getattr(params, "stop", None))
        req = _Request(loop, asyncio.Queue(), time.monotonic(), tracker)
        with self._lock:
            if self._closed:
                raise EngineDeadError("the engine loop is not running")
            self._commands.put(AddCommand(request_id, prompt, params, req, ack, lora_request, priority))
        try:
            await ack
        except asyncio.CancelledError:  # client gone before the engine even saw the request
            self.abort(request_id)
            raise
        return RequestStream(request_id, req.queue, self.abort)

    def abort(self, request_id: str) -> None:
        self._commands.put(AbortCommand(request_id))

    # ------------------------------------------------------------------ engine-thread side
    def _run(self) -> None:
        error: BaseException = EngineDeadError("the engine loop stopped")
        try:
            self._publish_stats()
            while self._apply_commands(block=not self.engine.has_unfinished()):
                if self.engine.has_unfinished():
                    self._step()
                self._publish_stats()
        except EngineFatalError as e:  # a worker died: nothing can run any more
            logger.error("engine failed, stopping: %s: %s", type(e).__name__, e)
            error = e
        except BaseException:  # a bug here must not leave clients waiting forever
            logger.exception("engine loop crashed")
        finally:
            self._close(error)
        if isinstance(error, EngineFatalError):
            self._notify_fatal(error)

    def _notify_fatal(self, error: EngineFatalError) -> None:
        if self.on_fatal is None:
            return
        try:
            self.on_fatal(error)
        except Exception:
            logger.exception("on_fatal hook failed")

    def _apply_commands(self, block: bool) -> bool:
        """Apply every pending command; False on a StopCommand. Blocks for the first one when idle."""
        try:
            cmd = self._next_command() if block else self._commands.get_nowait()
        except queue.Empty:
            return True
        while not isinstance(cmd, StopCommand):
            if isinstance(cmd, AddCommand):
                self._add(cmd)
            elif isinstance(cmd, CallCommand):
                self._call(cmd)
            else:
                self._abort(cmd.request_id)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return True
        return False

    def _next_command(self) -> Command:
        """Wait for a command, checking the engine's health between waits. Only commands change an
        idle engine, so nothing else (has_unfinished, step) runs while it waits."""
        while True:
            try:
                return self._commands.get(timeout=self.health_check_interval)
            except queue.Empty:
                self._check_health()

    def _check_health(self) -> None:
        """engine.check_health() raises EngineFatalError (WorkerDiedError) when a rank is gone: that
        stops the loop (see _run). Anything else it raises is its own bug: logged, the loop goes on."""
        check = getattr(self.engine, "check_health", None)
        if check is None:
            return
        try:
            check()
        except EngineFatalError:
            raise
        except Exception:
            logger.exception("engine.check_health() failed")

    def _call(self, cmd: CallCommand) -> None:
        try:
            result, error = cmd.fn(self.engine), None
        except Exception as e:  # noqa: BLE001 - the caller re-raises it
            result, error = None, e
        cmd.loop.call_soon_threadsafe(_settle, cmd.ack, result, error)

    def _add(self, cmd: AddCommand) -> None:
        # only what the request sets: an engine without LoRA or priorities takes the plain call
        extra = {k: v for k, v in (("lora_request", cmd.lora_request), ("priority", cmd.priority)) if v}
        try:
            self.engine.add_request(cmd.request_id, cmd.prompt, cmd.params, **extra)
        except Exception as e:  # ValueError: a bad request (400); anything else: 500
            cmd.request.resolve(cmd.ack, e)
            return
        self._requests[cmd.request_id] = cmd.request
        cmd.request.resolve(cmd.ack, None)

    def _abort(self, request_id: str) -> None:
        if self._requests.pop(request_id, None) is None:  # finished (or failed) already
            return
        try:
            self.engine.abort(request_id)
        except Exception:
            logger.exception("engine.abort(%r) failed", request_id)
        if self.metrics is not None:
            self.metrics.finished("abort")

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except EngineFatalError:
            raise  # the loop stops (see _run)
        except Exception as e:
            logger.exception("engine step failed")
            self._fail_all(EngineStepError(f"engine step failed: {type(e).__name__}: {e}"))
            return
        now = time.monotonic()
        if self.metrics is not None:
            self.metrics.step(getattr(self.engine, "last_step_num_tokens", 0))
        for out in outputs:
            req = self._requests.get(out.request_id)
            if req is not None:  # None: aborted since it was scheduled
                self._deliver(out.request_id, req, out, now)

    def _deliver(self, request_id: str, req: _Request, out: RequestOutput, now: float) -> None:
        error = getattr(out, "error", None)
        if error is not None:  # this request alone failed inside the step; it is over
            req.send(RequestStepError(error) if isinstance(error, RequestFailedError) else error)
            del self._requests[request_id]
            self._observe_finished(req, "error", now, None)
            return
        if not isinstance(out, RequestOutput):  # a PoolingRequestOutput: one final output, sent as is
            req.send(out)
            del self._requests[request_id]
            self._observe_finished(req, "stop", now, out)
            return
        delta = req.tracker.delta(out)
        if delta.num_new_tokens:
            self._observe_latency(req, now)
        if delta.samples or delta.finished:
            req.send(delta)
        if out.finished:
            del self._requests[request_id]
            reason = (out.outputs[0].finish_reason if out.outputs else None) or "unknown"
            self._observe_finished(req, reason, now, out)

    def _observe_finished(self, req: _Request, reason: str, now: float, out) -> None:
        if self.metrics is None:
            return
        try:  # metrics must never stop the engine loop
            self.metrics.finished(reason)
            self.metrics.request_done(out, now - req.arrival)
        except Exception:
            logger.exception("recording the metrics of request %s failed", getattr(out, "request_id", "?"))

    def _observe_latency(self, req: _Request, now: float) -> None:
        if self.metrics is not None:
            first = req.last_token_time is None
            self.metrics.token_latency(first, now - (req.arrival if first else req.last_token_time))
        req.last_token_time = now

    def _fail_all(self, error: BaseException) -> None:
        """We cannot tell which requests a failed step touched, so all in flight fail (and leave)."""
        ids = list(self._requests)
        for request_id in ids:
            self._requests.pop(request_id).send(error)
        try:
            self.engine.abort(ids)
        except Exception:
            logger.exception("engine abort after a failed step also failed")
        if self.engine.has_unfinished():
            time.sleep(0.05)  # an engine stuck with work we cannot clear: do not spin hot

    def _publish_stats(self) -> None:
        try:
            self.stats = self.engine.stats()
        except Exception:
            logger.exception("engine.stats() failed")

    def _close(self, error: BaseException) -> None:
        with self._lock:
            self._closed = True
        for req in self._requests.values():
            req.send(error)
        self._requests.clear()
        while True:  # adds that raced with the stop must not wait forever for their ack
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(cmd, AddCommand):
                cmd.request.resolve(cmd.ack, error)
