"""EngineArgs: every user-facing engine option, validated once, in vLLM's spelling."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

from anymodel.params import SEED_RANGE
from anymodel.structured_output.config import resolve_config

TASKS = ("auto", "generate", "embed", "classify", "score", "reward")
RUNNERS = ("auto", "generate", "pooling")  # vLLM's current spelling of `task`: runner + convert
CONVERTS = ("auto", "embed", "classify", "reward")
MODEL_IMPLS = ("auto", "transformers", "native")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DTYPE_ALIASES = {"half": "float16", "float": "float32"}  # vLLM's other names (torch dtypes are accepted too)
LOAD_FORMATS = ("auto", "safetensors", "pt", "dummy")
TOKENIZER_MODES = ("auto", "slow")
ATTENTION_BACKENDS = ("auto", "triton", "torch", "flash_attn")
EXECUTOR_BACKENDS = (None, "uni", "mp", "ray")
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")  # vLLM's (fp8: the torch attention backend)


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
    pooler_config: dict | None = None  # vLLM's new name of override_pooler_config (moved there on validation)
    runner: str = "auto"  # with convert: vLLM's current names for `task` (see _task_from_runner)
    convert: str = "auto"
    generation_config: str = "auto"  # "auto": the model's generation_config.json gives request defaults; "vllm": none; a dir
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
    scheduling_policy: str = "fcfs"  # or "priority": LLM.generate(..., priority=[...]), lower first
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    attention_backend: str = "auto"
    enable_compat_path: bool = True  # run non-backend-compatible models through their own forward
    enable_lora: bool = False  # LoRA adapters per request (anymodel.lora); the three below size them
    max_loras: int = 1  # distinct adapters in one step (device slots)
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # adapters kept in host memory (LRU); None: max_loras
    # False: decode steps on one GPU replay CUDA graphs (runtime/worker/cuda_graph.py). Default True until
    # the path has run on a GPU (vLLM's default is False).
    enforce_eager: bool = True
    served_model_name: str | list[str] | None = None  # several: each is accepted as `model`; the first is answered
    chat_template: str | None = None
    device: str = "auto"
    disable_log_stats: bool = False  # the server's periodic stats line off (server/stats_logger.py); offline logs none
    download_dir: str | None = None  # the Hub cache directory for snapshot downloads
    load_format: str = "auto"  # "pt": only a checkpoint without safetensors; "dummy": random weights (model_loader/build.py)
    tokenizer_mode: str = "auto"  # "slow": the Python tokenizer (use_fast=False)
    skip_tokenizer_init: bool = False  # True: no tokenizer; prompts are token ids, outputs have token ids and text ""
    max_seq_len_to_capture: int = 8192  # accepted: CUDA graphs capture decode steps only, whatever their length
    swap_space: float = 4  # GiB; accepted for any value: preemption recomputes, nothing is swapped (as vLLM V1)
    cpu_offload_gb: float = 0  # > 0 is refused: weights stay on the device
    compilation_config: int | dict | None = None  # only "no compilation" (None, 0, {}, {"level": 0}) is accepted
    quantization: str | None = None  # names the checkpoint's quant_method (checked at load: model_loader rules)
    kv_cache_dtype: str = "auto"  # "auto": the model's dtype; "fp8" (e4m3) / "fp8_e5m2": one byte per element
    # structured outputs: {"backend": "auto"|"xgrammar", "disable_any_whitespace": ...} (structured_output/config.py)
    structured_outputs_config: Any = None
    guided_decoding_backend: str | None = None  # vLLM's older spelling of structured_outputs_config["backend"]
    enable_prompt_embeds: bool = False  # {"prompt_embeds": tensor [T, H]} prompts (anymodel/prompt_embeds.py)

    def __post_init__(self) -> None:
        self.dtype = _dtype_name(self.dtype)
        _choice("task", self.task, TASKS)
        _choice("runner", self.runner, RUNNERS)
        _choice("convert", self.convert, CONVERTS)
        self.task = _task_from_runner(self.task, self.runner, self.convert)
        _choice("model_impl", self.model_impl, MODEL_IMPLS)
        _choice("dtype", self.dtype, DTYPES)
        _choice("load_format", self.load_format, LOAD_FORMATS)
        _choice("tokenizer_mode", self.tokenizer_mode, TOKENIZER_MODES)
        _choice("scheduling_policy", self.scheduling_policy, ("fcfs", "priority"))
        self._check_unsupported_options()
        _choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _choice("distributed_executor_backend", self.distributed_executor_backend, EXECUTOR_BACKENDS)
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "block_size", "max_num_seqs"):
            _positive(name, getattr(self, name), optional=False)
        for name in ("max_model_len", "num_kv_blocks", "kv_cache_memory", "max_num_batched_tokens"):
            _positive(name, getattr(self, name))
        _check_lora(self)
        lo, hi = SEED_RANGE
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and lo <= self.seed <= hi):
            raise ValueError(f"seed must be an integer in [{lo}, 2**64 - 1], got {self.seed!r}")
        if not (isinstance(self.max_logprobs, int) and self.max_logprobs >= -1):
            raise ValueError(f"max_logprobs must be -1 (no cap) or an integer >= 0, got {self.max_logprobs!r}")
        if not (isinstance(self.gpu_memory_utilization, (int, float)) and 0 < self.gpu_memory_utilization <= 1):
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.hf_overrides is not None and not (isinstance(self.hf_overrides, dict) or callable(self.hf_overrides)):
            raise ValueError(f"hf_overrides must be a dict or a callable(config) -> config, got {type(self.hf_overrides).__name__}")
        if self.pooler_config is not None:
            if self.override_pooler_config is not None:
                raise ValueError("pass pooler_config or override_pooler_config (its old name), not both")
            self.override_pooler_config, self.pooler_config = self.pooler_config, None
        if self.override_pooler_config is not None and not isinstance(self.override_pooler_config, dict):
            raise ValueError("pooler_config must be a dict, e.g. {'pooling_type': 'MEAN', 'normalize': true}")
        self.served_model_name = _served_names(self.served_model_name)
        self.structured_outputs_config = resolve_config(self.structured_outputs_config, self.guided_decoding_backend)
        if self.enable_prompt_embeds and self.world_size > 1:
            raise ValueError("enable_prompt_embeds=True is not supported with tensor or pipeline parallelism yet")
        if not isinstance(self.generation_config, str) or not self.generation_config:
            raise ValueError(f"generation_config must be 'auto', 'vllm' or a directory, got {self.generation_config!r}")

    def _check_unsupported_options(self) -> None:
        """vLLM options accepted for its scripts' sake: a value we cannot honour is an error, never dropped."""
        _positive("max_seq_len_to_capture", self.max_seq_len_to_capture, optional=False)
        if not (isinstance(self.swap_space, (int, float)) and self.swap_space >= 0):
            raise ValueError(f"swap_space must be a number of GiB >= 0, got {self.swap_space!r}")
        if self.cpu_offload_gb != 0:
            raise ValueError(f"cpu_offload_gb={self.cpu_offload_gb!r} is not supported (weights stay on the device); "
                             "pass cpu_offload_gb=0")
        if not (self.quantization is None or isinstance(self.quantization, str)):
            raise ValueError(f"quantization must be None or a method name, got {self.quantization!r}")
        _choice("kv_cache_dtype", self.kv_cache_dtype, KV_CACHE_DTYPES)
        if self.compilation_config not in (None, 0, {}, {"level": 0}, {"mode": 0}):
            raise ValueError(f"compilation_config={self.compilation_config!r} is not supported: anymodel does not "
                             "compile the model (CUDA graphs: enforce_eager=False); pass compilation_config=None")

    @classmethod
    def from_kwargs(cls, model: str | None, kwargs: dict[str, Any]) -> "EngineArgs":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            # vLLM's EngineArgs dataclass raises TypeError for an unexpected keyword: so do we
            raise TypeError(f"unknown engine argument(s) {unknown}; supported: {sorted(known)}")
        return cls(model=model, **kwargs)

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


def _check_lora(args: EngineArgs) -> None:
    for name in ("max_loras", "max_lora_rank"):
        _positive(name, getattr(args, name), optional=False)
    _positive("max_cpu_loras", args.max_cpu_loras)
    if args.max_cpu_loras is not None and args.max_cpu_loras < args.max_loras:
        raise ValueError(f"max_cpu_loras ({args.max_cpu_loras}) must be >= max_loras ({args.max_loras})")


def _dtype_name(dtype) -> str:
    """vLLM's dtype spellings -> ours: "half" / "float" and torch dtypes (torch.float16) included."""
    name = str(dtype).removeprefix("torch.") if type(dtype).__name__ == "dtype" else dtype
    return DTYPE_ALIASES.get(name, name)


# runner + convert -> the task they name ("auto" with runner="pooling": the Engine picks a pooling task)
_CONVERT_TASKS = {"embed": "embed", "classify": "classify", "reward": "reward"}


def _task_from_runner(task: str, runner: str, convert: str) -> str:
    """One task from `task` and vLLM's `runner` / `convert`; a pair that disagrees is a ValueError naming both."""
    if convert != "auto" and runner == "generate":
        raise ValueError(f"runner='generate' conflicts with convert={convert!r} (a converted model is a pooling "
                         "model: runner='pooling' or 'auto')")
    implied = _CONVERT_TASKS.get(convert) or ("generate" if runner == "generate" else "auto")
    if task == "auto":
        return implied
    pooling_task = task in ("embed", "classify", "score", "reward")
    agrees = (implied in ("auto", task) or (task == "score" and convert == "classify"))
    agrees = agrees and not (runner == "pooling" and not pooling_task) and not (runner == "generate" and pooling_task)
    if not agrees:
        given = ", ".join(f"{k}={v!r}" for k, v in (("runner", runner), ("convert", convert)) if v != "auto")
        raise ValueError(f"task={task!r} conflicts with {given}; pass one of them (task is the older name)")
    return task


def _served_names(value):
    """vLLM's served_model_name: one name or a list of them (a one-element list becomes the name)."""
    names = [value] if isinstance(value, str) else value
    if names is None:
        return None
    if not (isinstance(names, (list, tuple)) and names and all(isinstance(n, str) and n for n in names)):
        raise ValueError(f"served_model_name must be a non-empty name or a list of them, got {value!r}")
    return names[0] if len(names) == 1 else list(names)
