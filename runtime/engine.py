"""Engine: add_request / step / abort. One step = schedule -> execute -> update outputs."""

from __future__ import annotations

import itertools
import logging
import time

from anymodel import loader
from anymodel.config import EngineArgs
from anymodel.executor import make_executor
from anymodel.kv_cache import KVCacheManager
from anymodel.outputs import EngineStats, RequestOutput
from anymodel.output_processor import OutputProcessor, RequestGroup
from anymodel.params import PoolingParams, SamplingParams
from anymodel.request import Request, RequestStatus
from anymodel.scheduler import Scheduler

logger = logging.getLogger("anymodel")

_DEFAULT_CPU_KV_BYTES = 1 << 30


class Engine:
    def __init__(self, args: EngineArgs) -> None:
        self.args = args
        model_dir = loader.resolve_model_dir(args.model, args.revision)
        self.hf_config = loader.load_config(model_dir, args.trust_remote_code, args.hf_overrides)
        self.tokenizer = loader.load_tokenizer(args.tokenizer or model_dir, args.trust_remote_code, args.tokenizer_revision)
        self.max_model_len = loader.derive_max_model_len(self.hf_config, args.max_model_len)
        self.model_name = args.served_model_name or args.model or "anymodel-demo"
        self.task = "generate" if args.task == "auto" else args.task
        if self.task != "generate":
            raise ValueError(f"task {self.task!r} is not available yet; supported now: ['generate']")
        self.eos_token_ids = loader.eos_token_ids(model_dir, self.tokenizer)
        self.vocab_size = self.hf_config.get_text_config().vocab_size
        self.executor = make_executor(args, model_dir, self.hf_config)
        self.paged, prefix_ok = self.executor.apply_model(model_traits)[0]
        self.kv = KVCacheManager(self._init_kv_cache(), args.block_size, args.enable_prefix_caching and prefix_ok)
        budget = args.max_num_batched_tokens or max(2048, self.max_model_len)
        self.scheduler = Scheduler(self.kv, args.max_num_seqs, budget, args.enable_chunked_prefill)
        self.outputs = OutputProcessor(self.tokenizer)
        self._ids = itertools.count()
        self._counters = {"prompt": 0, "generation": 0, "prefix_hits": 0}

    def _init_kv_cache(self) -> int:
        layers = self.executor.discover_layers() if self.paged else []
        if self.paged and not layers:
            raise ValueError("the model made no attention call through the registered attention function")
        per_block = self.executor.bytes_per_block(layers) if layers else self._estimated_bytes_per_block()
        if self.args.num_kv_blocks is not None:
            num_blocks = self.args.num_kv_blocks
        else:
            memory = self.args.kv_cache_memory or _DEFAULT_CPU_KV_BYTES
            cap = self.args.max_num_seqs * -(-self.max_model_len // self.args.block_size)
            num_blocks = min(memory // per_block, cap)
        if num_blocks < 1:
            raise ValueError(f"kv_cache_memory ({self.args.kv_cache_memory} bytes) holds no KV block ({per_block} bytes each)")
        if layers:
            self.executor.allocate_kv_cache(layers, num_blocks)
        logger.info("anymodel: %d KV blocks of %d tokens (%d layers)", num_blocks, self.args.block_size, len(layers))
        return num_blocks

    def _estimated_bytes_per_block(self) -> int:
        """For models that keep their own cache (compat path): K and V of every layer, full width."""
        text = self.hf_config.get_text_config()
        return 2 * self.args.block_size * text.num_hidden_layers * text.hidden_size * 4

    # ---- public API -----------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt, params: SamplingParams | PoolingParams | None = None) -> None:
        params = params or SamplingParams()
        text, token_ids = self._tokenize(prompt)
        self._validate(token_ids, params)
        children = [self._make_request(f"{request_id}#{i}", token_ids, params, i) for i in range(getattr(params, "n", 1))]
        self.outputs.add(RequestGroup(request_id, text, token_ids, params, children, self.tokenizer))
        for child in children:
            self.scheduler.add(child)
        self._counters["prompt"] += len(token_ids)

    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        if sched.is_empty and not sched.released_req_ids:
            return []
        result = self.executor.execute_model(sched)
        self.scheduler.update(sched)
        finished = self.outputs.apply(sched, result)
        for req, status in finished:
            self.scheduler.finish(req, status)
        self._counters["generation"] += len(result.sampled)
        outputs = self.outputs.collect(sched)
        if finished and not self.has_unfinished():
            self._release_idle()
        return outputs

    def _release_idle(self) -> None:
        """Nothing left to run: let workers drop the state of the requests that just finished."""
        sched = self.scheduler.schedule()
        if sched.released_req_ids:
            self.executor.execute_model(sched)

    def abort(self, request_ids) -> None:
        for rid in [request_ids] if isinstance(request_ids, str) else request_ids:
            group = self.outputs.pop(rid)
            if group is not None:
                for child in group.children:
                    if not child.is_finished:
                        self.scheduler.finish(child, RequestStatus.FINISHED_ABORTED)

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def apply_model(self, fn) -> list:
        return self.executor.apply_model(fn)

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_free_blocks=self.kv.num_free_blocks,
            num_total_blocks=self.kv.pool.num_blocks,
            prompt_tokens_total=self._counters["prompt"],
            generation_tokens_total=self._counters["generation"],
            num_preemptions_total=self.scheduler.num_preemptions,
        )

    def new_request_id(self) -> str:
        return str(next(self._ids))

    # ---- helpers --------------------------------------------------------------------------------
    def _tokenize(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), list(prompt["prompt_token_ids"])
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("prompt dict must have 'prompt' (str) or 'prompt_token_ids' (list[int])")
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            return None, list(prompt)
        raise ValueError(f"prompt must be a str, a list of token ids, or a dict; got {type(prompt).__name__}")

    def _validate(self, token_ids: list[int], params) -> None:
        if not token_ids:
            raise ValueError("prompt must not be empty")
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt_token_ids must be in [0, {self.vocab_size}); got {bad[:5]}")
        n = len(token_ids)
        if n > self.max_model_len - (0 if isinstance(params, PoolingParams) else 1):
            raise ValueError(
                f"prompt has {n} tokens but the model's context length (max_model_len) is {self.max_model_len}"
            )
        needed = n + self._max_tokens(n, params)
        if needed > self.kv.capacity_tokens:
            raise ValueError(
                f"prompt ({n} tokens) plus max_tokens needs {needed} tokens of KV cache but it holds "
                f"{self.kv.capacity_tokens}; lower max_tokens or raise kv_cache_memory / num_kv_blocks"
            )

    def _max_tokens(self, prompt_len: int, params) -> int:
        if isinstance(params, PoolingParams):
            return 0
        room = self.max_model_len - prompt_len
        return room if params.max_tokens is None else min(params.max_tokens, room)

    def _make_request(self, rid: str, token_ids: list[int], params, index: int) -> Request:
        if isinstance(params, SamplingParams) and params.seed is not None and index:
            params = params.clone(seed=params.seed + index)  # n samples must differ yet reproduce
        return Request(
            request_id=rid,
            prompt_token_ids=token_ids,
            params=params,
            max_tokens=self._max_tokens(len(token_ids), params),
            eos_token_ids=self.eos_token_ids,
            arrival_time=time.monotonic(),
        )


def model_traits(model) -> tuple[bool, bool]:
    """(reads our paged KV cache, allows prefix caching): False for the compat path."""
    return getattr(model, "uses_paged_kv_cache", True), getattr(model, "supports_prefix_caching", True)
