"""Sampler: greedy, filters, penalties, seeds, logprobs — on hand-made logits."""

import math

import torch

from anymodel.params import SamplingParams
from anymodel.worker.sampler import SamplingRow, sample


def row(params: SamplingParams, prompt=(), output=(), blocked=(), seed=None) -> SamplingRow:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return SamplingRow(params, list(prompt), list(output), list(blocked), gen)


LOGITS = torch.tensor([[1.0, 3.0, 2.0, 0.5], [0.1, 0.2, 4.0, 3.9]])


def test_greedy_is_argmax():
    out = sample(LOGITS, [row(SamplingParams(temperature=0)), row(SamplingParams(temperature=0))])
    assert out.token_ids == [1, 2]


def test_top_k_one_and_tiny_top_p_are_greedy():
    rows = [row(SamplingParams(temperature=1.0, top_k=1), seed=1), row(SamplingParams(temperature=1.0, top_p=0.01), seed=2)]
    for _ in range(5):
        assert sample(LOGITS, rows).token_ids == [1, 2]


def test_min_p_removes_unlikely_tokens():
    p = SamplingParams(temperature=1.0, min_p=0.5)
    seen = {sample(LOGITS[:1], [row(p, seed=s)]).token_ids[0] for s in range(30)}
    assert seen == {1}  # only tokens with prob >= 0.5 * max survive: token 2 has e^-1 ≈ 0.37 of max


def test_seeded_sampling_reproduces_and_seeds_differ():
    p = SamplingParams(temperature=1.0)
    logits = torch.zeros(1, 1000)
    a = [sample(logits, [row(p, seed=7)]).token_ids[0] for _ in range(3)]
    b = [sample(logits, [row(p, seed=7)]).token_ids[0] for _ in range(3)]
    c = [sample(logits, [row(p, seed=8)]).token_ids[0] for _ in range(3)]
    assert a == b and a != c


def test_repetition_penalty_hf_semantics():
    logits = torch.tensor([[2.0, -1.0, 1.9, 0.0]])
    out = sample(logits.clone(), [row(SamplingParams(temperature=0, repetition_penalty=2.0), prompt=[0])])
    assert out.token_ids == [2]  # 2.0 / 2 = 1.0 < 1.9


def test_presence_and_frequency_penalties_use_output_only():
    logits = torch.tensor([[2.0, 1.5, 0.0]])
    p = SamplingParams(temperature=0, frequency_penalty=0.3, presence_penalty=0.0)
    assert sample(logits.clone(), [row(p, prompt=[0, 0, 0], output=[])]).token_ids == [0]
    assert sample(logits.clone(), [row(p, output=[0, 0])]).token_ids == [1]  # 2.0 - 0.6 < 1.5


def test_blocked_tokens_are_never_sampled():
    out = sample(LOGITS.clone(), [row(SamplingParams(temperature=0), blocked=[1]), row(SamplingParams(temperature=0))])
    assert out.token_ids == [2, 2]


def test_logprobs_are_raw_and_ranked():
    p = SamplingParams(temperature=0, logprobs=2)
    out = sample(LOGITS[:1].clone(), [row(p)])
    lp = out.logprobs[0]
    ref = torch.log_softmax(LOGITS[0], -1)
    assert set(lp) == {1, 2}
    assert math.isclose(lp[1][0], float(ref[1]), rel_tol=1e-6) and lp[1][1] == 1 and lp[2][1] == 2


def test_plain_greedy_fast_path_matches_the_general_path():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    greedy = SamplingParams(temperature=0)
    fast = sample(logits, [row(greedy) for _ in range(6)])
    general = sample(logits, [row(greedy) for _ in range(5)] + [row(SamplingParams(temperature=0, logprobs=0))])
    assert fast.token_ids == general.token_ids == logits.argmax(dim=-1).tolist()
    assert fast.logprobs == [None] * 6
