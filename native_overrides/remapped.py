"""Remote-code families served by the native Llama-shaped model: the checkpoint keeps its own
weight names and fused layouts, and is renamed / unpacked on the fly while it loads.

    original checkpoint (name, tensor) --family.native_weights--> Llama names --load_weights--> model
    original config.json               --family.native_config---> a LlamaConfig (+ the family's extras)

Each family module (internlm2.py, baichuan.py, qwen.py, minicpm.py, chatglm.py) says how its names
map and which configs it cannot reproduce (`family_refusal`: the Transformers backend / compat path
runs those, with trust_remote_code=True). The layers are Llama's (`RemappedModel`), with the
family's biases; a family overrides a layer only where its math differs (MiniCPM's scalings,
ChatGLM's half rotary, Baichuan-13B's ALiBi). Unpacking happens before the tensor-parallel cut, so the
fused tensors reach `QKVParallelLinear` / `MergedColumnParallelLinear` as full q / k / v (or gate /
up) tensors and each rank takes its heads as for any Llama checkpoint.

No repository code runs on this path: `config.json` is read as plain data (`FamilyConfig`, with the
defaults of the remote config class for keys the file omits), so `trust_remote_code` is not needed
for the model itself; a tokenizer that ships its own code still needs it (runtime/loader.py).
"""

from __future__ import annotations

import re
from typing import ClassVar, Iterable, Iterator

import torch
from transformers import LlamaConfig, PretrainedConfig

from anymodel.native_overrides.base import NativeForCausalLM
from anymodel.native_overrides.layers import unsupported_rope
from anymodel.native_overrides.llama import LlamaAttention, LlamaDecoderLayer, LlamaModel
from anymodel.native_overrides.weights import iter_checkpoint, load_weights

Weights = Iterable[tuple[str, torch.Tensor]]


class FamilyConfig(PretrainedConfig):
    """A remote-code family's config.json as plain data. `plain_family_config` fills the keys a
    file omits with the remote config class's defaults (and the attributes that class derives), so
    every reader (context length, vocabulary, layer count) sees what the remote class would give.
    One class for every family: Transformers 5 turns config subclasses without an `__init__` of
    their own into dataclasses that drop unknown keys."""

    def __init__(self, **kwargs) -> None:
        # Transformers 5 folds these into `rope_parameters` and drops them; the families read them as
        # written (`config.rope_scaling` reads `rope_parameters` in Transformers 5)
        scaling, theta = kwargs.pop("rope_scaling", None), kwargs.pop("rope_theta", None)
        super().__init__(**kwargs)
        self.rope_parameters = scaling
        if theta is not None:
            self.rope_theta = theta


def legacy_rope(config, theta: float) -> dict | str:
    """rope_parameters for a Llama-era `rope_scaling` ({"type": "linear" | "dynamic", "factor": f}),
    or why it cannot be reproduced. The remote "dynamic" classes recompute their frequencies only
    for sequences longer than max_position_embeddings, which is also the longest max_model_len
    anymodel accepts (model_facts.derive_max_model_len): inside it they are the default rope."""
    scaling = getattr(config, "rope_scaling", None)
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind in (None, "default"):  # a remote config that Transformers 5 standardised
        return {"rope_type": "default", "rope_theta": theta}
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(scaling["factor"]), "rope_theta": theta}
    if kind == "dynamic":
        return {"rope_type": "default", "rope_theta": theta}
    return f"rope_scaling type {kind!r} (the native rope reproduces none, linear and dynamic)"


def llama_config(config, **fields) -> LlamaConfig:
    """The native model's config: Llama fields, plus `qkv_bias` / `o_bias` (RemappedAttention) and
    whatever else a family's layers read, set as attributes."""
    extras = {k: fields.pop(k) for k in list(fields) if k not in _LLAMA_FIELDS}
    native = LlamaConfig(**fields)
    for key, value in extras.items():
        setattr(native, key, value)
    native.architectures = list(getattr(config, "architectures", None) or [])
    return native


def llama_named_config(config, bias: bool, **extras) -> LlamaConfig:
    """`llama_config` for a family whose config already uses Llama's field names (InternLM2, MiniCPM),
    with a Llama-era `rope_scaling` (`legacy_rope`) and `bias` on q/k/v and o."""
    heads = config.num_attention_heads
    return llama_config(
        config, vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=heads, num_key_value_heads=config.num_key_value_heads or heads,
        head_dim=config.hidden_size // heads, hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=bool(config.tie_word_embeddings),
        rope_parameters=legacy_rope(config, float(config.rope_theta)), qkv_bias=bias, o_bias=bias, **extras,
    )


def legacy_rope_refusal(config) -> str | None:
    rope = legacy_rope(config, float(config.rope_theta))
    return rope if isinstance(rope, str) else None


_LLAMA_FIELDS = frozenset((
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "tie_word_embeddings", "rope_parameters", "mlp_bias",
))


def renamed(weights: Weights, renames: tuple[tuple[str, str], ...]) -> Iterator[tuple[str, torch.Tensor]]:
    """Apply the (regex, replacement) pairs in order to every name (each pair at most once)."""
    patterns = [(re.compile(p), r) for p, r in renames]
    for name, tensor in weights:
        for pattern, repl in patterns:
            name = pattern.sub(repl, name, count=1)
        yield name, tensor


def split_rows(name: str, part: str, tensor: torch.Tensor, targets: tuple[str, ...], sizes: list[int]):
    """A fused tensor [sum(sizes), ...] (weight or bias) -> one (name, rows) per target part."""
    return [(name.replace(part, target), rows) for target, rows in zip(targets, tensor.split(sizes, dim=0))]


class RemappedAttention(LlamaAttention):
    """Llama attention whose q/k/v and o biases come from the family (`qkv_bias`, `o_bias`)."""

    qkv_bias = staticmethod(lambda config: config.qkv_bias)
    o_bias = staticmethod(lambda config: config.o_bias)


class RemappedDecoderLayer(LlamaDecoderLayer):
    attention_cls = RemappedAttention


class RemappedModel(LlamaModel):
    layer_cls = RemappedDecoderLayer


class RemappedForCausalLM(NativeForCausalLM):
    """A family's native class: `config_defaults` (plain-data config), `native_config` (-> Llama
    fields), `native_weights` (original names -> Llama names), `family_refusal`."""

    model_cls = RemappedModel
    config_defaults: ClassVar[dict]  # the remote config class's defaults, for keys config.json omits
    config_aliases: ClassVar[dict] = {}  # attribute -> the key it mirrors (ChatGLM: vocab_size <- padded_vocab_size)

    @classmethod
    def native_config(cls, config) -> LlamaConfig:
        raise NotImplementedError

    @classmethod
    def native_weights(cls, config, weights: Weights, dtype: torch.dtype) -> Weights:
        raise NotImplementedError

    @classmethod
    def family_refusal(cls, config) -> str | None:
        return None

    @classmethod
    def unsupported(cls, config) -> str | None:
        if getattr(config, "quantization_config", None):
            return "quantized checkpoints"
        reason = cls.family_refusal(config)
        if reason is None:
            native = cls.native_config(config)
            reason = unsupported_rope(native)
        return reason

    @classmethod
    def from_pretrained(cls, model_dir, config, dtype: torch.dtype) -> "RemappedForCausalLM":
        reason = cls.unsupported(config)
        if reason is not None:
            raise ValueError(f"{cls.__name__} does not support {reason}; its own code runs it: "
                             "trust_remote_code=True with model_impl='auto' or 'transformers'")
        model = cls(cls.native_config(config), dtype)
        weights = cls.native_weights(config, iter_checkpoint(model_dir), dtype)
        load_weights(model, weights, skip=model.skipped_checkpoint_names())
        return model.eval()


def plain_family_config(raw: dict) -> FamilyConfig | None:
    """config.json of a natively served remote-code family as plain data, or None (not one)."""
    from anymodel.native_overrides import native_class

    cls = native_class((raw.get("architectures") or [""])[0])
    if getattr(cls, "config_defaults", None) is None:
        return None
    values = {**cls.config_defaults, **raw}
    for alias, key in cls.config_aliases.items():
        values.setdefault(alias, values[key])
    return FamilyConfig(**values)
