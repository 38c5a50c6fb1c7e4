"""Logits -> tokens (+ logprobs): a pure function of (logits, per-row parameters, token history).

Rows are the positions that sample this step, one per request. Order of processing (vLLM's):
structured outputs' grammar bitmask -> allowed_token_ids masking -> logit_bias -> penalties -> min_tokens masking -> bad_words masking ->
the request's own logits_processors (per row, in list order) -> greedy argmax, or temperature ->
top-k -> top-p -> min-p -> sample (per-request torch.Generator when the request has a seed).
Logprobs are reported from the model's raw distribution (log_softmax of the logits before any
processing, so before logit_bias too), as vLLM does by default.

A user processor that raises (or returns something that is not a [V] tensor) makes `sample` raise;
the model runner then samples row by row, so that only its request fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anymodel.params import SamplingParams, logits_processor_arity
from anymodel.structured_output.bitmask import apply_bitmask


@dataclass
class SamplingRow:
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    blocked_token_ids: list[int]  # e.g. EOS while fewer than min_tokens were produced
    generator: torch.Generator | None
    grammar_bitmask: torch.Tensor | None = None  # [W] int32: structured outputs' allowed tokens (bitmask.py)


@dataclass
class SamplerOutput:
    token_ids: list[int]  # [S]
    logprobs: list[dict[int, tuple[float, int]] | None]  # per row: token -> (logprob, rank)


def sample(logits: torch.Tensor, rows: list[SamplingRow], default_generator: torch.Generator | None = None) -> SamplerOutput:
    """logits [S, V] (any float dtype) -> one token per row. The caller's logits are left as they
    were (the runner re-samples rows from them when a batch fails)."""
    given, logits = logits, logits.float()
    if all(_plain_greedy(r) for r in rows):  # the common case: skip every mask and index list
        return SamplerOutput(logits.argmax(dim=-1).tolist(), [None] * len(rows))
    if logits is given and any(_writes_in_place(r) for r in rows):
        logits = logits.clone()  # penalties, masks and user processors write in place
    raw_logprobs = torch.log_softmax(logits, dim=-1) if any(_logprobs_k(r) is not None for r in rows) else None
    _apply_grammar(logits, rows)
    logits = _apply_token_constraints(logits, rows)
    logits = _apply_penalties(logits, rows)
    for i, row in enumerate(rows):
        if row.blocked_token_ids:
            logits[i, row.blocked_token_ids] = float("-inf")
    _apply_bad_words(logits, rows)
    _apply_logits_processors(logits, rows)
    tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
    greedy = [i for i, r in enumerate(rows) if r.params.greedy]
    random = [i for i, r in enumerate(rows) if not r.params.greedy]
    if greedy:
        tokens[greedy] = logits[greedy].argmax(dim=-1)
    if random:
        tokens[random] = _sample_random(logits[random], [rows[i] for i in random], default_generator)
    token_list = tokens.tolist()
    return SamplerOutput(token_list, _gather_logprobs(raw_logprobs, rows, token_list))


def _plain_greedy(row: SamplingRow) -> bool:
    """Greedy with nothing that changes the logits or the output: the result is a bare argmax."""
    p = row.params
    return (p.greedy and _logprobs_k(row) is None and not row.blocked_token_ids and not p.allowed_token_ids
            and row.grammar_bitmask is None
            and not p.logit_bias and not p.has_penalties and not p.bad_words_token_ids and not p.logits_processors)


def _writes_in_place(row: SamplingRow) -> bool:
    p = row.params
    return bool(p.has_penalties or row.blocked_token_ids or p.bad_words_token_ids or p.logits_processors
                or row.grammar_bitmask is not None)


def _logprobs_k(row: SamplingRow) -> int | None:
    """How many top logprobs the row reports: its own `logprobs`, or 0 (the sampled token's alone)
    when best_of > n, whose pick needs each sample's cumulative logprob."""
    p = row.params
    return 0 if p.logprobs is None and p.picks_best else p.logprobs


def _apply_grammar(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    """Structured outputs: every constrained row's token bitmask in one batched op. logits [S, V], in place."""
    constrained = [i for i, r in enumerate(rows) if r.grammar_bitmask is not None]
    if constrained:
        bitmask = torch.stack([rows[i].grammar_bitmask for i in constrained])  # [R, W]
        apply_bitmask(logits, bitmask, constrained)


def _apply_bad_words(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    """vLLM's bad_words: a word's last token is masked when its other tokens end the output so far
    (a one-token word is always masked). logits [S, V], in place."""
    for i, row in enumerate(rows):
        out = row.output_token_ids
        for word in row.params.bad_words_token_ids or ():
            prefix = len(word) - 1
            if prefix > len(out):
                continue
            if prefix == 0 or list(out[-prefix:]) == list(word[:prefix]):
                logits[i, word[-1]] = float("-inf")


def _apply_logits_processors(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    """The request's callables, one row at a time: fn(output_ids, logits[V]) or fn(prompt_ids,
    output_ids, logits[V]) -> logits[V] (token ids as tuples, as vLLM passes them). logits [S, V], in place."""
    for i, row in enumerate(rows):
        fns = row.params.logits_processors
        if not fns:
            continue
        prompt, output = tuple(row.prompt_token_ids), tuple(row.output_token_ids)
        for fn in fns:
            args = (prompt, output) if logits_processor_arity(fn) == 3 else (output,)
            result = fn(*args, logits[i])
            if not isinstance(result, torch.Tensor) or result.shape != logits[i].shape:
                got = type(result).__name__ if not isinstance(result, torch.Tensor) else f"shape {tuple(result.shape)}"
                raise TypeError(f"logits processor {getattr(fn, '__name__', fn)!r} must return a tensor of shape "
                                f"{tuple(logits[i].shape)} (the row's logits), got {got}")
            logits[i] = result.to(device=logits.device, dtype=logits.dtype)


def _apply_token_constraints(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """allowed_token_ids and logit_bias of every row at once, by (row, token) index lists.

    The Python loop runs over rows and their (few) listed tokens, never over the vocabulary.
    logits [S, V] -> [S, V]
    """
    allow_rows, allow_ids, bias_rows, bias_ids, bias_vals = [], [], [], [], []
    for i, row in enumerate(rows):
        p = row.params
        if p.allowed_token_ids:
            allow_rows += [i] * len(p.allowed_token_ids)
            allow_ids += p.allowed_token_ids
        if p.logit_bias:
            bias_rows += [i] * len(p.logit_bias)
            bias_ids += list(p.logit_bias)
            bias_vals += list(p.logit_bias.values())
    device = logits.device
    if allow_rows:
        r = torch.tensor(allow_rows, dtype=torch.long, device=device)
        c = torch.tensor(allow_ids, dtype=torch.long, device=device)
        allowed = torch.zeros_like(logits, dtype=torch.bool)  # [S, V]
        allowed[r, c] = True
        restricted = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)  # [S]: rows with a list
        restricted[r] = True
        logits = logits.masked_fill(restricted[:, None] & ~allowed, float("-inf"))
    if bias_rows:
        r = torch.tensor(bias_rows, dtype=torch.long, device=device)
        c = torch.tensor(bias_ids, dtype=torch.long, device=device)
        # (row, token) pairs are unique (dict keys per row), so accumulate adds each bias exactly once
        logits = logits.index_put((r, c), torch.tensor(bias_vals, dtype=logits.dtype, device=device), accumulate=True)
    return logits


def _apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    for i, row in enumerate(rows):
        p = row.params
        if not p.has_penalties:
            continue
        if p.repetition_penalty != 1.0:  # HF semantics, over prompt and output tokens
            seen = sorted(set(row.prompt_token_ids) | set(row.output_token_ids))
            seen = torch.tensor(seen, dtype=torch.long, device=logits.device)
            vals = logits[i, seen]
            logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if row.output_token_ids and (p.presence_penalty or p.frequency_penalty):  # OpenAI semantics, output only
            ids, counts = torch.tensor(row.output_token_ids, device=logits.device).unique(return_counts=True)
            logits[i, ids] -= p.frequency_penalty * counts.float() + p.presence_penalty
    return logits


def _sample_random(logits: torch.Tensor, rows: list[SamplingRow], default_generator) -> torch.Tensor:
    def per_row(values):  # [S] on the logits' device
        return torch.tensor(values, dtype=logits.dtype, device=logits.device)

    temps = per_row([r.params.temperature for r in rows])
    logits = logits / temps[:, None]
    top_k = [r.params.top_k for r in rows]
    if any(top_k):
        logits = _top_k(logits, top_k)
    top_p = per_row([r.params.top_p for r in rows])
    if (top_p < 1).any():
        logits = _top_p(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    min_p = per_row([r.params.min_p for r in rows])
    if (min_p > 0).any():
        probs = probs.masked_fill(probs < min_p[:, None] * probs.max(dim=-1, keepdim=True).values, 0.0)
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p; rows with a seed use their own stream.
    # Seeded rows draw on the CPU (their generators live there) so results do not depend on the device.
    noise = torch.empty_like(probs).exponential_(generator=_on_device(default_generator, probs.device))
    for i, row in enumerate(rows):
        if row.generator is not None:
            noise[i] = torch.empty(probs.shape[1]).exponential_(generator=row.generator).to(probs.device)
    return (probs / noise).argmax(dim=-1)


def _on_device(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    return generator if generator is not None and generator.device.type == device.type else None


def _top_k(logits: torch.Tensor, top_k: list[int]) -> torch.Tensor:
    V = logits.shape[-1]
    k = torch.tensor([min(k, V) if k > 0 else V for k in top_k], device=logits.device)
    sorted_logits = logits.sort(dim=-1, descending=True).values
    kth = sorted_logits.gather(1, (k - 1)[:, None])
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= (1 - top_p)[:, None]
    drop[:, -1] = False  # always keep the most likely token
    return logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))


def _gather_logprobs(raw: torch.Tensor | None, rows: list[SamplingRow], tokens: list[int]):
    out: list[dict[int, tuple[float, int]] | None] = []
    for i, row in enumerate(rows):
        k = _logprobs_k(row)
        out.append(None if k is None or raw is None else top_logprobs(raw[i], tokens[i], k))
    return out


def top_logprobs(logprobs: torch.Tensor, token: int, k: int) -> dict[int, tuple[float, int]]:
    """logprobs [V] -> {token: (logprob, rank)} for the chosen token and the top k (rank 1 = best).
    k may exceed V (max_logprobs above a small vocabulary, or padded logits): all V come back, as in vLLM.
    The chosen token comes first; outside the top k its rank counts the tokens at least as likely
    (itself included), as vLLM's does, so a tie ranks it after the tokens it ties with."""
    chosen = logprobs[token]
    result = {token: (float(chosen), int((logprobs >= chosen).sum()))}
    k = min(k, logprobs.shape[-1])
    if k > 0:
        vals, ids = logprobs.topk(k)
        for rank, (v, t) in enumerate(zip(vals.tolist(), ids.tolist()), start=1):
            result[t] = (v, rank)  # a chosen token in the top k takes its top-k rank (vLLM's dict build)
    return result
