"""The decision table: which implementation runs a model, and why. The first rule that applies
wins; `inspect` prints every rule with its verdict, the start-up log prints the winner.

    rule                 impl          applies when
    quantization         refuse        a quantized checkpoint anymodel cannot load exactly (method, tensors, task)
    pooling              pooling       the task is embed / classify / score / reward
    native-missing       refuse        model_impl="native", no native class for the architecture
    native-parallel      refuse        model_impl="native", the native class cannot shard this way
    native               native        a native class takes the config (and the ranks)
    encoder-decoder      refuse        the config has an encoder (no causal LM to serve)
    no-causal-lm         refuse        Transformers has no causal-LM class for it
    transformers         transformers  the HF class meets the backend's contract (paged attention)
    compat-quantized     refuse        not backend-compatible, and a quantized checkpoint (compat loads plain)
    compat-parallel      refuse        not backend-compatible, and several ranks (compat runs in one)
    compat               compat        not backend-compatible: it runs through its own attention
    incompatible         refuse        not backend-compatible, and the compat path is off
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from anymodel.model_loader.facts import LoadFacts, Request

IMPLS = ("pooling", "native", "transformers", "compat", "refuse")


@dataclass(frozen=True)
class Rule:
    name: str
    impl: str  # one of IMPLS
    applies: Callable[[LoadFacts], bool]
    reason: str  # why it applies (for "refuse": the error); a template over the facts, `{f.arch}`
    why_not: Callable[[LoadFacts], str]  # why it does not apply

    def verdict(self, facts: LoadFacts) -> "Verdict":
        if self.applies(facts):
            return Verdict(self, True, self.reason.format(f=facts))
        return Verdict(self, False, self.why_not(facts))


@dataclass(frozen=True)
class Verdict:
    rule: Rule
    applied: bool
    reason: str


@dataclass
class Decision:
    """The first rule that applies (`impl`, `reason`), the class it runs, and the verdicts of the
    rules before it (why they did not apply)."""

    verdict: Verdict
    facts: LoadFacts
    passed: list[Verdict] = field(default_factory=list)

    @property
    def impl(self) -> str:
        return self.verdict.rule.impl

    @property
    def rule(self) -> str:
        return self.verdict.rule.name

    @property
    def reason(self) -> str:
        return self.verdict.reason

    @property
    def cls(self) -> type | None:
        if self.impl == "native":
            return self.facts.native
        if self.impl == "pooling":
            return self.facts.pooling_class if isinstance(self.facts.pooling_class, type) else None
        return self.facts.hf.cls if self.impl in ("transformers", "compat") else None

    @property
    def log_line(self) -> str:
        return f"anymodel: {self.impl} for {self.facts.arch}: {self.reason}"


# ---- predicates and why-nots that take more than a line -------------------------------------------
def _native_applies(f: LoadFacts) -> bool:
    if f.request.model_impl == "transformers" or f.native is None or not f.native_fits_world:
        return False
    return f.request.model_impl == "native" or f.native_refusal is None


def _not_native(f: LoadFacts) -> str:
    if f.request.model_impl == "transformers":
        return "model_impl='transformers'"
    if f.native is None:
        return f"no native implementation for {f.arch} (native: {', '.join(f.native_names)})"
    if not f.native_fits_world:
        return f"native {f.native.__name__} cannot shard over tp={f.state.tp_size}, pp={f.state.pp_size}"
    return f"native {f.native.__name__} does not support {f.native_refusal}"


def _native_only(f: LoadFacts) -> bool:
    return f.request.model_impl == "native"


def _not_native_missing(f: LoadFacts) -> str:
    if not _native_only(f):
        return f"model_impl={f.request.model_impl!r}"
    return f"native {f.native.__name__} exists"


def _not_native_parallel(f: LoadFacts) -> str:
    if not _native_only(f):
        return f"model_impl={f.request.model_impl!r}"
    if f.native is None:
        return "no native class"
    return f"native {f.native.__name__} shards over tp={f.state.tp_size}, pp={f.state.pp_size}"


def _compatible(f: LoadFacts) -> bool:
    return f.hf is not None and f.hf.backend_compatible


def _incompatible(f: LoadFacts) -> bool:
    return f.hf is not None and not f.hf.backend_compatible


def _not_compat(f: LoadFacts) -> str:
    if _compatible(f):
        return f"{f.hf_name} is backend-compatible"
    if not f.request.enable_compat_path:
        return "enable_compat_path=False"
    return f"{f.hf_name} is a base model: the compat path needs a *ForCausalLM class"


def _no_class_or(text: str) -> Callable[[LoadFacts], str]:
    return lambda f: text.format(f=f) if f.hf is not None else "no causal-LM class"


RULES: tuple[Rule, ...] = (
    Rule("quantization", impl="refuse",
         applies=lambda f: f.quantization_refusal is not None,
         reason="{f.quantization_refusal}",
         why_not=lambda f: f.quantization_summary),
    Rule("pooling", impl="pooling",
         applies=lambda f: f.request.task != "generate",
         reason="task {f.request.task!r}: {f.pooling_class_name} under a pooler (adapters/pooling_loader.py)",
         why_not=lambda f: "task 'generate'"),
    Rule("native-missing", impl="refuse",
         applies=lambda f: _native_only(f) and f.native is None,
         reason="model_impl='native': no native implementation for architecture {f.arch!r}; "
                "native implementations: {f.native_names} (use model_impl='transformers')",
         why_not=_not_native_missing),
    Rule("native-parallel", impl="refuse",
         applies=lambda f: _native_only(f) and f.native is not None and not f.native_fits_world,
         reason="model_impl='native': {f.native.__name__} does not support tensor_parallel_size={f.state.tp_size} "
                "/ pipeline_parallel_size={f.state.pp_size} (use model_impl='transformers')",
         why_not=_not_native_parallel),
    Rule("native", impl="native",
         applies=_native_applies,
         reason="native {f.native.__name__}: hand-written, same checkpoint (fused QKV / gate-up, packed GEMMs)"
                "{f.ranks}",
         why_not=_not_native),
    Rule("encoder-decoder", impl="refuse",
         applies=lambda f: f.is_encoder_decoder,
         reason="{f.hf_error}",  # resolve_causal_lm_class's message
         why_not=lambda f: "decoder-only"),
    Rule("no-causal-lm", impl="refuse",
         applies=lambda f: f.hf is None,
         reason="{f.hf_error}",
         why_not=lambda f: f"{f.hf_name} ({'a *ForCausalLM' if f.hf.has_lm_head else 'a base model + lm_head'})"),
    Rule("transformers", impl="transformers",
         applies=_compatible,
         reason="Transformers backend: {f.hf_name} with anymodel's paged attention{f.ranks}",
         why_not=_no_class_or("{f.incompatibility}")),
    Rule("compat-quantized", impl="refuse",
         applies=lambda f: _incompatible(f) and f.quantization is not None,
         reason="{f.hf_name} is not compatible with the Transformers backend, and its compat path (the model's own "
                "from_pretrained) cannot load the {f.quantization.method} checkpoint's quantized linears",
         why_not=lambda f: "plain weights" if f.quantization is None else _no_class_or("{f.hf_name} is backend-compatible")(f)),
    Rule("compat-parallel", impl="refuse",
         applies=lambda f: _incompatible(f) and f.state.world_size > 1,
         reason="{f.hf_name} is not compatible with the Transformers backend, and its compat path runs in one "
                "process only: use tensor_parallel_size=1 and pipeline_parallel_size=1",
         why_not=lambda f: "one process" if f.state.world_size == 1 else f"{f.hf_name} is backend-compatible"),
    Rule("compat", impl="compat",
         applies=lambda f: _incompatible(f) and f.request.enable_compat_path and f.hf.has_lm_head,
         reason="compat path: {f.hf_name} through its own attention and its own HF cache (decode steps "
                "batched where it allows; no paged KV pool), because {f.incompatibility}",
         why_not=_not_compat),
    Rule("incompatible", impl="refuse",
         applies=_incompatible,
         reason="{f.hf_name} is not compatible with the Transformers backend; a compatible model meets all of:\n"
                "{f.requirements}\n(enable_compat_path=True runs it, slowly, through its own attention)",
         why_not=_no_class_or("{f.hf_name} is backend-compatible")),
)


def facts_for(args, config, model_dir, parallel_state) -> LoadFacts:
    return LoadFacts(Request.from_args(args, config, model_dir), config, model_dir, parallel_state)


def decide(args, config, model_dir, parallel_state, exclude: tuple[str, ...] = ()) -> Decision:
    """The first rule of RULES (less `exclude`) that applies, with why the earlier ones did not."""
    facts = facts_for(args, config, model_dir, parallel_state)
    passed = []
    for rule in RULES:
        if rule.name in exclude:
            continue
        verdict = rule.verdict(facts)
        if verdict.applied:
            return Decision(verdict, facts, passed)
        passed.append(verdict)
    raise AssertionError("the last rule always applies")


def evaluate(args, config, model_dir, parallel_state) -> tuple[Decision, list[Verdict]]:
    """The decision, then every rule's verdict, those after the winner too (each predicate stands
    on its own, so they still say whether they would apply): what `inspect` prints."""
    decision = decide(args, config, model_dir, parallel_state)
    return decision, [rule.verdict(decision.facts) for rule in RULES]
