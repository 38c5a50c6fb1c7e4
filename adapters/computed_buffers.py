"""Load a Transformers model so that every constant its code computes holds that value.

Transformers 5 builds a model on the meta device and fills in only what the checkpoint provides
and what `_init_weights` knows. Older remote code computes constants in `__init__` instead:

    rotary inv_freq, cos/sin caches     non-persistent buffers (InternLM, InternLM2, Baichuan, ...)
    ALiBi slopes, causal-mask buffers   persistent or not, often absent from the checkpoint
    plain tensor attributes             `self.x = torch.tensor(...)`: never a buffer at all

Left alone, those are `torch.empty` garbage (NaN or silently wrong logits) or meta tensors. Here
the class is built a second time with its parameters on meta and everything else real (no weight
memory), under the dtype `from_pretrained` used, and each such constant is copied over. Every
Transformers-backend loader goes through `load_pretrained`: the paged path, the compat path and
the pooling loaders. (The parallel loader builds on meta with real buffers from the start.)
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger("anymodel")


def load_pretrained(cls: type, model_dir, config, dtype: torch.dtype, **kwargs) -> tuple[nn.Module, dict]:
    """`cls.from_pretrained(...)` in eval mode with its computed constants restored; returns
    (model, loading info). MoE experts classes that use Transformers' experts interface run ours
    (adapters/experts.py) unless the caller names another."""
    from anymodel.adapters.experts import register_experts

    kwargs.setdefault("experts_implementation", register_experts())
    model, info = cls.from_pretrained(model_dir, config=config, dtype=dtype, output_loading_info=True, **kwargs)
    model.eval()
    restore_computed_buffers(model, cls, set(info.get("missing_keys", ())), dtype)
    return model, info


def restore_computed_buffers(model: nn.Module, cls: type, missing: set[str] = frozenset(),
                             dtype: torch.dtype | None = None) -> None:
    """Give every buffer the checkpoint did not provide (non-persistent ones, persistent ones in
    `missing`) and every plain tensor attribute left on meta the value `cls(config)` computes."""
    targets = computed_constants(model, missing)
    if not targets:
        return
    try:
        fresh = _build_with_real_buffers(cls, model.config, dtype)
    except Exception as e:  # code that cannot be built twice: the start-up self-check still probes it
        logger.warning("anymodel: could not rebuild %s to recompute its buffers %s (%s: %s)", cls.__name__,
                       sorted(targets)[:4], type(e).__name__, e)
        return
    fresh_modules = dict(fresh.named_modules())
    for full_name, (module, name) in targets.items():
        prefix = full_name.rpartition(".")[0]
        value = getattr(fresh_modules.get(prefix), name, None)
        if isinstance(value, torch.Tensor) and value.device.type != "meta":
            _put(module, name, value)


def computed_constants(model: nn.Module, missing: set[str]) -> dict[str, tuple[nn.Module, str]]:
    """Full name -> (module, attribute) of each constant the checkpoint did not provide.

    A persistent buffer counts when it is in `missing`, or when loading flagged what it loaded
    (`_is_hf_initialized`) and not this buffer: old code lists such buffers in
    `_keys_to_ignore_on_load_missing` (GPT-2-style `attn.bias` masks), which hides them from
    `missing`."""
    flags = any(getattr(p, "_is_hf_initialized", False) for p in model.parameters())

    def not_loaded(full_name: str, buf: torch.Tensor) -> bool:
        return full_name in missing or (flags and not getattr(buf, "_is_hf_initialized", False))

    targets = {}
    for prefix, module in model.named_modules():
        names = [n for n, b in module._buffers.items() if b is not None and (
            n in module._non_persistent_buffers_set or not_loaded(_join(prefix, n), b))]
        names += [n for n, v in vars(module).items() if isinstance(v, torch.Tensor) and v.device.type == "meta"]
        targets.update({_join(prefix, n): (module, n) for n in names})
    return targets


def _build_with_real_buffers(cls: type, config, dtype: torch.dtype | None) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers.modeling_utils import local_torch_dtype

    dtype = dtype if dtype is not None and dtype.is_floating_point else torch.get_default_dtype()
    with init_empty_weights(include_buffers=False), local_torch_dtype(dtype, cls.__name__):
        return cls(config)


def _put(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = module._buffers.get(name) if name in module._buffers else getattr(module, name)
    if old.device.type != "meta" and old.shape == value.shape and old.dtype == value.dtype:
        old.copy_(value)  # in place: anything else holding this tensor sees the value too
    elif name in module._buffers:
        module._buffers[name] = value.to("cpu" if old.device.type == "meta" else old.device)
    else:
        module.__dict__[name] = value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
