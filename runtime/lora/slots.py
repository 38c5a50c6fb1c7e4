"""Worker side: adapters loaded in host memory (an LRU of `max_cpu_loras`) and the `max_loras`
device slots every LoRALinear holds (an LRU too). The scheduler never puts more distinct adapters
in one step than there are slots, so `activate` always finds room by evicting slots the step
does not use.

    add(request)        read + check the adapter against the model (a ValueError naming it and the problem)
    activate(requests)  each scheduled request's slot (-1: base), loading the missing adapters into slots
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from anymodel.lora.adapter import adapter_error, load_adapter
from anymodel.lora.layer import LoRALinear
from anymodel.lora.request import LoRARequest

# layer -> {piece index: (A [r, in], B [out, r])}: an adapter placed on the model's layers
Placement = dict[LoRALinear, dict[int, tuple[torch.Tensor, torch.Tensor]]]


class LoRASlots:
    def __init__(self, model: torch.nn.Module, max_cpu_loras: int) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
        if not self.layers:
            raise ValueError("enable_lora=True but the model has no LoRA layers (it was built without the LoRA transform)")
        self.state = self.layers[0].state
        self.table = {p.name: (layer, i) for layer in self.layers for i, p in enumerate(layer.pieces)}
        self.max_cpu_loras = max_cpu_loras
        self.cpu: OrderedDict[int, Placement] = OrderedDict()  # int id -> placement, oldest first
        self.slot_of: OrderedDict[int, int] = OrderedDict()  # int id -> slot, least recently used first

    # ---- host memory ---------------------------------------------------------------------------
    def add(self, request: LoRARequest) -> bool:
        """Read and check `request`'s adapter (once; again after LRU eviction)."""
        if request.lora_int_id in self.cpu:
            self.cpu.move_to_end(request.lora_int_id)
            return False
        self.cpu[request.lora_int_id] = self.place(request)
        while len(self.cpu) > self.max_cpu_loras:
            self.cpu.popitem(last=False)
        return True

    def remove(self, lora_int_id: int) -> bool:
        slot = self.slot_of.pop(lora_int_id, None)
        if slot is not None:
            for layer in self.layers:
                layer.set_slot(slot, {})
        return self.cpu.pop(lora_int_id, None) is not None or slot is not None

    def list(self) -> list[int]:
        return list(self.cpu)

    def place(self, request: LoRARequest) -> Placement:
        adapter = load_adapter(request, self.state.max_rank)
        placement: Placement = {}
        missing = []
        for module, (a, b) in adapter.weights.items():
            match = self._lookup(module)
            if match is None:
                missing.append(module)
                continue
            layer, i = match
            problem = layer.check(i, a, b)
            if problem is not None:
                raise adapter_error(request, f"module {module!r}: {problem} (an adapter for another base model?)")
            placement.setdefault(layer, {})[i] = (a, b)
        if missing:
            names = sorted({name.rsplit(".", 1)[-1] for name in self.table})
            raise adapter_error(request, f"target module(s) {missing[:4]} not in the model; its linear layers are "
                                         f"{names}")
        return placement

    def _lookup(self, module: str):
        """The layer piece a PEFT module name stands for: its longest suffix that names one
        ("model.layers.0.self_attn.q_proj" -> "layers.0.self_attn.q_proj", decoder-relative)."""
        parts = module.split(".")
        for i in range(len(parts)):
            hit = self.table.get(".".join(parts[i:]))
            if hit is not None:
                return hit
        return None

    # ---- device slots --------------------------------------------------------------------------
    def activate(self, requests: list[LoRARequest | None]) -> list[int]:
        """The slot of each request's adapter (-1 for the base model), loading those not in a slot."""
        needed = list(dict.fromkeys(r.lora_int_id for r in requests if r is not None))
        if len(needed) > self.state.max_loras:
            raise RuntimeError(f"a step with {len(needed)} adapters > max_loras={self.state.max_loras} (scheduler bug)")
        by_id = {r.lora_int_id: r for r in requests if r is not None}
        for lora_id in needed:
            if lora_id in self.slot_of:
                self.slot_of.move_to_end(lora_id)
            else:
                self._load(by_id[lora_id], self._free_slot(set(needed)))
        return [-1 if r is None else self.slot_of[r.lora_int_id] for r in requests]

    def _free_slot(self, keep: set[int]) -> int:
        used = set(self.slot_of.values())
        free = [s for s in range(self.state.max_loras) if s not in used]
        if free:
            return free[0]
        victim = next(i for i in self.slot_of if i not in keep)  # least recently used, not in this step
        return self.slot_of.pop(victim)

    def _load(self, request: LoRARequest, slot: int) -> None:
        self.add(request)  # a no-op unless it left host memory
        placement = self.cpu[request.lora_int_id]
        for layer in self.layers:
            layer.set_slot(slot, placement.get(layer, {}))
        self.slot_of[request.lora_int_id] = slot
