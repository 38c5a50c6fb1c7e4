"""Tool calls as they stream: content until the format's start marker, then each call once it is
complete, as OpenAI streams them (first delta: index, id, type, name; then the arguments).

    stream = StreamingToolCalls(parser)
    content, calls = stream.feed(delta_text, finished)   # calls: [DeltaToolCall]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..text_markers import held_back
from ..tool_protocol import DeltaFunctionCall, DeltaToolCall
from .base import ToolCall, ToolParser


def call_deltas(index: int, call: ToolCall) -> list[DeltaToolCall]:
    """One call as OpenAI streams it: its id and name first, then its arguments."""
    return [DeltaToolCall(index=index, id=call.id, type="function", function=DeltaFunctionCall(name=call.name, arguments="")),
            DeltaToolCall(index=index, function=DeltaFunctionCall(arguments=call.arguments))]


@dataclass
class StreamingToolCalls:
    parser: ToolParser
    text: str = ""
    sent_content: int = 0  # characters of `text` sent as content
    calls: list[ToolCall] = field(default_factory=list)  # sent (ids fixed once sent)

    def feed(self, delta: str, finished: bool) -> tuple[str, list[DeltaToolCall]]:
        self.text += delta
        at = self.parser.starts_calls(self.text)
        if at < 0:
            end = len(self.text) - (0 if finished else held_back(self.text, self.parser.start))
            return self._content_until(end), []
        content = self._content_until(at)
        found = self.parser.extract(self.text)
        if finished and not found.tools_called:  # it was not a call after all: the rest is content
            return content + self._content_until(len(self.text)), []
        deltas = []
        for call in found.calls[len(self.calls):]:
            deltas += call_deltas(len(self.calls), call)
            self.calls.append(call)
        return content, deltas

    def _content_until(self, end: int) -> str:
        piece = self.text[self.sent_content:end] if end > self.sent_content else ""
        self.sent_content = max(self.sent_content, end)
        return piece
