"""StructuredOutputsParams: one request's output constraint, in vLLM's names.

Exactly one of json / regex / choice / grammar / json_object / structural_tag. The spellings are
checked here (types, one constraint); whether a schema, regex or grammar is valid is the grammar
engine's call, made by the engine when the request is submitted (a ValueError there too).
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass
from typing import Any

CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
BACKENDS = ("auto", "xgrammar", "guidance")


@dataclass
class StructuredOutputsParams:
    json: str | dict | None = None  # a JSON schema (dict, or its JSON text)
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None  # EBNF / GBNF
    json_object: bool | None = None  # any JSON object
    structural_tag: str | dict | None = None  # xgrammar's structural tag (JSON text or dict)
    disable_any_whitespace: bool = False  # JSON without free whitespace between tokens
    disable_fallback: bool = False  # accepted: there is one backend, nothing to fall back to
    disable_additional_properties: bool = False  # JSON objects without properties the schema does not list
    whitespace_pattern: str | None = None  # not supported by xgrammar (refused)
    backend: str | None = None  # per request: must agree with the engine's backend

    def __post_init__(self) -> None:
        given = [name for name in CONSTRAINTS if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise ValueError(f"structured outputs take exactly one constraint of {list(CONSTRAINTS)}; "
                             f"got {given or 'none'}")
        self._check_types()
        if self.whitespace_pattern is not None:
            raise ValueError("structured outputs' whitespace_pattern is not supported by the xgrammar backend; "
                             "pass disable_any_whitespace=True for compact JSON instead")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"structured outputs backend must be one of {list(BACKENDS)}, got {self.backend!r}")

    def _check_types(self) -> None:
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError(f"structured outputs json must be a JSON schema (dict or JSON text), got "
                             f"{type(self.json).__name__}")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"structured outputs {name} must be a non-empty string, got {value!r}")
        if self.choice is not None:
            ok = isinstance(self.choice, (list, tuple)) and self.choice and all(isinstance(c, str) for c in self.choice)
            if not ok:
                raise ValueError(f"structured outputs choice must be a non-empty list of strings, got {self.choice!r}")
            self.choice = list(self.choice)
        if self.json_object not in (None, True, False):
            raise ValueError(f"structured outputs json_object must be true or false, got {self.json_object!r}")
        if self.structural_tag is not None and not isinstance(self.structural_tag, (str, dict)):
            raise ValueError("structured outputs structural_tag must be a JSON text or a dict")

    @property
    def kind(self) -> str:
        """The one constraint given: 'json', 'regex', 'choice', 'grammar', 'json_object' or 'structural_tag'."""
        return next(name for name in CONSTRAINTS if getattr(self, name) not in (None, False))

    def key(self) -> tuple[str, str, bool, bool]:
        """What the compiled grammar depends on (the compile cache's key)."""
        value = getattr(self, self.kind)
        spec = value if isinstance(value, str) else _json.dumps(value, sort_keys=True)
        return self.kind, spec, self.disable_any_whitespace, self.disable_additional_properties

    @classmethod
    def from_dict(cls, data: Any) -> "StructuredOutputsParams":
        """From a JSON body (the server's `structured_outputs`): unknown keys are an error, never dropped."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"structured_outputs must be an object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"structured_outputs has unknown field(s) {unknown}; supported: {sorted(known)}")
        return cls(**data)


class GuidedDecodingParams(StructuredOutputsParams):
    """vLLM's older name (SamplingParams(guided_decoding=...))."""


def resolve_structured_outputs(sp) -> StructuredOutputsParams | None:
    """SamplingParams' structured_outputs / guided_decoding (vLLM's older name) -> one params or None;
    a combination that cannot hold (both given; ignore_eos or min_tokens, which fight the end of
    the grammar) is a ValueError naming it."""
    so, legacy = sp.structured_outputs, sp.guided_decoding
    if so is not None and legacy is not None:
        raise ValueError("pass structured_outputs or guided_decoding (its older name), not both")
    so = so if so is not None else legacy
    if so is None:
        return None
    if not isinstance(so, (StructuredOutputsParams, dict)):
        raise ValueError(f"structured_outputs must be a StructuredOutputsParams, got {type(so).__name__}")
    so = StructuredOutputsParams.from_dict(so) if isinstance(so, dict) else so
    if sp.ignore_eos:
        raise ValueError("ignore_eos=True cannot be combined with structured_outputs (the output ends with EOS "
                         "once the constraint is complete); pass ignore_eos=False")
    if sp.min_tokens:
        raise ValueError("min_tokens cannot be combined with structured_outputs (the constraint decides where the "
                         "output ends); pass min_tokens=0")
    return so
