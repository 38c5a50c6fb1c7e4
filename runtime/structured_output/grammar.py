"""StructuredOutputsParams -> an xgrammar `Grammar` (parsed, not yet compiled against a vocabulary).

Parsing is cheap and is where a bad schema, regex or grammar shows: it runs when the request is
submitted, so that the error is the caller's ValueError. Compiling (the per-vocabulary token mask
tables, the expensive part) runs later in the compiler's thread pool (compiler.py).
"""

from __future__ import annotations

import json
import re

from anymodel.structured_output.params import StructuredOutputsParams

# xgrammar prefixes its C++ errors with "[hh:mm:ss] /path/file.cc:123: "
_CPP_PREFIX = re.compile(r"^\[[\d:]+\] [^:]+:\d+: ")


def build_grammar(p: StructuredOutputsParams):
    """The params' one constraint as an xgrammar Grammar; ValueError naming it when it is invalid."""
    import xgrammar as xgr

    kind = p.kind
    try:
        if kind == "json":
            return xgr.Grammar.from_json_schema(_schema(p.json), any_whitespace=not p.disable_any_whitespace)
        if kind == "json_object":
            return xgr.Grammar.from_json_schema({"type": "object"}, any_whitespace=not p.disable_any_whitespace,
                                                strict_mode=False)
        if kind == "regex":
            return xgr.Grammar.from_regex(p.regex)
        if kind == "choice":
            return xgr.Grammar.from_ebnf(choice_ebnf(p.choice))
        if kind == "grammar":
            return xgr.Grammar.from_ebnf(p.grammar)
        return _structural_tag(xgr, p.structural_tag)
    except ValueError:
        raise
    except Exception as e:  # xgrammar raises RuntimeError / its own errors for an invalid spec
        message = _CPP_PREFIX.sub("", str(e).strip())
        raise ValueError(f"structured outputs {kind} is invalid: {message}") from None


def _schema(schema: str | dict) -> dict:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"structured outputs json is not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"structured outputs json must be a JSON schema object, got {type(schema).__name__}")
    return schema


def choice_ebnf(choices: list[str]) -> str:
    """root ::= "a" | "b" ...: each choice a string literal (JSON's escapes: quotes, backslashes, controls)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _structural_tag(xgr, tag: str | dict):
    """vLLM's two spellings: {"structures": [{"begin", "schema", "end"}], "triggers": [...]} (legacy),
    or xgrammar's structural tag format (passed through)."""
    data = json.loads(tag) if isinstance(tag, str) else tag
    if isinstance(data, dict) and "structures" in data:
        items = [xgr.StructuralTagItem(begin=s["begin"], schema=json.dumps(s["schema"]), end=s["end"])
                 for s in data["structures"]]
        return xgr.Grammar.from_structural_tag(items, data.get("triggers", []))
    return xgr.Grammar.from_structural_tag(data)
