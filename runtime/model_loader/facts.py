"""What the loader's rules read: the request (task, model_impl, flags, ranks) and what the config
and the class registries say about the model, each looked up once and only when a rule asks.

Nothing here loads weights: the HF class is resolved (its module imported, remote code only with
trust_remote_code=True), the native class is looked up by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from anymodel import loader
from anymodel.model_facts import architecture_of
from anymodel.distributed import ParallelState


@dataclass(frozen=True)
class Request:
    """The user's side of the decision (from EngineArgs, the task already resolved)."""

    task: str
    model_impl: str
    trust_remote_code: bool
    enable_compat_path: bool
    quantization: str | None = None  # LLM(quantization=...): must agree with the checkpoint

    @classmethod
    def from_args(cls, args, config, model_dir: Path) -> "Request":
        from anymodel.pooling.tasks import resolve_task

        # The engine resolved it already (then this returns it as is); `inspect` passes "auto".
        task = resolve_task(args.task, config, model_dir, args.runner)
        return cls(task, args.model_impl, bool(args.trust_remote_code), bool(args.enable_compat_path),
                   getattr(args, "quantization", None))


@dataclass
class LoadFacts:
    request: Request
    config: object
    model_dir: Path
    state: ParallelState

    @cached_property
    def arch(self) -> str:
        return architecture_of(self.config)

    # ---- quantization ---------------------------------------------------------------------------
    @cached_property
    def _quantization(self) -> tuple[object, str | None]:
        from anymodel.native_overrides.quantization import resolve_quantization

        try:
            return resolve_quantization(self.config, self.request.quantization, self.model_dir), None
        except ValueError as e:  # unsupported method, a contradiction, quantized tensors without a config
            return None, str(e)

    @property
    def quantization(self):
        """The checkpoint's QuantConfig (None: plain weights)."""
        return self._quantization[0]

    @property
    def quantization_refusal(self) -> str | None:
        if self._quantization[1] is None and self.quantization is not None and self.request.task != "generate":
            return (f"task {self.request.task!r}: quantized checkpoints ({self.quantization.method}) are served for "
                    "generation only; pooling models load plain weights")
        return self._quantization[1]

    @property
    def quantization_summary(self) -> str:
        from anymodel.native_overrides.quantization import describe

        if self.quantization is None:
            return "plain weights (no quantization_config, no quantized tensors)"
        return f"{describe(self.quantization)}: stays quantized in memory, dequantized per forward on CPU"

    # ---- native ---------------------------------------------------------------------------------
    @cached_property
    def native(self) -> type | None:
        """The native class registered for the architecture (whether or not it takes this config)."""
        from anymodel.native_overrides import native_class

        return native_class(self.arch)

    @cached_property
    def native_refusal(self) -> str | None:
        """What in the config the native class cannot reproduce; "native" loads it anyway, so that
        from_pretrained raises with the reason."""
        return self.native.unsupported(self.config) if self.native is not None else None

    @property
    def native_names(self) -> list[str]:
        from anymodel import native_overrides

        return sorted(native_overrides.NATIVE_MODELS)

    @property
    def native_fits_world(self) -> bool:
        """Native classes opt in to parallelism, sharding themselves through anymodel.distributed."""
        from anymodel.native_overrides import parallel_support

        tp, pp = parallel_support(self.native)
        return (self.state.tp_size == 1 or tp) and (self.state.pp_size == 1 or pp)

    # ---- the Transformers class -----------------------------------------------------------------
    @cached_property
    def _hf(self) -> tuple[loader.ModelClass | None, str | None]:
        try:
            return loader.resolve_causal_lm_class(self.config, self.model_dir, self.request.trust_remote_code), None
        except ValueError as e:  # encoder-decoder, or no causal-LM class: a refusal, with its message
            return None, str(e)

    @property
    def hf(self) -> loader.ModelClass | None:
        return self._hf[0]

    @property
    def hf_error(self) -> str | None:
        return self._hf[1]

    @cached_property
    def pooling_class(self) -> type | str:
        """The HF class the pooling task loads (the reward head's for reward), or why there is none."""
        from anymodel.adapters.pooling_loader import task_class

        task = self.request.task
        if task == "reward" and not self.arch.endswith("ForTokenClassification"):
            task = "embed"  # a base model (or causal LM) whose every token is a reward
        try:
            return task_class(task, self.config, self.model_dir, self.request.trust_remote_code)
        except ValueError as e:
            return str(e)

    @property
    def pooling_class_name(self) -> str:
        cls = self.pooling_class
        return cls.__name__ if isinstance(cls, type) else f"no class: {cls}"

    @property
    def hf_name(self) -> str:
        return self.hf.cls.__name__ if self.hf is not None else self.arch

    @property
    def incompatibility(self) -> str:
        """Why the HF class cannot run on the paged path ("" when it can)."""
        return (self.hf.incompatibility if self.hf is not None else None) or ""

    @property
    def requirements(self) -> str:
        return loader.BACKEND_REQUIREMENTS

    @property
    def ranks(self) -> str:
        s = self.state
        return "" if s.world_size == 1 else f", sharded over {s.world_size} ranks (tp={s.tp_size}, pp={s.pp_size})"

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.config, "is_encoder_decoder", False))
