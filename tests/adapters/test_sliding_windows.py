"""Sliding windows come from the config, per layer, in Transformers' mask semantics (issue 13).

Transformers enforces a window only through the mask it builds from the config; the attention
kwarg is a flash-attention hint that some models (PhiMoE) never pass. Every zoo architecture whose
config has a window runs here with a 5-token window under ~20-token prompts: greedy tokens equal
plain Transformers' (sdpa / eager masks)."""

import pytest
from transformers import PretrainedConfig

from anymodel import LLM
from anymodel.adapters.sliding_windows import kernel_windows, layer_windows
from tests.models.zoo import (COMPAT_ARCHS, SELF_CHECK_COMPAT_ARCHS, WINDOW_SUFFIX, build_tiny_model, save_random_model,
                              tiny_config, windowed_zoo)
from tests.reference import hf_greedy, llm_greedy

WINDOW = 5
PROMPTS = [[(7 * i + 11) % 300 + 4 for i in range(21)], [(5 * i + 3) % 300 + 4 for i in range(13)]]
MAX_TOKENS = 6
WINDOWED = windowed_zoo(WINDOW)


def _config(**kwargs) -> PretrainedConfig:
    return PretrainedConfig(num_hidden_layers=4, **kwargs)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(), (None,) * 4),  # no window at all
    (dict(sliding_window=7), (7,) * 4),  # Mistral / Phi-3 / PhiMoE / Starcoder 2: every layer
    (dict(sliding_window=7, use_sliding_window=False), (None,) * 4),  # Qwen's stale window
    (dict(sliding_window=7, use_sliding_window=True, max_window_layers=2), (None, None, 7, 7)),  # old Qwen 2
    (dict(sliding_window=7, sliding_window_pattern=2), (7, None, 7, None)),  # older Gemma 3 / Cohere 2
    (dict(sliding_window=7, use_sliding_window=False,  # layer_types decide, as Transformers' masks do
          layer_types=["full_attention", "sliding_attention", "chunked_attention", "sliding_attention"]),
     (None, 7, None, 7)),
    (dict(sliding_window=0, layer_types=["sliding_attention"] * 4), (None,) * 4),  # Qwen2-MoE's 0
])
def test_layer_windows_from_config(kwargs, expected):
    assert layer_windows(_config(**kwargs)) == expected


def test_kernel_windows_per_direction():
    """(causal, bidirectional) in the kernels' terms; None when the config has no window at all,
    so that a remote model's own `sliding_window` kwarg still counts."""
    assert kernel_windows(_config()) is None
    assert kernel_windows(_config(sliding_window=4, sliding_window_pattern=2)) == ((4, 5), None) * 2
    assert kernel_windows(_config(sliding_window=4, use_bidirectional_attention=True)) == ((4, 4),) * 4


@pytest.fixture(scope="module", params=WINDOWED)
def windowed_case(request, tmp_path_factory):
    name = request.param
    path = build_tiny_model(name, tmp_path_factory.mktemp(name))
    return name, path, hf_greedy(path, PROMPTS, MAX_TOKENS)


def test_small_windows_match_transformers(windowed_case):
    name, path, reference = windowed_case
    windows = layer_windows(tiny_config(name))
    assert any(w is not None and w < len(PROMPTS[0]) for w in windows), f"{name}: no window binds"
    llm = LLM(model=str(path), model_impl="transformers", dtype="float32", seed=0)
    compat = name.removesuffix(WINDOW_SUFFIX) in COMPAT_ARCHS | SELF_CHECK_COMPAT_ARCHS
    assert llm.apply_model(lambda m: type(m).__name__) == ["CompatCausalLM" if compat else "TransformersForCausalLM"]
    assert llm_greedy(llm, PROMPTS, MAX_TOKENS) == reference, name


def test_bidirectional_gemma3_window_is_its_own_overlay(tmp_path):
    """EmbeddingGemma-style Gemma 3 (`use_bidirectional_attention`) opens its sliding layers with
    its own |q - k| < w overlay, one narrower than masking_utils' bidirectional window (ModernBERT,
    tests/pooling): embeddings equal Transformers' (sdpa) on prompts longer than the window."""
    import torch
    import transformers

    config = transformers.Gemma3TextConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=8, use_bidirectional_attention=True,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config.architectures = ["Gemma3TextModel"]
    model = save_random_model(transformers.Gemma3TextModel, config, tmp_path)
    llm = LLM(str(tmp_path), task="embed", dtype="float32", override_pooler_config={"pooling_type": "MEAN"})
    outs = llm.embed([{"prompt_token_ids": p} for p in PROMPTS], use_tqdm=False)
    with torch.no_grad():
        ref = [model(torch.tensor([p])).last_hidden_state[0].mean(0) for p in PROMPTS]
    want = torch.nn.functional.normalize(torch.stack(ref), dim=-1)
    torch.testing.assert_close(torch.tensor([o.outputs.embedding for o in outs]), want, atol=1e-4, rtol=1e-4)
