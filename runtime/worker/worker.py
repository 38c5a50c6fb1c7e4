"""A worker: loads the model for its device and rank (its TP shard, its PP stage; the choice is
runtime/model_loader's) and runs steps on it."""

from __future__ import annotations

import logging

import torch

from anymodel import loader
from anymodel.worker.cuda_graph import GraphSpec, capture_sizes
from anymodel.distributed import ParallelState, get_parallel_state
from anymodel.lora.slots import LoRASlots
from anymodel.model_loader import load_model
from anymodel.model_protocol import traits_of
from anymodel.worker.model_runner import ModelRunner

logger = logging.getLogger("anymodel")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Worker:
    def __init__(self, args, model_dir, config, state: ParallelState | None = None) -> None:
        self.state = state or get_parallel_state()
        self.device = resolve_device(args.device)
        self.model_dir = model_dir  # for LLM.describe()
        from anymodel.attention_backend.selector import get_backend

        backend = get_backend(args.attention_backend, self.device, args.block_size)
        self.model = load_model(args, model_dir, config, self.device, self.state, backend)
        spec = decode_graph_spec(args, config, self.device, self.model, backend, self.state)
        self.lora = LoRASlots(self.model, args.max_cpu_loras or args.max_loras) if args.enable_lora else None
        self.runner = ModelRunner(self.model, self.device, args.block_size, backend, seed=args.seed, graph_spec=spec,
                                  lora=self.lora,
                                  kv_cache_dtype=kv_cache_dtype_for(args.kv_cache_dtype, backend, self.model, model_dir))
        # Only the last pipeline stage has the LM head: earlier stages run the forward and stop.
        self.runner.produces_output = self.state.is_last_stage

    # ---- LoRA adapters (vLLM's worker names; see anymodel/lora/slots.py) --------------------------
    def add_lora(self, lora_request) -> bool:
        return self._lora_slots().add(lora_request)

    def remove_lora(self, lora_int_id: int) -> bool:
        return self._lora_slots().remove(lora_int_id)

    def list_loras(self) -> list[int]:
        return self._lora_slots().list()

    def _lora_slots(self) -> LoRASlots:
        if self.lora is None:
            raise ValueError("LoRA is not enabled; pass enable_lora=True (--enable-lora)")
        return self.lora


def kv_cache_dtype_for(name: str, backend, model, model_dir=None) -> torch.dtype | None:
    """The KV cache's storage dtype; FP8 is read by the torch backend only (the Triton and
    flash-attn kernels do not dequantize FP8 blocks yet), and only a paged KV cache has one."""
    from anymodel.attention_backend import torch_ref
    from anymodel.attention_backend.kv_dtype import kv_cache_torch_dtype

    dtype = kv_cache_torch_dtype(name)
    if dtype is not None and backend is not torch_ref:
        raise ValueError(f"kv_cache_dtype={name!r} needs attention_backend='torch' (the {backend.__name__} kernels "
                         "do not read FP8 KV blocks yet); pass kv_cache_dtype='auto' or attention_backend='torch'")
    if dtype is not None and model_dir is not None:
        from anymodel.native_overrides.quantization.checkpoint import kv_scale_tensors

        scales = kv_scale_tensors(model_dir)
        if scales:
            raise ValueError(f"kv_cache_dtype={name!r}: the checkpoint carries per-layer KV scales ({scales[0]}, ...), "
                             "which anymodel does not apply yet (it would store K/V with scale 1.0); pass "
                             "kv_cache_dtype='auto'")
    if dtype is not None and not traits_of(model).paged_kv_cache:
        raise ValueError(f"kv_cache_dtype={name!r} needs anymodel's paged KV cache; {type(model).__name__} keeps its "
                         "own cache (compat path); pass kv_cache_dtype='auto'")
    return dtype


def decode_graph_spec(args, config, device: torch.device, model, backend, state: ParallelState) -> GraphSpec | None:
    """CUDA graphs for decode steps when `enforce_eager=False` and everything in the step can be
    captured: one GPU, a generating model over the paged cache, an attention backend without host
    syncs (it says so with `CUDA_GRAPHS = True`). Otherwise None, with the reason logged."""
    if args.enforce_eager:
        return None
    reason = None
    if device.type != "cuda":
        reason = f"device {device.type!r} (CUDA only)"
    elif args.enable_lora:
        reason = "LoRA adapters (their per-step mapping is not captured yet)"
    elif state.world_size > 1:
        reason = "tensor/pipeline parallelism (not captured yet)"
    elif args.task not in ("auto", "generate") or not traits_of(model).paged_kv_cache:
        reason = "a pooling model or one on the compat path"
    elif not getattr(backend, "CUDA_GRAPHS", False):
        reason = f"attention backend {getattr(backend, '__name__', backend)!r} cannot be captured; use 'triton'"
    if reason is not None:
        logger.info("anymodel: enforce_eager=False, but decode runs eagerly: %s", reason)
        return None
    max_seq_len = loader.derive_max_model_len(config, args.max_model_len)
    return GraphSpec(capture_sizes(args.max_num_seqs), max_seq_len)


def run_on_worker(worker: Worker, method, args: tuple = (), kwargs: dict | None = None):
    """collective_rpc on one worker: a Worker method by name, or fn(worker, *args, **kwargs)."""
    kwargs = kwargs or {}
    if isinstance(method, str):
        target = getattr(worker, method, None)
        if not callable(target):
            raise ValueError(f"collective_rpc: Worker has no method {method!r}; pass a method name or a callable "
                             "fn(worker, *args, **kwargs)")
        return target(*args, **kwargs)
    if not callable(method):
        raise ValueError(f"collective_rpc: method must be a str or a callable, got {type(method).__name__}")
    return method(worker, *args, **kwargs)
