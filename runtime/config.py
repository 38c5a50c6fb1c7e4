"""EngineArgs: every user-facing engine option, validated once, in vLLM's spelling."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

from anymodel.params import SEED_RANGE

TASKS = ("auto", "generate", "embed", "classify", "score", "reward")
MODEL_IMPLS = ("auto", "transformers", "native")
DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTENTION_BACKENDS = ("auto", "triton", "torch", "flash_attn")
EXECUTOR_BACKENDS = (None, "uni", "mp", "ray")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unsupported {name} {value!r}; supported: {list(allowed)}")


def _positive(name: str, value, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be {'None or ' if optional else ''}an integer >= 1, got {value!r}")


@dataclass
class EngineArgs:
    model: str | None = None  # None: the embedded demo model
    task: str = "auto"
    model_impl: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None
    tokenizer: str | None = None
    tokenizer_revision: str | None = None
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    hf_overrides: dict | Callable | None = None
    override_pooler_config: dict | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    kv_cache_memory: int | None = None  # bytes; None: num_kv_blocks, else gpu_memory_utilization (GPU) / 1 GiB (CPU)
    gpu_memory_utilization: float = 0.9  # GPU: the share of device memory for weights, activations and KV cache
    num_kv_blocks: int | None = None
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: max(2048, max_model_len) on CPU
    max_logprobs: int = 20  # the most logprobs / prompt_logprobs a request may ask for; -1: no cap
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    attention_backend: str = "auto"
    enable_compat_path: bool = True  # run non-backend-compatible models through their own forward
    # False: decode steps on one GPU replay CUDA graphs (runtime/worker/cuda_graph.py). Default True until
    # the path has run on a GPU (vLLM's default is False).
    enforce_eager: bool = True
    served_model_name: str | None = None
    chat_template: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        _choice("task", self.task, TASKS)
        _choice("model_impl", self.model_impl, MODEL_IMPLS)
        _choice("dtype", self.dtype, DTYPES)
        _choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _choice("distributed_executor_backend", self.distributed_executor_backend, EXECUTOR_BACKENDS)
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "block_size", "max_num_seqs"):
            _positive(name, getattr(self, name), optional=False)
        for name in ("max_model_len", "num_kv_blocks", "kv_cache_memory", "max_num_batched_tokens"):
            _positive(name, getattr(self, name))
        lo, hi = SEED_RANGE
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and lo <= self.seed <= hi):
            raise ValueError(f"seed must be an integer in [{lo}, 2**64 - 1], got {self.seed!r}")
        if not (isinstance(self.max_logprobs, int) and self.max_logprobs >= -1):
            raise ValueError(f"max_logprobs must be -1 (no cap) or an integer >= 0, got {self.max_logprobs!r}")
        if not (isinstance(self.gpu_memory_utilization, (int, float)) and 0 < self.gpu_memory_utilization <= 1):
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.hf_overrides is not None and not (isinstance(self.hf_overrides, dict) or callable(self.hf_overrides)):
            raise ValueError(f"hf_overrides must be a dict or a callable(config) -> config, got {type(self.hf_overrides).__name__}")
        if self.override_pooler_config is not None and not isinstance(self.override_pooler_config, dict):
            raise ValueError("override_pooler_config must be a dict, e.g. {'pooling_type': 'MEAN', 'normalize': true}")

    @classmethod
    def from_kwargs(cls, model: str | None, kwargs: dict[str, Any]) -> "EngineArgs":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown engine argument(s) {unknown}; supported: {sorted(known)}")
        return cls(model=model, **kwargs)

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size
