"""Sanity of the tiny-model zoo itself: every arch builds offline, plain-Transformers greedy runs,
logits are peaky enough for strict token equality, and the custom model needs trust_remote_code."""

import json
import statistics

import pytest
import torch

from tests.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, VOCAB_SIZE, build_tokenizer
from tests.models.zoo import (
    COMPAT_ARCHS,
    CUSTOM_ARCH,
    PROMPT_LENGTHS,
    OWN_ATTENTION_ARCHS,
    RECURRENT_ARCHS,
    SLIDING_WINDOW,
    ZOO,
    attention_backend_support,
    build_custom_model,
    build_tiny_model,
    mixed_prompts,
    tiny_config,
)
from tests.reference import hf_greedy, hf_greedy_with_gaps

MAX_TOKENS = 8


def test_tokenizer_is_deterministic_and_round_trips():
    from tests.models import tokenizer as tok_module

    first = build_tokenizer().backend_tokenizer.to_str()
    tok_module._tokenizer_json.cache_clear()  # train again from scratch
    tok = build_tokenizer()
    assert tok.backend_tokenizer.to_str() == first
    assert len(tok) == VOCAB_SIZE
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (
        PAD_ID, BOS_ID, EOS_ID, UNK_ID)
    text = "Hello, world! Café 日本語 😀"
    ids = tok(text).input_ids
    assert ids[0] == BOS_ID
    assert tok.decode(ids, skip_special_tokens=True) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False)
    assert chat == "<s><|user|>\nhi</s>\n<|assistant|>\n"


def test_mixed_prompts():
    prompts = mixed_prompts(VOCAB_SIZE)
    assert [len(p) for p in prompts] == PROMPT_LENGTHS
    assert max(PROMPT_LENGTHS) > 4 * 16 and max(PROMPT_LENGTHS) > SLIDING_WINDOW
    assert all(4 <= t < VOCAB_SIZE for p in prompts for t in p)  # no special tokens
    assert mixed_prompts(VOCAB_SIZE) == prompts
    assert mixed_prompts(VOCAB_SIZE, seed=1) != prompts
    assert len(mixed_prompts(VOCAB_SIZE, n=12)) == 12
    assert mixed_prompts(build_tokenizer()) == prompts
    shared = mixed_prompts(VOCAB_SIZE, shared_prefix=16)
    assert len({tuple(p[:16]) for p in shared if len(p) > 16}) == 1


def test_configs_exercise_what_they_claim():
    for arch in ZOO:
        config = tiny_config(arch)
        assert config.vocab_size == VOCAB_SIZE, arch
        assert config.max_position_embeddings >= 256 if hasattr(config, "max_position_embeddings") else True
    assert tiny_config("mistral").sliding_window == SLIDING_WINDOW
    for arch in ("gemma2", "gemma3_text"):
        config = tiny_config(arch)
        assert set(config.layer_types) == {"sliding_attention", "full_attention"}
        assert config.sliding_window == SLIDING_WINDOW
        assert config.query_pre_attn_scalar != config.head_dim  # non-default scaling
    assert tiny_config("gemma2").attn_logit_softcapping and tiny_config("gemma2").final_logit_softcapping
    assert tiny_config("gpt_bigcode").multi_query
    assert tiny_config("llama").num_key_value_heads < tiny_config("llama").num_attention_heads
    with pytest.raises(ValueError, match="unsupported zoo arch 'nope'; supported: "):
        tiny_config("nope")


def test_attention_backend_table():
    """Which archs reach our attention through ALL_ATTENTION_FUNCTIONS; the rest, and those with
    recurrent state (some of which do reach it: MiniMax, GraniteMoeHybrid), use the compat path."""
    table = attention_backend_support()
    print("\n_supports_attention_backend:", json.dumps(table, indent=1))
    assert {arch for arch, ok in table.items() if not ok} | RECURRENT_ARCHS | OWN_ATTENTION_ARCHS == COMPAT_ARCHS
    assert RECURRENT_ARCHS <= set(ZOO)


@pytest.mark.parametrize("arch", [*ZOO, CUSTOM_ARCH])
def test_arch_builds_and_greedy_is_healthy(arch, tmp_path):
    path = build_tiny_model(arch, tmp_path / arch)
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == EOS_ID
    prompts = mixed_prompts(path)
    tokens, gaps = hf_greedy_with_gaps(path, prompts, MAX_TOKENS)
    assert [len(t) for t in tokens] == [MAX_TOKENS] * len(prompts)
    # Peaky logits: float noise (~1e-5) must not flip the argmax.
    assert statistics.median(gaps) > 0.2, statistics.median(gaps)
    # Not degenerate: tokens vary across steps and prompts, and the model does not just repeat.
    flat = [t for seq in tokens for t in seq]
    assert len(set(flat)) >= 16, tokens
    repeats = sum(a == b for seq in tokens for a, b in zip(seq, seq[1:]))
    assert repeats < len(flat) // 3, tokens


def test_build_is_deterministic_and_cached(tmp_path):
    a = build_tiny_model("llama", tmp_path / "a")
    b = build_tiny_model("llama", tmp_path / "b")
    c = build_tiny_model("llama", tmp_path / "c", seed=1)
    weights = [(p / "model.safetensors").read_bytes() for p in (a, b, c)]
    assert weights[0] == weights[1] != weights[2]
    prompts = mixed_prompts(a, n=3)
    assert hf_greedy(a, prompts, 4) == hf_greedy(b, prompts, 4)


def test_other_tasks_and_dtypes_build(tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification

    embed = build_tiny_model("llama", tmp_path / "embed", for_task="embed")
    assert type(AutoModel.from_pretrained(embed)).__name__ == "LlamaModel"
    classify = build_tiny_model("qwen2", tmp_path / "cls", for_task="classify")
    assert AutoModelForSequenceClassification.from_pretrained(classify).config.num_labels == 3
    bf16 = build_tiny_model("llama", tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="unsupported for_task"):
        build_tiny_model("llama", tmp_path / "x", for_task="nope")


def test_ignore_eos_semantics(tmp_path):
    """EOS neither stops nor is masked: making the first greedy token the EOS changes nothing."""
    path = build_tiny_model("llama", tmp_path / "llama")
    prompts = mixed_prompts(path, n=2)
    reference = hf_greedy(path, prompts, MAX_TOKENS)
    new_eos = reference[0][0]
    for name in ("config.json", "generation_config.json"):
        config = json.loads((path / name).read_text())
        config["eos_token_id"] = new_eos
        (path / name).write_text(json.dumps(config))
    assert hf_greedy(path, prompts, MAX_TOKENS) == reference


def test_custom_model_needs_trust_remote_code(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    path = build_custom_model(tmp_path / "custom")
    config = json.loads((path / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    assert (path / "modeling_tinycustom.py").exists() and (path / "configuration_tinycustom.py").exists()
    for auto in (AutoConfig, AutoModelForCausalLM):
        with pytest.raises(ValueError, match="trust_remote_code"):
            auto.from_pretrained(path, trust_remote_code=False)

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    assert type(model).__name__ == "TinyCustomForCausalLM"
    assert type(model).__module__.startswith("transformers_modules")  # the copied file, not ours
    assert model.lm_head.weight is model.backbone.embed.weight  # tied
    assert model.config.hidden_size == 64 and model.config.num_key_value_heads == 2  # attribute_map
    assert type(model).base_model_prefix == "backbone" and model.config.base_model_tp_plan
    base = AutoModel.from_pretrained(path, trust_remote_code=True)
    assert type(base).__name__ == "TinyCustomModel" and type(base)._supports_attention_backend

    # Attention backends agree (sdpa vs the model's eager), and HF's cache matches a full forward.
    eager = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, attn_implementation="eager")
    ids = torch.tensor([mixed_prompts(path)[-1]])
    with torch.no_grad():
        full = model(ids).logits
        torch.testing.assert_close(eager(ids).logits, full, rtol=1e-4, atol=1e-4)
        prefix = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], cache=prefix.cache).logits
    torch.testing.assert_close(step[0, -1], full[0, -1], rtol=1e-4, atol=1e-4)


# (arch, config.json key, value that turns the feature off/default): each feature the zoo claims
# to exercise must change the greedy tokens, or a backend that ignores it could still pass.
KNOBS = [
    ("mistral", "sliding_window", None),
    ("starcoder2", "sliding_window", None),
    ("gemma2", "sliding_window", 512),
    ("gemma3_text", "sliding_window", 512),
    ("gemma2", "attn_logit_softcapping", None),
    ("gemma3_text", "query_pre_attn_scalar", 16),  # = head_dim: default scaling
    ("granite", "attention_multiplier", 0.25),  # = head_dim**-0.5
    ("cohere2", "sliding_window", 512),
    ("exaone4", "sliding_window", 512),
    ("gpt_neo", "window_size", 512),
    ("gpt_oss", "sliding_window", 512),
    ("smollm3", "no_rope_layers", [1, 1]),  # rope in every layer
    (CUSTOM_ARCH, "attn_scale_factor", 1.0),
]


@pytest.mark.parametrize("arch,key,off", KNOBS, ids=[f"{a}-{k}" for a, k, _ in KNOBS])
def test_claimed_features_change_tokens(arch, key, off, tmp_path):
    path = build_tiny_model(arch, tmp_path / arch)
    prompts = mixed_prompts(path)[-3:]  # 31, 40, 65 tokens: longer than the 8-token windows
    reference = hf_greedy(path, prompts, MAX_TOKENS)
    config = json.loads((path / "config.json").read_text())
    assert config[key] != off
    config[key] = off
    (path / "config.json").write_text(json.dumps(config))
    assert hf_greedy(path, prompts, MAX_TOKENS) != reference
