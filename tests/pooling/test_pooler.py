"""The pooler's arithmetic on hand-made hidden states (no model)."""

import pytest
import torch

from anymodel.adapters.pooler import Pooler, PoolerConfig, PoolingInput, PoolingType

H = torch.tensor([[1.0, 0.0, 2.0], [3.0, 4.0, 0.0], [0.0, 1.0, 1.0], [2.0, 2.0, 2.0]])  # [T=4, 3]
TOKENS = [7, 9, 7, 5]


def pool(kind: str, **config):
    return Pooler(PoolerConfig(pooling_type=PoolingType[kind], **config)).pool_one(PoolingInput(H, TOKENS))


@pytest.mark.parametrize("kind, expected", [
    ("LAST", H[-1]), ("CLS", H[0]), ("MEAN", H.mean(0)), ("ALL", H),
    ("STEP", H),  # no step_tag_id: every token
])
def test_selection(kind, expected):
    assert torch.equal(pool(kind), expected)


def test_step_tags_and_returned_token_ids():
    assert torch.equal(pool("STEP", step_tag_id=7), H[[0, 2]])
    out = pool("STEP", step_tag_id=7, returned_token_ids=(2, 0), softmax=True)
    assert torch.allclose(out, H[[0, 2]][:, [2, 0]].softmax(-1))


def test_normalize_softmax_and_per_request_overrides():
    pooler = Pooler(PoolerConfig(pooling_type=PoolingType.LAST, normalize=True))
    assert torch.allclose(pooler.pool_one(PoolingInput(H, TOKENS)), H[-1] / H[-1].norm())
    assert torch.equal(pooler.pool_one(PoolingInput(H, TOKENS, normalize=False)), H[-1])
    sig = Pooler(PoolerConfig(softmax=True), activation=torch.sigmoid)
    assert torch.allclose(sig.pool_one(PoolingInput(H, TOKENS)), H[-1].sigmoid())
    assert torch.equal(sig.pool_one(PoolingInput(H, TOKENS, softmax=False)), H[-1])


def test_dimensions_truncate_before_normalising():
    pooler = Pooler(PoolerConfig(pooling_type=PoolingType.CLS, normalize=True))
    out = pooler.pool_one(PoolingInput(H, TOKENS, dimensions=2))
    assert torch.allclose(out, torch.tensor([1.0, 0.0]))


def test_head_runs_after_selection():
    head = torch.nn.Linear(3, 2, bias=False)
    pooler = Pooler(PoolerConfig(pooling_type=PoolingType.MEAN), head=head)
    with torch.no_grad():
        assert torch.allclose(pooler.pool_one(PoolingInput(H, TOKENS)), head(H.mean(0)))


def test_config_merge():
    base = PoolerConfig(pooling_type=PoolingType.CLS, normalize=True)
    merged = base.merged({"pooling_type": "step", "step_tag_id": 3, "returned_token_ids": [4, 5], "normalize": None})
    assert merged == PoolerConfig(PoolingType.STEP, normalize=True, step_tag_id=3, returned_token_ids=(4, 5))
    assert base.merged(None) is base
