"""Tensor and pipeline parallelism for a Transformers model, from its own plans.

    cls._from_config on meta  (init_empty_weights(include_buffers=False): rotary buffers stay real)
      -> base_model_pp_plan: placeholders for what other stages own        pipeline_parallel.py
      -> base_model_tp_plan: shrink parameters to this rank's shard,
                             wrap forwards with the collectives             tensor_parallel.py
      -> read only this rank's safetensors slices into the meta params     sharded_loader.py
      -> TransformersForCausalLM(base model, lm_head)

The LM head is vocab-parallel (`colwise_gather_output` unless the model's plan says otherwise):
each rank computes logits for its slice of the vocabulary, gathered to [S, V] for sampling.

Pooling models (load_parallel_pooling_model) go through the same steps with only their base model
cut: every row-parallel output is all-reduced, so the final hidden states [T, H] are whole on
every rank, and the heads (BERT pooler, classifier, `score`, an LM head for reward) stay whole too.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from anymodel import distributed as dist
from anymodel.adapters.attention_heads import heads_of, localize_heads
from anymodel.adapters.causal_lm import TransformersForCausalLM, decoder_of
from anymodel.model_facts import text_config_of
from anymodel.adapters.pipeline_parallel import StagePlaceholder, apply_stage_plan, resolve_stage_plan
from anymodel.adapters.sharded_loader import load_sharded
from anymodel.adapters.tensor_parallel import (
    HEAD_SPLITTING,
    ShardSpec,
    Target,
    apply_style,
    check_style,
    shard_parameter,
)

logger = logging.getLogger("anymodel")

# (column-parallel linears, the row-parallel linear that reads their output), as paths below one
# module. Column outputs stay sharded through what lies between (attention over local heads, an
# elementwise activation); the row-parallel linear all-reduces them back to full width.
_INFERRED_PAIRS = (
    (("q_proj", "k_proj", "v_proj"), "o_proj"),  # Llama-style attention
    (("gate_proj", "up_proj"), "down_proj"),  # Llama-style MLP
    (("attention.self.query", "attention.self.key", "attention.self.value"), "attention.output.dense"),  # BERT layer
    (("intermediate.dense",), "output.dense"),  # BERT layer: dense -> activation -> dense
)


def load_parallel_causal_lm(cls, has_lm_head: bool, model_dir, config, dtype: torch.dtype, state=None,
                            quant_method=None):
    """This rank's part of the model: its pipeline stage, its tensor-parallel shards; with
    `quant_method` (a QuantMethod), the checkpoint's quantized linears stay quantized (also on one rank)."""
    state = state or dist.get_parallel_state()
    hf = build_on_meta(cls, config, dtype)
    if not has_lm_head:  # a base-only class (custom AutoModel): the head joins it for loading
        embed = hf.get_input_embeddings()
        hf.lm_head = nn.Linear(embed.weight.shape[1], embed.weight.shape[0], bias=False, dtype=dtype, device="meta")
    head_name = _name_of(hf, hf.lm_head if not has_lm_head else hf.get_output_embeddings())
    tied = tied_parameters(hf, head_name)
    _cut_and_load(hf, head_name, model_dir, dtype, tied, state, quant_method)
    head = hf.get_submodule(head_name)
    if not has_lm_head:
        del hf.lm_head
    hf.eval()
    return TransformersForCausalLM(decoder_of(hf), head, hf.config)


def load_parallel_pooling_model(cls, model_dir, config, dtype: torch.dtype, state=None) -> nn.Module:
    """This rank's part of an HF model used for pooling (a base model, *ForSequenceClassification,
    *ForTokenClassification, a causal LM for reward): its base model cut like a generative one's;
    everything outside it (heads: [.., H] -> labels / vocabulary) whole on every rank, since it
    reads hidden states that are whole after each row-parallel all-reduce."""
    state = state or dist.get_parallel_state()
    hf = build_on_meta(cls, config, dtype)
    output = hf.get_output_embeddings()
    tied = tied_parameters(hf, _name_of(hf, output)) if isinstance(output, nn.Module) else {}
    _cut_and_load(hf, None, model_dir, dtype, tied, state)
    hf.eval()
    return hf


def _cut_and_load(hf: nn.Module, head_name: str | None, model_dir, dtype: torch.dtype, tied, state,
                  quant_method=None) -> None:
    """Pipeline stage, then quantized linears, then tensor-parallel shards, then this rank's weights.
    `head_name`: the LM head, vocab-parallel and on the last stage only; None (pooling): no head is
    cut or dropped."""
    if state.pp_size > 1:
        apply_pipeline_plan(hf, head_name, state, dtype)
    if quant_method is not None:
        from anymodel.adapters.quantized_loading import quantize_hf_linears

        quantize_hf_linears(hf, quant_method, model_dir, staged=state.pp_size > 1)
    specs = apply_tensor_plan(hf, resolve_tp_plan(hf, head_name), state) if state.tp_size > 1 else {}
    load_sharded(hf, model_dir, specs, dtype, tied)
    _share_tied(hf, tied, specs)


def build_on_meta(cls, config, dtype: torch.dtype) -> nn.Module:
    from accelerate import init_empty_weights

    from anymodel.adapters.experts import register_experts
    from anymodel.attention_backend.interface import register

    attn, experts = register(), register_experts()
    with init_empty_weights(include_buffers=False):
        return cls._from_config(config, dtype=dtype, attn_implementation=attn, experts_implementation=experts)


def _name_of(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise ValueError(f"{type(target).__name__} is not a submodule of {type(root).__name__}")


def tied_parameters(hf: nn.Module, head_name: str) -> dict[str, str]:
    """Parameters a checkpoint may omit -> the parameter they share (lm_head.weight -> embed_tokens.weight)."""
    text = text_config_of(hf.config)
    if not getattr(text, "tie_word_embeddings", False):
        return {}
    declared = getattr(hf, "_tied_weights_keys", None)
    tied = dict(declared) if isinstance(declared, dict) else {}
    tied[f"{head_name}.weight"] = f"{_name_of(hf, hf.get_input_embeddings())}.weight"
    return tied


def _share_tied(hf: nn.Module, tied: dict[str, str], specs: dict[str, ShardSpec]) -> None:
    """A tied head cut like its embedding (both vocab-parallel, or both whole) shares its tensor."""
    params = dict(hf.named_parameters(remove_duplicate=False))
    for target, source in tied.items():
        if target in params and source in params and specs.get(target) == specs.get(source):
            owner, _, attr = target.rpartition(".")
            hf.get_submodule(owner)._parameters[attr] = params[source]


# ---- pipeline -----------------------------------------------------------------------------------
def apply_pipeline_plan(hf: nn.Module, head_name: str | None, state, dtype: torch.dtype) -> None:
    """Stage the base model; an LM head (`head_name`) lives on the last stage only. Pooling heads
    stay on every stage (small), but only the last stage runs them (ModelRunner.produces_output)."""
    base = hf.base_model
    plan = resolve_stage_plan(base)
    start, end = apply_stage_plan(base, plan, state.pp_rank, state.pp_size, dtype)
    if head_name is not None and not state.is_last_stage:
        owner, _, attr = head_name.rpartition(".")
        parent = hf.get_submodule(owner) if owner else hf
        setattr(parent, attr, StagePlaceholder(getattr(parent, attr), ["hidden_states"], ["logits"], dtype))
    logger.info("anymodel: pipeline stage %d/%d owns %s[%d:%d]", state.pp_rank, state.pp_size, plan.layers, start, end)


# ---- tensor -------------------------------------------------------------------------------------
def resolve_tp_plan(hf: nn.Module, head_name: str | None) -> dict[str, str]:
    """The model's resolved plan (class `_tp_plan` + config `base_model_tp_plan`, names relative to
    `hf`), or one inferred from Llama- / BERT-style names. With `head_name` (generation) the LM
    head is vocab-parallel by default; without (pooling) only entries inside the base model apply,
    so heads stay whole."""
    plan = dict(getattr(hf, "tp_plan", None) or getattr(hf, "_tp_plan", None) or {})
    if head_name is None:
        base = _name_of(hf, hf.base_model)
        plan = {k: v for k, v in plan.items() if not base or k.startswith(f"{base}.")}
    if not any(head_name is None or not k.startswith(head_name) for k in plan):
        plan = {**infer_tp_plan(hf), **plan}
        logger.warning("anymodel: %s declares no base_model_tp_plan; inferred %s", type(hf).__name__, plan)
    if head_name is not None:
        plan.setdefault(head_name, "colwise_gather_output")
    return plan


def infer_tp_plan(hf: nn.Module) -> dict[str, str]:
    """From the base model's names (_INFERRED_PAIRS: q/k/v + o_proj, gate/up + down_proj, BERT's
    query/key/value + attention.output.dense, intermediate.dense + output.dense), plus a
    vocab-parallel input embedding. Heads outside the base model are never matched."""
    base = _name_of(hf, hf.base_model)
    plan: dict[str, str] = {}
    for name, module in hf.base_model.named_modules():
        prefix = re.sub(r"\.\d+\.", ".*.", f".{base}.{name}.").strip(".")  # layers.0 -> layers.*
        for cols, row in _INFERRED_PAIRS:
            present = [c for c in cols if _linear_at(module, c)]
            if present and _linear_at(module, row):
                plan.update({f"{prefix}.{c}".lstrip("."): "colwise" for c in present})
                plan[f"{prefix}.{row}".lstrip(".")] = "rowwise"
    if not plan:
        raise ValueError(
            f"{type(hf).__name__} declares no base_model_tp_plan and none can be inferred (looked for "
            "q_proj/k_proj/v_proj + o_proj and gate_proj/up_proj + down_proj linears, or BERT-style "
            "attention.self.query/key/value + attention.output.dense and intermediate.dense + output.dense); "
            "add a base_model_tp_plan to its config (hf_overrides={'base_model_tp_plan': {...}}) or use "
            "tensor_parallel_size=1"
        )
    if isinstance(hf.get_input_embeddings(), nn.Embedding):
        plan[_name_of(hf, hf.get_input_embeddings())] = "embedding_rowwise"
    return plan


def _linear_at(module: nn.Module, path: str) -> bool:
    """Whether `path` (dotted, below `module`) names an nn.Linear."""
    for part in path.split("."):
        module = module._modules.get(part)
        if module is None:
            return False
    return isinstance(module, nn.Linear)


def apply_tensor_plan(root: nn.Module, plan: dict[str, str], state) -> dict[str, ShardSpec]:
    """Shard every module / parameter the plan names; returns {qualified parameter name: ShardSpec}."""
    rules = [(re.compile(re.escape(k).replace(r"\*", r"[^.]+")), k, check_style(v, k)) for k, v in plan.items()]
    config = getattr(root, "config", None)  # None for a plain nn.Module: heads come from attributes
    text = text_config_of(config)
    modules = dict(root.named_modules())
    specs: dict[str, ShardSpec] = {}
    attention: dict[int, tuple[nn.Module, object]] = {}
    for name, module in modules.items():
        rule = _match(rules, name)
        if rule is None or isinstance(module, StagePlaceholder):
            continue
        parent = modules[name.rpartition(".")[0]]
        t = Target(module, name, rule[1], heads_of(parent, text), state.tp_size, state.tp_rank)
        specs.update({f"{name}.{p}": spec for p, spec in apply_style(t).items()})
        if t.heads is not None and t.style in HEAD_SPLITTING:
            attention[id(parent)] = (parent, t.heads)
    for name, _ in list(root.named_parameters()):
        rule = _match(rules, name)
        if rule is not None:
            owner_name, _, attr = name.rpartition(".")
            owner = modules[owner_name]
            t = Target(owner, name, rule[1], heads_of(owner, text), state.tp_size, state.tp_rank)
            specs[name] = shard_parameter(owner, attr, t)
    for parent, heads in attention.values():
        localize_heads(parent, heads, state.tp_size)
    return specs


def _match(rules, name: str):
    for regex, pattern, style in rules:
        if regex.fullmatch(name):
            return pattern, style
    return None
