"""Incremental detokenization and stop-string matching, one instance per generated sequence.

Decoding token by token breaks multi-byte characters and tokenizers that merge spaces, so each
step decodes a short window: tokens[prefix:read] (already emitted) versus tokens[prefix:] (with the
new ones), and emits the difference once it no longer ends in an incomplete character (U+FFFD).

The window starts on the last prompt tokens (`prompt_ids`), as in vLLM: the first generated token
is decoded in context, so a SentencePiece "▁Paris" after "is" yields " Paris", not "Paris".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

_WINDOW = 5  # tokens of left context kept for the decode window


@dataclass
class Detokenizer:
    tokenizer: object
    skip_special_tokens: bool = True
    stop: list[str] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    prompt_ids: list[int] = field(default_factory=list)  # context only: never part of `text`
    spaces_between_special_tokens: bool = True  # False goes to the tokenizer's decode (slow tokenizers read it)
    token_ids: list[int] = field(init=False)  # the prompt's tail, then every generated token
    text: str = field(init=False, default="")
    prefix_offset: int = field(init=False)
    read_offset: int = field(init=False)
    _decode_ids: Callable[[list[int], bool], str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        fast = _fast_decode(self.tokenizer) if self.spaces_between_special_tokens else None
        self._decode_ids = fast or self._full_decode
        self.token_ids = list(self.prompt_ids[-_WINDOW:])
        self.read_offset = len(self.token_ids)
        self.prefix_offset = max(self.read_offset - _WINDOW, 0)

    def add_tokens(self, new_ids: list[int]) -> str | None:
        """Append tokens; returns the stop string if one appeared (text is then cut there)."""
        self.token_ids.extend(new_ids)
        before = len(self.text)
        prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.token_ids[self.prefix_offset :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self.text += full_text[len(prefix_text) :]
            self.read_offset = len(self.token_ids)
            self.prefix_offset = max(self.read_offset - _WINDOW, 0)
        return self._check_stop(before)

    def flush(self) -> None:
        """At the end, emit whatever is left even if it ends in an incomplete character."""
        rest = self._decode(self.token_ids[self.prefix_offset :])
        done = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        if len(rest) > len(done):
            self.text += rest[len(done) :]
            self.read_offset = len(self.token_ids)

    def _full_decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        if self.spaces_between_special_tokens:
            return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, spaces_between_special_tokens=False)

    def _decode(self, ids: list[int]) -> str:
        return self._decode_ids(ids, skip_special_tokens=self.skip_special_tokens) if ids else ""

    def _check_stop(self, before: int) -> str | None:
        if not self.stop or len(self.text) == before:
            return None
        longest = max(len(s) for s in self.stop)
        start = max(before - longest + 1, 0)
        hits = [(self.text.find(s, start), s) for s in self.stop]
        hits = [(i, s) for i, s in hits if i >= 0]
        if not hits:
            return None
        i, s = min(hits)
        self.text = self.text[: i + len(s)] if self.include_stop_str_in_output else self.text[:i]
        return s


class NoDetokenizer:
    """detokenize=False: the Detokenizer's interface with no text (and so no stop strings)."""

    text = ""

    def add_tokens(self, new_ids: list[int]) -> None:
        return None

    def flush(self) -> None:
        pass


def _fast_decode(tokenizer) -> Callable[[list[int], bool], str] | None:
    """The Rust `tokenizers.Tokenizer.decode` when Transformers' `decode` would return exactly its text.

    Transformers' wrapper costs several times the Rust call (input conversion, kwargs), paid twice
    per generated token. It adds nothing when the class keeps the stock `decode`/`_decode` and no
    clean-up of tokenization spaces applies; any other tokenizer keeps its own `decode`.
    """
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    cls = type(tokenizer)
    stock = (isinstance(tokenizer, TokenizersBackend) and cls.decode is PreTrainedTokenizerBase.decode
             and cls._decode is TokenizersBackend._decode)
    if not stock or tokenizer.clean_up_tokenization_spaces:
        return None
    return tokenizer._tokenizer.decode
