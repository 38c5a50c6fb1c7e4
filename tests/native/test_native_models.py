"""Strict consistency of the native models: for every native architecture (tiny random configs,
float32) native == Transformers backend == plain Transformers in greedy tokens; logits of a whole
prompt within 1e-4 of plain Transformers; decode-step logprobs (paged KV path) within 1e-4."""

import pytest
import torch

from anymodel import LLM, SamplingParams
from anymodel.attention_backend.forward_context import ForwardContext
from anymodel.attention_backend.metadata import AttentionMetadata
from anymodel.native_overrides import NATIVE_MODELS, native_model_class
from tests.models.zoo import build_tiny_model, hf_greedy, mixed_prompts

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
    return request.param, path, prompts, hf_greedy(path, prompts, MAX_TOKENS)


def _greedy(llm, prompts, logprobs=None):
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=logprobs)
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


@pytest.mark.parametrize("impl", ["native", "transformers"])
def test_greedy_tokens_equal_transformers(case, impl):
    arch, path, prompts, reference = case
    llm = LLM(str(path), dtype="float32", model_impl=impl)
    assert [o.outputs[0].token_ids for o in _greedy(llm, prompts)] == reference
    names = llm.apply_model(lambda m: type(m).__name__)
    assert names == ([ARCHS[arch]] if impl == "native" else ["TransformersForCausalLM"])


def test_auto_picks_native(case):
    arch, path, prompts, reference = case
    llm = LLM(str(path), dtype="float32", num_kv_blocks=64)
    assert llm.apply_model(lambda m: type(m).__name__) == [ARCHS[arch]]


def _full_prompt_meta(T: int) -> AttentionMetadata:
    """One request, no cache: run inside `ForwardContext.discovery`, the attention function attends densely."""
    return AttentionMetadata(
        query_start_loc=torch.tensor([0, T], dtype=torch.int32), seq_lens=torch.tensor([T], dtype=torch.int32),
        block_tables=torch.zeros(1, 1, dtype=torch.int32), slot_mapping=torch.arange(T), max_query_len=T,
        max_seq_len=T, block_size=16,
    )


@torch.inference_mode()
def test_prompt_logits_match_transformers(case):
    from transformers import AutoConfig, AutoModelForCausalLM

    arch, path, prompts, _ = case
    config = AutoConfig.from_pretrained(str(path))
    native = native_model_class(ARCHS[arch]).from_pretrained(path, config, torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = torch.tensor([prompts[-1]])  # the longest prompt: crosses the sliding windows
    T = ids.shape[1]
    meta = _full_prompt_meta(T)
    with ForwardContext.discovery(meta):
        hidden = native(ids, torch.arange(T)[None], meta)
    logits = native.compute_logits(hidden)
    expected = hf(ids).logits[0]
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=TOL, rtol=0)


def test_decode_logprobs_match_transformers(case):
    """Logprob of every sampled token, decode steps included (paged KV), against plain generate."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    arch, path, prompts, reference = case
    llm = LLM(str(path), dtype="float32", model_impl="native")
    outs = _greedy(llm, prompts[:4], logprobs=0)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    hf.generation_config = GenerationConfig(do_sample=False, pad_token_id=0)
    for out, prompt, ref in zip(outs, prompts, reference):
        with torch.inference_mode():
            gen = hf.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, output_logits=True, return_dict_in_generate=True)
        expected = [torch.log_softmax(step[0].float(), -1)[tok].item() for step, tok in zip(gen.logits, ref)]
        got = [lp[tok].logprob for lp, tok in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
        assert got == pytest.approx(expected, abs=TOL)


def test_registry_lists_the_hot_architectures():
    assert set(ARCHS.values()) <= set(NATIVE_MODELS)
    for arch in NATIVE_MODELS:
        assert native_model_class(arch) is not None
    assert native_model_class("GPT2LMHeadModel") is None
