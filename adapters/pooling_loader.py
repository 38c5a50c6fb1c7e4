"""Build a pooling adapter for a task from a checkpoint, through the HF classes that checkpoint names.

    embed     the architecture's base model (BertModel, LlamaModel, ...)        -> TransformersForEmbedding
    classify  *ForSequenceClassification (BERT / RoBERTa heads run as HF's own) -> TransformersForSequenceClassification
    score       ... decoder-style heads (`score` on the last token)             -> as_classification_model
    reward    *ForTokenClassification head per token, or a causal LM            -> as_reward_model

Pooler defaults per task (vLLM's), then `overrides` (sentence-transformers files, then the user's
`override_pooler_config`) on top.

With several ranks (`state.world_size > 1`) the same classes load through adapters/parallel.py:
the base model cut by its tensor-parallel plan (and pipeline stage), the heads whole on every
rank. The compat path (attention ours cannot reach, recurrent layers) runs in one process only.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from anymodel.model_facts import architecture_of, recurrent_state
from anymodel.adapters.pooler import PoolerConfig, PoolingType
from anymodel.adapters.st_dense import load_dense_stack
from anymodel.adapters.pooling import (
    TransformersForSequenceClassification,
    TransformersPoolingModel,
    as_classification_model,
    as_embedding_model,
    as_reward_model,
)

logger = logging.getLogger("anymodel")

_AUTO = {  # task -> (auto_map key, transformers auto mapping)
    "embed": ("AutoModel", "MODEL_MAPPING"),
    "classify": ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING"),
    "reward": ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING"),
    "generate": ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING"),
}
_AUTO["score"] = _AUTO["classify"]


def load_pooling_model(task: str, model_dir, config, dtype: torch.dtype, overrides: dict,
                       trust_remote_code: bool = False, state=None) -> TransformersPoolingModel:
    """`state`: this rank's ParallelState (None: one process)."""
    if task == "embed":
        base = _load(task_class("embed", config, model_dir, trust_remote_code), model_dir, config, dtype, state=state)
        dense = load_dense_stack(model_dir, dtype, trust_remote_code)  # sentence-transformers projections, if any
        return _mark_compat(as_embedding_model(base, default_config("embed", base).merged(overrides), dense))
    if task in ("classify", "score"):
        return _load_classifier(task, model_dir, config, dtype, overrides, trust_remote_code, state)
    if task == "reward":
        return _load_reward(model_dir, config, dtype, overrides, trust_remote_code, state)
    raise ValueError(f"unsupported pooling task {task!r}; supported: ['embed', 'classify', 'score', 'reward']")


def _load_classifier(task, model_dir, config, dtype, overrides, trust_remote_code, state=None):
    cls = task_class(task, config, model_dir, trust_remote_code)
    hf = _load(cls, model_dir, config, dtype, head_required=True, state=state)
    base = hf.base_model
    cfg = default_config(task, base).merged(overrides)
    activation = classification_activation(hf.config)
    score = getattr(hf, "score", None)
    if isinstance(score, nn.Linear):  # decoder-style: the label head reads the last token
        return _mark_compat(as_classification_model(base, score, cfg, activation))
    return _mark_compat(TransformersForSequenceClassification(base, hf, cfg, activation))


def _load_reward(model_dir, config, dtype, overrides, trust_remote_code, state=None):
    if architecture_of(config).endswith("ForTokenClassification"):
        cls = task_class("reward", config, model_dir, trust_remote_code)
        hf = _load(cls, model_dir, config, dtype, head_required=True, state=state)
        head = getattr(hf, "classifier", None) or getattr(hf, "score")  # per token: [n, H] -> [n, L]
        return _mark_compat(as_reward_model(hf.base_model, default_config("reward", hf.base_model).merged(overrides), head,
                                            classification_activation(hf.config)))
    cfg = default_config("reward", None).merged(overrides)
    if cfg.pooling_type is PoolingType.STEP and cfg.returned_token_ids:  # needs the LM head's logits
        from anymodel.adapters.causal_lm import TransformersForCausalLM

        hf = _load(task_class("generate", config, model_dir, trust_remote_code), model_dir, config, dtype, state=state)
        return _mark_compat(as_reward_model(TransformersForCausalLM(hf.base_model, hf.get_output_embeddings(), hf.config), cfg))
    base = _load(task_class("embed", config, model_dir, trust_remote_code), model_dir, config, dtype, state=state)
    return _mark_compat(as_reward_model(base, cfg))


# ---- defaults ---------------------------------------------------------------------------------------
def default_config(task: str, base: nn.Module | None) -> PoolerConfig:
    """vLLM's defaults: embed = CLS (encoders) or LAST (decoders), normalised; classify / score =
    the last token, activated; reward = every token, activated (vLLM's token_classify: sigmoid for
    one label, softmax over several, even over hidden states without a head; use_activation=False
    gives them raw)."""
    if task == "embed":
        kind = PoolingType.LAST if base is None or is_causal(base) else PoolingType.CLS
        return PoolerConfig(pooling_type=kind, normalize=True)
    if task in ("classify", "score"):
        return PoolerConfig(pooling_type=PoolingType.LAST, softmax=True)
    return PoolerConfig(pooling_type=PoolingType.ALL, softmax=True)


def is_causal(base: nn.Module) -> bool:
    """Decoder or encoder, as its attention modules say (what our attention function reads too)."""
    flags = [m.is_causal for m in base.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return any(flags) if flags else True


_ACTIVATIONS = {"Identity": lambda x: x, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh}


def classification_activation(config):
    """Softmax over the labels; sigmoid for one label (cross-encoder relevance) or multi-label
    problems; a sentence-transformers CrossEncoder may name its own."""
    named = getattr(config, "sbert_ce_default_activation_function", None) or ""
    for name, fn in _ACTIVATIONS.items():
        if named.endswith(name):
            return fn
    if config.num_labels == 1 or getattr(config, "problem_type", None) == "multi_label_classification":
        return torch.sigmoid
    return lambda x: torch.softmax(x, dim=-1)


# ---- classes and weights ------------------------------------------------------------------------
def task_class(task: str, config, model_dir, trust_remote_code: bool) -> type:
    """The HF class for `task`: the checkpoint's own architecture when it fits, else the auto class."""
    import transformers
    from transformers.models.auto import modeling_auto

    arch = architecture_of(config)
    auto_key, mapping_name = _AUTO[task]
    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code and auto_key in auto_map:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        return get_class_from_dynamic_module(auto_map[auto_key], str(model_dir))
    own = getattr(transformers, arch, None)
    if own is not None and _fits(task, arch):
        return own
    mapping = getattr(modeling_auto, mapping_name)
    if type(config) in mapping:
        return mapping[type(config)]
    raise ValueError(
        f"task {task!r} is not supported for architecture {arch!r}: Transformers has no {auto_key} class "
        f"for model_type {getattr(config, 'model_type', None)!r}"
    )


def _fits(task: str, arch: str) -> bool:
    if task in ("classify", "score"):
        return arch.endswith("ForSequenceClassification")
    if task == "reward":
        return arch.endswith("ForTokenClassification")
    if task == "generate":
        return arch.endswith(("ForCausalLM", "LMHeadModel"))
    return arch.endswith("Model") and not arch.endswith(("LMHeadModel", "RewardModel"))


def _load(cls: type, model_dir, config, dtype: torch.dtype, head_required: bool = False, state=None) -> nn.Module:
    from anymodel.adapters.computed_buffers import load_pretrained
    from anymodel.attention_backend.interface import register

    if state is not None and state.world_size > 1:
        return _load_parallel(cls, model_dir, config, dtype, head_required, state)
    compatible = bool(getattr(cls, "_supports_attention_backend", False))
    kwargs = {"attn_implementation": register()} if compatible else {}
    model, info = load_pretrained(cls, model_dir, config, dtype, **kwargs)  # computed buffers restored
    for m in (model, model.base_model):  # read back by _mark_compat on the base model
        m.anymodel_compat = not compatible
    prefix = getattr(model, "base_model_prefix", "")
    missing_head = [k for k in info.get("missing_keys", []) if not k.startswith(prefix + ".")]
    if head_required and missing_head and model.base_model is not model:
        raise _no_trained_head(cls, model_dir, missing_head)
    return model


def _load_parallel(cls: type, model_dir, config, dtype: torch.dtype, head_required: bool, state) -> nn.Module:
    """This rank's part of `cls`: base model sharded (adapters/parallel.py), heads whole."""
    from anymodel.adapters.parallel import load_parallel_pooling_model
    from anymodel.adapters.sharded_loader import MissingTensorsError

    if not getattr(cls, "_supports_attention_backend", False) or recurrent_state(cls, config):
        raise ValueError(
            f"{cls.__name__} runs on the compat path (its own attention, one request at a time), which runs in "
            f"one process only: use tensor_parallel_size=1 and pipeline_parallel_size=1 (got "
            f"{state.tp_size} and {state.pp_size})"
        )
    try:
        return load_parallel_pooling_model(cls, model_dir, config, dtype, state)
    except MissingTensorsError as e:
        prefix = getattr(cls, "base_model_prefix", "")
        missing_head = [k for k in e.names if not k.startswith(prefix + ".")]
        if head_required and missing_head:
            raise _no_trained_head(cls, model_dir, missing_head) from e
        raise


def _no_trained_head(cls: type, model_dir, missing_head: list[str]) -> ValueError:
    return ValueError(
        f"{cls.__name__}: the checkpoint {str(model_dir)!r} has no trained head ({sorted(missing_head)[:4]} "
        "missing); pick the task its architecture was trained for, or pass hf_overrides={'architectures': [...]}"
    )


def _mark_compat(model: TransformersPoolingModel) -> TransformersPoolingModel:
    """Models our attention cannot reach run each request alone through their own forward."""
    from dataclasses import replace

    base = model.model
    if getattr(base, "anymodel_compat", False) or recurrent_state(type(base), base.config):
        logger.warning("anymodel: %s runs on the compat path (its own attention, one request at a time)",
                       type(model.model).__name__)
        model.traits = replace(model.traits, paged_kv_cache=False)
    return model
