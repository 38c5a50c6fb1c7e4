"""A request's state inside the engine (one per sample: `n` > 1 forks into n requests)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from anymodel.params import PoolingParams, SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"  # its sampling or output processing raised: it alone failed

    @property
    def finished(self) -> bool:
        return self.name.startswith("FINISHED")


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams | PoolingParams
    max_tokens: int = 0  # generation cap after max_model_len is applied; 0 for pooling
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = 0.0
    priority: int = 0  # scheduling_policy="priority": lower first (vLLM)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_cached_tokens: int = 0  # of those, how many came from the prefix cache at admission
    all_token_ids: list[int] = field(default_factory=list)  # prompt + output, grows by decode
    stop_reason: int | str | None = None
    generator: torch.Generator | None = None  # per-request seed
    # Pooling: hidden states of the prompt ([T, H]) once computed.
    pooled: torch.Tensor | None = None
    # Segment ids of a text pair (cross-encoder scoring), [num_prompt_tokens]; None: the model's default.
    token_type_ids: list[int] | None = None
    lora_request: object = None  # anymodel.LoRARequest: the adapter it runs with (None: the base model)
    # {"prompt_embeds": [T, H]} (enable_prompt_embeds): the prompt's rows, its ids placeholders; see prompt_embeds.py
    prompt_embeds: torch.Tensor | None = None
    prompt_embeds_digest: str | None = None  # the prefix cache's key for them

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)
        params = self.params
        if isinstance(params, SamplingParams) and params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)

    @property
    def lora_int_id(self) -> int:
        return 0 if self.lora_request is None else self.lora_request.lora_int_id

    @property
    def is_pooling(self) -> bool:
        return isinstance(self.params, PoolingParams)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_token(self, token_id: int) -> None:
        self.all_token_ids.append(token_id)
