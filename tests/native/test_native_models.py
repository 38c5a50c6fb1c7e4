"""Strict consistency of the native models: for every native architecture (tiny random configs,
float32) native == Transformers backend == plain Transformers in greedy tokens; logits of a whole
prompt within 1e-4 of plain Transformers; decode-step logprobs (paged KV path) within 1e-4."""

import pytest
import torch

from anymodel import LLM
from anymodel.native_overrides import NATIVE_MODELS, native_model_class
from tests.models.zoo import build_tiny_model, mixed_prompts
from tests.reference import dense_logits, greedy_outputs, hf_greedy_logits, llm_greedy

MAX_TOKENS = 8
TOL = 1e-4
# zoo name -> the architecture the native registry must serve for it
ARCHS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",  # sliding window on every layer
    "qwen2": "Qwen2ForCausalLM",  # qkv bias
    "qwen3": "Qwen3ForCausalLM",  # q/k norm
    "gemma2": "Gemma2ForCausalLM",  # sandwich norms, softcaps, alternating windows, tied embeddings
    "gemma3_text": "Gemma3ForCausalLM",  # q/k norm, rope per layer type
}


@pytest.fixture(scope="module", params=list(ARCHS))
def case(request, tmp_path_factory):
    path = build_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    prompts = mixed_prompts(path, n=8, seed=1)
    reference, logits = hf_greedy_logits(path, prompts, MAX_TOKENS)
    return request.param, path, prompts, reference, logits


@pytest.mark.parametrize("impl", ["native", "transformers"])
def test_greedy_tokens_equal_transformers(case, impl):
    arch, path, prompts, reference, _ = case
    llm = LLM(str(path), dtype="float32", model_impl=impl)
    assert llm_greedy(llm, prompts, MAX_TOKENS) == reference
    names = llm.apply_model(lambda m: type(m).__name__)
    assert names == ([ARCHS[arch]] if impl == "native" else ["TransformersForCausalLM"])


def test_auto_picks_native(case):
    arch, path = case[:2]
    llm = LLM(str(path), dtype="float32", num_kv_blocks=64)
    assert llm.apply_model(lambda m: type(m).__name__) == [ARCHS[arch]]


@torch.inference_mode()
def test_prompt_logits_match_transformers(case):
    from transformers import AutoConfig, AutoModelForCausalLM

    arch, path, prompts = case[:3]
    config = AutoConfig.from_pretrained(str(path))
    native = native_model_class(ARCHS[arch]).from_pretrained(path, config, torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    logits = dense_logits(native, prompts[-1])  # the longest prompt: crosses the sliding windows
    expected = hf(torch.tensor([prompts[-1]])).logits[0]
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=TOL, rtol=0)


def test_decode_logprobs_match_transformers(case):
    """Logprob of every sampled token, decode steps included (paged KV), against plain generate."""
    arch, path, prompts, reference, hf_logits = case
    llm = LLM(str(path), dtype="float32", model_impl="native")
    outs = greedy_outputs(llm, prompts[:4], MAX_TOKENS, logprobs=0)
    for out, ref, steps in zip(outs, reference, hf_logits):
        expected = [torch.log_softmax(step, -1)[tok].item() for step, tok in zip(steps, ref)]
        got = [lp[tok].logprob for lp, tok in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
        assert got == pytest.approx(expected, abs=TOL)


def test_registry_lists_the_hot_architectures():
    assert set(ARCHS.values()) <= set(NATIVE_MODELS)
    for arch in NATIVE_MODELS:
        assert native_model_class(arch) is not None
    assert native_model_class("GPT2LMHeadModel") is None
