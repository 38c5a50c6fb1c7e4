"""How a chat choice's text becomes the answer: reasoning split off (--reasoning-parser), then tool
calls found (tools / tool_choice), whole or streamed.

    ChatOptions       the server's flags: --enable-auto-tool-choice, --tool-call-parser,
                      --tool-parser-plugin, --reasoning-parser
    ChatOutputPlan    one request's: message(text, finish) and stream() -> ChoiceStream.feed(delta, finish)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from anymodel.params import SamplingParams

from .errors import APIError
from .protocol import AssistantMessage, DeltaMessage
from .reasoning_parsers import ReasoningParser, get_reasoning_parser
from .tool_calls import ToolPlan, ToolStream, plan_tools, tool_parser_class
from .tool_parsers import get_tool_parser, load_plugin
from .tool_protocol import FunctionCall, ToolCallOut


@dataclass(frozen=True)
class ChatOptions:
    enable_auto_tool_choice: bool = False
    tool_call_parser: Optional[str] = None
    tool_parser_plugin: Optional[str] = None
    reasoning_parser: Optional[str] = None
    # the engine starts grammars after the reasoning (its structured_outputs_config names this parser)
    grammar_after_reasoning: bool = False

    def __post_init__(self) -> None:
        """Checked at start-up: a bad flag stops the server with a message naming it."""
        if self.tool_parser_plugin:
            load_plugin(self.tool_parser_plugin)
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("--enable-auto-tool-choice needs --tool-call-parser NAME")
        if self.tool_call_parser:
            get_tool_parser(self.tool_call_parser)
        if self.reasoning_parser:
            get_reasoning_parser(self.reasoning_parser)

    def engine_args(self, args):
        """EngineArgs whose structured outputs know this reasoning parser (vLLM's --reasoning-parser does both)."""
        cfg = args.structured_outputs_config
        if not self.reasoning_parser or cfg.reasoning_parser == self.reasoning_parser:
            return args
        return replace(args, structured_outputs_config=replace(cfg, reasoning_parser=self.reasoning_parser))

    def for_engine(self, engine) -> "ChatOptions":
        cfg = getattr(getattr(engine, "args", None), "structured_outputs_config", None)
        after = bool(self.reasoning_parser) and getattr(cfg, "reasoning_parser", None) == self.reasoning_parser
        return self if after == self.grammar_after_reasoning else replace(self, grammar_after_reasoning=after)

    @property
    def auto_parser(self) -> Optional[type]:
        return tool_parser_class(self.tool_call_parser) if self.enable_auto_tool_choice else None


@dataclass
class ChatOutputPlan:
    tools: ToolPlan
    reasoning: Optional[ReasoningParser] = None
    grammar_after_reasoning: bool = False

    @classmethod
    def for_request(cls, req, options: ChatOptions, tokenizer) -> "ChatOutputPlan":
        tools = plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls, options.auto_parser, tokenizer)
        reasoning = get_reasoning_parser(options.reasoning_parser) if options.reasoning_parser else None
        return cls(tools, reasoning, options.grammar_after_reasoning)

    def constrain(self, params: SamplingParams) -> SamplingParams:
        """The request's params with the tools' grammar (required / named); 400 for two constraints, or a
        constraint on a reasoning model whose engine would apply it to the reasoning too (an engine
        built elsewhere, without the parser in its structured_outputs_config)."""
        grammar = self.tools.structured_outputs()
        if grammar is not None and params.structured_outputs is not None:
            raise APIError(400, f"tool_choice {self.tools.mode!r} constrains the output to a tool call; it cannot be "
                                "combined with response_format or another structured-output field",
                           param="tool_choice")
        constrained = grammar is not None or params.structured_outputs is not None
        if self.reasoning is not None and constrained and not self.grammar_after_reasoning:
            raise APIError(400, "structured outputs (response_format json, guided_*, tool_choice required or named) "
                                "need the engine to know the reasoning parser (structured_outputs_config "
                                "reasoning_parser), else the grammar would constrain the reasoning as well",
                           param="response_format" if grammar is None else "tool_choice")
        return params if grammar is None else params.clone(structured_outputs=grammar)

    def message(self, text: str, finish_reason: Optional[str]) -> tuple[AssistantMessage, Optional[str]]:
        reasoning, content = self.reasoning.split(text) if self.reasoning is not None else (None, text)
        calls = []
        if content is not None:
            content, calls, finish_reason = self.tools.final(content, finish_reason)
        tool_calls = [ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls]
        return AssistantMessage(content=content, reasoning_content=reasoning, tool_calls=tool_calls), finish_reason

    def stream(self) -> "ChoiceStream":
        return ChoiceStream(self.tools.streamer(), self.reasoning.stream() if self.reasoning is not None else None)


@dataclass
class ChoiceStream:
    tools: ToolStream
    reasoning: object | None  # ReasoningStream

    def feed(self, delta: str, finish_reason: Optional[str]) -> tuple[Optional[DeltaMessage], Optional[str]]:
        """(the delta to send, or None when this piece is held back; the choice's finish_reason)."""
        thought, content = self.reasoning.feed(delta, finish_reason is not None) if self.reasoning else ("", delta)
        content, calls, finish_reason = self.tools.feed(content, finish_reason)
        if not (thought or content or calls):
            return None, finish_reason
        return DeltaMessage(content=content or None, reasoning_content=thought or None, tool_calls=calls or None), \
            finish_reason
