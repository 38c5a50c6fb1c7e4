"""Generation classes Transformers 5 removed that remote code (and `transformers_stream_generator`,
which Qwen-1's code imports) still imports.

anymodel never runs a model's own `generate()`: what matters is that these imports succeed. The
constraint classes are small and keep their 4.x behaviour; the beam scorers, whose only use is inside
4.x's `generate()`, raise with an explanation if anything constructs one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Constraint(ABC):
    """A condition on the generated tokens, stepped one token at a time (4.x interface)."""

    @abstractmethod
    def advance(self):
        """The token id (or list of ids) that would make progress; None once completed."""

    @abstractmethod
    def does_advance(self, token_id: int) -> bool: ...

    @abstractmethod
    def update(self, token_id: int) -> tuple[bool, bool, bool]:
        """Feed one token: (stepped, completed, reset)."""

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def remaining(self) -> int:
        """Tokens still needed to complete."""

    @abstractmethod
    def copy(self, stateful: bool = False) -> "Constraint": ...


def _check_token_ids(ids, name: str) -> None:
    if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and t >= 0 for t in ids):
        raise ValueError(f"{name} must be a non-empty list of non-negative token ids, got {ids!r}")


class PhrasalConstraint(Constraint):
    """The output must contain `token_ids` in a row."""

    def __init__(self, token_ids: list[int]):
        _check_token_ids(token_ids, "token_ids")
        self.token_ids = token_ids
        self.seqlen = len(token_ids)
        self.reset()

    def reset(self) -> None:
        self.fulfilled_idx = -1  # index of the last matched token
        self.completed = False

    def advance(self):
        return None if self.completed else self.token_ids[self.fulfilled_idx + 1]

    def does_advance(self, token_id: int) -> bool:
        return not self.completed and token_id == self.token_ids[self.fulfilled_idx + 1]

    def update(self, token_id: int) -> tuple[bool, bool, bool]:
        if not self.does_advance(token_id):
            self.reset()
            return False, False, True
        self.fulfilled_idx += 1
        self.completed = self.fulfilled_idx == self.seqlen - 1
        return True, self.completed, False

    def remaining(self) -> int:
        return self.seqlen - (self.fulfilled_idx + 1)

    def copy(self, stateful: bool = False) -> "PhrasalConstraint":
        new = PhrasalConstraint(self.token_ids)
        if stateful:
            new.fulfilled_idx, new.completed = self.fulfilled_idx, self.completed
        return new


class DisjunctiveConstraint(Constraint):
    """The output must contain one of several token sequences in a row."""

    def __init__(self, nested_token_ids: list[list[int]]):
        if not isinstance(nested_token_ids, list) or not nested_token_ids:
            raise ValueError(f"nested_token_ids must be a non-empty list of lists, got {nested_token_ids!r}")
        for ids in nested_token_ids:
            _check_token_ids(ids, "each entry of nested_token_ids")
        as_tuples = [tuple(ids) for ids in nested_token_ids]
        for a in as_tuples:
            if any(b != a and b[: len(a)] == a for b in as_tuples):
                raise ValueError(f"each sequence must not be a prefix of another; {list(a)} is")
        self.token_ids = nested_token_ids
        self._sequences = as_tuples
        self.seqlen = max(len(s) for s in as_tuples)
        self.reset()

    def reset(self) -> None:
        self.current_seq: list[int] = []
        self.completed = False

    def _next_tokens(self) -> list[int]:
        n, prefix = len(self.current_seq), tuple(self.current_seq)
        return sorted({s[n] for s in self._sequences if len(s) > n and s[:n] == prefix})

    def advance(self):
        tokens = self._next_tokens()
        return tokens or None

    def does_advance(self, token_id: int) -> bool:
        return token_id in self._next_tokens()

    def update(self, token_id: int) -> tuple[bool, bool, bool]:
        if not self.does_advance(token_id):
            self.reset()
            return False, False, True
        self.current_seq.append(token_id)
        self.completed = tuple(self.current_seq) in self._sequences
        return True, self.completed, False

    def remaining(self) -> int:
        return 0 if self.completed else self.seqlen - len(self.current_seq)

    def copy(self, stateful: bool = False) -> "DisjunctiveConstraint":
        new = DisjunctiveConstraint(self.token_ids)
        if stateful:
            new.current_seq, new.completed = list(self.current_seq), self.completed
        return new


class LogitsWarper:
    """4.x's base of sampling-time logits transforms (now plain `LogitsProcessor`s)."""

    def __call__(self, input_ids, scores):
        raise NotImplementedError(f"{type(self).__name__} is an abstract class; subclasses implement __call__")


def _removed(name: str) -> type:
    """A class that imports fine and explains itself if constructed."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            f"{name} was removed in Transformers 5 and is only provided so that remote code imports; "
            "anymodel does not run a model's own generate()"
        )

    return type(name, (), {"__init__": __init__, "__doc__": f"Placeholder for Transformers 4.x's {name}."})


BeamScorer = _removed("BeamScorer")
BeamSearchScorer = _removed("BeamSearchScorer")
ConstrainedBeamSearchScorer = _removed("ConstrainedBeamSearchScorer")


def output_aliases() -> dict[str, type]:
    """4.x's per-strategy generate() output names -> the 5.x classes they became."""
    from transformers.generation import utils

    decoder_only, enc_dec = utils.GenerateDecoderOnlyOutput, utils.GenerateEncoderDecoderOutput
    beam_decoder_only, beam_enc_dec = utils.GenerateBeamDecoderOnlyOutput, utils.GenerateBeamEncoderDecoderOutput
    aliases = {}
    for strategy in ("GreedySearch", "Sample", "ContrastiveSearch"):
        aliases[f"{strategy}DecoderOnlyOutput"] = decoder_only
        aliases[f"{strategy}EncoderDecoderOutput"] = enc_dec
        aliases[f"{strategy}Output"] = utils.GenerateNonBeamOutput
    for strategy in ("BeamSearch", "BeamSample"):
        aliases[f"{strategy}DecoderOnlyOutput"] = beam_decoder_only
        aliases[f"{strategy}EncoderDecoderOutput"] = beam_enc_dec
        aliases[f"{strategy}Output"] = utils.GenerateBeamOutput
    return aliases
