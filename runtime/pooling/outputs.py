"""Pooling requests in flight: one step computes a whole prompt, so each finishes in the step it runs.

    add(request, prompt) ... step: runner output `pooled[request_id] = data` -> collect() ->
    [(request, PoolingRequestOutput(data))]: the engine frees the request's KV blocks at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from anymodel.outputs import PoolingOutput, PoolingRequestOutput
from anymodel.engine.request import Request


@dataclass
class PoolingOutputs:
    requests: dict[str, tuple[Request, str | None]] = field(default_factory=dict)  # id -> (request, prompt)

    def add(self, request: Request, prompt: str | None) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        self.requests[request.request_id] = (request, prompt)

    def pop(self, request_id: str) -> Request | None:
        entry = self.requests.pop(request_id, None)
        return entry[0] if entry else None

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.requests

    def collect(self, pooled: dict[str, torch.Tensor]) -> list[tuple[Request, PoolingRequestOutput]]:
        done = []
        for rid, data in pooled.items():
            entry = self.requests.pop(rid, None)
            if entry is None:  # aborted while its step ran
                continue
            request, prompt = entry
            out = PoolingRequestOutput(rid, request.prompt_token_ids, PoolingOutput(data), True, prompt)
            done.append((request, out))
        return done
