"""What a chat request's `tools` and `tool_choice` do to its generation and its answer.

    none      tools reach the chat template; the text is the answer
    auto      the server's --tool-call-parser finds calls in the text (--enable-auto-tool-choice)
    required  a grammar makes the output a JSON array of calls [{"name", "parameters"}], at least one
    named     a grammar makes the output the named function's arguments (its `parameters` schema)

With required and named the output is always a valid call (the grammar's end is EOS).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from anymodel.structured_output.params import StructuredOutputsParams

from .errors import APIError
from .tool_parsers import ExtractedToolCalls, ToolCall, ToolParser, get_tool_parser
from .tool_parsers.base import call_from, json_values
from .tool_parsers.streaming import StreamingToolCalls, call_deltas
from .tool_protocol import ChatTool, DeltaToolCall, NamedToolChoice


class RequiredCallsParser(ToolParser):
    """tool_choice="required": the output is [{"name": ..., "parameters": {...}}, ...]."""

    start = "["

    def starts_calls(self, text: str) -> int:
        return 0

    def extract(self, text: str) -> ExtractedToolCalls:
        body = text.strip()
        values = json_values(body[1:]) if body.startswith("[") else []
        calls = [call_from(v) for v in values]
        return ExtractedToolCalls([c for c in calls if c is not None], None)


def required_schema(tools: list[ChatTool], parallel: bool) -> dict:
    """An array of calls of the given tools, each {"name": that tool, "parameters": its schema} (vLLM's)."""
    one_of = [{"type": "object",
               "properties": {"name": {"type": "string", "enum": [t.function.name]},
                              "parameters": t.function.parameters or {"type": "object", "properties": {}}},
               "required": ["name", "parameters"]} for t in tools]
    schema = {"type": "array", "minItems": 1, "items": {"anyOf": one_of}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


@dataclass
class ToolPlan:
    mode: str = "none"  # none | auto | required | named
    tools: list[ChatTool] = field(default_factory=list)
    named: Optional[ChatTool] = None
    parser: Optional[ToolParser] = None
    parallel: bool = True

    def structured_outputs(self) -> Optional[StructuredOutputsParams]:
        if self.mode == "named":
            return StructuredOutputsParams(json=self.named.function.parameters or {"type": "object", "properties": {}})
        if self.mode == "required":
            return StructuredOutputsParams(json=required_schema(self.tools, self.parallel))
        return None

    def final(self, text: str, finish_reason: Optional[str]) -> tuple[Optional[str], list[ToolCall], Optional[str]]:
        """(content, calls, finish_reason) of a finished choice."""
        if self.mode == "named":
            if finish_reason != "stop":  # cut short: the arguments are not complete
                return text, [], finish_reason
            return None, [ToolCall(self.named.function.name, text)], "tool_calls"
        if self.parser is None:
            return text, [], finish_reason
        found = self.parser.extract(text)
        if not found.tools_called:
            return text, [], finish_reason
        return found.content, found.calls, "tool_calls" if finish_reason == "stop" else finish_reason

    def streamer(self) -> "ToolStream":
        return ToolStream(self)


@dataclass
class ToolStream:
    """One choice's stream: feed(text delta, finish_reason) -> (content, tool call deltas, finish_reason)."""

    plan: ToolPlan
    sent_name: bool = False
    inner: Optional[StreamingToolCalls] = None
    called: bool = False

    def __post_init__(self) -> None:
        if self.plan.parser is not None:
            self.inner = StreamingToolCalls(self.plan.parser)

    def feed(self, delta: str, finish_reason: Optional[str]) -> tuple[str, list[DeltaToolCall], Optional[str]]:
        if self.plan.mode == "named":  # every piece of text is a piece of the arguments
            deltas = [] if self.sent_name else call_deltas(0, ToolCall(self.plan.named.function.name, ""))[:1]
            self.sent_name = True
            if delta:
                deltas += call_deltas(0, ToolCall("", delta))[1:]
            return "", deltas, "tool_calls" if finish_reason == "stop" else finish_reason
        if self.inner is None:
            return delta, [], finish_reason
        content, deltas = self.inner.feed(delta, finish_reason is not None)
        self.called = self.called or bool(self.inner.calls)
        return content, deltas, "tool_calls" if finish_reason == "stop" and self.called else finish_reason


def plan_tools(tools: Optional[list[ChatTool]], tool_choice, parallel: Optional[bool], auto_parser: Optional[type],
               tokenizer) -> ToolPlan:
    """The request's ToolPlan; 400 for a combination that cannot run."""
    tools = tools or []
    choice = tool_choice if tool_choice is not None else ("auto" if tools else "none")
    if choice == "auto" and not tools:
        choice = "none"  # nothing to choose from: asks for nothing
    if choice != "none" and not tools:
        raise APIError(400, f"tool_choice {_show(choice)} needs `tools`", param="tool_choice")
    if isinstance(choice, NamedToolChoice):
        named = next((t for t in tools if t.function.name == choice.function.name), None)
        if named is None:
            raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not in `tools` "
                                f"({[t.function.name for t in tools]})", param="tool_choice")
        return ToolPlan("named", tools, named)
    if choice == "required":
        return ToolPlan("required", tools, parser=RequiredCallsParser(), parallel=parallel is not False)
    if choice == "auto":
        if auto_parser is None:
            raise APIError(400, '"auto" tool choice requires the server to run with --enable-auto-tool-choice and '
                                "--tool-call-parser NAME", param="tool_choice")
        return ToolPlan("auto", tools, parser=auto_parser(tokenizer))
    return ToolPlan("none", tools)


def _show(choice) -> str:
    return json.dumps(choice.model_dump()) if isinstance(choice, NamedToolChoice) else repr(choice)


def tool_parser_class(name: Optional[str]) -> Optional[type]:
    return None if name is None else get_tool_parser(name)
