"""`LLM.describe()`: what runs a model and why, from facts the code holds, not from a guess.

    the model loader's decision     rules.py's first rule that applies, with its reason (as `inspect`)
    what each worker built          the model class, its decoder layers (native / Transformers /
                                    remote code), its pipeline stage, tensor-parallel styles
    attention                       the attention calls each worker's model made through our paged
                                    attention (discovered at start-up: one KV cache per call)
    MoE experts                     which experts path each experts module runs (adapters/experts.py)
    KV cache                        the tensors the workers allocated: blocks, block size, bytes, dtype

Each worker reports with `rank_facts` (a collective_rpc); the engine process writes the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

NATIVE_PREFIX = "anymodel.native_overrides"


@dataclass
class LayerGroup:
    type_name: str
    code: str  # "native code", "Transformers code", "remote code (file.py)", "anymodel adapter" or a module name
    count: int
    tp_styles: dict[str, str] = field(default_factory=dict)  # submodule -> style, in the first layer of the type


@dataclass
class RankFacts:
    rank: int
    tp_rank: int
    pp_rank: int
    device: str
    model_dir: str
    model_class: str
    model_code: str
    param_dtype: str
    backend: str
    layers_path: str | None  # the decoder layer list ("model.layers"), None when none is found
    num_layers: int
    owned: tuple[int, int] | None  # [start, end) of the layers this stage runs
    groups: list[LayerGroup]
    attention_calls: int  # KV caches allocated: one per attention call through our function
    kv: dict | None  # num_blocks, block_size, bytes_per_block, dtype
    experts: dict[str, int] = field(default_factory=dict)  # "Class: experts path" -> modules (adapters/experts.py)


def rank_facts(worker) -> RankFacts:
    """Runs on every worker (collective_rpc)."""
    model, state, runner = worker.model, worker.state, worker.runner
    path, layers = _decoder_layers(model)
    owned = [i for i, layer in enumerate(layers) if not _is_placeholder(layer)]
    groups: dict[str, LayerGroup] = {}
    for i in owned:
        name = type(layers[i]).__name__
        if name not in groups:
            groups[name] = LayerGroup(name, _code_of(type(layers[i])), 0, _tp_styles(layers[i]) if state.tp_size > 1 else {})
        groups[name].count += 1
    param = next(iter(model.parameters()), None)
    return RankFacts(
        rank=state.rank, tp_rank=state.tp_rank, pp_rank=state.pp_rank, device=str(worker.device),
        model_dir=str(getattr(worker, "model_dir", "")), model_class=type(model).__name__,
        model_code=_code_of(type(model)), param_dtype=_dtype_name(param.dtype) if param is not None else "-",
        backend=getattr(runner.backend, "__name__", str(runner.backend)).rsplit(".", 1)[-1],
        layers_path=path, num_layers=len(layers), owned=(owned[0], owned[-1] + 1) if owned else None,
        groups=list(groups.values()), attention_calls=len(runner.kv_caches), kv=_kv_facts(runner.kv_caches),
        experts=_experts_facts(model),
    )


def _experts_facts(model: nn.Module) -> dict[str, int]:
    from anymodel.adapters.experts import experts_paths

    return experts_paths(model)


def _decoder_layers(model: nn.Module) -> tuple[str | None, list]:
    """The longest nn.ModuleList: the decoder (or encoder) layers."""
    best: tuple[str | None, list] = (None, [])
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best[1]):
            best = (name, list(module))
    return best


def _is_placeholder(module: nn.Module) -> bool:
    from anymodel.adapters.pipeline_parallel import StagePlaceholder

    return isinstance(module, StagePlaceholder)


def _code_of(cls: type) -> str:
    mod = cls.__module__
    if mod.startswith(NATIVE_PREFIX):
        return "native code"
    if mod.startswith("transformers."):
        return "Transformers code"
    if mod.startswith("transformers_modules."):
        return f"remote code ({mod.split('.')[-1]}.py)"
    if mod.startswith("anymodel.adapters"):
        return "anymodel adapter"
    return mod


def _tp_styles(layer: nn.Module) -> dict[str, str]:
    """Transformers layers: the plan style each module was cut by (recorded by tensor_parallel.py);
    native layers: their parallel linear classes."""
    styles = {}
    for name, module in layer.named_modules():
        style = getattr(module, "anymodel_tp_style", None)
        if style is None and type(module).__module__.startswith(NATIVE_PREFIX) and "Parallel" in type(module).__name__:
            style = type(module).__name__
        if style is not None and name:
            styles[name] = style
    return styles


def _kv_facts(kv_caches: list) -> dict | None:
    if not kv_caches:
        return None
    key = kv_caches[0][0]  # [num_blocks, block_size, num_kv_heads, head_dim]
    per_block = sum(k[0].numel() * k.element_size() + v[0].numel() * v.element_size() for k, v in kv_caches)
    return {"num_blocks": key.shape[0], "block_size": key.shape[1], "bytes_per_block": per_block,
            "dtype": _dtype_name(key.dtype)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _runs_as(engine, facts: RankFacts) -> str:
    """The implementation the workers built (a fallback at load time can differ from the decision)."""
    if engine.task != "generate":
        return "pooling"
    if facts.model_code == "native code":
        return "native"
    return "transformers" if engine.traits.paged_kv_cache else "compat"


def describe(llm) -> str:
    from anymodel.distributed import ParallelState
    from anymodel.model_loader import decide

    engine, args = llm.engine, llm.engine.args
    ranks: list[RankFacts] = llm.collective_rpc(rank_facts)
    first = ranks[0]
    decision = decide(args, engine.hf_config, first.model_dir,
                      ParallelState(tp_size=args.tensor_parallel_size, pp_size=args.pipeline_parallel_size))
    runs = _runs_as(engine, first)
    lines = ["anymodel: what runs and why",
             f"model         {first.model_dir} (revision {args.revision or 'default'}), {decision.facts.arch}, "
             f"task {engine.task}",
             f"decision      {decision.impl} (rule {decision.rule}): {decision.reason.splitlines()[0]}"]
    if runs != decision.impl:
        lines.append(f"runs          {runs}: the {decision.impl} build fell back at load time (see the start-up warning)")
    lines += [
        f"model class   {first.model_class} ({first.model_code})",
        f"dtype         {first.param_dtype}",
        f"attention     backend {first.backend} on {first.device}",
        f"layout        tensor_parallel_size={args.tensor_parallel_size} pipeline_parallel_size="
        f"{args.pipeline_parallel_size} ({len(ranks)} worker{'s' if len(ranks) > 1 else ''})",
        f"quantization  {_quantization_line(decision.facts.quantization)}",
        _lora_line(args),
        f"max_model_len {engine.max_model_len}",
        _kv_line(engine, ranks),
    ]
    for facts in ranks:
        lines += _rank_lines(facts, len(ranks) > 1)
    return "\n".join(lines)


def _quantization_line(quant) -> str:
    from anymodel.native_overrides.quantization import describe as describe_quantization

    return describe_quantization(quant)


def _lora_line(args) -> str:
    if not args.enable_lora:
        return "LoRA          none"
    return (f"LoRA          every decoder linear wrapped (anymodel.lora): max_loras={args.max_loras} device slots, "
            f"max_lora_rank={args.max_lora_rank}, max_cpu_loras={args.max_cpu_loras or args.max_loras}")


def _kv_line(engine, ranks: list[RankFacts]) -> str:
    kv = [r.kv for r in ranks if r.kv]
    if not kv:
        return (f"KV cache      none of ours: the model keeps its own cache ({engine.kv.pool.num_blocks} blocks of "
                f"{engine.args.block_size} tokens are bookkeeping)")
    per_block = max(k["bytes_per_block"] for k in kv)
    blocks = kv[0]["num_blocks"]
    return (f"KV cache      {blocks} blocks x {kv[0]['block_size']} tokens, {per_block} bytes per block"
            f"{' (largest rank)' if len(kv) > 1 else ''}, {_size(blocks * per_block)} per worker, dtype {kv[0]['dtype']}")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def _rank_lines(f: RankFacts, several: bool) -> list[str]:
    head = f"rank {f.rank} (tp {f.tp_rank}, pp {f.pp_rank})" if several else "worker"
    if f.layers_path is None:
        return [f"{head}: no layer list found; {f.attention_calls} attention calls through anymodel's attention"]
    stage = (f"{f.layers_path}[{f.owned[0]}:{f.owned[1]}] of {f.num_layers}" if f.owned
             else f"none of the {f.num_layers} {f.layers_path}")
    owned = f.owned[1] - f.owned[0] if f.owned else 0
    if f.attention_calls:
        attention = f"attention through anymodel's paged attention: {f.attention_calls} calls for {owned} layers"
    else:
        attention = "attention: the model's own (no paged KV cache)"
    lines = [f"{head}: {stage}; {attention}"]
    for g in f.groups:
        lines.append(f"  {g.count} x {g.type_name} ({g.code})")
        if g.tp_styles:
            lines.append("    tensor-parallel: " + ", ".join(f"{k} {v}" for k, v in g.tp_styles.items()))
    lines += [f"  MoE experts: {n} x {path}" for path, n in f.experts.items()]
    return lines
