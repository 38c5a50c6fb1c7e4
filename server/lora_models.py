"""LoRA adapters served by name: `--lora-modules name=path ...` (or the JSON form
{"name", "path", "base_model_name"}) at start-up, and when ANYMODEL_ALLOW_RUNTIME_LORA_UPDATING=1

    POST /v1/load_lora_adapter    {"lora_name", "lora_path"}   400 for a bad adapter or a taken name
    POST /v1/unload_lora_adapter  {"lora_name"}                404 for an unknown name

(without the variable those routes do not exist: 404, as vLLM). `model="name"` on a request picks
the adapter; /v1/models lists each one with `parent` = the base model and `root` = its path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from anymodel.lora.request import LoRARequest

from .errors import APIError

RUNTIME_UPDATING_ENV = "ANYMODEL_ALLOW_RUNTIME_LORA_UPDATING"


@dataclass(frozen=True)
class LoRAModulePath:
    name: str
    path: str
    base_model_name: str | None = None


def parse_lora_module(text: str) -> LoRAModulePath:
    """`name=path` or `{"name": ..., "path": ..., "base_model_name": ...}` (vLLM's two forms)."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--lora-modules: not valid JSON ({e.msg}): {text!r}") from e
        unknown = set(value) - {"name", "path", "base_model_name"}
        if unknown or not value.get("name") or not value.get("path"):
            raise ValueError(f"--lora-modules JSON needs \"name\" and \"path\" (and optionally \"base_model_name\"), "
                             f"got {text!r}")
        return LoRAModulePath(value["name"], value["path"], value.get("base_model_name"))
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--lora-modules expects name=path or a JSON object, got {text!r}")
    return LoRAModulePath(name, path)


class LoadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_int_id: int | None = None


class ServedLoRAs:
    """name -> LoRARequest; each name gets the next lora_int_id."""

    def __init__(self, base_name: str) -> None:
        self.base_name = base_name
        self.by_name: dict[str, LoRARequest] = {}
        self._next_id = 1

    def new_request(self, name: str, path: str, base_model_name: str | None = None) -> LoRARequest:
        if name == self.base_name or name in self.by_name:
            raise APIError(400, f"The lora adapter '{name}' has already been loaded.", param="lora_name")
        request = LoRARequest(name, self._next_id, path, base_model_name)
        self._next_id += 1
        return request

    def resolve(self, name: str | None) -> LoRARequest | None:
        """The adapter a request's `model` names; None for the base model (or no name)."""
        if name is None or name == self.base_name:
            return None
        if name not in self.by_name:
            raise APIError(404, f"The model `{name}` does not exist; this server serves `{self.base_name}` and the "
                                f"LoRA adapters {sorted(self.by_name)}.", param="model", code="model_not_found")
        return self.by_name[name]


def load_startup_loras(engine, served: ServedLoRAs, modules: list[LoRAModulePath]) -> None:
    """--lora-modules: each adapter loaded and checked before the server starts (ValueError: it does not)."""
    for m in modules:
        request = served.new_request(m.name, m.path, m.base_model_name)
        engine.loras.add(request)
        served.by_name[m.name] = request


def add_lora_routes(app: FastAPI, served: ServedLoRAs, async_engine) -> None:
    if os.environ.get(RUNTIME_UPDATING_ENV, "0").lower() not in ("1", "true"):
        return

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoRAAdapterRequest):
        request = served.new_request(body.lora_name, body.lora_path)
        served.by_name[body.lora_name] = request  # the name is taken while it loads
        try:
            await async_engine.call(lambda engine: engine.loras.add(request))  # ValueError: 400
        except BaseException:
            served.by_name.pop(body.lora_name, None)
            raise
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoRAAdapterRequest):
        request = served.by_name.pop(body.lora_name, None)
        if request is None:
            raise APIError(404, f"The lora adapter '{body.lora_name}' cannot be found.", param="lora_name")
        await async_engine.call(lambda engine: engine.loras.remove(request.lora_int_id))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
