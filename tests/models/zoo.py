"""The offline tiny-model zoo: random Transformers checkpoints built from configs, no network.

    path = build_tiny_model("qwen3", tmp_path)          # config.json + model.safetensors + tokenizer
    prompts = mixed_prompts(path)                        # 8 prompts: 1..65 tokens
    reference = hf_greedy(path, prompts, max_new_tokens=8)   # tests/reference.py: plain Transformers

Adding an architecture is one line in `ZOO`: `"name": _arch("model_type", **overrides)`.
Every config shares `BASE` (hidden 64, 2 layers, 4 heads, GQA where supported, vocab = tokenizer
size, 512 positions) unless the line overrides it with the architecture's own argument names.

Random tiny models give near-uniform logits, where float noise flips the argmax and makes strict
token equality flaky. `_rescale_` re-initialises every weight so the logits are peaky (top1-top2
gap ~ 1 at the median; see tests/models/test_zoo_builds.py), and gives biases and norm weights
non-trivial values so that code paths like qkv bias or (1 + w) Gemma norms are really exercised.

`build_custom_model` writes TinyCustom (tests/models/custom/), an `auto_map` remote-code model
that loads only with trust_remote_code=True; `build_tiny_model(TINYPLAN_ARCH, ...)` writes TinyPlan
(tests/models/tinyplan.py), remote code declaring its own parallel plans. Other hand-built
checkpoints: tests/models/oldstyle.py, tests/models/tinyold.py, tests/pooling/encoders.py. `COMPAT_ARCHS` are the zoo archs served by the compat
path: attention that does not go through ALL_ATTENTION_FUNCTIONS, or recurrent state
(`RECURRENT_ARCHS`). `UNSUPPORTED_ZOO` holds target archs anymodel refuses (built with their own
task, e.g. `for_task="seq2seq"`). Builds are cached per process (see `build_tiny_model`); building
and the reference run use one torch thread (see `_one_thread`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import json
import math
import random
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from transformers import GenerationConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from tests.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, VOCAB_SIZE, save_tokenizer

SLIDING_WINDOW = 8  # much shorter than the longer prompts, so windowing is really exercised

# Shared Llama-style defaults; `_arch` keeps only the keys the config class knows.
BASE = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
    tie_word_embeddings=False,
)
_GPT2_STYLE = dict(n_embd=64, n_layer=2, n_head=4, n_positions=512, n_inner=128)
# Multi-head latent attention; q/k heads are 16 + 8 wide, v heads 16 (MLA has as many KV heads as
# query heads once the latent is expanded).
_MLA = dict(num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=48, qk_nope_head_dim=16, qk_rope_head_dim=8,
            v_head_dim=16)
_DEEPSEEK_MOE = dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                     first_k_dense_replace=1, n_group=1, topk_group=1)  # layer 0 dense, layer 1 MoE
_GATED_DELTANET = dict(linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16)
_MAMBA2_HYBRID = dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16, mamba_chunk_size=16)


def _arch(model_type: str, **overrides) -> Callable[[], PretrainedConfig]:
    def make() -> PretrainedConfig:
        config_cls = CONFIG_MAPPING[model_type]
        known = inspect.signature(config_cls.__init__).parameters
        kwargs = {k: v for k, v in BASE.items() if k in known}
        return config_cls(**{**kwargs, **overrides})

    make.model_type = model_type
    make.overrides = overrides
    return make


ZOO: dict[str, Callable[[], PretrainedConfig]] = {
    "llama": _arch("llama"),
    "mistral": _arch("mistral", sliding_window=SLIDING_WINDOW),
    "qwen2": _arch("qwen2"),  # q/k/v projections carry a bias
    "qwen3": _arch("qwen3", head_dim=16),  # q/k RMSNorm
    # layers alternate sliding (window 8) and full attention; both logit softcaps on (the attention
    # cap is low enough to bite: raw scores reach ~10)
    "gemma2": _arch(
        "gemma2", head_dim=16, sliding_window=SLIDING_WINDOW, query_pre_attn_scalar=24,
        attn_logit_softcapping=5.0, final_logit_softcapping=15.0, tie_word_embeddings=True,
        layer_types=["sliding_attention", "full_attention"],
    ),
    # scaling = 4**-0.5 = 2 * head_dim**-0.5 (q/k are RMS-normed, so scores are small otherwise)
    "gemma3_text": _arch(
        "gemma3_text", head_dim=16, sliding_window=SLIDING_WINDOW, query_pre_attn_scalar=4,
        tie_word_embeddings=True, layer_types=["sliding_attention", "full_attention"],
    ),
    "phi3": _arch("phi3", original_max_position_embeddings=512),  # fused qkv_proj, gate_up_proj
    "gpt2": _arch("gpt2", **_GPT2_STYLE, tie_word_embeddings=True),
    "gpt_neox": _arch("gpt_neox", rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "partial_rotary_factor": 0.5}),
    "gptj": _arch("gptj", **_GPT2_STYLE, rotary_dim=8),
    "opt": _arch("opt", ffn_dim=128, word_embed_proj_dim=64, tie_word_embeddings=True),
    "gpt_bigcode": _arch("gpt_bigcode", **_GPT2_STYLE, multi_query=True, tie_word_embeddings=True),
    "starcoder2": _arch("starcoder2", sliding_window=SLIDING_WINDOW, use_bias=True),
    "olmo2": _arch("olmo2"),
    # every multiplier away from 1.0 so a forgotten one changes the tokens
    "granite": _arch(
        "granite", embedding_multiplier=2.0, attention_multiplier=0.1, residual_multiplier=0.5,
        logits_scaling=0.5,
    ),
    "cohere": _arch("cohere", logit_scale=2.0, use_qk_norm=False, tie_word_embeddings=True),
    "mixtral": _arch("mixtral", num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": _arch(
        "qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
        shared_expert_intermediate_size=96,
    ),
    # compat path: attention does not go through ALL_ATTENTION_FUNCTIONS (alibi / own cache)
    "bloom": _arch("bloom", n_layer=2, n_head=4, tie_word_embeddings=True),
    "falcon": _arch("falcon", num_kv_heads=2, new_decoder_architecture=True, alibi=False,
                    ffn_hidden_size=128),
    # ---- the rest of vLLM's text-generation table that Transformers implements natively
    "gemma": _arch("gemma", head_dim=16, tie_word_embeddings=True),  # (1 + w) norms, scaled embeddings
    "phi": _arch("phi"),  # parallel attention + MLP, partial rotary (half the head)
    "persimmon": _arch("persimmon"),  # fused qkv, q/k LayerNorm, partial rotary
    "nemotron": _arch("nemotron", head_dim=16),  # its decoder layer drops **kwargs (forward_context)
    "glm": _arch("glm", head_dim=16),  # interleaved partial rotary
    "glm4": _arch("glm4", head_dim=16),
    "olmo": _arch("olmo"),
    "exaone": _arch("exaone"),
    "exaone4": _arch("exaone4", sliding_window=SLIDING_WINDOW,
                     layer_types=["sliding_attention", "full_attention"]),
    "cohere2": _arch("cohere2", sliding_window=SLIDING_WINDOW, logit_scale=1.0, tie_word_embeddings=True,
                     layer_types=["sliding_attention", "full_attention"]),  # full layers: no rope
    "internlm3": _arch("internlm3", head_dim=16),
    "hunyuan_v1_dense": _arch("hunyuan_v1_dense", head_dim=16),  # q/k norm after rope
    "ernie4_5": _arch("ernie4_5", head_dim=16),
    "arcee": _arch("arcee"),  # ReLU^2 MLP without gate
    "smollm3": _arch("smollm3", no_rope_layers=[1, 0]),  # second layer without rope (NoPE)
    "seed_oss": _arch("seed_oss", head_dim=16),
    # attention sinks (`s_aux`), yarn rope, sliding/full layers
    "gpt_oss": _arch(
        "gpt_oss", head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=SLIDING_WINDOW,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 128},
    ),
    # MoE
    "qwen3_moe": _arch("qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64),
    "olmoe": _arch("olmoe", num_experts=4, num_experts_per_tok=2),
    "granitemoe": _arch("granitemoe", num_local_experts=4, num_experts_per_tok=2, embedding_multiplier=2.0,
                        attention_multiplier=0.1, residual_multiplier=0.5, logits_scaling=0.5),
    "granitemoeshared": _arch("granitemoeshared", num_local_experts=4, num_experts_per_tok=2,
                              shared_intermediate_size=64),
    "phimoe": _arch("phimoe", num_local_experts=4, num_experts_per_tok=2),
    "hunyuan_v1_moe": _arch("hunyuan_v1_moe", head_dim=16, num_experts=4, moe_topk=2),
    "ernie4_5_moe": _arch("ernie4_5_moe", moe_num_experts=4, moe_k=2, moe_intermediate_size=64,
                          moe_num_shared_experts=1),
    # the attention config's `rope_theta` works around Transformers 5.24 reading it from there
    "dbrx": _arch("dbrx", d_model=64, n_heads=4, n_layers=2, max_seq_len=512,
                  attn_config={"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0},
                  ffn_config={"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2}),
    # MLA: value heads (16) narrower than query/key heads (16 + 8 rope)
    "deepseek_v2": _arch("deepseek_v2", **_MLA, **_DEEPSEEK_MOE),
    "deepseek_v3": _arch("deepseek_v3", **_MLA, **_DEEPSEEK_MOE),
    # DSA: a top-k key indexer picks what each query attends (8 keys, so it really selects): compat path
    "deepseek_v32": _arch("deepseek_v32", **_MLA, **_DEEPSEEK_MOE, index_topk=8, index_n_heads=4, index_head_dim=16),
    "minicpm3": _arch("minicpm3", **_MLA),
    # ---- newer Transformers architectures (5.x), each through the attention interface
    "olmo3": _arch("olmo3", sliding_window=SLIDING_WINDOW, layer_types=["sliding_attention", "full_attention"]),
    "apertus": _arch("apertus"),  # xIELU activation, q/k norms
    "helium": _arch("helium", head_dim=16),
    "glm4_moe": _arch("glm4_moe", head_dim=16, **_DEEPSEEK_MOE),
    "glm4_moe_lite": _arch("glm4_moe_lite"),
    "dots1": _arch("dots1", head_dim=16, **_DEEPSEEK_MOE),
    "vaultgemma": _arch("vaultgemma", head_dim=16),
    "diffllama": _arch("diffllama"),  # differential attention: two softmaxes per head
    "bitnet": _arch("bitnet"),
    "flex_olmo": _arch("flex_olmo", num_experts=4, num_experts_per_tok=2),
    # the third layer reuses the second's K/V (num_kv_shared_layers); sliding/full layers
    "gemma4_text": _arch("gemma4_text", head_dim=16, sliding_window=SLIDING_WINDOW, num_hidden_layers=3,
                         num_kv_shared_layers=1, layer_types=["sliding_attention", "full_attention", "full_attention"]),
    "minimax_m2": _arch("minimax_m2", head_dim=16, num_local_experts=4, num_experts_per_tok=2),
    "exaone_moe": _arch("exaone_moe"),
    "nanochat": _arch("nanochat"),
    "codegen": _arch("codegen", **_GPT2_STYLE, rotary_dim=8),
    "cohere2_moe": _arch("cohere2_moe", sliding_window=SLIDING_WINDOW, logit_scale=1.0,
                         layer_types=["sliding_attention", "full_attention"]),
    "ministral3": _arch("ministral3"),
    "ministral": _arch("ministral", head_dim=16, layer_types=["sliding_attention", "full_attention"],
                       sliding_window=SLIDING_WINDOW),
    # KV-shared layers (the last two reuse earlier layers' K/V), AltUp, Laurel, per-layer inputs
    "gemma3n_text": _arch("gemma3n_text", head_dim=16, num_hidden_layers=4, num_kv_shared_layers=2,
                          layer_types=["sliding_attention", "full_attention"] * 2, sliding_window=SLIDING_WINDOW,
                          activation_sparsity_pattern=[0.95, 0.0, 0.0, 0.0], vocab_size_per_layer_input=VOCAB_SIZE,
                          hidden_size_per_layer_input=16, laurel_rank=8),
    "youtu": _arch("youtu", **_MLA),
    "cwm": _arch("cwm"),
    "solar_open": _arch("solar_open"),
    "jais2": _arch("jais2"),
    "mellum": _arch("mellum"),
    "hyperclovax": _arch("hyperclovax"),
    "jetmoe": _arch("jetmoe", num_local_experts=4, num_experts_per_tok=2, kv_channels=16),  # MoE attention too
    "afmoe": _arch("afmoe"),
    # compat path: own attention (alibi, local attention, own cache)
    "stablelm": _arch("stablelm"),
    "gpt_neo": _arch("gpt_neo", num_layers=2, num_heads=4, window_size=SLIDING_WINDOW,
                     attention_types=[[["global", "local"], 1]]),
    "xglm": _arch("xglm", d_model=64, ffn_dim=128, num_layers=2, attention_heads=4, max_position_embeddings=512),
    "biogpt": _arch("biogpt"),
    "mpt": _arch("mpt", d_model=64, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=512),  # alibi
    # chunked local attention (8-token chunks), NoPE layers with temperature tuning, MoE
    "llama4_text": _arch("llama4_text", head_dim=16, num_local_experts=4, num_experts_per_tok=1,
                         intermediate_size_mlp=128, attention_chunk_size=8),
    # compat path: recurrent / linear-attention state (see runtime/loader.py `recurrent_state`)
    "mamba": _arch("mamba", state_size=8),
    "falcon_mamba": _arch("falcon_mamba", state_size=8),
    "mamba2": _arch("mamba2", num_heads=8, head_dim=16, state_size=16, n_groups=1, chunk_size=16),
    "jamba": _arch("jamba", attn_layer_period=2, attn_layer_offset=1, num_experts=4, expert_layer_period=2,
                   expert_layer_offset=1, mamba_d_state=8, use_mamba_kernels=False),
    "bamba": _arch("bamba", attn_layer_indices=[1], **_MAMBA2_HYBRID),
    "falcon_h1": _arch("falcon_h1", mamba_d_ssm=128, **_MAMBA2_HYBRID),  # attention and SSM in every layer
    "granitemoehybrid": _arch("granitemoehybrid", layer_types=["mamba", "attention"], num_local_experts=4,
                              shared_intermediate_size=64, **_MAMBA2_HYBRID),
    "nemotron_h": _arch("nemotron_h", head_dim=16, layers_block_type=["mamba", "attention"], mamba_num_heads=8,
                        mamba_head_dim=16, ssm_state_size=16, n_groups=1, chunk_size=16),
    "zamba2": _arch("zamba2", layers_block_type=["mamba", "hybrid"], n_mamba_heads=8, mamba_d_state=16,
                    chunk_size=16, adapter_rank=8, use_mamba_kernels=False),
    "lfm2": _arch("lfm2", layer_types=["conv", "full_attention"]),  # short-convolution state
    # gated DeltaNet (linear attention) layers beside full attention
    "qwen3_next": _arch("qwen3_next", head_dim=16, layer_types=["linear_attention", "full_attention"], num_experts=4,
                        num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                        **_GATED_DELTANET),
    "qwen3_5_text": _arch("qwen3_5_text", head_dim=16, layer_types=["linear_attention", "full_attention"],
                          **_GATED_DELTANET),
    # lightning (linear) attention layers: attention-backend class, but recurrent state
    "minimax": _arch("minimax", head_dim=16, num_local_experts=4, block_size=16,
                     layer_types=["linear_attention", "full_attention"]),
    # dynamic mask attention: its own mask reaches the attention function (SELF_CHECK_COMPAT_ARCHS)
    "doge": _arch("doge"),
}

# Zoo archs with recurrent or linear-attention state that the paged KV cache cannot hold
# (runtime/loader.py `recurrent_state`): the loader sends them to the compat path.
RECURRENT_ARCHS = frozenset({
    "mamba", "falcon_mamba", "mamba2", "jamba", "bamba", "falcon_h1", "granitemoehybrid", "nemotron_h", "zamba2",
    "minimax", "lfm2", "qwen3_next", "qwen3_5_text",
})
# Zoo archs served by adapters/compat.py: the recurrent ones, those whose attention does not
# go through ALL_ATTENTION_FUNCTIONS (base model class has `_supports_attention_backend = False`
# in transformers 5.24), Llama 4's chunked attention and DeepSeek-V3.2's indexed sparse attention
# (anymodel.model_facts `unsupported_attention`).
OWN_ATTENTION_ARCHS = frozenset({"llama4_text", "deepseek_v32"})
COMPAT_ARCHS = RECURRENT_ARCHS | OWN_ATTENTION_ARCHS | frozenset({"bloom", "falcon", "stablelm", "gpt_neo", "xglm",
                                                                 "biogpt", "mpt"})
# Zoo archs the class flags send to the paged path but the start-up self-check moves to the compat
# path: Doge hands the attention function a dynamic mask of its own, which the paged kernels cannot apply.
SELF_CHECK_COMPAT_ARCHS = frozenset({"doge"})

# Zoo MoE archs whose experts class uses Transformers' experts interface (`@use_experts_implementation`):
# they run anymodel's registered experts function (adapters/experts.py), on the paged and compat paths.
EXPERTS_INTERFACE_ARCHS = frozenset({
    "mixtral", "qwen2_moe", "gpt_oss", "qwen3_moe", "olmoe", "granitemoe", "granitemoeshared", "phimoe",
    "hunyuan_v1_moe", "ernie4_5_moe", "deepseek_v2", "deepseek_v3", "deepseek_v32", "glm4_moe", "glm4_moe_lite",
    "dots1", "flex_olmo", "minimax_m2", "exaone_moe", "cohere2_moe", "solar_open", "mellum", "afmoe", "jamba",
    "granitemoehybrid", "qwen3_next", "minimax",
})
# Zoo MoE archs whose experts are their own code (no interface in transformers 5.24): they keep it.
OWN_EXPERTS_ARCHS = frozenset({"dbrx", "jetmoe", "llama4_text"})

# Target architectures anymodel refuses (tests/adapters/test_zoo_consistency.py KNOWN_UNSUPPORTED
# says why): built like the zoo, with the task they were made for, to check the error.
UNSUPPORTED_ZOO: dict[str, Callable[[], PretrainedConfig]] = {
    "bart": _arch("bart", d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128),
}


def attention_backend_support() -> dict[str, bool]:
    """arch -> `_supports_attention_backend` of its base model class (no weights are built)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    classes = {arch: MODEL_MAPPING[CONFIG_MAPPING[make.model_type]] for arch, make in ZOO.items()}
    return {arch: bool(getattr(cls, "_supports_attention_backend", False)) for arch, cls in classes.items()}


# ---------------------------------------------------------------- small sliding windows

WINDOW_SUFFIX = "-window"


def windowed_arch(arch: str, window: int) -> Callable[[], PretrainedConfig] | None:
    """`arch` with a sliding window of `window` tokens switched on however its config says it
    (`use_sliding_window`, `max_window_layers`, sliding/full `layer_types`), or None when the
    config has no `sliding_window` or the arch keeps recurrent state (compat path regardless)."""
    make = ZOO[arch]
    defaults = CONFIG_MAPPING[make.model_type]()
    if not hasattr(defaults, "sliding_window") or arch in RECURRENT_ARCHS:
        return None
    extra = {"sliding_window": window}
    if hasattr(defaults, "use_sliding_window"):
        extra["use_sliding_window"] = True
    if hasattr(defaults, "max_window_layers"):
        extra["max_window_layers"] = 1  # layer 0 full, the rest sliding (Qwen 2 style)
    elif getattr(defaults, "layer_types", None) is not None and "layer_types" not in make.overrides:
        layers = make.overrides.get("num_hidden_layers", BASE["num_hidden_layers"])
        extra["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    return _arch(make.model_type, **{**make.overrides, **extra})


def windowed_zoo(window: int) -> list[str]:
    """Registers `<arch>-window` for every zoo arch whose config has a sliding window; returns the names."""
    names = []
    for arch in ZOO:
        make = windowed_arch(arch, window)
        if make is not None:
            WINDOWED_ZOO[arch + WINDOW_SUFFIX] = make
            names.append(arch + WINDOW_SUFFIX)
    return names


WINDOWED_ZOO: dict[str, Callable[[], PretrainedConfig]] = {}

# Variants a test needs beyond the zoo's defaults; not in ZOO, so the zoo-wide sweeps skip them.
VARIANT_ZOO: dict[str, Callable[[], PretrainedConfig]] = {
    "llama-1kv": _arch("llama", num_key_value_heads=1),  # fewer KV heads than TP ranks: each keeps a copy
}


def tiny_config(arch: str) -> PretrainedConfig:
    if arch in UNSUPPORTED_ZOO:
        return UNSUPPORTED_ZOO[arch]()
    if arch in WINDOWED_ZOO:
        return WINDOWED_ZOO[arch]()
    if arch in VARIANT_ZOO:
        return VARIANT_ZOO[arch]()
    if arch not in ZOO:
        supported = sorted(ZOO) + [CUSTOM_ARCH]
        raise ValueError(f"unsupported zoo arch {arch!r}; supported: {supported}")
    return ZOO[arch]()


# ---------------------------------------------------------------- weights

EMBED_STD = 0.5  # logits = h @ E^T with |h| ~ sqrt(hidden): logit std ~ 0.5 * 8 = 4
MATRIX_GAIN = 2.0  # sublayer outputs outweigh the (tied) embeddings: no copy-the-last-token models
BIAS_STD = 0.1
NORM_STD = 0.1


@torch.no_grad()
def _rescale_(model: torch.nn.Module, seed: int) -> None:
    """Deterministic re-init (tied parameters are visited once):
    embeddings/lm_head ~ N(0, 0.5^2); other matrices ~ N(0, (2/sqrt(hidden))^2); biases ~ N(0, 0.1^2);
    norm scales = random sign * (1 + N(0, 0.1^2)). The random signs of the final norm break the
    E @ E^T diagonal that otherwise makes tied-embedding models repeat their last input token."""
    gen = torch.Generator().manual_seed(seed)
    hidden = model.config.get_text_config().hidden_size
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        embeddings.add(id(out.weight))
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if id(p) in embeddings:
            p.copy_(noise * EMBED_STD)
        elif p.ndim >= 2:
            p.copy_(noise * MATRIX_GAIN / math.sqrt(hidden))
        elif name.endswith("bias"):
            p.copy_(noise * BIAS_STD)
        else:  # norm scales: effective scale = random sign * (1 + N(0, 0.1))
            sign = torch.randint(0, 2, p.shape, generator=gen).float() * 2 - 1
            offset = 1.0 if bool((p == 0).all()) else 0.0  # Gemma-style norms use x * (1 + w)
            p.copy_(sign * (1 + noise * NORM_STD) - offset)


# ---------------------------------------------------------------- building

_TASKS = {
    "causal_lm": "AutoModelForCausalLM",
    "embed": "AutoModel",
    "classify": "AutoModelForSequenceClassification",
    "seq2seq": "AutoModelForSeq2SeqLM",  # encoder-decoder checkpoints (UNSUPPORTED_ZOO)
}


@contextlib.contextmanager
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box OpenMP spinning
    makes them ~10x slower; restore the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@_one_thread()
def _build(arch: str, out_dir: Path, seed: int, dtype: torch.dtype, for_task: str) -> None:
    if for_task not in _TASKS:
        raise ValueError(f"unsupported for_task {for_task!r}; supported: {sorted(_TASKS)}")
    torch.manual_seed(seed)
    if arch == CUSTOM_ARCH:
        model = _custom_model(for_task)
    elif arch == TINYPLAN_ARCH:
        from tests.models.tinyplan import tinyplan_model

        if for_task != "causal_lm":
            raise ValueError(f"unsupported for_task {for_task!r} for {TINYPLAN_ARCH}; supported: ['causal_lm']")
        model = tinyplan_model(out_dir)  # copies its code into out_dir
    else:
        import transformers

        config = tiny_config(arch)
        if for_task == "classify":
            config.num_labels = 3
        model = getattr(transformers, _TASKS[for_task]).from_config(config, dtype=torch.float32)
    _rescale_(model, seed)
    model.to(dtype).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
    )
    model.save_pretrained(str(out_dir), safe_serialization=True)
    save_tokenizer(out_dir)
    if arch == CUSTOM_ARCH:  # remote code travels with the checkpoint
        for source in CUSTOM_CODE_DIR.glob("*_tinycustom.py"):
            shutil.copy(source, out_dir / source.name)


# ---------------------------------------------------------------- the custom (auto_map) model

CUSTOM_ARCH = "tinycustom"
TINYPLAN_ARCH = "tinyplan"  # remote code with its own parallel plans (tests/models/tinyplan.py); not in ZOO
CUSTOM_CODE_DIR = Path(__file__).parent / "custom"
CUSTOM_AUTO_MAP = {
    "AutoConfig": "configuration_tinycustom.TinyCustomConfig",
    "AutoModel": "modeling_tinycustom.TinyCustomModel",
    "AutoModelForCausalLM": "modeling_tinycustom.TinyCustomForCausalLM",
}


def _custom_model(for_task: str) -> torch.nn.Module:
    from tests.models.custom.configuration_tinycustom import TinyCustomConfig
    from tests.models.custom.modeling_tinycustom import TinyCustomForCausalLM, TinyCustomModel

    classes = {"causal_lm": TinyCustomForCausalLM, "embed": TinyCustomModel}
    if for_task not in classes:
        raise ValueError(f"unsupported for_task {for_task!r} for {CUSTOM_ARCH}; supported: {sorted(classes)}")
    config = TinyCustomConfig(vocab_size=VOCAB_SIZE, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                              pad_token_id=PAD_ID)
    config.auto_map = dict(CUSTOM_AUTO_MAP)
    return classes[for_task](config)


def build_custom_model(out_dir: Path, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """The TinyCustom checkpoint: config.json with `auto_map`, the two .py files next to it.
    Loads in plain Transformers only with trust_remote_code=True (offline)."""
    return build_tiny_model(CUSTOM_ARCH, out_dir, seed=seed, dtype=dtype)


def save_random_model(model_cls: type, config: PretrainedConfig, out_dir: str | Path, *, seed: int = 0):
    """A one-off checkpoint a test configures itself: `model_cls(config)` with Transformers' own
    random init (seeded, no `_rescale_`), saved to `out_dir` with the zoo tokenizer. Returns the
    model (eval mode), the in-memory reference."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(str(out_dir))
    save_tokenizer(out_dir)
    return model


@functools.lru_cache(maxsize=1)
def _cache_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="anymodel-zoo-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@functools.lru_cache(maxsize=None)
def cached_model(
    arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, for_task: str = "causal_lm"
) -> Path:
    """Build once per process into a private temp dir; callers must treat the dir as read-only."""
    out = _cache_root() / f"{arch}-{seed}-{str(dtype).removeprefix('torch.')}-{for_task}"
    out.mkdir(exist_ok=True)  # a failed earlier build may have left files; they are rewritten
    _build(arch, out, seed, dtype, for_task)
    return out


def build_tiny_model(
    arch: str,
    out_dir: Path,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    for_task: str = "causal_lm",
) -> Path:
    """A tiny random `arch` checkpoint (safetensors, tokenizer, generation_config) in `out_dir`.

    Each (arch, seed, dtype, task) is built once per process and copied (~100 KB) afterwards, so
    callers own `out_dir` and may modify it. Returns `out_dir`."""
    out_dir = Path(out_dir)
    shutil.copytree(cached_model(arch, seed, dtype, for_task), out_dir, dirs_exist_ok=True)
    return out_dir


# ---------------------------------------------------------------- prompts

PROMPT_LENGTHS = [1, 3, 7, 16, 17, 31, 40, 65]  # across 16-token blocks and the 8-token windows
_MORE_LENGTHS = [2, 5, 9, 15, 24, 33, 48, 64, 80, 12]


def mixed_prompts(
    source: int | str | Path | object = VOCAB_SIZE, n: int = 8, seed: int = 0,
    shared_prefix: int = 0,
) -> list[list[int]]:
    """`n` prompts of mixed lengths (1..65 tokens, more lengths past 8) of random non-special
    token ids. `source` is a vocab size, a model dir, or a tokenizer. With `shared_prefix=k`, all
    prompts longer than k start with the same k tokens (prefix-cache hits inside one batch)."""
    vocab = _vocab_size(source)
    lengths = (PROMPT_LENGTHS + _MORE_LENGTHS * (1 + n // len(_MORE_LENGTHS)))[:n]
    rng = random.Random(seed)
    lo = len(SPECIAL_TOKENS)  # skip the special ids 0..3
    prefix = [rng.randrange(lo, vocab) for _ in range(shared_prefix)]
    prompts = []
    for length in lengths:
        ids = [rng.randrange(lo, vocab) for _ in range(length)]
        if shared_prefix and length > shared_prefix:
            ids[:shared_prefix] = prefix
        prompts.append(ids)
    return prompts


def _vocab_size(source) -> int:
    if isinstance(source, int):
        return source
    if isinstance(source, (str, Path)):  # a model dir: read config.json (no remote code needed)
        config = json.loads((Path(source) / "config.json").read_text())
        return config.get("text_config", config)["vocab_size"]
    return len(source)  # a tokenizer
