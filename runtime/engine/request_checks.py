"""Checks of a generation request against what only the engine knows (its vocabulary and limits).

SamplingParams checks each value alone when it is built; these run in Engine.add_request, on every
path (LLM.generate / chat, the server), before the request runs. A failure is a ValueError naming
the argument and the allowed range (HTTP 400); nothing out of range reaches a step.
"""

from __future__ import annotations

import numbers

from anymodel.errors import ArgumentTypeError
from anymodel.params import SamplingParams


def resolve_logprobs(params: SamplingParams, vocab_size: int, max_logprobs: int) -> SamplingParams:
    """-1 means the whole vocabulary (vLLM); either count must fit the engine's max_logprobs (-1: no
    cap). A count above the vocabulary returns the whole vocabulary (sampler.top_logprobs)."""
    for name in ("logprobs", "prompt_logprobs"):
        k = getattr(params, name)
        if k == -1:
            k = vocab_size
            params = params.clone(**{name: k})
        if k is not None and max_logprobs != -1 and k > max_logprobs:
            kind = "sample" if name == "logprobs" else "prompt"  # vLLM's words, then ours
            raise ValueError(f"Requested {kind} logprobs of {k}, which is greater than max allowed: {max_logprobs} "
                             f"({name}={k} is more than this engine's max_logprobs ({max_logprobs}); ask for at most "
                             f"{max_logprobs}, or start the engine with a larger max_logprobs (-1: no cap))")
    return params


def resolve_bad_words(params: SamplingParams, tokenizer) -> SamplingParams:
    """bad_words -> bad_words_token_ids as vLLM builds them: each word's tokens without and with a
    leading space (the second only when the space makes a different word of as many tokens: a word
    at the start of the text and inside it)."""
    if not params.bad_words:
        return params
    if tokenizer is None:
        raise ValueError("bad_words needs a tokenizer (this engine was started without one)")
    sequences: list[list[int]] = []
    for word in params.bad_words:
        plain = list(tokenizer.encode(word.lstrip(), add_special_tokens=False))
        spaced = list(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
        sequences += [plain] if plain else []
        if spaced and (not plain or (spaced[0] != plain[0] and len(spaced) == len(plain))):
            sequences.append(spaced)
    return params.clone(bad_words_token_ids=sequences)


def check_prompt(token_ids: list[int], vocab_size: int, max_model_len: int, generates: bool) -> None:
    """The prompt's tokens, in vLLM's words (what its users grep for). A generation needs room for
    one new token: its prompt may hold at most max_model_len - 1 tokens."""
    if not token_ids:
        raise ValueError("The decoder prompt cannot be empty")
    wrong = [t for t in token_ids if not _is_integer(t)]
    if wrong:
        raise ArgumentTypeError(f"prompt_token_ids must contain only integers, got {wrong[:5]}")
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"Token id {bad[0]} is out of vocabulary (prompt_token_ids must be in [0, {vocab_size}); "
                         f"got {bad[:5]})")
    n, limit = len(token_ids), max_model_len - (1 if generates else 0)
    if n > limit:
        room = " less the one token it generates" if generates and n == max_model_len else ""
        raise ValueError(f"The decoder prompt (length {n}) is longer than the maximum model length of "
                         f"{max_model_len}{room}. Make sure that `max_model_len` is no smaller than the number of "
                         "text tokens (or truncate the prompt: truncate_prompt_tokens)")


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_priority(priority, policy: str) -> None:
    """vLLM: an integer; anything but 0 needs scheduling_policy="priority"."""
    if not _is_integer(priority):
        raise ArgumentTypeError(f"priority must be an integer, got {type(priority).__name__} {priority!r}")
    if priority != 0 and policy != "priority":
        raise ValueError(f"Got priority {priority} but Priority scheduling is not enabled. (start the engine with "
                         "scheduling_policy='priority')")


def check_sampling(params: SamplingParams, vocab_size: int, max_num_seqs: int) -> None:
    check_token_lists(params, vocab_size)
    check_n(params.n, max_num_seqs, params.best_of)


def check_n(n: int, max_num_seqs: int, best_of: int | None = None) -> None:
    """Each of the n (or best_of) samples is one sequence with its own state and KV blocks: a request
    may ask for at most as many as the engine runs at once (n=10**7 would otherwise fill memory)."""
    name, count = ("best_of", best_of) if best_of else ("n", n)
    if count > max_num_seqs:
        raise ValueError(f"{name}={count} is more than this engine's max_num_seqs ({max_num_seqs}), the most sequences "
                         f"it runs at once (each of the {name} samples is one); ask for {name} <= {max_num_seqs}, or "
                         "start the engine with a larger max_num_seqs")


def check_token_lists(params: SamplingParams, vocab_size: int) -> None:
    """Token ids named by logit_bias / allowed_token_ids / stop_token_ids index the logits (the stop
    ids are masked while min_tokens is not reached): they must be in the vocabulary."""
    for name, ids in (("logit_bias", params.logit_bias or {}),
                      ("allowed_token_ids", params.allowed_token_ids or []),
                      ("stop_token_ids", params.stop_token_ids or []),
                      ("bad_words", [t for seq in params.bad_words_token_ids or [] for t in seq])):
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"{name} token ids must be in [0, {vocab_size}) (the model's vocabulary); got {bad[:5]}")
