"""Structured-output request fields -> one StructuredOutputsParams (or None).

    response_format {"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", "strict"}}
    structured_outputs {...}                                    vLLM's extra body (StructuredOutputsParams' fields)
    guided_json | guided_regex | guided_choice | guided_grammar  vLLM's legacy extra fields
    structural_tag                                               vLLM's extra field (JSON text)

At most one of them may constrain a request (a 400 naming them otherwise).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from anymodel.structured_output.params import StructuredOutputsParams

from .request_fields import FieldError

_LEGACY = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar",
           "structural_tag": "structural_tag"}


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = "response"
    description: Optional[str] = None
    json_schema: Optional[dict[str, Any]] = Field(None, alias="schema")  # `schema` shadows a BaseModel name
    strict: Optional[bool] = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class StructuredFields(BaseModel):
    """The request fields (mixed into completions and chat requests)."""

    response_format: Optional[ResponseFormat] = None
    structured_outputs: Optional[dict[str, Any]] = None
    guided_json: Optional[Any] = None  # a schema: object or JSON text
    guided_regex: Optional[str] = None
    guided_choice: Optional[list[str]] = None
    guided_grammar: Optional[str] = None
    structural_tag: Optional[str] = None
    guided_decoding_backend: Optional[Literal["auto", "xgrammar"]] = None

    def structured_outputs_params(self) -> Optional[StructuredOutputsParams]:
        given = {name: p for name, p in self._sources().items() if p is not None}
        if len(given) > 1:
            raise FieldError(sorted(given)[1], f"pass one structured-output constraint; got {sorted(given)}")
        if not given:
            return None
        name, params = given.popitem()
        try:
            return StructuredOutputsParams.from_dict(params)
        except (ValueError, TypeError) as e:
            raise FieldError(name, str(e)) from None

    def _sources(self) -> dict[str, Optional[dict]]:
        out: dict[str, Optional[dict]] = {"response_format": self._from_response_format(),
                                          "structured_outputs": self.structured_outputs}
        for field, kind in _LEGACY.items():
            value = getattr(self, field)
            out[field] = None if value is None else {kind: value}
        return out

    def _from_response_format(self) -> Optional[dict]:
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"json_object": True}
        if fmt.json_schema is None or fmt.json_schema.json_schema is None:
            raise FieldError("response_format", "response_format of type json_schema needs json_schema.schema "
                                                "(a JSON schema object)")
        return {"json": fmt.json_schema.json_schema}
