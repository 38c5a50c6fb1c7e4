"""Pooling configuration: which task a model runs, its pooler settings, and which requests it serves.

    task="auto" (from the architecture):
        *ForSequenceClassification  -> classify   ("score" for a 1-label encoder: a cross-encoder)
        *ForTokenClassification, *RewardModel -> reward
        *ForCausalLM, *LMHeadModel, *ForConditionalGeneration -> generate
        *ForMaskedLM, a base encoder/decoder (BertModel, LlamaModel), a sentence-transformers dir -> embed

    pooler = task defaults (adapters/pooling_loader.py) <- sentence-transformers files (embed only)
             <- override_pooler_config / --override-pooler-config JSON
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from anymodel.model_facts import architecture_of, text_config_of
from anymodel.adapters.st_dense import modules_of_kind, sentence_transformers_modules
from anymodel.params import PoolingParams, SamplingParams

logger = logging.getLogger("anymodel")

POOLING_TASKS = ("embed", "classify", "score", "reward")
# A model's task -> the kinds of pooling request it answers ("encode": the raw pooler output).
SERVES = {
    "embed": ("embed", "encode"),
    "classify": ("classify", "encode"),
    "score": ("score", "classify", "encode"),
    "reward": ("reward", "encode"),
}
_ST_MODES = {"pooling_mode_cls_token": "CLS", "pooling_mode_mean_tokens": "MEAN", "pooling_mode_lasttoken": "LAST"}


def is_cross_encoder(config) -> bool:
    """A 1-label classifier on a bidirectional encoder (a family with a masked-LM head)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if hasattr(config, "sbert_ce_default_activation_function"):
        return True
    return getattr(config, "num_labels", 0) == 1 and getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def supported_tasks(config, model_dir: Path) -> list[str] | None:
    """Tasks this architecture can run; None when the name says nothing (custom code): anything goes."""
    arch = architecture_of(config)  # none given: the config class name, which ends in no suffix below
    if arch.endswith("ForSequenceClassification"):
        return ["score", "classify", "embed"] if getattr(config, "num_labels", 0) == 1 else ["classify", "embed"]
    if arch.endswith(("ForTokenClassification", "RewardModel")):
        return ["reward", "embed"]
    if arch.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        return ["generate", "embed", "reward", "classify"]
    if arch.endswith("ForMaskedLM"):
        return ["embed", "reward"]
    if arch.endswith("Model") and not getattr(config, "auto_map", None):
        return ["embed", "reward", "generate"]  # generate: a base model plus the checkpoint's lm_head
    return None


def resolve_task(requested: str, config, model_dir: Path, runner: str = "auto") -> str:
    """The task a model runs. vLLM's runner="pooling" with convert="auto" on a generative model embeds."""
    task = _resolve_task(requested, config, model_dir)
    return "embed" if runner == "pooling" and task == "generate" else task


def _resolve_task(requested: str, config, model_dir: Path) -> str:
    supported = supported_tasks(config, model_dir)
    if requested != "auto":
        if supported is not None and requested not in supported:
            raise ValueError(
                f"task {requested!r} is not supported by architecture {architecture_of(config)!r}; supported: {supported}"
            )
        return requested
    if supported is None or supported[0] == "generate":
        return "generate"
    if architecture_of(config).endswith("ForSequenceClassification"):
        return "score" if is_cross_encoder(config) else "classify"
    return supported[0]


# ---- sentence-transformers files -------------------------------------------------------------------
def sentence_transformers_pooling(model_dir: Path) -> dict:
    """{pooling_type, normalize} from modules.json + 1_Pooling/config.json; {} when absent."""
    modules = sentence_transformers_modules(model_dir)
    if modules is None:
        return {}
    out = {"normalize": bool(modules_of_kind(modules, "Normalize"))}
    pooling = next(iter(modules_of_kind(modules, "Pooling")), None)
    config_file = Path(model_dir) / (pooling or {}).get("path", "1_Pooling") / "config.json"
    if pooling is not None and config_file.exists():
        modes = [mode for key, mode in _ST_MODES.items() if json.loads(config_file.read_text()).get(key)]
        if modes:
            out["pooling_type"] = modes[0]
        else:
            logger.warning("anymodel: unsupported sentence-transformers pooling mode in %s; using the default", config_file)
    return out


def embedding_size(config, model_dir: Path) -> int:
    """Width of an embedding: the last sentence-transformers Dense module's output, else the hidden size."""
    dense = modules_of_kind(sentence_transformers_modules(model_dir), "Dense")
    if dense:
        return json.loads((Path(model_dir) / dense[-1].get("path", "") / "config.json").read_text())["out_features"]
    return text_config_of(config).hidden_size


def _sentence_bert_config(model_dir: Path) -> dict:
    config_file = Path(model_dir) / "sentence_bert_config.json"
    return json.loads(config_file.read_text()) if config_file.exists() else {}


def sentence_transformers_max_len(model_dir: Path) -> int | None:
    value = _sentence_bert_config(model_dir).get("max_seq_length")
    return value if isinstance(value, int) and value > 0 else None


def sentence_transformers_lower_case(model_dir: Path) -> bool:
    """sentence-transformers lower-cases text before tokenizing when its config says so."""
    return bool(_sentence_bert_config(model_dir).get("do_lower_case", False))


def pooler_overrides(task: str, model_dir: Path, user: dict | None) -> dict:
    base = sentence_transformers_pooling(model_dir) if task == "embed" else {}
    return {**base, **(user or {})}


def build_pooling_model(args, model_dir: Path, config, dtype, state=None):
    """The worker's entry point for pooling tasks (args.task is already resolved); `state`: this
    rank's ParallelState, whose tensor-parallel shard / pipeline stage the base model is cut to."""
    from anymodel.adapters.pooling_loader import load_pooling_model

    overrides = pooler_overrides(args.task, model_dir, args.override_pooler_config)
    return load_pooling_model(args.task, model_dir, config, dtype, overrides, args.trust_remote_code, state)


# ---- requests ---------------------------------------------------------------------------------------
def check_request(model_task: str, params, config, embedding_size: int | None = None) -> None:
    """A request the model can answer, or a ValueError that says what to do instead."""
    if isinstance(params, SamplingParams):
        if model_task != "generate":
            raise ValueError(
                f"this model runs task {model_task!r}: generation requests are not supported; "
                f"use {[t for t in SERVES[model_task] if t != 'encode']} (or LLM(..., task='generate'))"
            )
        return
    if model_task == "generate":
        raise ValueError(
            "pooling requests (embed / classify / score / reward / encode) need a pooling model; this model "
            f"runs task 'generate' (pass task= one of {list(POOLING_TASKS)} to LLM, or --task)"
        )
    kind = params.task or "encode"
    if kind not in SERVES[model_task]:
        raise ValueError(f"a {kind!r} request is not supported by a model running task {model_task!r}; "
                         f"supported: {list(SERVES[model_task])}")
    check_dimensions(params, model_task, config, embedding_size or text_config_of(config).hidden_size)
    check_parameters(params, kind)


# The per-request options each kind of request takes (vLLM's PoolingParams.valid_parameters);
# "encode", the raw pooler output, takes any of them.
VALID_PARAMETERS = {"embed": ["dimensions", "normalize"], "classify": ["use_activation"],
                    "score": ["use_activation"], "reward": ["use_activation"]}


def check_parameters(params: PoolingParams, kind: str) -> None:
    valid = VALID_PARAMETERS.get(kind)
    if valid is None:
        return
    invalid = [k for k in ("dimensions", "normalize", "use_activation") if k not in valid and getattr(params, k) is not None]
    if invalid:
        raise ValueError(f"Task {kind} only supports {valid} parameters, does not support {invalid} parameters")


def check_dimensions(params: PoolingParams, model_task: str, config, size: int) -> None:
    """`size`: the model's embedding width (the hidden size, or a Dense module's output)."""
    if params.dimensions is None:
        return
    if model_task != "embed":
        raise ValueError(f"dimensions is only supported for embeddings; this model runs task {model_task!r}")
    dims = getattr(config, "matryoshka_dimensions", None)
    if not (dims or getattr(config, "is_matryoshka", False)):
        raise ValueError(
            "dimensions: this model does not support Matryoshka representation; changing the output "
            "dimensions would give poor embeddings (hf_overrides={'is_matryoshka': True} to force it)"
        )
    if dims and params.dimensions not in dims:
        raise ValueError(f"dimensions must be one of {sorted(dims)}, got {params.dimensions}")
    if params.dimensions > size:
        raise ValueError(f"dimensions must be <= {size} (the embedding size), got {params.dimensions}")
