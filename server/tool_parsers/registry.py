"""Tool parsers by name (--tool-call-parser NAME), and plugins (--tool-parser-plugin file.py).

A plugin is a Python file that registers its parser:

    from anymodel.server.tool_parsers import ToolParser, ExtractedToolCalls, register_tool_parser

    @register_tool_parser("my_format")
    class MyParser(ToolParser):
        start = "<call>"
        def extract(self, text): ...
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL_PARSERS: dict[str, type] = {}


def register_tool_parser(name: str):
    def register(cls):
        TOOL_PARSERS[name] = cls
        return cls

    return register


def get_tool_parser(name: str) -> type:
    if name not in TOOL_PARSERS:
        raise ValueError(f"unknown tool call parser {name!r}; available: {sorted(TOOL_PARSERS)} "
                         "(or register one with --tool-parser-plugin FILE)")
    return TOOL_PARSERS[name]


def load_plugin(path: str) -> None:
    """Run a plugin file, which registers its parser(s) with register_tool_parser."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--tool-parser-plugin {path!r} is not a file")
    spec = importlib.util.spec_from_file_location(f"anymodel_tool_plugin_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
