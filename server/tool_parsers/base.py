"""ToolParser: a model's tool-call text -> OpenAI tool calls, whole or as it streams.

A parser knows one output format (hermes' <tool_call> tags, llama3's bare JSON, mistral's
[TOOL_CALLS]). `extract(text)` parses a finished output; streaming uses the same function on the
text so far (`StreamingToolCalls`): content before the format's start marker streams as content, a
call is sent once it is complete (first its id and name, then its arguments), the rest at the end.
"""

from __future__ import annotations

import json
import random
import string
import uuid
from dataclasses import dataclass, field


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text
    id: str = field(default_factory=lambda: f"chatcmpl-tool-{uuid.uuid4().hex}")


@dataclass
class ExtractedToolCalls:
    calls: list[ToolCall]
    content: str | None  # the text around the calls (None when there is none)

    @property
    def tools_called(self) -> bool:
        return bool(self.calls)


def arguments_text(arguments) -> str:
    """A call's arguments as JSON text (models write an object, or sometimes a JSON string of one)."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def json_values(text: str) -> list:
    """Consecutive JSON values in `text` (separated by whitespace, ',' or ';'); stops at the first
    thing that is not one (a call still being written)."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i] in " \t\r\n,;":
            i += 1
        if i >= len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return values
        values.append(value)


def call_from(obj, id_factory=None) -> ToolCall | None:
    """{"name": ..., "arguments" | "parameters": {...}} -> ToolCall; None for anything else."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    call = ToolCall(obj["name"], arguments_text(args))
    if id_factory is not None:
        call.id = id_factory()
    return call


def mistral_id() -> str:
    """Mistral's tool call ids: 9 letters and digits."""
    return "".join(random.choices(string.ascii_letters + string.digits, k=9))


class ToolParser:
    """Subclass, set `start` (the marker that opens the calls) and implement `extract`."""

    start: str = ""

    def __init__(self, tokenizer=None) -> None:
        self.tokenizer = tokenizer

    def extract(self, text: str) -> ExtractedToolCalls:
        raise NotImplementedError

    def starts_calls(self, text: str) -> int:
        """Where the calls begin in `text` (-1: not yet)."""
        return text.find(self.start) if self.start else -1
