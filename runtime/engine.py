"""Engine: add_request / step / abort. One step = schedule -> execute -> update outputs."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from dataclasses import dataclass

import torch

from anymodel import loader, pooling
from anymodel.config import EngineArgs
from anymodel.errors import RequestFailedError
from anymodel.executor import make_executor
from anymodel.kv_cache import KVCacheManager
from anymodel.outputs import EngineStats, PoolingOutput, PoolingRequestOutput, RequestOutput
from anymodel.output_processor import OutputProcessor, RequestGroup
from anymodel.pooling_outputs import PoolingOutputs
from anymodel.params import PoolingParams, SamplingParams, truncated_prompt_len
from anymodel.request import Request, RequestStatus
from anymodel.request_checks import check_sampling, resolve_logprobs
from anymodel.scheduler import Scheduler

logger = logging.getLogger("anymodel")

_DEFAULT_CPU_KV_BYTES = 1 << 30


class Engine:
    def __init__(self, args: EngineArgs) -> None:
        self.args = args
        model_dir = loader.resolve_model_dir(args.model, args.revision)
        self.hf_config = loader.load_config(model_dir, args.trust_remote_code, args.hf_overrides)
        self.tokenizer = loader.load_tokenizer(args.tokenizer or model_dir, args.trust_remote_code, args.tokenizer_revision)
        self.task = pooling.resolve_task(args.task, self.hf_config, model_dir)
        self.args = args = dataclasses.replace(args, task=self.task)  # workers build the model for it
        self.max_model_len = loader.derive_max_model_len(self.hf_config, args.max_model_len)
        st_len = pooling.sentence_transformers_max_len(model_dir) if self.task == "embed" else None
        if st_len and args.max_model_len is None:  # sentence-transformers truncates there: so do we
            self.max_model_len = min(self.max_model_len, st_len)
        # text is lower-cased before tokenizing, as sentence-transformers does for these models
        self.lower_case = self.task == "embed" and pooling.sentence_transformers_lower_case(model_dir)
        self.embedding_size = pooling.embedding_size(self.hf_config, model_dir) if self.task == "embed" else None
        self.model_name = args.served_model_name or args.model or "anymodel-demo"
        self.eos_token_ids = loader.eos_token_ids(model_dir, self.tokenizer)
        self.vocab_size = self.hf_config.get_text_config().vocab_size
        self.executor = make_executor(args, model_dir, self.hf_config)
        self.paged, prefix_ok = self.executor.apply_model(model_traits)[0]
        self.token_budget = args.max_num_batched_tokens or max(2048, self.max_model_len)  # tokens per step
        self.kv = KVCacheManager(self._init_kv_cache(), args.block_size, args.enable_prefix_caching and prefix_ok)
        self.scheduler = Scheduler(self.kv, args.max_num_seqs, self.token_budget, args.enable_chunked_prefill)
        self.outputs = OutputProcessor(self.tokenizer)
        self.pooling = PoolingOutputs()
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
            memory = self.args.kv_cache_memory or self._default_kv_memory(layers, per_block)
            cap = self.args.max_num_seqs * -(-self.max_model_len // self.args.block_size)
            num_blocks = min(memory // per_block, cap)
        if num_blocks < 1:
            raise ValueError(f"kv_cache_memory ({self.args.kv_cache_memory} bytes) holds no KV block ({per_block} bytes each)")
        if layers:
            self.executor.allocate_kv_cache(layers, num_blocks)
        logger.info("anymodel: %d KV blocks of %d tokens (%d layers)", num_blocks, self.args.block_size, len(layers))
        return num_blocks

    def _default_kv_memory(self, layers, per_block: int) -> int:
        """GPU: what `gpu_memory_utilization` leaves after a profiling step (kv_budget.py); CPU: 1 GiB."""
        util = self.args.gpu_memory_utilization
        budget = self.executor.kv_memory_budget(layers, util, self.token_budget, self.args.max_num_seqs) if layers else None
        if budget is None:
            return _DEFAULT_CPU_KV_BYTES
        if budget < per_block:
            raise ValueError(
                f"gpu_memory_utilization={util} leaves {budget / 2**30:.2f} GiB for the KV cache after the weights and a "
                f"{self.token_budget}-token step, less than one block ({per_block} bytes): raise gpu_memory_utilization, "
                "lower max_num_batched_tokens / max_model_len, or pass kv_cache_memory"
            )
        logger.info("anymodel: gpu_memory_utilization=%s leaves %.2f GiB for the KV cache", util, budget / 2**30)
        return budget

    def _estimated_bytes_per_block(self) -> int:
        """For models that keep their own cache (compat path): K and V of every layer, full width."""
        text = self.hf_config.get_text_config()
        return 2 * self.args.block_size * text.num_hidden_layers * text.hidden_size * 4

    # ---- public API -----------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt, params: SamplingParams | PoolingParams | None = None) -> None:
        params = params or (SamplingParams() if self.task == "generate" else PoolingParams())
        pooling.check_request(self.task, params, self.hf_config, self.embedding_size)
        if isinstance(params, SamplingParams):
            params = resolve_logprobs(params, self.vocab_size, self.args.max_logprobs)
        tokens = self._truncate(self._tokenize(prompt), params)
        self._validate(tokens.token_ids, params)
        if isinstance(params, PoolingParams):
            return self._add_pooling_request(request_id, tokens, params)
        token_ids = tokens.token_ids
        children = [self._make_request(f"{request_id}#{i}", token_ids, params, i) for i in range(getattr(params, "n", 1))]
        self.outputs.add(RequestGroup(request_id, tokens.text, token_ids, params, children, self.tokenizer))
        for child in children:
            self.scheduler.add(child)
        self._counters["prompt"] += len(token_ids)

    def _add_pooling_request(self, request_id: str, tokens: PromptTokens, params) -> None:
        request = self._make_request(request_id, tokens.token_ids, params, 0)
        request.token_type_ids = tokens.token_type_ids
        self.pooling.add(request, tokens.text)
        self.scheduler.add(request)
        self._counters["prompt"] += len(tokens.token_ids)

    def step(self) -> list[RequestOutput | PoolingRequestOutput]:
        """One step. A request whose sampling, pooling or output processing raised ends alone: its
        blocks are freed and its final (Pooling)RequestOutput carries `error` (a RequestFailedError)."""
        sched = self.scheduler.schedule()
        if sched.is_empty and not sched.released_req_ids:
            return []
        result = self.executor.execute_model(sched)
        self.scheduler.update(sched)
        finished = self.outputs.apply(sched, result)
        # each pooling request ends in its one step: pooled, or failed (its pooler raised)
        pooled = self.pooling.collect(result.pooled) + self._failed_pooling(result.failed)
        finished += [(req, RequestStatus.FINISHED_STOPPED if out.error is None else RequestStatus.FINISHED_ERROR)
                     for req, out in pooled]
        self._finish(finished)
        outputs, failed = self.outputs.collect(sched)
        self._finish(failed)  # their output could not be built: they end here
        self._counters["generation"] += len(result.sampled)
        outputs += [out for _, out in pooled]
        if (finished or failed) and not self.has_unfinished():
            self._release_idle()
        return outputs

    def _failed_pooling(self, failed: dict[str, str]) -> list[tuple[Request, PoolingRequestOutput]]:
        """Pooling requests whose pooler raised (RunnerOutput.failed): each ends with its error."""
        outs = []
        for rid in [rid for rid in failed if rid in self.pooling]:
            prompt = self.pooling.requests[rid][1]
            req = self.pooling.pop(rid)
            error = RequestFailedError(rid, failed[rid])
            outs.append((req, PoolingRequestOutput(rid, req.prompt_token_ids, PoolingOutput(torch.empty(0)), True,
                                                   prompt, error=error)))
        return outs

    def _finish(self, finished: list[tuple[Request, RequestStatus]]) -> None:
        for req, status in finished:
            if not req.is_finished:  # a child can end twice in one step: stopped, then its group failed
                self.scheduler.finish(req, status)

    def _release_idle(self) -> None:
        """Nothing left to run: let workers drop the state of the requests that just finished."""
        sched = self.scheduler.schedule()
        if sched.released_req_ids:
            self.executor.execute_model(sched)

    def abort(self, request_ids) -> None:
        for rid in [request_ids] if isinstance(request_ids, str) else request_ids:
            pooling_request = self.pooling.pop(rid)
            if pooling_request is not None and not pooling_request.is_finished:
                self.scheduler.finish(pooling_request, RequestStatus.FINISHED_ABORTED)
            group = self.outputs.pop(rid)
            if group is not None:
                for child in group.children:
                    if not child.is_finished:
                        self.scheduler.finish(child, RequestStatus.FINISHED_ABORTED)

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def apply_model(self, fn) -> list:
        return self.executor.apply_model(fn)

    def check_health(self) -> None:
        """Raise EngineFatalError (WorkerDiedError: a tensor/pipeline-parallel rank died) when the
        engine can run no further step; cheap (no round trip to the workers), for the server's /health."""
        self.executor.check_health()

    def shutdown(self) -> None:
        """Stop the executor's worker processes (also done on garbage collection and at exit)."""
        self.executor.shutdown()

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_free_blocks=self.kv.num_free_blocks,
            num_total_blocks=self.kv.pool.num_blocks,
            prompt_tokens_total=self._counters["prompt"],
            generation_tokens_total=self._counters["generation"],
            num_preemptions_total=self.scheduler.num_preemptions,
            prefix_cache_hit_tokens_total=self.scheduler.num_prefix_cache_hit_tokens,
        )

    def new_request_id(self) -> str:
        return str(next(self._ids))

    # ---- helpers --------------------------------------------------------------------------------
    def _tokenize(self, prompt) -> PromptTokens:
        if not isinstance(prompt, dict):
            return self._tokenize_plain(prompt)
        if "prompt_token_ids" in prompt:
            tokens = PromptTokens(prompt.get("prompt"), list(prompt["prompt_token_ids"]))
        elif "prompt" in prompt:
            tokens = self._tokenize_plain(prompt["prompt"])
        else:
            raise ValueError("prompt dict must have 'prompt' (str) or 'prompt_token_ids' (list[int])")
        tokens.token_type_ids = _token_type_ids(prompt, len(tokens.token_ids))
        return tokens

    def _tokenize_plain(self, prompt) -> PromptTokens:
        if isinstance(prompt, str):
            return PromptTokens(prompt, self.tokenizer.encode(prompt.lower() if self.lower_case else prompt))
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            return PromptTokens(None, list(prompt))
        raise ValueError(f"prompt must be a str, a list of token ids, or a dict; got {type(prompt).__name__}")

    def max_prompt_len(self, params) -> int:
        """The longest prompt a request may have: a generation needs room for one new token, and a
        pooling prompt runs whole in one step."""
        if isinstance(params, PoolingParams):
            return min(self.max_model_len, self.scheduler.max_num_batched_tokens)
        return self.max_model_len - 1

    def _truncate(self, tokens: PromptTokens, params) -> PromptTokens:
        """truncate_prompt_tokens=k keeps the last k prompt tokens (vLLM); -1 keeps max_prompt_len.
        A text prompt keeps the special tokens its tokenizer added (vLLM truncates in the tokenizer)."""
        k = getattr(params, "truncate_prompt_tokens", None)
        if k is None:
            return tokens
        limit = self.max_prompt_len(params)
        if k > limit:
            raise ValueError(f"truncate_prompt_tokens must be -1 or in [1, {limit}] (this model's longest prompt for "
                             f"the request, max_model_len={self.max_model_len}), got {k}")
        k = truncated_prompt_len(len(tokens.token_ids), k, limit)
        if k == len(tokens.token_ids):
            return tokens
        from_text = tokens.text is not None and tokens.token_type_ids is None
        head, body, tail = self._split_special(tokens.token_ids) if from_text else ([], [], [])
        if not from_text or k < len(head) + len(tail):  # token ids (or pairs): the last k, as given
            ids = tokens.token_ids[-k:]
            types = tokens.token_type_ids[-k:] if tokens.token_type_ids is not None else None
            text = self.tokenizer.decode(ids) if tokens.text is not None else None
            return PromptTokens(text, ids, types)
        # Text: as a tokenizer truncating on the left would, the special tokens `encode` added
        # (Llama's BOS; BERT's CLS and SEP) stay, and the text's last tokens fill the rest.
        body = body[len(body) - (k - len(head) - len(tail)) :]
        # the text reported with the outputs (and echoed by the server) is what the model saw
        return PromptTokens(self.tokenizer.decode(body), head + body + tail, None)

    @functools.cached_property
    def _affixes(self) -> tuple[list[int], list[int]]:
        return special_affixes(self.tokenizer)

    def _split_special(self, ids: list[int]) -> tuple[list[int], list[int], list[int]]:
        """ids -> (the special tokens `encode` puts before the text, the text's ids, those after)."""
        head, tail = self._affixes
        end = len(ids) - len(tail)
        if ids[: len(head)] != head or ids[end:] != tail or end < len(head):
            return [], ids, []
        return head, ids[len(head) : end], tail

    def _validate(self, token_ids: list[int], params) -> None:
        if not token_ids:
            raise ValueError("prompt must not be empty")
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt_token_ids must be in [0, {self.vocab_size}); got {bad[:5]}")
        if isinstance(params, SamplingParams):
            check_sampling(params, self.vocab_size, self.args.max_num_seqs)
        n = len(token_ids)
        if n > self.max_model_len - (0 if isinstance(params, PoolingParams) else 1):
            raise ValueError(
                f"prompt has {n} tokens but the model's context length (max_model_len) is {self.max_model_len}"
            )
        if isinstance(params, PoolingParams) and n > self.scheduler.max_num_batched_tokens:
            raise ValueError(f"prompt has {n} tokens but a pooling prompt runs whole in one step of at most "
                             f"max_num_batched_tokens ({self.scheduler.max_num_batched_tokens}) tokens")
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
            params = params.clone(seed=(params.seed + index) % 2**64)  # n samples must differ yet reproduce
        return Request(
            request_id=rid,
            prompt_token_ids=token_ids,
            params=params,
            max_tokens=self._max_tokens(len(token_ids), params),
            eos_token_ids=self.eos_token_ids,
            arrival_time=time.monotonic(),
        )


@dataclass
class PromptTokens:
    """A prompt as the engine runs it."""

    text: str | None
    token_ids: list[int]
    token_type_ids: list[int] | None = None  # segment ids of a cross-encoder pair, one per token


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The ids `tokenizer.encode` adds before and after any text: ([BOS], []) for Llama,
    ([CLS], [SEP]) for BERT, ([], []) for Qwen; found by encoding a probe with and without them."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


def _token_type_ids(prompt: dict, num_tokens: int) -> list[int] | None:
    types = prompt.get("token_type_ids")
    if types is not None and len(types) != num_tokens:
        raise ValueError(f"token_type_ids has {len(types)} entries for {num_tokens} prompt tokens; pass one per token")
    return list(types) if types is not None else None


def model_traits(model) -> tuple[bool, bool]:
    """(reads our paged KV cache, allows prefix caching): False for the compat path."""
    return getattr(model, "uses_paged_kv_cache", True), getattr(model, "supports_prefix_caching", True)
