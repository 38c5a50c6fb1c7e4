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
_HUB_PATTERNS = ["*.json", "*.py", "*.txt", "*.model", "*.tiktoken", "tokenizer*", "1_Pooling/*"]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BACKEND_REQUIREMENTS = (
    "1. its modules pass **kwargs down to the attention call;\n"
    "2. attention is called through ALL_ATTENTION_FUNCTIONS[config._attn_implementation];\n"
    "3. the base model class sets `_supports_attention_backend = True`;\n"
    "4. it keeps no recurrent state (Mamba / linear-attention layers): the paged cache holds only per-token K/V."
)


def resolve_model_dir(model: str | None, revision: str | None = None, download_dir: str | None = None,
                      load_format: str = "auto") -> Path:
    """A local directory as given, or a Hub snapshot (honours HF_HOME and HF_HUB_OFFLINE; `download_dir`:
    the cache directory instead of HF_HOME's; ModelScope with ANYMODEL_USE_MODELSCOPE=1)."""
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
    if use_modelscope():
        return _modelscope_download(model, revision, download_dir, load_format)
    from huggingface_hub import snapshot_download

    patterns = _HUB_PATTERNS + weight_patterns(load_format, _hub_files(model, revision))
    try:
        return Path(snapshot_download(repo_id=model, revision=revision, allow_patterns=patterns,
                                      cache_dir=download_dir))
    except Exception as exc:  # offline, unknown repo, gated...
        raise ValueError(f"model {model!r} is neither a local directory nor an available Hub repository: {exc}") from exc


def weight_patterns(load_format: str, repo_files: list[str] | None) -> list[str]:
    """Which weight files to download: safetensors where the repository has them, else the
    `*.bin` pickles (read with weights_only=True); both when the file list is unknown (offline:
    the cache has what it has). "dummy" downloads no weights; "safetensors" / "pt" only theirs."""
    if load_format == "dummy":
        return []
    if load_format in ("safetensors", "pt"):
        return ["*.safetensors"] if load_format == "safetensors" else ["*.bin"]
    if repo_files is None:
        return ["*.safetensors", "*.bin"]
    return ["*.safetensors"] if any(f.endswith(".safetensors") for f in repo_files) else ["*.bin"]


def _hub_files(model: str, revision: str | None) -> list[str] | None:
    """The repository's file names, or None offline or when the listing fails (the download reports it)."""
    import os

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return None
    try:
        from huggingface_hub import list_repo_files

        return list_repo_files(model, revision=revision)
    except Exception:  # noqa: BLE001 - unknown repo, no network: snapshot_download says why
        return None


def use_modelscope() -> bool:
    """ANYMODEL_USE_MODELSCOPE=1 (or vLLM's VLLM_USE_MODELSCOPE=1): model ids name ModelScope repositories."""
    import os

    return any(os.environ.get(name, "").lower() in ("1", "true") for name in ("ANYMODEL_USE_MODELSCOPE",
                                                                             "VLLM_USE_MODELSCOPE"))


def _modelscope_download(model: str, revision: str | None, download_dir: str | None, load_format: str) -> Path:
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError as exc:
        raise ValueError(f"model {model!r}: ANYMODEL_USE_MODELSCOPE / VLLM_USE_MODELSCOPE is set, which downloads "
                         "from ModelScope through the `modelscope` package, and it is not installed "
                         "(pip install modelscope), or unset the variable to use the Hugging Face Hub") from exc
    patterns = _HUB_PATTERNS + weight_patterns(load_format, None)
    try:
        return Path(snapshot_download(model, revision=revision, cache_dir=download_dir, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - unknown repo, no network
        raise ValueError(f"model {model!r} is neither a local directory nor an available ModelScope repository: "
                         f"{exc}") from exc


def load_config(model_dir: Path, trust_remote_code: bool, hf_overrides=None):
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise ValueError(f"model {str(model_dir)!r} has no config.json")
    raw = json.loads(config_file.read_text())
    if raw.get("auto_map") and raw.get("model_type") not in CONFIG_MAPPING_NAMES and not trust_remote_code:
        from anymodel.native_overrides.remapped import plain_family_config

        family = plain_family_config(raw)  # a natively served remote-code family: config.json as data
        if family is not None:
            return apply_hf_overrides(family, hf_overrides)
        raise ValueError(
            f"model {str(model_dir)!r} ships its own modeling code (auto_map: {sorted(raw['auto_map'])}); "
            "anymodel runs repository code only with trust_remote_code=True (--trust-remote-code)"
        )
    from anymodel.adapters.legacy_api import patch_if_remote, remote_code_scope

    with remote_code_scope(trust_remote_code, raw.get("model_type")):
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    patch_if_remote(type(config))
    _fill_head_dim(text_config_of(config))
    return apply_hf_overrides(config, hf_overrides)


def _fill_head_dim(text) -> None:
    """A config that stores `head_dim: null` (Ministral's, in Transformers 5.24) breaks modeling code
    that reads `getattr(config, "head_dim", hidden_size // heads)`: the attribute exists, so the
    default never applies. Fill in the default that code means."""
    try:
        declared = "head_dim" in vars(text) and text.head_dim is None
    except Exception:  # heterogeneous (per-layer) configs refuse global reads of per-layer attributes
        return
    hidden, heads = getattr(text, "hidden_size", None), getattr(text, "num_attention_heads", None)
    if declared and isinstance(hidden, int) and isinstance(heads, int):
        text.head_dim = hidden // heads
        logger.info("anymodel: config has head_dim null; using hidden_size // num_attention_heads = %d", text.head_dim)


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
    """"safetensors" needs safetensors files; "pt" is what "auto" does only where there are none (a .bin
    checkpoint); "dummy" reads none."""
    has_safetensors = any(Path(model_dir).glob("*.safetensors"))
    if load_format == "safetensors" and not has_safetensors:
        raise ValueError(f"load_format='safetensors': model {str(model_dir)!r} has no *.safetensors files")
    if load_format == "pt" and has_safetensors:
        raise ValueError(f"load_format='pt': model {str(model_dir)!r} has safetensors weights, which anymodel "
                         "loads instead; pass load_format='auto' (or 'safetensors')")


def generation_config_fields(model_dir: Path) -> dict:
    """The model's generation_config.json as a dict ({} without one): what
    SamplingParams.update_from_generation_config reads (its eos_token_id)."""
    gen_file = model_dir / "generation_config.json"
    return json.loads(gen_file.read_text()) if gen_file.exists() else {}


def eos_token_ids(model_dir: Path, tokenizer) -> frozenset[int]:
    """Every id that ends a generation: the tokenizer's EOS and generation_config.json's."""
    eos = generation_config_fields(model_dir).get("eos_token_id")
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
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
    if auto_map and not trust_remote_code:
        raise ValueError(f"architecture {getattr(config, 'architectures', None)} has no causal-LM class in Transformers; "
                         "the model ships its own modeling code (auto_map), which anymodel runs only with "
                         "trust_remote_code=True (--trust-remote-code)")
    raise ValueError(f"architecture {getattr(config, 'architectures', None)} has no causal-LM class in Transformers")


def _model_class(cls: type, has_lm_head: bool, config) -> ModelClass:
    return ModelClass(cls, has_lm_head, recurrent_state(cls, config), unsupported_attention(config))
