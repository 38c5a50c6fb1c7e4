"""Engine side: the adapters the engine knows. A new `lora_int_id` is read and checked on every
worker (`Worker.add_lora`) before its first request is admitted, so a bad adapter is a ValueError
of `add_request` (HTTP 400), never a failure inside a step."""

from __future__ import annotations

from anymodel.lora.request import LoRARequest


class LoRARegistry:
    def __init__(self, enabled: bool, executor) -> None:
        self.enabled = enabled
        self.executor = executor
        self.known: dict[int, LoRARequest] = {}

    def check(self, lora_request) -> LoRARequest | None:
        """The request's adapter, loaded on the workers; a ValueError naming it and the problem."""
        if lora_request is None:
            return None
        if not isinstance(lora_request, LoRARequest):
            raise ValueError(f"lora_request must be an anymodel.LoRARequest (or None), got {type(lora_request).__name__}")
        if not self.enabled:
            raise ValueError(f"lora_request {lora_request.lora_name!r} given, but LoRA is not enabled; "
                             "pass enable_lora=True (--enable-lora)")
        known = self.known.get(lora_request.lora_int_id)
        if known is None:
            self.add(lora_request)
        elif (known.lora_name, known.lora_path) != (lora_request.lora_name, lora_request.lora_path):
            raise ValueError(f"LoRA adapter {lora_request.lora_name!r}: lora_int_id {lora_request.lora_int_id} is "
                             f"already adapter {known.lora_name!r} ({known.lora_path}); give each adapter its own id")
        return lora_request

    def add(self, lora_request: LoRARequest) -> bool:
        if not self.enabled:
            raise ValueError("LoRA is not enabled; pass enable_lora=True (--enable-lora)")
        added = self.executor.collective_rpc("add_lora", (lora_request,))[0]
        self.known[lora_request.lora_int_id] = lora_request
        return added

    def remove(self, lora_int_id: int) -> bool:
        """Forget an adapter (its requests in flight reload it from its path when they run again)."""
        if self.known.pop(lora_int_id, None) is None:
            return False
        self.executor.collective_rpc("remove_lora", (lora_int_id,))
        return True

    def list(self) -> list[LoRARequest]:
        return list(self.known.values())
