"""deepseek_r1 and qwen3: the text between <think> and </think> is reasoning, the rest the answer.

    deepseek_r1  the template opens <think> in the prompt, so the output may start inside the
                 reasoning without the tag: everything before </think> is reasoning (all of it
                 when </think> never comes, the output was cut inside the reasoning)
    qwen3        reasoning only when the output opens <think> (enable_thinking=False: no tags,
                 all answer); an unclosed <think> is reasoning to the end
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..text_markers import held_back

START, END = "<think>", "</think>"


@dataclass(frozen=True)
class ReasoningParser:
    name: str
    implicit_start: bool  # True: the output begins inside the reasoning (deepseek_r1)

    def split(self, text: str) -> tuple[Optional[str], Optional[str]]:
        """(reasoning, content) of a finished output; None where there is none."""
        body = text
        if body.lstrip().startswith(START):
            body = body.lstrip()[len(START):]
        elif not self.implicit_start:
            return None, text
        reasoning, sep, content = body.partition(END)
        if not sep:
            return reasoning, None
        return reasoning, content.lstrip("\n") or None

    def stream(self) -> "ReasoningStream":
        return ReasoningStream(self)


@dataclass
class ReasoningStream:
    """feed(delta, finished) -> (reasoning piece, content piece), as the text grows."""

    parser: ReasoningParser
    text: str = ""
    sent: int = 0  # characters of `text` handed out (as reasoning or content)
    state: str = "start"  # start -> reasoning -> content

    def feed(self, delta: str, finished: bool) -> tuple[str, str]:
        self.text += delta
        if self.state == "start":
            stripped = self.text.lstrip()
            if not finished and START.startswith(stripped) and len(stripped) < len(START):
                return "", ""  # maybe the opening tag, not complete yet
            if stripped.startswith(START):
                self.sent, self.state = len(self.text) - len(stripped) + len(START), "reasoning"
            else:
                self.state = "reasoning" if self.parser.implicit_start else "content"
        if self.state == "reasoning":
            at = self.text.find(END, self.sent)
            if at < 0:
                end = len(self.text) - (0 if finished else held_back(self.text, END))
                piece, self.sent = self.text[self.sent:end], max(self.sent, end)
                return piece, ""
            reasoning, self.sent, self.state = self.text[self.sent:at], at + len(END), "content"
            return reasoning, self._content()
        return "", self._content()

    def _content(self) -> str:
        piece = self.text[self.sent:]
        if self.text[:self.sent].endswith(END):
            piece = piece.lstrip("\n")
            if not piece:
                return ""
        self.sent = len(self.text)
        return piece


REASONING_PARSERS = {"deepseek_r1": ReasoningParser("deepseek_r1", implicit_start=True),
                     "qwen3": ReasoningParser("qwen3", implicit_start=False)}


def get_reasoning_parser(name: str) -> ReasoningParser:
    if name not in REASONING_PARSERS:
        raise ValueError(f"unknown reasoning parser {name!r}; available: {sorted(REASONING_PARSERS)}")
    return REASONING_PARSERS[name]
