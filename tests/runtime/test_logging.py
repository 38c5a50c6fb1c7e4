"""The `anymodel` logger's default output: INFO to stderr in vLLM's format, ANYMODEL_LOGGING_LEVEL,
and silence when the application (a root handler, pytest's caplog) already takes the records."""

import logging
import os
import re
import subprocess
import sys

import pytest

from anymodel.logging_config import LEVEL_ENV, DefaultHandler, parse_level

LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d \d\d:\d\d:\d\d \[[\w<>.]+:\d+\] ")


def _run(code: str, level: str | None = None) -> list[str]:
    """stderr lines of a fresh interpreter that imports anymodel, then runs `code`."""
    env = {k: v for k, v in os.environ.items() if k != LEVEL_ENV}
    if level is not None:
        env[LEVEL_ENV] = level
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stderr.splitlines()


LOG_BOTH = ("import anymodel, logging; log = logging.getLogger('anymodel'); "
            "log.info('info-line'); log.debug('debug-line'); log.warning('warn-line')")


def test_info_by_default_in_vllm_format():
    lines = _run(LOG_BOTH)
    info = [line for line in lines if line.endswith("info-line")]
    assert len(info) == 1 and LINE.match(info[0]) and info[0].startswith("INFO ") and "[<string>:1]" in info[0]
    assert not any("debug-line" in line for line in lines)
    assert any(LINE.match(line) and line.endswith("warn-line") for line in lines)


def test_level_from_env_var():
    lines = _run(LOG_BOTH, level="warning")
    assert not any("info-line" in line for line in lines)
    assert any(line.endswith("warn-line") for line in lines)
    assert any(line.startswith("DEBUG ") and line.endswith("debug-line") for line in _run(LOG_BOTH, level="DEBUG"))


def test_invalid_level_warns_naming_the_allowed_values():
    lines = _run(LOG_BOTH, level="loud")
    warning = next(line for line in lines if LEVEL_ENV in line)
    assert warning.startswith("WARNING ") and "'loud'" in warning
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in warning
    assert any(line.endswith("info-line") for line in lines)  # falls back to INFO


def test_an_application_handler_takes_the_records_once():
    code = ("import logging; logging.basicConfig(format='APP %(name)s %(message)s'); " + LOG_BOTH.replace("import anymodel, logging; ", "import anymodel; "))
    lines = _run(code)
    assert [line for line in lines if "info-line" in line] == ["APP anymodel info-line"]


def test_parse_level():
    assert parse_level(None) == (logging.INFO, None)
    assert parse_level(" error ") == (logging.ERROR, None)
    level, problem = parse_level("verbose")
    assert level == logging.INFO and "allowed: DEBUG, INFO, WARNING, ERROR, CRITICAL" in problem


def test_caplog_sees_records_and_the_default_handler_stays_silent(caplog, capsys):
    logger = logging.getLogger("anymodel")
    assert any(isinstance(h, DefaultHandler) for h in logger.handlers)  # configured by `import anymodel`
    assert logger.propagate  # caplog (a root handler) must keep seeing the records
    with caplog.at_level(logging.INFO, logger="anymodel"):
        logger.info("anymodel: caplog-probe")
    assert "caplog-probe" in caplog.text
    assert "caplog-probe" not in capsys.readouterr().err


@pytest.mark.parametrize("handler_on", ["anymodel", "anymodel.server"])
def test_own_handler_on_the_package_logger_wins(handler_on, capsys):
    records = []
    app_handler = logging.Handler()
    app_handler.emit = records.append
    target = logging.getLogger(handler_on)
    target.addHandler(app_handler)
    root_handlers = logging.getLogger().handlers[:]
    logging.getLogger().handlers.clear()  # as in an application without root logging (pytest adds its own)
    try:
        logging.getLogger("anymodel.server").warning("own-handler-probe")
    finally:
        logging.getLogger().handlers[:] = root_handlers
        target.removeHandler(app_handler)
    assert [r.getMessage() for r in records] == ["own-handler-probe"]
    assert "own-handler-probe" not in capsys.readouterr().err


def test_start_up_facts_are_logged_once_at_info(caplog):
    from anymodel import LLM

    with caplog.at_level(logging.INFO, logger="anymodel"):
        llm = LLM(dtype="float32")
    text = caplog.text
    for fact in ("anymodel: native for LlamaForCausalLM: ",  # what runs and why (the model loader)
                 "attention backend 'torch' on cpu",
                 "KV blocks of 16 tokens (3 layers), ",
                 "bytes per block"):
        assert text.count(fact) == 1, fact
    ready = [r for r in caplog.records if "engine ready" in r.getMessage()]
    assert len(ready) == 1 and ready[0].levelno == logging.INFO and ready[0].filename == "engine.py"
    line = ready[0].getMessage()
    from anymodel.demo import DEMO_MODEL_DIR

    assert f"model {DEMO_MODEL_DIR} (revision default)" in line and "dtype float32" in line
    assert "tensor_parallel_size=1 pipeline_parallel_size=1" in line
    assert f"max_model_len {llm.engine.max_model_len}" in line and f"{llm.engine.kv.pool.num_blocks} KV blocks" in line


def test_a_rank_process_labels_its_lines():
    lines = _run("import anymodel, logging; from anymodel.logging_config import label_process; "
                 "label_process('Worker rank=1'); logging.getLogger('anymodel').info('rank-line')")
    line = next(line for line in lines if line.endswith("rank-line"))
    assert re.match(r"^\(Worker rank=1 pid=\d+\) INFO \d\d-\d\d ", line)
