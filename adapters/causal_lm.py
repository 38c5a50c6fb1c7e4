"""TransformersForCausalLM: a Transformers base model + LM head, attention set to ours.

The engine calls `forward(input_ids[1, T], positions[1, T], attn_metadata) -> hidden[T, H]` and
then `compute_logits(hidden[S, H]) -> logits[S, V]` only at the positions that sample. The
metadata travels to our attention function through the base model's `**kwargs`, and through the
runner's `ForwardContext` (with the KV caches) where a model's layers do not pass them on.
"""

from __future__ import annotations

import torch
from torch import nn

from anymodel.adapters.sliding_windows import kernel_windows
from anymodel.attention_backend.interface import sliding_windows
from anymodel.model_facts import text_config_of
from anymodel.native_overrides.layers import softcapped
from anymodel.model_protocol import ModelTraits


class TransformersForCausalLM(nn.Module):
    traits = ModelTraits(paged_kv_cache=True, prefix_caching=True)

    def __init__(self, base_model: nn.Module, lm_head: nn.Module, config) -> None:
        super().__init__()
        self.model = base_model
        self.lm_head = lm_head
        self.config = config
        text = text_config_of(config)
        # Output-side knobs that live in the *ForCausalLM class, not in the base model.
        self.final_logit_softcapping = getattr(text, "final_logit_softcapping", None)
        self.logit_scale = getattr(text, "logit_scale", None)  # Cohere: logits * scale
        self.logits_scaling = getattr(text, "logits_scaling", None)  # Granite: logits / scaling
        # Each layer's sliding window, from the config (not the attention kwarg; see sliding_windows.py)
        self.layer_windows = kernel_windows(config)
        self._fused = False

    def _fuse_once(self) -> None:
        """On the device it runs on, before the first step: fused q/k/v and gate/up GEMMs and
        pre-packed weights on CPU (adapters/fusion.py; measured there, CPU only)."""
        from anymodel.adapters.fusion import apply_fusion

        if next(self.parameters(), torch.empty(0)).device.type == "cpu":
            apply_fusion(self)
        self._fused = True

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata) -> torch.Tensor:
        if not self._fused:
            self._fuse_once()
        return run_base_model(self.model, self.layer_windows, input_ids, positions, attn_metadata)

    def get_input_embeddings(self) -> nn.Module:
        """The module whose output prompt embeddings replace (HF's own `get_input_embeddings()`)."""
        return self.model.get_input_embeddings()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.logits_scaling is not None:
            logits = logits / self.logits_scaling
        return softcapped(logits, self.final_logit_softcapping)


def run_base_model(base: nn.Module, layer_windows, input_ids: torch.Tensor, position_ids: torch.Tensor,
                   attn_metadata, **kwargs) -> torch.Tensor:
    """An HF base model over one flat row of tokens ([1, T] in) -> hidden [T, H]: the metadata rides
    in its kwargs to our attention; the per-layer windows are read by every attention call."""
    with sliding_windows(layer_windows):
        out = base(input_ids=input_ids, position_ids=position_ids, attn_metadata=attn_metadata, use_cache=False,
                   return_dict=True, **kwargs)
    return out.last_hidden_state[0]


def load_causal_lm(cls: type, has_lm_head: bool, model_dir, config, dtype: torch.dtype) -> TransformersForCausalLM:
    """Load the checkpoint through Transformers (meta-device init, its own name conversions and
    tied weights; computed buffers restored, see computed_buffers.py), then keep only the base
    model and the output embedding."""
    from anymodel.adapters.computed_buffers import load_pretrained
    from anymodel.attention_backend.interface import register

    hf, _ = load_pretrained(cls, model_dir, config, dtype, attn_implementation=register())
    if has_lm_head:
        return TransformersForCausalLM(decoder_of(hf), hf.get_output_embeddings(), hf.config)
    return TransformersForCausalLM(hf, _load_lm_head(hf, model_dir, dtype), hf.config)


def random_causal_lm(cls: type, has_lm_head: bool, config, dtype: torch.dtype, seed: int = 0) -> TransformersForCausalLM:
    """load_format="dummy": the Transformers class built from the config with its own random
    initialisation (seeded), no checkpoint read; a base-only class gets a head tied to the embeddings."""
    from anymodel.attention_backend.interface import register

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = cls._from_config(config, dtype=dtype, attn_implementation=register()).eval().requires_grad_(False)
    if has_lm_head:
        return TransformersForCausalLM(decoder_of(hf), hf.get_output_embeddings(), hf.config)
    embed = hf.get_input_embeddings()
    head = nn.Linear(embed.weight.shape[1], embed.weight.shape[0], bias=False, dtype=dtype)
    head.weight = embed.weight
    return TransformersForCausalLM(hf, head, hf.config)


def decoder_of(hf: nn.Module) -> nn.Module:
    """The base model under a *ForCausalLM: `base_model`, unless the class's prefix names no
    attribute (Llama 4 text says "language_model" but keeps it in `model`): then `model`."""
    base = hf.base_model
    if base is hf and isinstance(getattr(hf, "model", None), nn.Module):
        base = hf.model
    return base


def _load_lm_head(base: nn.Module, model_dir, dtype: torch.dtype) -> nn.Module:
    """A base-only class (custom `AutoModel`): read `lm_head.weight`, or tie to the embeddings."""
    from safetensors import safe_open
    from pathlib import Path

    embed = base.get_input_embeddings()
    text = text_config_of(base.config)
    head = nn.Linear(embed.weight.shape[1], embed.weight.shape[0], bias=False, dtype=dtype)
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            if "lm_head.weight" in f.keys():
                head.weight.data.copy_(f.get_tensor("lm_head.weight"))
                return head
    if getattr(text, "tie_word_embeddings", True):
        head.weight = embed.weight
        return head
    raise ValueError(f"model {str(model_dir)!r}: no `lm_head.weight` in the checkpoint and embeddings are not tied")
