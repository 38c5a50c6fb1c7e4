"""Prompt processing, before a request exists: a prompt as the user gave it -> the tokens it runs.

    "text" | [ids] | {"prompt": ..} | {"prompt_token_ids": .., "token_type_ids": ..} | {"prompt_embeds": [T, H]}
        -> PromptTokens(text, token_ids, token_type_ids, embeds)   -> truncated to truncate_prompt_tokens
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from anymodel.params import truncated_prompt_len


@dataclass
class PromptTokens:
    """A prompt as the engine runs it."""

    text: str | None
    token_ids: list[int]
    token_type_ids: list[int] | None = None  # segment ids of a cross-encoder pair, one per token
    embeds: object = None  # {"prompt_embeds": tensor [T, H]} as given (checked by the engine); ids are placeholders


class PromptProcessor:
    """Tokenizes and truncates prompts with the engine's tokenizer. `lower_case`: sentence-transformers
    models that lower-case text before tokenizing (do_lower_case)."""

    def __init__(self, tokenizer, lower_case: bool = False) -> None:
        self.tokenizer = tokenizer
        self.lower_case = lower_case

    def tokenize(self, prompt) -> PromptTokens:
        if not isinstance(prompt, dict):
            return self._tokenize_plain(prompt)
        if "prompt_embeds" in prompt:
            return _embeds_prompt(prompt)
        if "prompt_token_ids" in prompt:
            tokens = PromptTokens(prompt.get("prompt"), list(prompt["prompt_token_ids"]))
        elif "prompt" in prompt:
            tokens = self._tokenize_plain(prompt["prompt"])
        else:
            raise ValueError("prompt dict must have 'prompt' (str) or 'prompt_token_ids' (list[int])")
        tokens.token_type_ids = _token_type_ids(prompt, len(tokens.token_ids))
        return tokens

    def _tokenize_plain(self, prompt) -> PromptTokens:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer (skip_tokenizer_init=True): prompts must be token ids "
                                 "(a list of ints or {'prompt_token_ids': [...]}), got text")
            return PromptTokens(prompt, self.tokenizer.encode(prompt.lower() if self.lower_case else prompt))
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            return PromptTokens(None, list(prompt))
        raise ValueError(f"prompt must be a str, a list of token ids, or a dict; got {type(prompt).__name__}")

    def truncate(self, tokens: PromptTokens, k: int | None, limit: int, max_model_len: int) -> PromptTokens:
        """truncate_prompt_tokens=k keeps the last k prompt tokens (vLLM); -1 keeps `limit` (the
        request's longest prompt). A text prompt keeps the special tokens its tokenizer added (vLLM
        truncates in the tokenizer)."""
        if k is None:
            return tokens
        if k > limit:
            raise ValueError(f"truncate_prompt_tokens must be -1 or in [1, {limit}] (this model's longest prompt for "
                             f"the request, max_model_len={max_model_len}), got {k}")
        k = truncated_prompt_len(len(tokens.token_ids), k, limit)
        if k == len(tokens.token_ids):
            return tokens
        from_text = tokens.text is not None and tokens.token_type_ids is None
        head, body, tail = self._split_special(tokens.token_ids) if from_text else ([], [], [])
        if not from_text or k < len(head) + len(tail):  # token ids (or pairs): the last k, as given
            ids = tokens.token_ids[-k:]
            types = tokens.token_type_ids[-k:] if tokens.token_type_ids is not None else None
            text = self.tokenizer.decode(ids) if tokens.text is not None else None
            return PromptTokens(text, ids, types)
        # Text: as a tokenizer truncating on the left would, the special tokens `encode` added
        # (Llama's BOS; BERT's CLS and SEP) stay, and the text's last tokens fill the rest.
        body = body[len(body) - (k - len(head) - len(tail)) :]
        # the text reported with the outputs (and echoed by the server) is what the model saw
        return PromptTokens(self.tokenizer.decode(body), head + body + tail, None)

    @functools.cached_property
    def _affixes(self) -> tuple[list[int], list[int]]:
        return special_affixes(self.tokenizer)

    def _split_special(self, ids: list[int]) -> tuple[list[int], list[int], list[int]]:
        """ids -> (the special tokens `encode` puts before the text, the text's ids, those after)."""
        head, tail = self._affixes
        end = len(ids) - len(tail)
        if ids[: len(head)] != head or ids[end:] != tail or end < len(head):
            return [], ids, []
        return head, ids[len(head) : end], tail


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The ids `tokenizer.encode` adds before and after any text: ([BOS], []) for Llama,
    ([CLS], [SEP]) for BERT, ([], []) for Qwen; found by encoding a probe with and without them."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


def _embeds_prompt(prompt: dict) -> PromptTokens:
    """vLLM's EmbedsPrompt: {"prompt_embeds": tensor [T, H]} (+ "cache_salt" is not taken)."""
    from anymodel.prompt_embeds import PLACEHOLDER_TOKEN_ID

    others = sorted(set(prompt) - {"prompt_embeds"})
    if others:
        raise ValueError(f"a prompt_embeds prompt takes no other field, got {others}")
    embeds = prompt["prompt_embeds"]
    rows = embeds.shape[0] if getattr(embeds, "ndim", 0) >= 1 else 0
    return PromptTokens(None, [PLACEHOLDER_TOKEN_ID] * rows, None, embeds)


def _token_type_ids(prompt: dict, num_tokens: int) -> list[int] | None:
    types = prompt.get("token_type_ids")
    if types is not None and len(types) != num_tokens:
        raise ValueError(f"token_type_ids has {len(types)} entries for {num_tokens} prompt tokens; pass one per token")
    return list(types) if types is not None else None
