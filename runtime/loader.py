"""Resolve a model (local dir / Hub id), its config, tokenizer and class, and load weights.

Order matters: hf_overrides are applied to the config before anything is resolved from it, and no
repository code is imported unless the user passed trust_remote_code=True.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from anymodel.model_facts import (  # noqa: F401  (the loader's callers import them from here too)
    architecture_of, derive_max_model_len, recurrent_state, text_config_of, unsupported_attention)

logger = logging.getLogger("anymodel")

_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.txt", "*.model", "*.tiktoken", "tokenizer*", "1_Pooling/*"]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BACKEND_REQUIREMENTS = (
    "1. its modules pass **kwargs down to the attention call;\n"
    "2. attention is called through ALL_ATTENTION_FUNCTIONS[config._attn_implementation];\n"
    "3. the base model class sets `_supports_attention_backend = True`;\n"
    "4. it keeps no recurrent state (Mamba / linear-attention layers): the paged cache holds only per-token K/V."
)


def resolve_model_dir(model: str | None, revision: str | None = None, download_dir: str | None = None) -> Path:
    """A local directory as given, or a Hub snapshot (honours HF_HOME and HF_HUB_OFFLINE; `download_dir`:
    the cache directory instead of HF_HOME's)."""
    if model is None:
        from anymodel.demo import DEMO_MODEL_DIR

        return DEMO_MODEL_DIR
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from anymodel.gguf_model import gguf_model_dir, is_gguf

    if is_gguf(model):  # dequantized once into a plain model directory (gguf_model.py)
        return gguf_model_dir(model)
    if path.exists() or not _REPO_ID.match(model) or model.startswith((".", "/", "~")):
        raise ValueError(f"model {model!r}: no such directory (expected a local model directory or a Hub repo id)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=model, revision=revision, allow_patterns=_HUB_PATTERNS,
                                      cache_dir=download_dir))
    except Exception as exc:  # offline, unknown repo, gated...
        raise ValueError(f"model {model!r} is neither a local directory nor an available Hub repository: {exc}") from exc


def load_config(model_dir: Path, trust_remote_code: bool, hf_overrides=None):
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise ValueError(f"model {str(model_dir)!r} has no config.json")
    raw = json.loads(config_file.read_text())
    if raw.get("auto_map") and raw.get("model_type") not in CONFIG_MAPPING_NAMES and not trust_remote_code:
        raise ValueError(
            f"model {str(model_dir)!r} ships its own modeling code (auto_map: {sorted(raw['auto_map'])}); "
            "anymodel runs repository code only with trust_remote_code=True (--trust-remote-code)"
        )
    from anymodel.adapters.legacy_api import patch_if_remote, remote_code_scope

    with remote_code_scope(trust_remote_code, raw.get("model_type")):
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    patch_if_remote(type(config))
    return apply_hf_overrides(config, hf_overrides)


def apply_hf_overrides(config, hf_overrides):
    if hf_overrides is None:
        return config
    if callable(hf_overrides):
        return hf_overrides(config)
    for key, value in hf_overrides.items():
        sub = getattr(config, key, None)
        if isinstance(value, dict) and sub is not None and hasattr(sub, "to_dict"):
            apply_hf_overrides(sub, value)  # nested sub-config, e.g. {"text_config": {...}}
        else:
            setattr(config, key, value)
    return config


def resolve_dtype(dtype: str, config) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    text = text_config_of(config)
    found = getattr(text, "dtype", None) or getattr(config, "dtype", None)
    if isinstance(found, str):
        found = _DTYPES.get(found)
    return found if isinstance(found, torch.dtype) and found.is_floating_point else torch.float32


def load_tokenizer(name_or_dir, trust_remote_code: bool, revision: str | None = None, mode: str = "auto"):
    """`mode`: vLLM's tokenizer_mode, "auto" (the fast tokenizer where there is one) or "slow"."""
    from transformers import AutoTokenizer

    from anymodel.adapters.legacy_api import remote_code_scope

    with remote_code_scope(trust_remote_code):
        return AutoTokenizer.from_pretrained(name_or_dir, trust_remote_code=trust_remote_code, revision=revision,
                                             use_fast=mode != "slow")


# generation_config.json key -> the SamplingParams field it gives a default to (vLLM's list)
_GENERATION_DEFAULTS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                        "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}


def generation_defaults(model_dir: Path, generation_config: str = "auto") -> dict:
    """The request defaults a model's generation_config.json sets, as SamplingParams keywords (vLLM's
    `get_diff_sampling_param`): "auto" reads the model's file, "vllm" none, else the file in that directory.
    Only what the file sets: a request (or SamplingParams) that sets a field keeps its own value."""
    if generation_config == "vllm":
        return {}
    directory = model_dir if generation_config == "auto" else Path(generation_config).expanduser()
    gen_file = directory / "generation_config.json"
    if not gen_file.exists():
        if generation_config != "auto":
            raise ValueError(f"generation_config {generation_config!r}: no generation_config.json in that directory")
        return {}
    raw = json.loads(gen_file.read_text())
    defaults = {field: raw[key] for key, field in _GENERATION_DEFAULTS.items() if raw.get(key) is not None}
    from anymodel.params import SamplingParams

    try:  # checked once here, not failing every request that takes them
        SamplingParams(**defaults)
    except ValueError as e:
        raise ValueError(f"{gen_file}: {e} (generation_config='vllm' ignores the file)") from e
    if defaults:
        logger.info("anymodel: default sampling parameters from %s: %s (generation_config='vllm' ignores them)",
                    gen_file, defaults)
    return defaults


def check_load_format(load_format: str, model_dir: Path) -> None:
    """"safetensors" needs safetensors files; "pt" is what "auto" does only where there are none (a .bin checkpoint)."""
    has_safetensors = any(Path(model_dir).glob("*.safetensors"))
    if load_format == "safetensors" and not has_safetensors:
        raise ValueError(f"load_format='safetensors': model {str(model_dir)!r} has no *.safetensors files")
    if load_format == "pt" and has_safetensors:
        raise ValueError(f"load_format='pt': model {str(model_dir)!r} has safetensors weights, which anymodel "
                         "loads instead; pass load_format='auto' (or 'safetensors')")


def eos_token_ids(model_dir: Path, tokenizer) -> frozenset[int]:
    ids = set()
    gen_file = model_dir / "generation_config.json"
    if gen_file.exists():
        eos = json.loads(gen_file.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


@dataclass
class ModelClass:
    cls: type
    has_lm_head: bool  # cls is a *ForCausalLM (else a base model to which we add the head)
    recurrent: str | None = None  # why the model has state our paged cache cannot hold (see recurrent_state)
    own_attention: str | None = None  # attention our function cannot reproduce (see unsupported_attention)

    @property
    def incompatibility(self) -> str | None:
        """Why the Transformers backend (our paged attention) cannot run `cls`, or None; the most
        specific reason first (a recurrent model usually lacks the flag too)."""
        if self.recurrent is not None:
            return self.recurrent
        if self.own_attention is not None:
            return f"its {self.own_attention} is not in the paged kernels"
        if not getattr(self.cls, "_supports_attention_backend", False):
            return f"{self.cls.__name__} does not set `_supports_attention_backend = True`"
        return None

    @property
    def backend_compatible(self) -> bool:
        return self.incompatibility is None


def resolve_causal_lm_class(config, model_dir: Path, trust_remote_code: bool) -> ModelClass:
    if getattr(config, "is_encoder_decoder", False):
        # Transformers maps such a config (Bart, mBART, ...) to its decoder-only *ForCausalLM, which
        # would load the decoder alone, leave the cross-attention randomly initialised and answer
        # without the encoder: wrong tokens, no error. Decoder-only checkpoints of these families
        # (saved from *ForCausalLM) have `is_encoder_decoder: false` and still load.
        raise ValueError(
            f"{architecture_of(config)} is an encoder-decoder model; anymodel serves decoder-only causal LMs "
            "(no encoder inputs, no cross-attention)"
        )
    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code and ("AutoModelForCausalLM" in auto_map or "AutoModel" in auto_map):
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        from anymodel.adapters.legacy_api import patch_if_remote, trusted_remote_code

        key = "AutoModelForCausalLM" if "AutoModelForCausalLM" in auto_map else "AutoModel"
        with trusted_remote_code(getattr(config, "model_type", None)):
            cls = patch_if_remote(get_class_from_dynamic_module(auto_map[key], str(model_dir)))
        return _model_class(cls, key != "AutoModel", config)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return _model_class(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)], True, config)
    if type(config) in MODEL_MAPPING:
        return _model_class(MODEL_MAPPING[type(config)], False, config)
    raise ValueError(f"architecture {getattr(config, 'architectures', None)} has no causal-LM class in Transformers")


def _model_class(cls: type, has_lm_head: bool, config) -> ModelClass:
    return ModelClass(cls, has_lm_head, recurrent_state(cls, config), unsupported_attention(config))
