"""The `anymodel` logger's default output, as vLLM's: INFO to stderr, one line per record.

    INFO 12-02 14:00:00 [engine.py:71] anymodel: model /path/to/model (revision None), ...

Configured once, when `anymodel` is imported. `ANYMODEL_LOGGING_LEVEL` names the level (DEBUG,
INFO, WARNING, ERROR, CRITICAL; default INFO). Records still propagate to the root logger, so an
application that configured logging (a root handler, uvicorn's, pytest's caplog) or put its own
handler on `anymodel` sees them there; the default handler then stays silent, so nothing is
written twice.
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER_NAME = "anymodel"
LEVEL_ENV = "ANYMODEL_LOGGING_LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMAT = "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"
DATE_FORMAT = "%m-%d %H:%M:%S"


class DefaultHandler(logging.StreamHandler):
    """stderr, unless another handler on the record's way up (the application's) takes it."""

    def __init__(self) -> None:
        super().__init__()  # the stream is looked up per record: sys.stderr may be replaced later
        self.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; stderr is read per record
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if not _other_handler_takes(record, self):
            super().emit(record)


def _other_handler_takes(record: logging.LogRecord, ours: logging.Handler) -> bool:
    logger = logging.getLogger(record.name)
    while logger is not None:
        if any(h is not ours and record.levelno >= h.level for h in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def parse_level(value: str | None) -> tuple[int, str | None]:
    """The level `ANYMODEL_LOGGING_LEVEL` names (INFO when unset), and a warning when it names none."""
    if value is None or not value.strip():
        return logging.INFO, None
    name = value.strip().upper()
    if name in LEVELS:
        return getattr(logging, name), None
    return logging.INFO, (f"{LEVEL_ENV}={value!r} is not a logging level; allowed: {', '.join(LEVELS)} "
                          "(case-insensitive); using INFO")


def configure_logging() -> None:
    """Once per process: the default handler and level on the `anymodel` logger."""
    logger = logging.getLogger(LOGGER_NAME)
    if any(isinstance(h, DefaultHandler) for h in logger.handlers):
        return
    level, problem = parse_level(os.environ.get(LEVEL_ENV))
    logger.setLevel(level)
    logger.addHandler(DefaultHandler())
    if problem:
        logger.warning("anymodel: %s", problem)


def label_process(label: str) -> None:
    """Prefix this process's default lines, as vLLM does for its workers: `(Worker rank=1 pid=4242) INFO ...`."""
    prefix = f"({label} pid={os.getpid()}) ".replace("%", "%%")
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        if isinstance(handler, DefaultHandler):
            handler.setFormatter(logging.Formatter(prefix + FORMAT, DATE_FORMAT))


def log_engine_summary(engine, model_dir) -> None:
    """The engine's start-up facts in one INFO line, at the end of Engine.__init__. What runs the model
    and why, the attention backend and the KV cache are logged where they are decided (the model
    loader, the backend selector, kv_cache/sizing.py); `llm.describe()` reports them all."""
    from anymodel import loader

    args = engine.args
    logging.getLogger(LOGGER_NAME).info(
        "anymodel: engine ready: model %s (revision %s), task %s, dtype %s, tensor_parallel_size=%d "
        "pipeline_parallel_size=%d, max_model_len %d, %d KV blocks of %d tokens",
        model_dir, args.revision or "default", engine.task, _dtype_name(loader.resolve_dtype(args.dtype, engine.hf_config)),
        args.tensor_parallel_size, args.pipeline_parallel_size, engine.max_model_len, engine.kv.pool.num_blocks,
        args.block_size, stacklevel=2)


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")
