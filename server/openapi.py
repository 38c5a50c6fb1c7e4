"""The OpenAPI schema as the server behaves: a bad body is a 400 with OpenAI's error body.

FastAPI documents a 422 with its own validation-error shape for every route with a body; our
handlers answer 400 (errors.py), so the schema's 422 entries become that 400.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .protocol import ErrorResponse

_REF = "#/components/schemas/{model}"
BAD_REQUEST = {
    "description": "Invalid request: the message names the field (also in `param`); an unimplemented field "
                   "of the OpenAI or vLLM API is refused the same way",
    "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}},
}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            app.openapi_schema = _errors_as_400(schema)
        return app.openapi_schema

    app.openapi = openapi


def _errors_as_400(schema: dict[str, Any]) -> dict[str, Any]:
    for operations in schema.get("paths", {}).values():
        for op in operations.values():
            if op.get("responses", {}).pop("422", None) is not None:
                op["responses"]["400"] = BAD_REQUEST
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    error = ErrorResponse.model_json_schema(ref_template=_REF)
    components.update(error.pop("$defs", {}))
    components["ErrorResponse"] = error
    return schema
