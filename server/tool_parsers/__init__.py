"""Tool-call parsers: model output text -> OpenAI tool calls (base.py), the built-in formats
(formats.py) and the registry that plugins add to (registry.py)."""

from .base import ExtractedToolCalls, ToolCall, ToolParser
from .registry import TOOL_PARSERS, get_tool_parser, load_plugin, register_tool_parser
from . import formats  # noqa: F401  (registers hermes, llama3_json, mistral)

__all__ = ["ToolParser", "ToolCall", "ExtractedToolCalls", "TOOL_PARSERS", "get_tool_parser", "load_plugin",
           "register_tool_parser"]
