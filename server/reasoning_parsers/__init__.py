"""Reasoning parsers (--reasoning-parser NAME): split a reasoning model's <think>...</think> from its
answer, into message.reasoning_content (delta.reasoning_content when streaming) and content."""

from .parsers import REASONING_PARSERS, ReasoningParser, ReasoningStream, get_reasoning_parser

__all__ = ["REASONING_PARSERS", "ReasoningParser", "ReasoningStream", "get_reasoning_parser"]
