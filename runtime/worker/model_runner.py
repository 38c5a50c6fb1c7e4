"""Model runner: flattens a scheduled step into one row of tokens, runs the model, samples.

    input_ids [1, T], positions [1, T]  ->  model  ->  hidden [T, H]
    hidden[logits_indices] [S, H]       ->  compute_logits  ->  sampler  ->  S new tokens

The step's `AttentionMetadata` is built once and never changed; each forward over it runs inside a
fresh `ForwardContext` that holds the KV caches (or discovery) and the layer cursor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from anymodel.attention_backend.forward_context import ForwardContext
from anymodel.attention_backend.metadata import AttentionMetadata
from anymodel.lora.ops import LoRAMapping
from anymodel.model_protocol import StatefulModel, traits_of
from anymodel.prompt_embeds import StepEmbeds, replaced_embeddings
from anymodel.worker.cuda_graph import DecodeGraphs, GraphSpec
from anymodel.worker.kv_budget import measure_kv_budget
from anymodel.engine.request import Request
from anymodel.worker.sampler import SamplingRow, sample, top_logprobs
from anymodel.engine.scheduler import SchedulerOutput

logger = logging.getLogger("anymodel")


@dataclass
class RunnerOutput:
    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, dict[int, tuple[float, int]]] = field(default_factory=dict)
    # request id -> (first prompt index covered, [{token: (logprob, rank)}] for consecutive prompt tokens)
    prompt_logprobs: dict[str, tuple[int, list[dict[int, tuple[float, int]]]]] = field(default_factory=dict)
    # pooling requests: the pooler's output (on CPU), e.g. [H] embedding, [L] probs, [T, H] ALL
    pooled: dict[str, torch.Tensor] = field(default_factory=dict)
    # request id -> why its sampling (or prompt logprobs) raised: that request alone fails
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class StepInputs:
    """What one step feeds the model, built once per step. The step's other inputs (multimodal
    embeddings, the LoRA mapping, speculative drafts) join here, beside `meta`, when they come."""

    input_ids: torch.Tensor  # [1, T]
    positions: torch.Tensor  # [1, T]
    meta: AttentionMetadata
    token_type_ids: torch.Tensor | None = None  # [1, T], only when a request in the step has them
    lora: LoRAMapping | None = None  # each token's adapter slot (on the device); None: no adapter in the step
    embeds: StepEmbeds | None = None  # rows given as prompt embeddings (enable_prompt_embeds); None: all looked up

    @property
    def model_kwargs(self) -> dict:
        return {} if self.token_type_ids is None else {"token_type_ids": self.token_type_ids}

    def to(self, device: torch.device) -> "StepInputs":
        if device.type == "cpu":
            return self
        types = None if self.token_type_ids is None else self.token_type_ids.to(device)
        return StepInputs(self.input_ids.to(device), self.positions.to(device), self.meta.to(device), types, self.lora,
                          self.embeds)


class ModelRunner:
    produces_output = True  # False on pipeline stages before the last: no LM head, nothing to sample

    def __init__(self, model: torch.nn.Module, device: torch.device, block_size: int, backend, seed: int = 0,
                 graph_spec: GraphSpec | None = None, lora=None, kv_cache_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.lora = lora  # anymodel.lora.slots.LoRASlots when enable_lora
        self.device = device
        self.block_size = block_size
        self.backend = backend
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.generator = torch.Generator().manual_seed(seed)
        self.graph_spec = graph_spec  # decode graphs are captured once the KV cache exists
        self.graphs: DecodeGraphs | None = None
        self.kv_cache_dtype = kv_cache_dtype  # None: each layer's K/V dtype (kv_cache_dtype="auto")

    # ---- KV cache -------------------------------------------------------------------------------
    @torch.inference_mode()
    def discover_layers(self) -> list[tuple[int, int, torch.dtype]]:
        """One tiny forward without a cache: which calls attend, with how many KV heads of which size."""
        positions = torch.tensor([0, 1])
        inputs = StepInputs(torch.zeros(1, 2, dtype=torch.long), positions[None],
                            self._metadata([2], [2], [[0]], positions)).to(self.device)
        with ForwardContext.discovery(inputs.meta, self.backend) as forward:
            self.model(inputs.input_ids, inputs.positions, inputs.meta)
        if self.kv_cache_dtype is not None:  # the cache stores them in this dtype (kv_cache_dtype="fp8"...)
            return [(h, d, self.kv_cache_dtype) for h, d, _ in forward.discovered]
        return forward.discovered

    def bytes_per_block(self, layers) -> int:
        return sum(2 * self.block_size * h * d * torch.empty(0, dtype=dt).element_size() for h, d, dt in layers)

    def _new_kv_cache(self, layers, num_blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # Zeroed, not empty: padded gathers read slots no request wrote, and an uninitialised NaN
        # there would survive the 0-probability multiply (0 * NaN = NaN).
        return [
            tuple(torch.zeros(num_blocks, self.block_size, h, d, dtype=dt, device=self.device) for _ in range(2))
            for h, d, dt in layers
        ]

    def kv_memory_budget(self, layers, utilization: float, num_tokens: int, num_logit_rows: int) -> int | None:
        """Bytes the KV cache may take on this GPU (see kv_budget.py); None on CPU."""
        return measure_kv_budget(self, layers, utilization, num_tokens, num_logit_rows)

    @torch.inference_mode()
    def profile_step(self, layers, num_tokens: int, num_logit_rows: int) -> int:
        """The largest step the scheduler may send, for its peak memory: one `num_tokens`-token
        prefill over a scratch KV cache just big enough, then the LM head on `num_logit_rows` rows.
        Returns the scratch cache's size in bytes; the cache is gone afterwards."""
        num_blocks = -(-num_tokens // self.block_size)
        scratch_cache = self._new_kv_cache(layers, num_blocks)
        positions = torch.arange(num_tokens)
        meta = self._metadata([num_tokens], [num_tokens], [list(range(num_blocks))], positions)
        inputs = StepInputs(torch.zeros(1, num_tokens, dtype=torch.long), positions[None], meta).to(self.device)
        with ForwardContext.paged(inputs.meta, scratch_cache, self.backend):
            hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)
        if self.produces_output and hasattr(self.model, "compute_logits"):
            self.model.compute_logits(hidden[:num_logit_rows])
        return self.bytes_per_block(layers) * num_blocks

    def allocate_kv_cache(self, layers, num_blocks: int, capture: bool = True) -> None:
        """`capture=False`: no decode graphs yet (sleep mode wakes the cache before the weights)."""
        self.kv_caches = self._new_kv_cache(layers, num_blocks)
        if capture and self.graph_spec is not None:
            self.capture_decode_graphs(self.graph_spec)

    @torch.inference_mode()
    def capture_decode_graphs(self, spec: GraphSpec) -> None:
        """Capture one decode graph per size in `spec` (see cuda_graph.py). On a GPU, a model whose
        forward cannot be captured (a host sync, say) runs eagerly instead, with a warning."""
        try:
            self.graphs = DecodeGraphs(self.model, spec, self.block_size, self.kv_caches, self.backend, self.device)
        except Exception as e:
            if self.device.type != "cuda":
                raise
            self.graphs = None
            logger.warning("anymodel: CUDA graph capture failed (%s: %s); decode steps run eagerly", type(e).__name__, e)
            return
        logger.info("anymodel: captured decode graphs for batch sizes %s", list(spec.sizes))

    # ---- one step -------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> RunnerOutput:
        if sched.released_req_ids and traits_of(self.model).per_request_state:
            stateful: StatefulModel = self.model  # its per-request state goes with the finished requests
            stateful.release(sched.released_req_ids)
        if sched.is_empty:
            return RunnerOutput()
        inputs = self.prepare_inputs(sched)  # on the CPU
        hidden = self._forward(inputs)  # [T, H]
        out = RunnerOutput()
        if not self.produces_output:
            return out
        starts = inputs.meta.query_start_loc.tolist()
        self._pool(sched, hidden, starts, out)
        self._sample(sched, hidden, starts, out)
        return out

    def _forward(self, inputs: StepInputs) -> torch.Tensor:
        size = None if self.graphs is None or inputs.embeds is not None else self.graphs.size_for(
            inputs.meta, inputs.token_type_ids is not None)
        if size is not None:
            return self.graphs.run(inputs.input_ids, inputs.positions, inputs.meta, size)
        inputs = inputs.to(self.device)
        if self.lora is not None:
            self.lora.state.mapping = inputs.lora  # read by every LoRALinear during this forward
        try:
            with (ForwardContext.paged(inputs.meta, self.kv_caches, self.backend),
                  replaced_embeddings(self.model, inputs.embeds)):
                return self.model(inputs.input_ids, inputs.positions, inputs.meta, **inputs.model_kwargs)
        finally:
            if self.lora is not None:
                self.lora.state.mapping = None

    def prepare_inputs(self, sched: SchedulerOutput) -> StepInputs:
        """The step's flat row of tokens and its attention metadata, as CPU tensors."""
        ids, positions, qlens, seq_lens = [], [], [], []
        for s in sched.scheduled:
            r, start = s.request, s.request.num_computed_tokens
            end = start + s.num_tokens
            ids.extend(r.all_token_ids[start:end])
            positions.extend(range(start, end))
            qlens.append(s.num_tokens)
            seq_lens.append(end)
        tables = [sched.block_tables[s.request.request_id] for s in sched.scheduled]
        pos = torch.tensor(positions, dtype=torch.long)
        meta = self._metadata(qlens, seq_lens, tables, pos, tuple(s.request.request_id for s in sched.scheduled))
        return StepInputs(torch.tensor([ids], dtype=torch.long), pos[None], meta, self._token_type_ids(sched),
                          self._lora_mapping(sched), StepEmbeds.build(sched.scheduled))

    def _lora_mapping(self, sched: SchedulerOutput) -> LoRAMapping | None:
        """Each token's adapter slot, the step's adapters loaded into slots first (LoRA only)."""
        if self.lora is None:
            return None
        slots = self.lora.activate([s.request.lora_request for s in sched.scheduled])
        return LoRAMapping.build([slot for s, slot in zip(sched.scheduled, slots) for _ in range(s.num_tokens)],
                                 self.device, self.lora.state.max_loras)

    def _token_type_ids(self, sched: SchedulerOutput) -> torch.Tensor | None:
        """[1, T] segment ids (cross-encoder pairs); zeros for requests without them."""
        if all(s.request.token_type_ids is None for s in sched.scheduled):
            return None
        types = []
        for s in sched.scheduled:
            start, own = s.request.num_computed_tokens, s.request.token_type_ids
            types.extend(own[start : start + s.num_tokens] if own is not None else [0] * s.num_tokens)
        return torch.tensor([types], dtype=torch.long)

    def _metadata(self, qlens, seq_lens, tables, positions: torch.Tensor,
                  request_ids: tuple[str, ...] | None = None) -> AttentionMetadata:
        width = max(len(t) for t in tables)
        block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
        qlens_t = torch.tensor(qlens, dtype=torch.int32)
        req_of_token = torch.repeat_interleave(torch.arange(len(qlens)), qlens_t.long())
        bs = self.block_size
        slots = block_tables[req_of_token, positions // bs].long() * bs + positions % bs
        return AttentionMetadata(
            query_start_loc=torch.nn.functional.pad(qlens_t.cumsum(0, dtype=torch.int32), (1, 0)),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_tables=block_tables,
            slot_mapping=slots,
            max_query_len=max(qlens),
            max_seq_len=max(seq_lens),
            block_size=bs,
            request_ids=request_ids,
        )

    # ---- pooling --------------------------------------------------------------------------------
    def _pool(self, sched: SchedulerOutput, hidden: torch.Tensor, starts: list[int], out: RunnerOutput) -> None:
        """Pooling requests of this step (each one whole prompt) -> the model's pooler -> CPU tensors."""
        picked = [(i, s.request) for i, s in enumerate(sched.scheduled) if s.request.is_pooling]
        if not picked:
            return
        from anymodel.adapters.pooler import PoolingInput

        inputs = [
            PoolingInput(hidden[starts[i] : starts[i + 1]], r.prompt_token_ids, r.params.normalize,
                         r.params.softmax, r.params.dimensions)
            for i, r in picked
        ]
        try:
            pooled = list(zip([r for _, r in picked], self.model.pool(inputs)))
        except Exception as e:  # as for sampling: each request again alone, only those failing alone fail
            logger.warning("anymodel: batched pooling failed (%s: %s); pooling one by one", type(e).__name__, e)
            pooled = []
            for (_, r), x in zip(picked, inputs):
                try:
                    pooled.append((r, self.model.pool([x])[0]))
                except Exception as e:
                    out.failed[r.request_id] = _failure("pooling", e)
        for r, data in pooled:
            out.pooled[r.request_id] = data.cpu()

    # ---- sampling -------------------------------------------------------------------------------
    def _sample(self, sched: SchedulerOutput, hidden: torch.Tensor, starts: list[int], out: RunnerOutput) -> None:
        sample_idx, rows, reqs, prompt_lp = [], [], [], []
        for i, s in enumerate(sched.scheduled):
            r = s.request
            if r.is_pooling:
                continue
            if r.params.prompt_logprobs is not None and r.num_computed_tokens < r.num_prompt_tokens - 1:
                prompt_lp.append((i, s))
            if s.samples:
                sample_idx.append(starts[i + 1] - 1)
                rows.append(_sampling_row(r, sched.grammar_bitmask))
                reqs.append(r)
        if rows:
            self._sample_rows(hidden, sample_idx, rows, reqs, out)
        for i, s in prompt_lp:
            rid = s.request.request_id
            try:
                out.prompt_logprobs[rid] = self._prompt_logprobs(s, hidden[starts[i] : starts[i + 1]])
            except Exception as e:
                out.failed[rid] = _failure("prompt logprobs", e)

    def _sample_rows(self, hidden, sample_idx: list[int], rows: list[SamplingRow], reqs: list[Request],
                     out: RunnerOutput) -> None:
        """All rows in one batched call. If it raises, each row again alone, from the same logits
        (sample leaves them unchanged) and its seeded generator as it was: only the rows that fail
        alone fail (RunnerOutput.failed); the others get the tokens they would have had. The logits
        themselves are outside the guard: a failing LM head is the step's failure, not a request's
        (and under tensor parallelism every rank must make the same collective calls)."""
        logits = self.model.compute_logits(hidden[sample_idx])  # [S, V]
        seeded = [(r.generator, r.generator.get_state()) for r in rows if r.generator is not None]
        try:
            result = sample(logits, rows, self.generator)
            results = list(zip(reqs, result.token_ids, result.logprobs))
        except Exception as e:
            logger.warning("anymodel: batched sampling failed (%s: %s); sampling row by row", type(e).__name__, e)
            for generator, state in seeded:
                generator.set_state(state)
            results = []
            for i, (row, r) in enumerate(zip(rows, reqs)):
                try:
                    one = sample(logits[i : i + 1], [row], self.generator)
                except Exception as e:
                    out.failed[r.request_id] = _failure("sampling", e)
                    continue
                results.append((r, one.token_ids[0], one.logprobs[0]))
        for r, tok, lp in results:
            out.sampled[r.request_id] = tok
            if lp is not None:
                out.logprobs[r.request_id] = lp

    def _prompt_logprobs(self, s, hidden: torch.Tensor):
        """Logprob of each next prompt token predicted inside this chunk."""
        r, start = s.request, s.request.num_computed_tokens
        stop = min(start + s.num_tokens, r.num_prompt_tokens - 1)  # positions predicting a prompt token
        logprobs = torch.log_softmax(self.model.compute_logits(hidden[: stop - start]).float(), dim=-1)
        targets = r.prompt_token_ids[start + 1 : stop + 1]
        k = r.params.prompt_logprobs
        return start + 1, [top_logprobs(logprobs[j], t, k) for j, t in enumerate(targets)]


def _failure(what: str, e: Exception) -> str:
    logger.error("anymodel: %s failed for one request: %s: %s", what, type(e).__name__, e)
    return f"{what} failed: {type(e).__name__}: {e}"


def _sampling_row(r: Request, grammar_bitmask=None) -> SamplingRow:
    p = r.params
    blocked = []
    if r.num_output_tokens < p.min_tokens:
        blocked = sorted(set(p.stop_token_ids) | (set() if p.ignore_eos else set(r.eos_token_ids)))
    mask = None if grammar_bitmask is None else grammar_bitmask.row_of(r.request_id)
    prompt_ids = r.prompt_token_ids if r.prompt_embeds is None else []  # embeds: no prompt tokens to penalize
    return SamplingRow(p, prompt_ids, r.output_token_ids, blocked, r.generator, mask)
