"""The pooler: one request's last hidden states -> one output tensor, in vLLM's vocabulary.

    hidden[T, H] --select (pooling_type)--> [H] or [n, H] --head--> [.., D] --dimensions--> [.., d]
                 --normalize (L2)--> --softmax (the model's activation: softmax or sigmoid)--> data

    LAST  the last token              CLS  the first token          MEAN  the mean over all tokens
    ALL   every token ([T, D])        STEP the tokens equal to `step_tag_id` ([n, D]), optionally only
                                           the columns `returned_token_ids` (a process reward model)

Every prompt is computed whole in one step (the scheduler never chunks a pooling prompt), so
`hidden` always covers the whole prompt.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
import torch.nn.functional as F


class PoolingType(enum.Enum):
    LAST = "LAST"
    ALL = "ALL"
    CLS = "CLS"
    STEP = "STEP"
    MEAN = "MEAN"


@dataclass(frozen=True)
class PoolerConfig:
    pooling_type: PoolingType = PoolingType.LAST
    normalize: bool = False
    softmax: bool = False
    step_tag_id: int | None = None
    returned_token_ids: tuple[int, ...] | None = None

    def merged(self, overrides: dict | None) -> "PoolerConfig":
        """These defaults with `overrides` (JSON-style: {"pooling_type": "MEAN", ...}) on top."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"override_pooler_config: unknown key(s) {unknown}; supported: {sorted(known)}")
        values = dict(overrides)
        if values.get("pooling_type") is not None:
            values["pooling_type"] = parse_pooling_type(values["pooling_type"])
        if values.get("returned_token_ids") is not None:
            values["returned_token_ids"] = tuple(int(t) for t in values["returned_token_ids"])
        values = {k: v for k, v in values.items() if v is not None or k in ("step_tag_id", "returned_token_ids")}
        return replace(self, **values)


def parse_pooling_type(value) -> PoolingType:
    if isinstance(value, PoolingType):
        return value
    try:
        return PoolingType[str(value).upper()]
    except KeyError:
        raise ValueError(
            f"unsupported pooling_type {value!r}; supported: {[t.name for t in PoolingType]}"
        ) from None


@dataclass
class PoolingInput:
    """What the pooler needs of one request (per-request options: None = the model's default)."""

    hidden: torch.Tensor  # [T, H], the request's last hidden states
    token_ids: list[int]  # [T]
    normalize: bool | None = None
    softmax: bool | None = None
    dimensions: int | None = None  # Matryoshka: keep the first `dimensions` values, then normalize


# A head maps selected hidden states to outputs: [H] -> [D] or [n, H] -> [n, D]. `None`: identity.
Head = Callable[[torch.Tensor], torch.Tensor]


def label_activation(x: torch.Tensor) -> torch.Tensor:
    """vLLM's default classifier activation (PoolerClassify), by the size of the last dim: sigmoid
    for one label, softmax over several."""
    return torch.sigmoid(x) if x.shape[-1] < 2 else torch.softmax(x, dim=-1)


@dataclass
class Pooler:
    config: PoolerConfig
    head: Head | None = None
    # Applied when softmax is on: torch.softmax over the last dim, or torch.sigmoid (1-label
    # cross-encoders, multi-label classifiers).
    activation: Callable[[torch.Tensor], torch.Tensor] = label_activation
    # False: the head consumes the whole sequence [T, H] itself (e.g. BERT's CLS pooler inside the
    # HF classification head), so `pooling_type` selection is skipped.
    selects: bool = True

    def __call__(self, inputs: list[PoolingInput]) -> list[torch.Tensor]:
        return [self.pool_one(x) for x in inputs]

    def pool_one(self, x: PoolingInput) -> torch.Tensor:
        data = self.select(x.hidden, x.token_ids) if self.selects else x.hidden
        if self.head is not None:
            data = self.head(data)
        data = data.float()
        if self.config.pooling_type is PoolingType.STEP and self.config.returned_token_ids:
            data = data[..., list(self.config.returned_token_ids)]
        if x.dimensions is not None:
            data = data[..., : x.dimensions]
        if self.config.normalize if x.normalize is None else x.normalize:
            data = F.normalize(data, p=2, dim=-1)
        if self.config.softmax if x.softmax is None else x.softmax:
            data = self.activation(data)
        return data

    def select(self, hidden: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
        kind = self.config.pooling_type
        if kind is PoolingType.LAST:
            return hidden[-1]
        if kind is PoolingType.CLS:
            return hidden[0]
        if kind is PoolingType.MEAN:
            return hidden.float().mean(dim=0).to(hidden.dtype)
        if kind is PoolingType.ALL:
            return hidden
        if self.config.step_tag_id is None:  # STEP without a tag: every token, as vLLM does
            return hidden
        mask = torch.tensor(token_ids, device=hidden.device) == self.config.step_tag_id
        return hidden[mask]
