"""Transformers 4.x APIs that remote code still imports, restored while trusted remote code loads.

Modeling files on the Hub were written for the Transformers of their day; Transformers 5 removed or
moved much of what they import, so they fail at import time. `legacy_transformers_api()` installs
each shim below for the duration of a `with` block (the loader wraps importing the repository's
config, tokenizer and model code, and building the model) and removes it afterwards, so that
in-library models never see them. Module-level names the remote code bound while importing keep
working after the block.

`patch_legacy_classes(config_cls, model_cls)` gives a remote config class 4.x's attribute defaults
(`config.max_length`, `config.pad_token_id`, ...) and turns a model class's 4.x list-style
`_tied_weights_keys` into the mapping Transformers 5 expects; it changes only those remote classes.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import traceback
import types
from dataclasses import dataclass
from typing import Callable

_MISSING = object()


@dataclass(frozen=True)
class Shim:
    module: str  # where 4.x had it
    name: str | None  # the attribute; None: the whole module
    build: Callable[[], object]  # the object to install (built lazily: some import torch / transformers)


def _masks_module() -> types.ModuleType:
    from anymodel.adapters import legacy_masks

    return legacy_masks


def _constraints_module() -> types.ModuleType:
    from anymodel.adapters import legacy_generation as g

    module = types.ModuleType("transformers.generation.beam_constraints")
    for name in ("Constraint", "PhrasalConstraint", "DisjunctiveConstraint"):
        setattr(module, name, getattr(g, name))
    return module


def _generation(name: str) -> Callable[[], object]:
    def build():
        from anymodel.adapters import legacy_generation

        return getattr(legacy_generation, name)

    return build


def _moved(module: str, name: str) -> Callable[[], object]:
    """A name 4.x also exported from another module."""
    return lambda: getattr(importlib.import_module(module), name)


def find_pruneable_heads_and_indices(heads, n_heads: int, head_size: int, already_pruned_heads):
    """4.x helper: the heads still to prune (set) and the flat indices of the columns that remain."""
    import torch

    mask = torch.ones(n_heads, head_size)
    heads = set(heads) - set(already_pruned_heads)
    for head in heads:
        shift = sum(1 for pruned in already_pruned_heads if pruned < head)  # earlier heads are gone already
        mask[head - shift] = 0
    index = torch.arange(len(mask.view(-1)))[mask.view(-1).eq(1)].long()
    return heads, index


def _always_true() -> bool:
    return True  # every torch anymodel supports has torch.fx and SDPA


def _shims() -> list[Shim]:
    shims = [
        Shim("transformers.modeling_attn_mask_utils", None, _masks_module),
        Shim("transformers.generation.beam_constraints", None, _constraints_module),
        Shim("transformers.deepspeed", None, lambda: importlib.import_module("transformers.integrations.deepspeed")),
        Shim("transformers.generation.logits_process", "LogitsWarper", _generation("LogitsWarper")),
        Shim("transformers.pytorch_utils", "find_pruneable_heads_and_indices", lambda: find_pruneable_heads_and_indices),
    ]
    for module in ("transformers.utils", "transformers.utils.import_utils"):
        shims += [Shim(module, "is_torch_fx_available", lambda: _always_true),
                  Shim(module, "is_torch_sdpa_available", lambda: _always_true)]
    generation_names = ("Constraint", "PhrasalConstraint", "DisjunctiveConstraint", "LogitsWarper", "BeamScorer",
                        "BeamSearchScorer", "ConstrainedBeamSearchScorer")
    for module in ("transformers", "transformers.generation", "transformers.generation.utils"):
        shims += [Shim(module, name, _generation(name)) for name in generation_names]
    shims += [Shim("transformers.generation.utils", alias, _output_alias(alias)) for alias in _OUTPUT_ALIASES]
    for name in ("Conv1D", "apply_chunking_to_forward", "prune_linear_layer"):
        shims.append(Shim("transformers.modeling_utils", name, _moved("transformers.pytorch_utils", name)))
    shims += [
        Shim("transformers.modeling_utils", "find_pruneable_heads_and_indices", lambda: find_pruneable_heads_and_indices),
        Shim("transformers.modeling_utils", "PretrainedConfig", _moved("transformers", "PretrainedConfig")),
        # 4.x picked the attention class by name; 5.x's LlamaAttention dispatches on config._attn_implementation
        Shim("transformers.models.llama.modeling_llama", "LlamaFlashAttention2",
             _moved("transformers.models.llama.modeling_llama", "LlamaAttention")),
        Shim("transformers.models.llama.modeling_llama", "LlamaSdpaAttention",
             _moved("transformers.models.llama.modeling_llama", "LlamaAttention")),
    ]
    return shims


_OUTPUT_ALIASES = [f"{s}{kind}" for s in ("GreedySearch", "Sample", "ContrastiveSearch", "BeamSearch", "BeamSample")
                   for kind in ("DecoderOnlyOutput", "EncoderDecoderOutput", "Output")]


def _output_alias(alias: str) -> Callable[[], object]:
    def build():
        from anymodel.adapters.legacy_generation import output_aliases

        return output_aliases()[alias]

    return build


def shimmed_names() -> list[str]:
    """Every restored API as `module.name` (README, error messages)."""
    return sorted(f"{s.module}.{s.name}" if s.name else s.module for s in _shims())


class _Installed:
    """What one `with` block changed, to be undone in reverse order."""

    def __init__(self) -> None:
        self.undo: list[Callable[[], None]] = []

    def module(self, name: str, module: types.ModuleType) -> None:
        if name in sys.modules or _importable(name):
            return  # the real one exists (a newer Transformers may restore it): leave it alone
        sys.modules[name] = module
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules.get(parent_name)
        self.undo.append(lambda: sys.modules.pop(name, None))
        if parent is not None and not hasattr(parent, child):
            setattr(parent, child, module)
            self.undo.append(lambda: _delattr(parent, child))

    def attribute(self, module_name: str, name: str, build: Callable[[], object]) -> None:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return
        if hasattr(module, name):
            return
        setattr(module, name, build())
        self.undo.append(lambda: _delattr(module, name))


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _delattr(obj, name: str) -> None:
    with contextlib.suppress(AttributeError):
        delattr(obj, name)


@contextlib.contextmanager
def legacy_transformers_api():
    """Install the 4.x shims for the duration of the block (re-entrant: an inner block adds nothing)."""
    shims = _shims()
    # Import every module we patch before patching any: the first import of a Transformers modeling
    # module replaces the `transformers` object in sys.modules, which would drop attributes set on it.
    for module in {s.module for s in shims if s.name is not None}:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    installed = _Installed()
    try:
        for shim in shims:
            if shim.name is None:
                installed.module(shim.module, shim.build())
            else:
                installed.attribute(shim.module, shim.name, shim.build)
        yield
    finally:
        for undo in reversed(installed.undo):
            undo()


# ------------------------------------------------------------------------- classes, not modules
# PretrainedConfig's 4.x defaults that 5.x no longer sets (generation settings moved to
# GenerationConfig; token ids to the model configs that use them). Old code reads them as attributes.
_CONFIG_DEFAULTS = {
    "max_length": 20, "min_length": 0, "do_sample": False, "early_stopping": False, "num_beams": 1,
    "num_beam_groups": 1, "diversity_penalty": 0.0, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
    "typical_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "num_return_sequences": 1, "output_scores": False,
    "return_dict_in_generate": False, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "remove_invalid_values": False, "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "torchscript": False, "use_bfloat16": False, "is_decoder": False,
    "add_cross_attention": False, "cross_attention_hidden_size": None, "tie_encoder_decoder": False,
    "tie_word_embeddings": True, "finetuning_task": None, "tokenizer_class": None, "prefix": None,
    "bos_token_id": None, "pad_token_id": None, "eos_token_id": None, "sep_token_id": None,
    "decoder_start_token_id": None, "task_specific_params": None, "problem_type": None,
}
_MUTABLE_DEFAULTS = {"pruned_heads": dict}


def _legacy_config_getattr(self, name: str):
    """Called only for attributes the config does not have (after __getattribute__ failed)."""
    if name in _CONFIG_DEFAULTS:
        return _CONFIG_DEFAULTS[name]
    if name in _MUTABLE_DEFAULTS:
        value = _MUTABLE_DEFAULTS[name]()
        object.__setattr__(self, name, value)
        return value
    raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _legacy_tied_weights(self) -> dict[str, str]:
    """4.x's list of output-embedding keys, as 5.x's {target: source}: each ties to the input embeddings."""
    keys = type(self)._legacy_tied_weights_keys
    embed = self.get_input_embeddings() if hasattr(self, "get_input_embeddings") else None
    weight = getattr(embed, "weight", None)
    source = next((name for name, p in self.named_parameters() if p is weight), None) if weight is not None else None
    if source is None:
        return {}
    return {key: source for key in keys if key != source}


def patch_legacy_classes(config_cls: type | None = None, model_cls: type | None = None) -> None:
    """Give remote classes the 4.x behaviour their code expects (idempotent)."""
    if config_cls is not None and "__getattr__" not in config_cls.__dict__:
        config_cls.__getattr__ = _legacy_config_getattr
    for cls in (model_cls.__mro__ if model_cls is not None else ()):
        tied = cls.__dict__.get("_tied_weights_keys", _MISSING)
        if isinstance(tied, (list, tuple)):
            cls._legacy_tied_weights_keys = list(tied)
            cls._tied_weights_keys = property(_legacy_tied_weights)


# ------------------------------------------------------------------------- when it still fails
@contextlib.contextmanager
def trusted_remote_code(model_type: str | None = None):
    """Import / build trusted remote code with the 4.x shims installed; a failure inside the
    repository's own files becomes one ValueError naming the file, the line and what to do."""
    with legacy_transformers_api():
        try:
            yield
        except (ImportError, AttributeError, NameError, TypeError) as exc:
            site = _remote_frame(exc)
            if site is None:
                raise
            raise ValueError(_failure_message(exc, site, model_type)) from exc


def _remote_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost traceback frame in a repository's code (Transformers copies it to transformers_modules)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "transformers_modules" in f.filename]
    return frames[-1] if frames else None


def _failure_message(exc: BaseException, site: traceback.FrameSummary, model_type: str | None) -> str:
    import transformers

    what = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ImportError):
        what = f"it imports something Transformers {transformers.__version__} no longer has ({exc})"
    message = (f"the model's remote code failed at {site.filename}:{site.lineno} (`{(site.line or '').strip()}`): "
               f"{what}. It was probably written for an older Transformers; anymodel restores the common 4.x APIs "
               "(see README, 'Bring your own model'), but not this one. Ask the model's authors for code that "
               "runs on Transformers 5, or fix the file locally.")
    in_library = _in_library_hint(model_type)
    return f"{message} {in_library}" if in_library else message


def _in_library_hint(model_type: str | None) -> str | None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type and model_type in CONFIG_MAPPING_NAMES:
        return (f"Transformers has its own implementation of model_type {model_type!r}: load with "
                "trust_remote_code=False to use it (when the checkpoint's weight names match).")
    return None


def remote_code_scope(trust_remote_code: bool, model_type: str | None = None):
    """`trusted_remote_code(model_type)` when remote code may run, else a no-op block."""
    return trusted_remote_code(model_type) if trust_remote_code else contextlib.nullcontext()


def patch_if_remote(cls: type) -> type:
    """patch_legacy_classes for a class from a repository's code (a config or a model class); others pass."""
    if cls.__module__.startswith("transformers_modules"):
        from transformers import PretrainedConfig

        if issubclass(cls, PretrainedConfig):
            patch_legacy_classes(config_cls=cls)
        else:
            patch_legacy_classes(model_cls=cls)
    return cls
