"""`anymodel serve` tool and reasoning flags are checked before the model loads: a bad one is one
error line naming it (exit status 2)."""

from __future__ import annotations

import pytest

from anymodel.server.cli import main


@pytest.mark.parametrize("flags, message", [
    (["--enable-auto-tool-choice"], "--enable-auto-tool-choice needs --tool-call-parser"),
    (["--enable-auto-tool-choice", "--tool-call-parser", "nope"], "unknown tool call parser 'nope'"),
    (["--reasoning-parser", "o1"], "unknown reasoning parser 'o1'"),
    (["--tool-parser-plugin", "/nonexistent/plugin.py"], "is not a file"),
    (["--guided-decoding-backend", "guidance"], "'guidance' (llguidance) is not supported"),
    (["--structured-outputs-config", '{"backend": "outlines"}'], "must be one of"),
])
def test_bad_flags_stop_serve_with_one_line(capsys, flags, message):
    assert main(["serve", "--port", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
