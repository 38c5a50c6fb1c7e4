"""The remote-code families served natively (issue 23 part 3): each tiny checkpoint in its ORIGINAL
layout (tests/native/remote_families.py) loads without trust_remote_code, with a plain local
tokenizer, and its greedy tokens equal plain Transformers' on the same weights converted to the
in-library class (Llama, Qwen2, Granite, GLM): one prompt at a time there; batched, and with
chunked prefill, here."""

from __future__ import annotations

import json

import pytest
import torch

from anymodel import LLM
from anymodel.server import cli
from tests.models.tokenizer import VOCAB_SIZE
from tests.models.zoo import mixed_prompts
from tests.native.remote_families import ARCHS, build_family
from tests.reference import greedy_outputs, hf_greedy, hf_greedy_logits, llm_greedy

MAX_TOKENS = 12


@pytest.fixture(scope="module", params=list(ARCHS))
def family(request, tmp_path_factory):
    orig, ref = build_family(request.param, tmp_path_factory.mktemp(request.param))
    prompts = [p[:20] for p in mixed_prompts(VOCAB_SIZE, n=14, seed=3)[8:12]]  # 4 prompts of 9..20 tokens
    long_prompts = [mixed_prompts(VOCAB_SIZE, n=8, seed=4)[-2], prompts[0]]  # 40 and ~10 tokens
    reference, logits = hf_greedy_logits(ref, prompts + long_prompts, MAX_TOKENS)
    return request.param, orig, prompts + long_prompts, reference, logits


def test_batched_greedy_equals_the_converted_reference(family):
    """Tokens, and the logprob of each (MiniCPM's logit divisor and Baichuan2's NormHead scale the
    logits, which greedy tokens alone would not see)."""
    name, orig, prompts, reference, hf_logits = family
    llm = LLM(str(orig), dtype="float32", num_kv_blocks=64)  # auto, trust_remote_code=False
    assert llm.apply_model(lambda m: type(m).__name__) == [ARCHS[name]]
    outs = greedy_outputs(llm, prompts, MAX_TOKENS, logprobs=0)
    assert [list(o.outputs[0].token_ids) for o in outs] == reference
    for out, ref, steps in zip(outs, reference, hf_logits):
        expected = [torch.log_softmax(step, -1)[tok].item() for step, tok in zip(steps, ref)]
        got = [lp[tok].logprob for lp, tok in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
        assert got == pytest.approx(expected, abs=1e-4)


def test_chunked_prefill_equals_the_converted_reference(family):
    name, orig, prompts, reference = family[:4]
    llm = LLM(str(orig), dtype="float32", num_kv_blocks=64, max_num_batched_tokens=16, max_num_seqs=3)
    assert llm_greedy(llm, prompts, MAX_TOKENS) == reference


def test_inspect_shows_the_native_rule(family, capsys):
    name, orig = family[:2]
    assert cli.main(["inspect", str(orig)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("=> native (native)")
    assert f"native {ARCHS[name]}:" in out


def test_transformers_impl_still_needs_trust_remote_code(family):
    orig = family[1]
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        LLM(str(orig), dtype="float32", model_impl="transformers")


# ---- what the native classes refuse, rather than differ silently ---------------------------------

def _edited(orig, tmp_path, **changes):
    """A copy of checkpoint `orig` whose config.json has `changes` (None removes a key)."""
    import shutil

    path = tmp_path / "edited"
    shutil.copytree(orig, path)
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        config.pop(key, None) if value is None else config.__setitem__(key, value)
    (path / "config.json").write_text(json.dumps(config))
    return path


REFUSALS = {
    "baichuan2": ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "quantized checkpoints"),
    "chatglm": ({"rope_ratio": 50}, "rope_ratio=50"),  # ChatGLM2-32k and GLM-4 read it differently
    "qwen": ({"rotary_pct": 0.5}, "rotary_pct"),
    "internlm2": ({"rope_scaling": {"type": "ntk", "factor": 2.0}}, "rope_scaling type 'ntk'"),
    "minicpm": ({"num_experts": 8}, "num_experts"),
}


def test_configs_the_native_class_cannot_reproduce_are_refused(family, tmp_path):
    name, orig = family[:2]
    changes, reason = REFUSALS[name]
    path = _edited(orig, tmp_path, **changes)
    with pytest.raises(ValueError, match=reason):
        LLM(str(path), dtype="float32", model_impl="native")
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # auto: the remote code would run it
        LLM(str(path), dtype="float32")


def test_qwen_context_stops_at_seq_length(tmp_path):
    """Qwen's dynamic NTK and log-n scaling start past seq_length (256 here): no max_model_len beyond it."""
    orig, _ = build_family("qwen", tmp_path)
    with pytest.raises(ValueError, match=r"max_model_len \(300\) exceeds the model's context length \(256\)"):
        LLM(str(orig), dtype="float32", max_model_len=300)


def test_internlm2_tp2_greedy_equals_the_reference(tmp_path):
    """Tensor parallelism through the native models' own sharding: the grouped `wqkv` is unpacked
    before each rank cuts its heads (2 of 4 query heads, 1 of 2 KV heads per rank)."""
    orig, ref = build_family("internlm2", tmp_path)
    prompts = [p[:20] for p in mixed_prompts(VOCAB_SIZE, n=12, seed=5)[8:11]]
    llm = LLM(str(orig), dtype="float32", tensor_parallel_size=2, num_kv_blocks=64)
    try:
        assert llm_greedy(llm, prompts, 8) == hf_greedy(ref, prompts, 8)
        heads = llm.apply_model(lambda m: (m.model.layers[0].self_attn.num_heads, m.model.layers[0].self_attn.num_kv_heads))
        assert heads == [(2, 1), (2, 1)]
    finally:
        llm.engine.shutdown()


def test_baichuan13b_alibi_equals_an_eager_reference(tmp_path):
    """ALiBi through the paged kernels (6 heads: the non-power-of-two slope rule), batched and in
    chunked prefill, against a plain eager forward of the original weights."""
    from tests.native.remote_families import B13_SLOPES, baichuan13b_greedy, build_baichuan13b
    from anymodel.native_overrides.baichuan import alibi_slopes

    assert alibi_slopes(6) == B13_SLOPES
    orig = build_baichuan13b(tmp_path)
    prompts = [p[:20] for p in mixed_prompts(VOCAB_SIZE, n=14, seed=6)[8:12]] + [mixed_prompts(VOCAB_SIZE, n=8)[-2]]
    reference = [baichuan13b_greedy(orig, p, 8) for p in prompts]
    llm = LLM(str(orig), dtype="float32", num_kv_blocks=64, max_num_batched_tokens=16, max_num_seqs=3)
    assert llm.apply_model(lambda m: type(m).__name__) == ["BaichuanForCausalLM"]
    assert llm_greedy(llm, prompts, 8) == reference


# The real configuration_internlm2.py's shape, reduced: a 4.x-style config class whose __init__
# assigns every field itself (so Transformers 5 keeps it) and passes the rest to PretrainedConfig.
_REMOTE_CONFIG = '''
from transformers import PretrainedConfig


class InternLM2Config(PretrainedConfig):
    model_type = "internlm2"

    def __init__(self, vocab_size=103168, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048,
                 rms_norm_eps=1e-6, bias=True, rope_theta=10000, rope_scaling=None, tie_word_embeddings=False,
                 **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act, self.max_position_embeddings, self.rms_norm_eps = hidden_act, max_position_embeddings, rms_norm_eps
        self.bias, self.rope_theta, self.rope_scaling = bias, rope_theta, rope_scaling
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
'''


def test_trusted_remote_config_still_runs_natively(tmp_path):
    """With trust_remote_code=True the repo's own config class is imported (as Transformers does),
    and the native class reads the same values from it; the modeling file is never needed."""
    orig, ref = build_family("internlm2", tmp_path)
    (orig / "configuration_internlm2.py").write_text(_REMOTE_CONFIG)
    prompts = [p[:20] for p in mixed_prompts(VOCAB_SIZE, n=12, seed=7)[8:10]]
    llm = LLM(str(orig), dtype="float32", num_kv_blocks=32, trust_remote_code=True)
    assert type(llm.engine.hf_config).__name__ == "InternLM2Config"  # the repo's class, not FamilyConfig
    assert llm.apply_model(lambda m: (type(m).__name__, type(m).__module__)) == [
        ("InternLM2ForCausalLM", "anymodel.native_overrides.internlm2")]
    assert llm_greedy(llm, prompts, 8) == hf_greedy(ref, prompts, 8)


def test_glm4_rope_ratio_multiplies_the_base(tmp_path):
    """GLM-4 (vocabulary 151552): rope_ratio 500 scales the rotary base, as glm-4-9b-chat's file reads it."""
    orig, ref = build_family("glm4", tmp_path)
    prompts = [p[:20] for p in mixed_prompts(VOCAB_SIZE, n=12, seed=8)[8:11]]
    llm = LLM(str(orig), dtype="float32", num_kv_blocks=32)
    assert llm.apply_model(lambda m: type(m).__name__) == ["ChatGLMModel"]
    assert llm_greedy(llm, prompts, 8, detokenize=False) == hf_greedy(ref, prompts, 8)


def test_alibi_slopes_follow_the_rank_heads(monkeypatch):
    """Under tensor parallelism each rank keeps the slopes of its own query heads (rank 1 of 2: heads 3..5)."""
    from anymodel import distributed as dist
    from anymodel.native_overrides.baichuan import BaichuanAttention, BaichuanForCausalLM, alibi_slopes
    from anymodel.native_overrides.remapped import FamilyConfig

    monkeypatch.setattr(dist, "tp_rank", lambda: 1)
    monkeypatch.setattr(dist, "tp_size", lambda: 2)
    config = BaichuanForCausalLM.native_config(FamilyConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=6, vocab_size=384,
        hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False, model_max_length=64))
    attn = BaichuanAttention(config, 0, torch.float32)
    assert attn.num_heads == 3
    assert attn.attn.alibi_slopes.tolist() == alibi_slopes(6)[3:]


def test_a_remote_tokenizer_still_needs_trust_or_a_plain_tokenizer(tmp_path):
    """The native path runs no repository code, and neither does the tokenizer load: a repo whose
    tokenizer is its own code (Qwen-1's tiktoken) needs trust_remote_code=True, or `tokenizer=` a
    plain one."""
    orig, ref = build_family("qwen", tmp_path)
    config = json.loads((orig / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="QWenTokenizer", auto_map={"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]})
    (orig / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        LLM(str(orig), dtype="float32")
    llm = LLM(str(orig), tokenizer=str(ref), dtype="float32", num_kv_blocks=32)
    prompt = llm.get_tokenizer()("Hello, world")["input_ids"]
    assert llm_greedy(llm, [prompt], 6) == hf_greedy(ref, [prompt], 6)
