"""LoRA adapters (PEFT format), served many at once: `LoRARequest` picks one per request.

request.py (the API object), adapter.py (read a PEFT adapter), ops.py (shrink / expand over a mixed
batch), layer.py (`LoRALinear`), transform.py (the load-time transform), slots.py (host LRU and
device slots on a worker), registry.py (the engine's view: which adapters it knows).
"""

from anymodel.lora.request import LoRARequest

__all__ = ["LoRARequest"]
