"""User-facing request parameters: SamplingParams (generation) and PoolingParams (pooling tasks)."""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from anymodel.structured_output.params import resolve_structured_outputs

from anymodel.errors import ArgumentTypeError

LOGIT_BIAS_LIMIT = 100.0  # OpenAI's range for logit_bias values: [-100, 100]


class RequestOutputKind(Enum):
    CUMULATIVE = 0  # every output carries all text/tokens so far (vLLM's default)
    DELTA = 1  # only what is new since the previous output
    FINAL_ONLY = 2


def _check(ok: bool, name: str, allowed: str, value) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_type(ok: bool, name: str, allowed: str, value) -> None:
    """A value of the wrong type is a TypeError (vLLM's, e.g. stop=123), a wrong value a ValueError."""
    if not ok:
        raise ArgumentTypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed takes without sign tricks


def _finite(value) -> bool:
    """A real number that is neither NaN nor infinite (bools are not numbers here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_truncate(value) -> None:
    """truncate_prompt_tokens: keep the last k prompt tokens; -1: as many as the model takes."""
    _check(value is None or (_is_int(value) and (value == -1 or value >= 1)), "truncate_prompt_tokens",
           "None, -1 (the model's maximum prompt length) or an integer >= 1", value)


def _normalize_logit_bias(bias) -> dict[int, float] | None:
    """{token id: bias} with float values in [-100, 100]; token ids are checked against the vocab by the engine."""
    if bias is None:
        return None
    _check(isinstance(bias, dict), "logit_bias", "None or a dict {token_id: bias}", bias)
    bad_keys = [k for k in bias if not _is_int(k)]
    _check(not bad_keys, "logit_bias", "keyed by integer token ids", bad_keys[:5])
    bad = {k: v for k, v in bias.items()
           if not (isinstance(v, numbers.Real) and math.isfinite(v) and abs(v) <= LOGIT_BIAS_LIMIT)}
    _check(not bad, "logit_bias", f"a dict whose values are numbers in [-{LOGIT_BIAS_LIMIT:g}, {LOGIT_BIAS_LIMIT:g}]",
           dict(list(bad.items())[:5]))
    return {int(k): float(v) for k, v in bias.items()}


def logits_processor_arity(fn) -> int:
    """vLLM's request logits processors: fn(output_ids, logits) or fn(prompt_ids, output_ids, logits)
    -> logits, told apart by their number of positional parameters (2 or 3)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return 0
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds and p.default is inspect.Parameter.empty)


def _normalize_processors(fns) -> list | None:
    if fns is None:
        return None
    _check(isinstance(fns, (list, tuple)), "logits_processors", "None or a list of callables", fns)
    bad = [fn for fn in fns if not callable(fn) or logits_processor_arity(fn) not in (2, 3)]
    _check(not bad, "logits_processors",
           "a list of callables fn(output_token_ids, logits) or fn(prompt_token_ids, output_token_ids, logits)", bad[:3])
    return list(fns) or None


def _normalize_bad_words(words) -> list[str] | None:
    if words is None:
        return None
    if isinstance(words, str):
        words = [words]
    ok = isinstance(words, (list, tuple)) and all(isinstance(w, str) and w.strip() for w in words)
    _check(ok, "bad_words", "None or a list of non-blank strings", words)
    return list(words) or None


def _normalize_allowed(ids) -> list[int] | None:
    if ids is None:
        return None
    ok = isinstance(ids, (list, tuple, set)) and len(ids) > 0 and all(_is_int(t) for t in ids)
    _check(ok, "allowed_token_ids", "None or a non-empty list of integer token ids", ids)
    return sorted({int(t) for t in ids})


# SamplingParams.from_optional: None means the default for these (vLLM's list)
_OPTIONAL_FIELDS = ("n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p")


def _token_key(key) -> int:
    try:
        return int(key)
    except (TypeError, ValueError):
        raise ValueError(f"logit_bias contains key(s) that cannot be converted to integer token IDs: {key!r}") from None


def _clipped_bias(value):
    """Clip a finite number into [-100, 100]; anything else is left for validation to reject."""
    return min(LOGIT_BIAS_LIMIT, max(-LOGIT_BIAS_LIMIT, value)) if _finite(value) else value


_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16  # offline, capped by the context (vLLM); the server refuses one that cannot fit (400)
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    # Added to the logits before sampling (also greedy): {token id: bias in [-100, 100]}.
    logit_bias: dict[int, float] | None = None
    # Only these tokens can be sampled (every other token's logit becomes -inf).
    allowed_token_ids: list[int] | None = None
    # Keep only the last k prompt tokens (-1: as many as the model takes).
    truncate_prompt_tokens: int | None = None
    # Words never generated: each word's token sequence (with and without a leading space) has its
    # last token masked whenever the tokens before it were just generated (vLLM's bad_words).
    bad_words: list[str] | None = None
    # Per-request callables fn(output_ids, logits[V]) or fn(prompt_ids, output_ids, logits[V]) ->
    # logits[V], run after every built-in processor (offline only: a server takes no code). Under
    # tensor parallelism they travel cloudpickled and run on every rank of the last stage.
    logits_processors: list[Callable] | None = None
    detokenize: bool = True  # False: token ids (and logprobs) only, text "" and decoded_token None
    spaces_between_special_tokens: bool = True  # passed to the tokenizer's decode (slow tokenizers use it)
    # best_of > n: generate best_of samples, return the n with the highest cumulative logprob (vLLM v0)
    best_of: int | None = None
    # bad_words as token sequences: filled by the engine, which has the tokenizer (request_checks)
    bad_words_token_ids: list[list[int]] | None = None
    # Constrained output (JSON schema, regex, choice, grammar): anymodel.structured_output; the legacy
    # spelling guided_decoding= lands in structured_outputs
    structured_outputs: Any = None
    guided_decoding: Any = None

    def __post_init__(self) -> None:
        self._check_types()
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        for name in ("logprobs", "prompt_logprobs"):  # vLLM: True means 1
            if getattr(self, name) is True:
                setattr(self, name, 1)
        if self.top_k == -1:
            self.top_k = 0
        self.logit_bias = _normalize_logit_bias(self.logit_bias)
        self.allowed_token_ids = _normalize_allowed(self.allowed_token_ids)
        self.bad_words = _normalize_bad_words(self.bad_words)
        self.logits_processors = _normalize_processors(self.logits_processors)
        self.structured_outputs, self.guided_decoding = resolve_structured_outputs(self), None
        self._validate()

    def _check_types(self) -> None:
        """Containers and numbers of the wrong type: TypeError, as vLLM (checked before any value)."""
        stop = self.stop
        _check_type(stop is None or isinstance(stop, str)
                    or (isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop)),
                    "stop", "None, a str or a list of str", stop)
        ids = self.stop_token_ids
        _check_type(ids is None or isinstance(ids, (list, tuple, set, frozenset)), "stop_token_ids",
                    "None or a list of int", ids)
        _check_type(all(_is_int(t) for t in ids or []), "stop_token_ids", "a list that contains only integers", ids)
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            _check_type(isinstance(value, numbers.Real) and not isinstance(value, bool), name, "a number", value)

    def _validate(self) -> None:
        # NaN fails every comparison below and inf passes some: every float must be finite first.
        for name in _FLOAT_FIELDS:
            _check(_finite(getattr(self, name)), name, "a finite number", getattr(self, name))
        _check(_is_int(self.n) and self.n >= 1, "n", "an integer >= 1", self.n)
        _check(self.temperature >= 0, "temperature", ">= 0", self.temperature)
        _check(0 < self.top_p <= 1, "top_p", "in (0, 1]", self.top_p)
        _check(_is_int(self.top_k) and self.top_k >= 0, "top_k", "-1, 0 (disabled) or a positive integer", self.top_k)
        _check(0 <= self.min_p <= 1, "min_p", "in [0, 1]", self.min_p)
        _check(self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1),
               "max_tokens", "None or an integer >= 1", self.max_tokens)
        _check(_is_int(self.min_tokens) and self.min_tokens >= 0, "min_tokens", "an integer >= 0", self.min_tokens)
        if self.max_tokens is not None:
            _check(self.min_tokens <= self.max_tokens, "min_tokens", f"<= max_tokens ({self.max_tokens})", self.min_tokens)
        _check(-2 <= self.presence_penalty <= 2, "presence_penalty", "in [-2, 2]", self.presence_penalty)
        _check(-2 <= self.frequency_penalty <= 2, "frequency_penalty", "in [-2, 2]", self.frequency_penalty)
        _check(self.repetition_penalty > 0, "repetition_penalty", "> 0", self.repetition_penalty)
        for name in ("logprobs", "prompt_logprobs"):  # the engine caps them at its max_logprobs
            v = getattr(self, name)
            _check(v is None or (_is_int(v) and v >= -1), name, "None, -1 (the whole vocabulary) or an integer >= 0", v)
        # types were checked first (_check_types); ids are checked against the vocabulary by the engine
        _check(all(self.stop), "stop", "a non-empty string or list of them (stop cannot contain an empty string)",
               self.stop)
        lo, hi = SEED_RANGE
        _check(self.seed is None or (_is_int(self.seed) and lo <= self.seed <= hi), "seed",
               f"None or an integer in [{lo}, 2**64 - 1]", self.seed)
        _check_truncate(self.truncate_prompt_tokens)
        self._validate_extras()

    def _validate_extras(self) -> None:
        _check(self.best_of is None or (_is_int(self.best_of) and self.best_of >= self.n), "best_of",
               f"None or an integer >= n ({self.n})", self.best_of)
        if self.best_of is not None and self.best_of > self.n:
            _check(not self.greedy, "best_of", "at most n with greedy sampling (temperature=0: every sample is the "
                   "same); raise temperature", self.best_of)
        _check(self.detokenize or not self.stop, "stop", "empty when detokenize=False (stop strings match text)",
               self.stop)

    @property
    def num_sequences(self) -> int:
        """How many samples run: best_of (vLLM v0) or n."""
        return self.best_of or self.n

    @property
    def picks_best(self) -> bool:
        """best_of > n: the n best of best_of samples, by cumulative logprob, once all are done."""
        return self.num_sequences > self.n

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1.0

    @staticmethod
    def from_optional(**kwargs) -> "SamplingParams":
        """vLLM's: None for n, the penalties, temperature or top_p means the default; logit_bias
        keys may be strings of token ids and values are clipped to [-100, 100]."""
        for name in _OPTIONAL_FIELDS:
            if name in kwargs and kwargs[name] is None:
                del kwargs[name]
        bias = kwargs.get("logit_bias")
        if isinstance(bias, dict):
            kwargs["logit_bias"] = {_token_key(k): _clipped_bias(v) for k, v in bias.items()}
        return SamplingParams(**kwargs)

    def update_from_generation_config(self, generation_config: dict, model_eos_token_id: int | None = None) -> None:
        """vLLM's: the generation config's EOS ids other than the model's own (the tokenizer's EOS,
        handled as EOS) end the request as stop_token_ids (finish_reason "stop", stop_reason the id),
        unless ignore_eos; in place. The engine applies it to every request's copy."""
        eos = generation_config.get("eos_token_id")
        ids = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
        ids.discard(model_eos_token_id)
        if ids and not self.ignore_eos:
            self.stop_token_ids = sorted(ids | set(self.stop_token_ids))

    def clone(self, **changes) -> "SamplingParams":
        from dataclasses import replace

        return replace(self, **changes)


@dataclass
class PoolingParams:
    """Per-request pooling options (the pooler itself is configured per model)."""

    dimensions: int | None = None  # Matryoshka truncation of embeddings
    normalize: bool | None = None  # None: the model's pooler default
    softmax: bool | None = None  # vLLM's older name of use_activation (the pooler reads this one)
    task: str | None = None  # filled by the LLM method that created it
    extra: dict = field(default_factory=dict)
    truncate_prompt_tokens: int | None = None  # keep the last k prompt tokens (-1: the model's maximum)
    # vLLM's names for `softmax`: apply the model's activation (softmax or sigmoid) to classify,
    # score and reward outputs; None: the model's default. Any of the three may be set; they must agree.
    activation: bool | None = None
    use_activation: bool | None = None

    def __post_init__(self) -> None:
        self.softmax = self.activation = self.use_activation = _one_activation(
            {"use_activation": self.use_activation, "activation": self.activation, "softmax": self.softmax})
        for name in ("normalize", "softmax"):
            _check_type(getattr(self, name) is None or isinstance(getattr(self, name), bool), name,
                        "None or a bool", getattr(self, name))
        _check(self.dimensions is None or (isinstance(self.dimensions, int) and self.dimensions >= 1),
               "dimensions", "None or an integer >= 1", self.dimensions)
        _check_truncate(self.truncate_prompt_tokens)


def _one_activation(names: dict[str, bool | None]) -> bool | None:
    given = {name: value for name, value in names.items() if value is not None}
    if len(set(given.values())) > 1:
        raise ValueError(f"use_activation, activation and softmax name one option (activation and softmax are its "
                         f"older names) and must agree; got {given}")
    return next(iter(given.values()), None)


def truncated_prompt_len(num_tokens: int, truncate_prompt_tokens: int | None, max_prompt_len: int) -> int:
    """Length of a prompt after truncate_prompt_tokens=k: its last k tokens; -1: the longest the
    request may have (`max_prompt_len`); None: all of it."""
    k = truncate_prompt_tokens
    if k is None:
        return num_tokens
    return min(num_tokens, max_prompt_len if k == -1 else k)
