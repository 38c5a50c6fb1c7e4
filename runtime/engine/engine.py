"""Engine: add_request / step / abort. One step = schedule -> execute -> update outputs."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time

import torch

from anymodel import loader
from anymodel.config import EngineArgs
from anymodel.engine.inputs import PromptProcessor, PromptTokens
from anymodel.engine.output_processor import OutputProcessor, RequestGroup
from anymodel.engine.request import Request, RequestStatus
from anymodel.engine.request_checks import (check_priority, check_prompt, check_sampling, resolve_bad_words,
                                            resolve_logprobs)
from anymodel.engine.scheduler import Scheduler
from anymodel.errors import RequestFailedError
from anymodel.executor import make_executor
from anymodel.kv_cache import KVCacheManager
from anymodel.kv_cache.sizing import KVCacheSizing
from anymodel.logging_config import log_engine_summary
from anymodel.lora.registry import LoRARegistry
from anymodel.model_facts import text_config_of
from anymodel.model_protocol import ModelTraits, traits_of
from anymodel.outputs import EngineStats, PoolingOutput, PoolingRequestOutput, RequestOutput
from anymodel.params import PoolingParams, SamplingParams
from anymodel.pooling import tasks as pooling
from anymodel.pooling.outputs import PoolingOutputs
from anymodel import prompt_embeds
from anymodel.structured_output.manager import StructuredOutputManager

logger = logging.getLogger("anymodel")


class Engine:
    def __init__(self, args: EngineArgs) -> None:
        self.args = args
        model_dir = loader.resolve_model_dir(args.model, args.revision, args.download_dir, args.load_format)
        loader.check_load_format(args.load_format, model_dir)
        self.hf_config = loader.load_config(model_dir, args.trust_remote_code, args.hf_overrides)
        self.tokenizer = None if args.skip_tokenizer_init else loader.load_tokenizer(
            args.tokenizer or model_dir, args.trust_remote_code, args.tokenizer_revision, args.tokenizer_mode)
        self.task = pooling.resolve_task(args.task, self.hf_config, model_dir, args.runner)
        # request defaults from generation_config.json (LLM.generate without params, the server's unset fields)
        self.default_sampling_params = (loader.generation_defaults(model_dir, args.generation_config)
                                        if self.task == "generate" else {})
        self.args = args = dataclasses.replace(args, task=self.task)  # workers build the model for it
        self.max_model_len = loader.derive_max_model_len(self.hf_config, args.max_model_len)
        st_len = pooling.sentence_transformers_max_len(model_dir) if self.task == "embed" else None
        if st_len and args.max_model_len is None:  # sentence-transformers truncates there: so do we
            self.max_model_len = min(self.max_model_len, st_len)
        # text is lower-cased before tokenizing, as sentence-transformers does for these models
        lower_case = self.task == "embed" and pooling.sentence_transformers_lower_case(model_dir)
        self.inputs = PromptProcessor(self.tokenizer, lower_case)
        self.embedding_size = pooling.embedding_size(self.hf_config, model_dir) if self.task == "embed" else None
        names = args.served_model_name
        self.served_model_names = tuple(names) if isinstance(names, list) else (names or args.model or "anymodel-demo",)
        self.model_name = self.served_model_names[0]  # what responses name; every one is accepted as `model`
        self.eos_token_ids = loader.eos_token_ids(model_dir, self.tokenizer)  # all of them (beam search reads it)
        # vLLM's split: the tokenizer's EOS is EOS; generation_config.json's other ids become each
        # request's stop_token_ids (SamplingParams.update_from_generation_config)
        self.generation_config_fields = loader.generation_config_fields(model_dir)
        self.model_eos_token_id = getattr(self.tokenizer, "eos_token_id", None)
        self.vocab_size = text_config_of(self.hf_config).vocab_size
        self.executor = make_executor(args, model_dir, self.hf_config)
        self.traits: ModelTraits = self.executor.apply_model(traits_of)[0]  # every rank builds the same class
        self.token_budget = args.max_num_batched_tokens or max(2048, self.max_model_len)  # tokens per step
        prefix_caching = args.enable_prefix_caching and self.traits.prefix_caching
        prompt_embeds.check_engine_supports(args, self.task, self.paged, self.executor)
        layers = self.executor.discover_layers() if self.paged else []
        if self.paged and not layers:
            raise ValueError("the model made no attention call through the registered attention function")
        num_blocks = KVCacheSizing(args, self.max_model_len, self.token_budget).num_blocks(self.executor, layers,
                                                                                        self.hf_config)
        self.kv = KVCacheManager(num_blocks, args.block_size, prefix_caching)
        self.scheduler = Scheduler(self.kv, args.max_num_seqs, self.token_budget, args.enable_chunked_prefill,
                                   policy=args.scheduling_policy, max_loras=args.max_loras if args.enable_lora else None)
        self.loras = LoRARegistry(args.enable_lora, self.executor)  # add_lora / remove_lora / list_loras
        self.outputs = OutputProcessor(self.tokenizer)
        self.structured = StructuredOutputManager(self.tokenizer, self.vocab_size, self.eos_token_ids,
                                                  args.structured_outputs_config)
        self.pooling = PoolingOutputs()
        self._ids = itertools.count()
        self._counters = {"prompt": 0, "generation": 0, "prefix_hits": 0}
        self.last_step_num_tokens = 0
        log_engine_summary(self, model_dir)

    @property
    def paged(self) -> bool:
        """The model reads our paged KV cache (False: the compat path keeps its own)."""
        return self.traits.paged_kv_cache

    # ---- public API -----------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt, params: SamplingParams | PoolingParams | None = None,
                    priority: int = 0, lora_request=None) -> None:
        """`params` None: the model's defaults (`default_params()`, generation_config.json's, as vLLM);
        `lora_request`: the adapter it runs with (None: the base model)."""
        check_priority(priority, self.args.scheduling_policy)
        params = params or (self.default_params() if self.task == "generate" else PoolingParams())
        lora_request = self.loras.check(lora_request)
        pooling.check_request(self.task, params, self.hf_config, self.embedding_size)
        if isinstance(params, SamplingParams):
            params = params.clone()
            params.update_from_generation_config(self.generation_config_fields, self.model_eos_token_id)
            if self.tokenizer is None and params.stop:
                raise ValueError("stop strings match text, and this engine has no tokenizer (skip_tokenizer_init="
                                 "True); use stop_token_ids")
            params = resolve_logprobs(params, self.vocab_size, self.args.max_logprobs)
            params = resolve_bad_words(params, self.tokenizer)
            if params.structured_outputs is not None:  # parsed now: an invalid one is this ValueError
                params = params.clone(structured_outputs=self.structured.check(params.structured_outputs))
        tokens = self.inputs.tokenize(prompt)
        k = getattr(params, "truncate_prompt_tokens", None)
        if tokens.embeds is not None:
            tokens.embeds = prompt_embeds.check_prompt_embeds(tokens.embeds, self.args.enable_prompt_embeds,
                                                              text_config_of(self.hf_config).hidden_size)
            prompt_embeds.check_embeds_request(params, k)
        tokens = self.inputs.truncate(tokens, k, self.max_prompt_len(params), self.max_model_len)
        self._validate(tokens.token_ids, params)
        if isinstance(params, PoolingParams):
            return self._add_pooling_request(request_id, tokens, params, priority)
        token_ids = tokens.token_ids
        children = [self._make_request(f"{request_id}#{i}", token_ids, params, i, priority)
                    for i in range(params.num_sequences)]
        self.outputs.add(RequestGroup(request_id, tokens.text, token_ids, params, children, self.tokenizer))
        digest = None if tokens.embeds is None else prompt_embeds.embeds_digest(tokens.embeds)
        for child in children:
            child.lora_request = lora_request
            child.prompt_embeds, child.prompt_embeds_digest = tokens.embeds, digest
            if not self.structured.park(child):  # a constrained one waits there for its grammar
                self.scheduler.add(child)
        self._counters["prompt"] += len(token_ids)

    def default_params(self, given: dict | None = None, fallbacks: dict | None = None) -> SamplingParams:
        """The one rule for request defaults (LLM.get_default_sampling_params, generate() without
        params, `anymodel generate`): the fields `given`, else generation_config.json's (vLLM's
        get_diff_sampling_param; none with generation_config="vllm"), else `fallbacks`, else
        SamplingParams' own."""
        return SamplingParams(**{**(fallbacks or {}), **self.default_sampling_params, **(given or {})})

    def _add_pooling_request(self, request_id: str, tokens: PromptTokens, params, priority: int = 0) -> None:
        request = self._make_request(request_id, tokens.token_ids, params, 0, priority)
        request.token_type_ids = tokens.token_type_ids
        self.pooling.add(request, tokens.text)
        self.scheduler.add(request)
        self._counters["prompt"] += len(tokens.token_ids)

    def step(self) -> list[RequestOutput | PoolingRequestOutput]:
        """One step. A request whose sampling, pooling or output processing raised ends alone: its
        blocks are freed and its final (Pooling)RequestOutput carries `error` (a RequestFailedError)."""
        for req in self.structured.take_ready(idle=self.scheduler.num_unfinished == 0):
            self.scheduler.add(req)
        sched = self.scheduler.schedule()
        self.last_step_num_tokens = sched.num_tokens  # /metrics: iteration_tokens_total
        if sched.is_empty and not sched.released_req_ids:
            return []
        self.outputs.mark_scheduled(sched)
        sched.grammar_bitmask = self.structured.bitmask(sched)
        result = self.executor.execute_model(sched)
        result.failed.update(self.structured.accept(result.sampled))
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
            self.structured.remove(req)
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
                    self.structured.remove(child)
                    if not child.is_finished:
                        self.scheduler.finish(child, RequestStatus.FINISHED_ABORTED)

    def set_tokenizer(self, tokenizer) -> None:
        """vLLM's LLM.set_tokenizer: later requests are tokenized, detokenized and have their
        bad_words and logprob tokens decoded with `tokenizer`."""
        self.tokenizer = tokenizer
        self.inputs = PromptProcessor(tokenizer, self.inputs.lower_case)
        self.outputs.tokenizer = tokenizer

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0 or self.structured.num_parked > 0

    def apply_model(self, fn) -> list:
        return self.executor.apply_model(fn)

    def collective_rpc(self, method, args: tuple = (), kwargs: dict | None = None) -> list:
        return self.executor.collective_rpc(method, args, kwargs)

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
            prefix_cache_query_tokens_total=self.scheduler.num_prefix_cache_query_tokens,
        )

    @property
    def _request_eos_ids(self) -> frozenset[int]:
        """A request's EOS: the tokenizer's (the other generation_config ids are its stop_token_ids);
        without a tokenizer, none: generation_config's ids all stop as stop_token_ids (vLLM)."""
        eos = self.model_eos_token_id
        return frozenset() if eos is None else frozenset({eos})

    def new_request_id(self) -> str:
        return str(next(self._ids))

    # ---- helpers --------------------------------------------------------------------------------
    def max_prompt_len(self, params) -> int:
        """The longest prompt a request may have: a generation needs room for one new token, and a
        pooling prompt runs whole in one step."""
        if isinstance(params, PoolingParams):
            return min(self.max_model_len, self.scheduler.max_num_batched_tokens)
        return self.max_model_len - 1

    def _validate(self, token_ids: list[int], params) -> None:
        check_prompt(token_ids, self.vocab_size, self.max_model_len, generates=isinstance(params, SamplingParams))
        if isinstance(params, SamplingParams):
            check_sampling(params, self.vocab_size, self.args.max_num_seqs)
        n = len(token_ids)
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

    def _make_request(self, rid: str, token_ids: list[int], params, index: int, priority: int = 0) -> Request:
        if isinstance(params, SamplingParams) and params.seed is not None and index:
            params = params.clone(seed=(params.seed + index) % 2**64)  # n samples must differ yet reproduce
        return Request(
            request_id=rid,
            prompt_token_ids=token_ids,
            params=params,
            max_tokens=self._max_tokens(len(token_ids), params),
            eos_token_ids=self._request_eos_ids,
            arrival_time=time.monotonic(),
            priority=priority,
        )
