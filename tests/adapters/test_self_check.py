"""The start-up self-check (adapters/self_check.py): our paged attention against the model's own
on one short probe. A model whose attention or mask the paged path misses is caught there: it runs
on the compat path (still token-identical), or is refused when the compat path is off."""

import logging

import pytest

from anymodel import LLM, SamplingParams
from tests.adapters.test_sliding_windows import MAX_TOKENS, PROMPTS, WINDOW
from tests.models.zoo import WINDOW_SUFFIX, build_tiny_model, windowed_zoo
from tests.reference import argmax_greedy, hf_greedy

ARCH = "phimoe" + WINDOW_SUFFIX  # PhiMoE passes no sliding_window kwarg at all
assert ARCH in windowed_zoo(WINDOW)


@pytest.fixture(scope="module")
def phimoe_window(tmp_path_factory):
    path = build_tiny_model(ARCH, tmp_path_factory.mktemp(ARCH))
    return path, hf_greedy(path, PROMPTS, MAX_TOKENS)


@pytest.fixture
def windows_forgotten(monkeypatch):
    """The bug class the check exists for: a window the paged path does not know about."""
    from anymodel.adapters import causal_lm

    monkeypatch.setattr(causal_lm, "kernel_windows", lambda config: (None,) * config.num_hidden_layers)


def test_missed_window_falls_back_to_the_compat_path(phimoe_window, windows_forgotten, caplog):
    path, reference = phimoe_window
    with caplog.at_level(logging.WARNING, logger="anymodel"):
        llm = LLM(str(path), model_impl="transformers", dtype="float32")
    assert llm.apply_model(lambda m: type(m).__name__) == ["CompatCausalLM"]
    assert "self-check" in caplog.text and "disagrees with the model's own (sdpa) attention" in caplog.text
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outs] == reference


def test_missed_window_is_refused_without_the_compat_path(phimoe_window, windows_forgotten):
    path, _ = phimoe_window
    with pytest.raises(ValueError, match="self-check.*disagrees.*enable_compat_path=True runs it"):
        LLM(str(path), model_impl="transformers", dtype="float32", enable_compat_path=False)


def test_the_probe_reaches_past_the_longest_window(phimoe_window):
    from anymodel.adapters.self_check import PROBE_MAX, probe_ids

    path, _ = phimoe_window
    llm = LLM(str(path), model_impl="transformers", dtype="float32")
    length, windows = llm.apply_model(lambda m: (probe_ids(m).shape[1], m.layer_windows))[0]
    assert max(max(w) for w in windows if w) < length <= PROBE_MAX


def test_one_noisy_token_is_noise_most_tokens_of_a_group_are_a_bug():
    """The comparison's statistic: an MoE router flipping one near-tied token in 16 bits (seen on
    DeepSeek-V3 in bfloat16: one token at 0.55, the rest ~0.01) passes; a missed window, which moves
    every token past it, fails even when the tokens before the window agree; so does a bug of the
    decode steps alone."""
    import torch

    from anymodel.adapters.self_check import _HALF_TOLERANCE, _typical_error

    own = torch.ones(24, 10)
    groups = [slice(0, 24), slice(14, 24), slice(20, 24)]  # all, past a 14-token window, 4 decode steps
    flip = own.clone()
    flip[11] += 2.0
    assert _typical_error(flip, own, groups) < _HALF_TOLERANCE
    flip[22] += 2.0  # one of the decode steps too
    assert _typical_error(flip, own, groups) < _HALF_TOLERANCE
    window_missed = own.clone()
    window_missed[14:] += 1.0  # 10 of 24 tokens: under half of all, every one past the window
    assert _typical_error(window_missed, own, groups) > _HALF_TOLERANCE
    decode_bug = own.clone()
    decode_bug[20:] += 1.0  # the decode steps only
    assert _typical_error(decode_bug, own, groups) > _HALF_TOLERANCE


def test_a_window_only_the_mask_knows_goes_to_the_compat_path(tmp_path, caplog):
    """No monkeypatching: remote code whose window lives in its mask function alone (a config
    field no loader knows, no kwarg). The paged path cannot see it; the probe does, and the model
    runs on the compat path with the tokens of the model as built."""
    from tests.models.oldstyle import build_oldstyle

    path, model = build_oldstyle(tmp_path, own_attention=False, mask_window=5)
    with caplog.at_level(logging.WARNING, logger="anymodel"):
        llm = LLM(str(path), trust_remote_code=True, dtype="float32")
    assert llm.apply_model(lambda m: type(m).__name__) == ["CompatCausalLM"]
    assert "start-up self-check" in caplog.text
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outs] == [argmax_greedy(model, p, MAX_TOKENS) for p in PROMPTS]
