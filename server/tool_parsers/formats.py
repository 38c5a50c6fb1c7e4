"""The built-in tool-call formats: hermes (Qwen2.5/3, Hermes), llama3_json, mistral."""

from __future__ import annotations

import re

from .base import ExtractedToolCalls, ToolParser, call_from, json_values, mistral_id
from .registry import register_tool_parser


def _content(text: str) -> str | None:
    return text if text.strip() else None


@register_tool_parser("hermes")
class HermesToolParser(ToolParser):
    """<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call> (one tag per call)."""

    start = "<tool_call>"
    _CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)

    def extract(self, text: str) -> ExtractedToolCalls:
        at = text.find(self.start)
        if at < 0:
            return ExtractedToolCalls([], text)
        calls = []
        for body in self._CALL.findall(text[at:]):
            values = json_values(body.strip())
            call = call_from(values[0]) if values else None
            if call is None:
                return ExtractedToolCalls([], text)  # not a call after all: the text is the answer
            calls.append(call)
        return ExtractedToolCalls(calls, _content(text[:at]))


@register_tool_parser("llama3_json")
class Llama3JsonToolParser(ToolParser):
    """Llama 3.1+: {"name": "f", "parameters": {...}} (several separated by ';'), maybe after <|python_tag|>."""

    start = "{"
    _TAG = "<|python_tag|>"

    def starts_calls(self, text: str) -> int:
        stripped = text.replace(self._TAG, "").lstrip()
        return 0 if stripped.startswith("{") else -1

    def extract(self, text: str) -> ExtractedToolCalls:
        body = text.replace(self._TAG, "").strip()
        if not body.startswith("{"):
            return ExtractedToolCalls([], text)
        calls = [call_from(v) for v in json_values(body)]
        if not calls or any(c is None for c in calls):
            return ExtractedToolCalls([], text)
        return ExtractedToolCalls(calls, None)


@register_tool_parser("mistral")
class MistralToolParser(ToolParser):
    """[TOOL_CALLS] [{"name": "f", "arguments": {...}}, ...]  or (v11 tokenizers) [TOOL_CALLS]f[ARGS]{...}."""

    start = "[TOOL_CALLS]"
    _ARGS = re.compile(r"([A-Za-z0-9_\-.]+)\[ARGS\]")

    def extract(self, text: str) -> ExtractedToolCalls:
        at = text.find(self.start)
        if at < 0:
            return ExtractedToolCalls([], text)
        calls = []
        for part in text[at + len(self.start):].split(self.start):
            part = part.strip()
            named = self._ARGS.match(part)
            if named:
                values = json_values(part[named.end():])
                objs = [{"name": named.group(1), "arguments": values[0]}] if values else []
            else:
                values = json_values(part)
                objs = values[0] if values and isinstance(values[0], list) else values
            found = [call_from(o, mistral_id) for o in objs]
            if not found or any(c is None for c in found):
                return ExtractedToolCalls([], text)
            calls += found
        return ExtractedToolCalls(calls, _content(text[:at]))
