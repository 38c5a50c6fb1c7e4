"""Constraints and the checks that their outputs satisfy them (shared by the offline and server tests)."""

from __future__ import annotations

import json
import re

import jsonschema

# (a string with maxLength: xgrammar 0.2.9 lets raw control characters into it, which JSON forbids)
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "pattern": "^[a-z ]{1,6}$"}, "age": {"type": "integer"},
                   "ok": {"type": "boolean"}, "tag": {"enum": ["x", "y", "z"]}},
    "required": ["age", "ok", "tag"],
}
REGEX = r"[a-c]{2,5}(x|y)[0-9]?"
CHOICES = ["yes", "no", 'say "hi"', "naïve"]
# EBNF and the regex its language equals
GRAMMAR = 'root ::= "(" item ("," item)* ")"\nitem ::= "a" | "bb" | [0-9]'
GRAMMAR_REGEX = r"\((a|bb|[0-9])(,(a|bb|[0-9]))*\)"


def valid_json(text: str, schema: dict | None = SCHEMA) -> bool:
    try:
        value = json.loads(text)
        if schema is None:
            return isinstance(value, dict)
        jsonschema.validate(value, schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


CHECKS = {
    "json": lambda text: valid_json(text),
    "json_object": lambda text: valid_json(text, None),
    "regex": lambda text: re.fullmatch(REGEX, text) is not None,
    "choice": lambda text: text in CHOICES,
    "grammar": lambda text: re.fullmatch(GRAMMAR_REGEX, text) is not None,
}
CONSTRAINTS = {"json": SCHEMA, "json_object": True, "regex": REGEX, "choice": CHOICES, "grammar": GRAMMAR}
