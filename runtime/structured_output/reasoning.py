"""Structured outputs on reasoning models: the constraint applies to the answer, after the reasoning.

With structured_outputs_config={"reasoning_parser": "deepseek_r1" | "qwen3"} (the server's
--reasoning-parser sets it), a constrained request's grammar starts once the output holds the end
marker's tokens (</think>), or at once when the prompt already closed the reasoning (Qwen3 with
enable_thinking=False renders an empty <think></think>). Before that the request samples freely.
"""

from __future__ import annotations

from dataclasses import dataclass

# reasoning parser -> (start marker, end marker)
REASONING_MARKERS = {"deepseek_r1": ("<think>", "</think>"), "qwen3": ("<think>", "</think>")}


def _last(ids: list[int], marker: list[int]) -> int:
    """Index just past the last occurrence of `marker` in `ids`; -1 when absent."""
    n = len(marker)
    for i in range(len(ids) - n, -1, -1):
        if ids[i:i + n] == marker:
            return i + n
    return -1


@dataclass(frozen=True)
class ReasoningEnd:
    start_ids: list[int]
    end_ids: list[int]

    @classmethod
    def for_parser(cls, name: str, tokenizer) -> "ReasoningEnd":
        start, end = REASONING_MARKERS[name]
        return cls(tokenizer.encode(start, add_special_tokens=False), tokenizer.encode(end, add_special_tokens=False))

    def ended_in_prompt(self, prompt_ids: list[int]) -> bool:
        """The prompt closed a reasoning block it opened last (an empty <think></think>, say)."""
        end = _last(prompt_ids, self.end_ids)
        return end >= 0 and end > _last(prompt_ids, self.start_ids)

    def end_in_output(self, output_ids: list[int]) -> int | None:
        """Where the answer starts in the output (just past the first end marker), None if not yet."""
        n = len(self.end_ids)
        for i in range(len(output_ids) - n + 1):
            if output_ids[i:i + n] == self.end_ids:
                return i + n
        return None
