"""Tiny checkpoints of the remote-code families in their ORIGINAL layout, each with a Transformers
in-library reference holding the same weights.

    orig, ref = build_family("internlm2", tmp_path)
    orig: config.json (architectures + auto_map as the Hub repo's, pointing at modeling files that
          are not there: only the native path can load it), model.safetensors under the family's
          own weight names and packings, the zoo's plain local tokenizer
    ref:  the same weights converted to an in-library class (Llama / Granite / GLM), saved with
          save_pretrained: `tests.reference.hf_greedy(ref, ...)` is the token reference

The random weights come from the reference model (the zoo's `_rescale_`, for peaky logits); the
packing into the original layout below is written independently of the native unpacking (explicit
per-head loops here, reshapes there), following each repo's modeling file:
  internlm/internlm2-chat-7b modeling_internlm2.py, baichuan-inc/Baichuan2-7B-Chat modeling_baichuan.py,
  Qwen/Qwen-7B modeling_qwen.py, openbmb/MiniCPM-2B-sft-bf16 modeling_minicpm.py,
  THUDM/chatglm3-6b and THUDM/glm-4-9b-chat modeling_chatglm.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig
from transformers.initialization import no_init_weights

from tests.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, save_tokenizer
from tests.models.zoo import _one_thread, _rescale_

H, LAYERS, HEADS, KV_HEADS, INTER = 64, 2, 4, 2, 128
D = H // HEADS
COMMON = dict(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)


def _layers(sd: dict, n: int = LAYERS):
    return [{k.split(f"layers.{i}.", 1)[1]: v for k, v in sd.items() if f"layers.{i}." in k} for i in range(n)]


def _heads(w: torch.Tensor, n: int) -> list[torch.Tensor]:
    return [w[i * D:(i + 1) * D] for i in range(n)]


# ---------------------------------------------------------------- InternLM2

def _internlm2(sd: dict) -> tuple[dict, dict]:
    out = {"model.tok_embeddings.weight": sd["model.embed_tokens.weight"], "model.norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}
    group = HEADS // KV_HEADS
    for i, layer in enumerate(_layers(sd)):
        p = f"model.layers.{i}."
        rows = []  # per kv group: its query heads, then its key head, then its value head
        q, k, v = (_heads(layer[f"self_attn.{n}_proj.weight"], c) for n, c in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)))
        for g in range(KV_HEADS):
            rows += q[g * group:(g + 1) * group] + [k[g], v[g]]
        out[p + "attention.wqkv.weight"] = torch.cat(rows)
        out[p + "attention.wo.weight"] = layer["self_attn.o_proj.weight"]
        for mine, theirs in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            out[p + f"feed_forward.{mine}.weight"] = layer[f"mlp.{theirs}.weight"]
        out[p + "attention_norm.weight"] = layer["input_layernorm.weight"]
        out[p + "ffn_norm.weight"] = layer["post_attention_layernorm.weight"]
    config = dict(
        architectures=["InternLM2ForCausalLM"], model_type="internlm2",
        auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config",
                  "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                  "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        vocab_size=VOCAB_SIZE, hidden_size=H, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, hidden_act="silu", max_position_embeddings=512,
        rms_norm_eps=1e-5, bias=False, rope_theta=1000000, rope_scaling={"type": "dynamic", "factor": 2.0},
        tie_word_embeddings=False, attn_implementation="eager", **COMMON,
    )
    return out, config


def _reference(cls_name: str, **fields):
    import transformers

    base = dict(vocab_size=VOCAB_SIZE, hidden_size=H, intermediate_size=INTER, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512,
                tie_word_embeddings=False, **COMMON)
    return getattr(transformers, cls_name)(**{**base, **fields})


# ---------------------------------------------------------------- Baichuan2-7B

def _baichuan(sd: dict) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(7)
    head = torch.nn.functional.normalize(sd["lm_head.weight"], dim=-1)
    scale = 0.5 + 1.5 * torch.rand(head.shape[0], 1, generator=gen)  # NormHead must undo these
    out = {"model.embed_tokens.weight": sd["model.embed_tokens.weight"], "lm_head.weight": head * scale,
           "model.norm.weight": sd["model.norm.weight"] * 4}  # unit-norm head rows: keep the logits peaky
    for i, layer in enumerate(_layers(sd)):
        p = f"model.layers.{i}."
        out[p + "self_attn.W_pack.weight"] = torch.cat([layer[f"self_attn.{n}_proj.weight"] for n in "qkv"])
        for k in ("self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                  "input_layernorm.weight", "post_attention_layernorm.weight"):
            out[p + k] = layer[k]
    config = dict(
        architectures=["BaichuanForCausalLM"], model_type="baichuan",
        auto_map={"AutoConfig": "configuration_baichuan.BaichuanConfig",
                  "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
        vocab_size=VOCAB_SIZE, hidden_size=H, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, hidden_act="silu", max_position_embeddings=512, model_max_length=512,
        rms_norm_eps=1e-6, tie_word_embeddings=False, z_loss_weight=0, **COMMON,
    )
    return out, config


def _baichuan_reference_head(ref, original: dict) -> None:
    ref.lm_head.weight.copy_(torch.nn.functional.normalize(original["lm_head.weight"], dim=-1))
    ref.model.norm.weight.copy_(original["model.norm.weight"])


_baichuan.adjust_reference = _baichuan_reference_head


# ---------------------------------------------------------------- Qwen (first generation)

def _qwen(sd: dict) -> tuple[dict, dict]:
    out = {"transformer.wte.weight": sd["model.embed_tokens.weight"], "transformer.ln_f.weight": sd["model.norm.weight"],
           "lm_head.weight": sd["lm_head.weight"]}
    for i, layer in enumerate(_layers(sd)):
        p = f"transformer.h.{i}."
        for kind in ("weight", "bias"):
            out[p + f"attn.c_attn.{kind}"] = torch.cat([layer[f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
        out[p + "attn.c_proj.weight"] = layer["self_attn.o_proj.weight"]
        out[p + "mlp.w1.weight"] = layer["mlp.up_proj.weight"]  # a1 = w1(x) multiplies silu(a2 = w2(x))
        out[p + "mlp.w2.weight"] = layer["mlp.gate_proj.weight"]
        out[p + "mlp.c_proj.weight"] = layer["mlp.down_proj.weight"]
        out[p + "ln_1.weight"] = layer["input_layernorm.weight"]
        out[p + "ln_2.weight"] = layer["post_attention_layernorm.weight"]
    config = dict(
        architectures=["QWenLMHeadModel"], model_type="qwen",
        auto_map={"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        vocab_size=VOCAB_SIZE, hidden_size=H, intermediate_size=2 * INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, kv_channels=D, layer_norm_epsilon=1e-6, max_position_embeddings=512,
        seq_length=256, rotary_pct=1.0, rotary_emb_base=10000, use_dynamic_ntk=True, use_logn_attn=True,
        no_bias=True, tie_word_embeddings=False, use_flash_attn="auto", **COMMON,
    )
    return out, config


# ---------------------------------------------------------------- MiniCPM

MINICPM = dict(scale_emb=12.0, scale_depth=0.3, dim_model_base=256)  # residual scale 0.21, logits x4


def _minicpm(sd: dict) -> tuple[dict, dict]:
    out = {k: v for k, v in sd.items() if k != "lm_head.weight"}  # Llama's names; the head is tied
    config = dict(
        architectures=["MiniCPMForCausalLM"], model_type="minicpm",
        auto_map={"AutoConfig": "configuration_minicpm.MiniCPMConfig", "AutoModel": "modeling_minicpm.MiniCPMModel",
                  "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"},
        vocab_size=VOCAB_SIZE, hidden_size=H, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, hidden_act="silu", max_position_embeddings=512,
        rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None, tie_word_embeddings=True, **MINICPM, **COMMON,
    )
    return out, config


# ---------------------------------------------------------------- ChatGLM3 / GLM-4

def _chatglm(sd: dict) -> tuple[dict, dict]:
    out = {"transformer.embedding.word_embeddings.weight": sd["model.embed_tokens.weight"],
           "transformer.encoder.final_layernorm.weight": sd["model.norm.weight"],
           "transformer.output_layer.weight": sd["lm_head.weight"],
           "transformer.rotary_pos_emb.inv_freq": torch.zeros(D // 4)}  # saved by the real checkpoints
    for i, layer in enumerate(_layers(sd)):
        p = f"transformer.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[p + f"self_attention.query_key_value.{kind}"] = torch.cat(
                [layer[f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
        out[p + "self_attention.dense.weight"] = layer["self_attn.o_proj.weight"]
        out[p + "mlp.dense_h_to_4h.weight"] = layer["mlp.gate_up_proj.weight"]  # [gate; up] in both
        out[p + "mlp.dense_4h_to_h.weight"] = layer["mlp.down_proj.weight"]
        out[p + "input_layernorm.weight"] = layer["input_layernorm.weight"]
        out[p + "post_attention_layernorm.weight"] = layer["post_attention_layernorm.weight"]
    config = dict(
        architectures=["ChatGLMModel"], model_type="chatglm",
        auto_map={"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                  "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                  "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        num_layers=LAYERS, padded_vocab_size=VOCAB_SIZE, hidden_size=H, ffn_hidden_size=INTER, kv_channels=D,
        num_attention_heads=HEADS, seq_length=512, layernorm_epsilon=1e-5, rmsnorm=True,
        apply_residual_connection_post_layernorm=False, post_layer_norm=True, add_bias_linear=False,
        add_qkv_bias=True, multi_query_attention=True, multi_query_group_num=KV_HEADS, original_rope=True,
        quantization_bit=0, pre_seq_len=None, prefix_projection=False, torch_dtype="float32", **COMMON,
    )
    return out, config


GLM4 = dict(padded_vocab_size=151552, rope_ratio=500)  # glm-4-9b-chat's vocabulary and rope_ratio


def _glm4(sd: dict) -> tuple[dict, dict]:
    out, config = _chatglm(sd)
    return out, {**config, **GLM4}


FAMILIES = {
    # name: (reference config, reference class, converter to the original layout)
    "internlm2": (lambda: _reference("LlamaConfig", rms_norm_eps=1e-5, rope_parameters={
        "rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000000.0}), "LlamaForCausalLM", _internlm2),
    "baichuan2": (lambda: _reference("LlamaConfig", num_key_value_heads=HEADS, rms_norm_eps=1e-6),
                  "LlamaForCausalLM", _baichuan),
    "qwen": (lambda: _reference("Qwen2Config", num_key_value_heads=HEADS, rms_norm_eps=1e-6, rope_theta=10000.0),
             "Qwen2ForCausalLM", _qwen),
    "minicpm": (lambda: _reference(
        "GraniteConfig", rms_norm_eps=1e-5, tie_word_embeddings=True, embedding_multiplier=MINICPM["scale_emb"],
        residual_multiplier=MINICPM["scale_depth"] / math.sqrt(LAYERS), logits_scaling=H / MINICPM["dim_model_base"],
        attention_multiplier=D ** -0.5), "GraniteForCausalLM", _minicpm),
    "chatglm": (lambda: _reference("GlmConfig", head_dim=D, rms_norm_eps=1e-5, attention_bias=True,
                                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "partial_rotary_factor": 0.5}), "GlmForCausalLM", _chatglm),
    # GLM-4 reads rope_ratio as a base multiplier: theta 10000 * 500 (only for its vocabulary, see chatglm.py)
    "glm4": (lambda: _reference("GlmConfig", head_dim=D, rms_norm_eps=1e-5, attention_bias=True,
                                vocab_size=GLM4["padded_vocab_size"],
                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * GLM4["rope_ratio"],
                                                 "partial_rotary_factor": 0.5}), "GlmForCausalLM", _glm4),
}
# the architecture each family's checkpoint names, and the native class that must serve it
ARCHS = {"internlm2": "InternLM2ForCausalLM", "baichuan2": "BaichuanForCausalLM", "qwen": "QWenLMHeadModel",
         "minicpm": "MiniCPMForCausalLM", "chatglm": "ChatGLMModel"}


# ---------------------------------------------------------------- building

@_one_thread()
def build_family(name: str, out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """(original-layout checkpoint dir, in-library reference dir) for family `name`."""
    import transformers

    make_config, ref_cls, convert = FAMILIES[name]
    torch.manual_seed(seed)
    with no_init_weights():  # every parameter is drawn by _rescale_ below (init is slow for GLM-4's vocabulary)
        ref = getattr(transformers, ref_cls)(make_config()).eval()
    ref.tie_weights()  # part of the skipped init
    with torch.no_grad():
        _rescale_(ref, seed)
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    original, config = convert(sd)
    if getattr(convert, "adjust_reference", None):  # weights the original layout constrains (tied heads, ...)
        with torch.no_grad():
            convert.adjust_reference(ref, original)
    ref_dir, orig_dir = Path(out_dir) / "reference", Path(out_dir) / "original"
    ref.generation_config = GenerationConfig(**COMMON)
    ref.save_pretrained(str(ref_dir))
    orig_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in original.items()}, str(orig_dir / "model.safetensors"),
              metadata={"format": "pt"})
    (orig_dir / "config.json").write_text(json.dumps(config, indent=1))
    GenerationConfig(**COMMON).save_pretrained(str(orig_dir))
    for d in (ref_dir, orig_dir):
        save_tokenizer(d)
    return orig_dir, ref_dir


# ---------------------------------------------------------------- Baichuan-13B (ALiBi)

# 6 heads (not a power of two: the interleaved slope rule), head dim 8
B13 = dict(hidden=48, heads=6, inter=96)
# modeling_baichuan.py's _get_interleave(6): 2^(-8/4) powers for the first 4 heads, then every other
# slope of the 8-head series 2^(-1)...: [0.5, 0.125]
B13_SLOPES = [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]


@_one_thread()
def build_baichuan13b(out_dir: Path, seed: int = 0) -> Path:
    """A Baichuan-13B checkpoint (ALiBi: `model_max_length`, no `max_position_embeddings`; the
    Baichuan-1 vocabulary, so a plain LM head), random weights drawn as the zoo draws them."""
    import transformers

    config = _reference("LlamaConfig", hidden_size=B13["hidden"], num_attention_heads=B13["heads"],
                        num_key_value_heads=B13["heads"], intermediate_size=B13["inter"], rms_norm_eps=1e-6)
    torch.manual_seed(seed)
    donor = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        _rescale_(donor, seed)
    sd = {k: v.detach().clone() for k, v in donor.state_dict().items()}
    weights, _ = _baichuan(sd)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(dict(
        architectures=["BaichuanForCausalLM"], model_type="baichuan",
        auto_map={"AutoConfig": "configuration_baichuan.BaichuanConfig",
                  "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
        vocab_size=VOCAB_SIZE, hidden_size=B13["hidden"], intermediate_size=B13["inter"], num_hidden_layers=LAYERS,
        num_attention_heads=B13["heads"], hidden_act="silu", model_max_length=512, rms_norm_eps=1e-6,
        tie_word_embeddings=False, **COMMON,
    )))
    GenerationConfig(**COMMON).save_pretrained(str(out))
    save_tokenizer(out)
    return out


@torch.inference_mode()
def baichuan13b_greedy(model_dir: Path, ids: list[int], n: int) -> list[int]:
    """Plain eager Baichuan-13B straight from the original weights (modeling_baichuan.py's forward:
    RMSNorm, W_pack, scores / sqrt(d) + slope * key position + causal mask, softmax, o_proj, SwiGLU
    MLP), the whole sequence recomputed for each new token."""
    from safetensors.torch import load_file

    w = load_file(str(Path(model_dir) / "model.safetensors"))
    heads, hidden = B13["heads"], B13["hidden"]
    d = hidden // heads
    slopes = torch.tensor(B13_SLOPES)

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    seq = list(ids)
    for _ in range(n):
        T = len(seq)
        x = w["model.embed_tokens.weight"][torch.tensor(seq)]
        causal = torch.full((T, T), float("-inf")).triu(1)
        alibi = slopes[:, None, None] * torch.arange(T)[None, None, :]  # [heads, 1, T]: slope * key position
        for i in range(LAYERS):
            p = f"model.layers.{i}."
            q, k, v = (rms(x, w[p + "input_layernorm.weight"]) @ w[p + "self_attn.W_pack.weight"].T).split(hidden, -1)
            q, k, v = (t.view(T, heads, d).transpose(0, 1) for t in (q, k, v))
            scores = q @ k.transpose(1, 2) / math.sqrt(d) + alibi + causal
            o = (torch.softmax(scores, -1) @ v).transpose(0, 1).reshape(T, hidden)
            x = x + o @ w[p + "self_attn.o_proj.weight"].T
            h = rms(x, w[p + "post_attention_layernorm.weight"])
            gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
            x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
        logits = rms(x[-1], w["model.norm.weight"]) @ w["lm_head.weight"].T
        seq.append(int(logits.argmax()))
    return seq[len(ids):]
