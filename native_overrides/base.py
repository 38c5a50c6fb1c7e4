"""What every native causal LM shares: the engine's model contract, checkpoint loading, the
one-time preparation for the device, and the refusal of configs a native class cannot reproduce.

    model(input_ids [1, T], positions [1, T], attn_metadata) -> hidden [T, H]
    model.compute_logits(hidden [S, H]) -> logits [S, V]     (only the S positions that sample)

The step's metadata is passed down the layers; each layer's KV cache (by call order) and the kernels
come from the runner's `ForwardContext`, as for Transformers models (layers.PagedAttention).
"""

from __future__ import annotations

import torch
from torch import nn

from anymodel.model_facts import text_config_of
from anymodel.model_protocol import ModelTraits
from anymodel.native_overrides.layers import ParallelLMHead, softcapped, unsupported_rope
from anymodel.native_overrides.weights import iter_checkpoint, load_weights, random_fill_


def quantize_checkpoint_linears(model: nn.Module, config, model_dir) -> None:
    """A quantized checkpoint's linears keep their quantized storage (quantization/native.py)."""
    from anymodel.native_overrides.quantization.config import resolve_quantization
    from anymodel.native_overrides.quantization.methods import method_for
    from anymodel.native_overrides.quantization.native import quantize_native

    quant = resolve_quantization(config, None, model_dir)
    if quant is not None and quantize_native(model, method_for(quant), model_dir) == 0:
        raise ValueError(f"the {quant.method} checkpoint quantizes none of the native model's linears")


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class NativeForCausalLM(nn.Module):
    """Subclasses name `model_cls` (embed_tokens, ..., norm; forward(ids [T], pos [T], meta) -> [T, H]);
    the LM head comes from here. Parameter names equal the Hugging Face checkpoint names, except the
    fused `qkv_proj` / `gate_up_proj` (see weights.STACKED)."""

    model_cls: type[nn.Module]

    supports_tensor_parallel = True  # linears shard themselves through anymodel.distributed
    supports_pipeline_parallel = False
    traits = ModelTraits(paged_kv_cache=True, prefix_caching=True)

    def __init__(self, config, dtype: torch.dtype) -> None:
        super().__init__()
        self.config = config
        self.final_logit_softcapping = getattr(config, "final_logit_softcapping", None)
        self._prepared = False
        self.model = self.model_cls(config, dtype)
        self._init_lm_head(config, dtype)

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def unsupported(cls, config) -> str | None:
        """Why this class cannot reproduce `config` exactly (the Transformers backend runs it then)."""
        text = text_config_of(config)
        return unsupported_rope(text, cls.rope_layer_types(text))

    @classmethod
    def rope_layer_types(cls, config) -> tuple:
        return (None,)

    @classmethod
    def from_pretrained(cls, model_dir, config, dtype: torch.dtype) -> "NativeForCausalLM":
        reason = cls.unsupported(config)
        if reason is not None:
            raise ValueError(f"{cls.__name__} does not support {reason}; use model_impl='transformers'")
        model = cls(text_config_of(config), dtype)
        quantize_checkpoint_linears(model, config, model_dir)
        load_weights(model, iter_checkpoint(model_dir), skip=model.skipped_checkpoint_names())
        return model.eval()

    @classmethod
    def with_random_weights(cls, config, dtype: torch.dtype, seed: int = 0) -> "NativeForCausalLM":
        """load_format="dummy" (vLLM's, for benchmarks): the architecture with random weights, no
        checkpoint read: matrices ~ N(0, initializer_range), biases 0, norms as constructed (1)."""
        reason = cls.unsupported(config)
        if reason is not None:
            raise ValueError(f"{cls.__name__} does not support {reason}; use model_impl='transformers'")
        text = text_config_of(config)
        model = cls(text, dtype)
        random_fill_(model, getattr(text, "initializer_range", 0.02), seed)
        return model.eval()

    def _init_lm_head(self, config, dtype: torch.dtype) -> None:
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, dtype)
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.tie_to(self.model.embed_tokens)

    def skipped_checkpoint_names(self) -> tuple[str, ...]:
        # A tied head has no parameter of its own (HF may still save a copy of it).
        return ("lm_head.weight",) if self.lm_head.weight is self.model.embed_tokens.weight else ()

    # ---- the model contract ---------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata) -> torch.Tensor:
        if not self._prepared:
            self.prepare()
        return self.model(input_ids[0], positions[0], attn_metadata)

    def get_input_embeddings(self) -> nn.Module:
        """The token lookup whose output prompt embeddings replace (scales applied after it, as in HF)."""
        return self.model.embed_tokens

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return softcapped(self.lm_head(hidden), self.final_logit_softcapping)

    # ---- device preparation ---------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self) -> None:
        """Once per device placement: pack CPU GEMM weights, precompute constant scales."""
        for module in self.modules():
            if module is not self and hasattr(module, "prepare"):
                module.prepare()
        self._prepared = True

    def _apply(self, fn, recurse=True):
        self._prepared = False  # `.to(device)` / `.half()`: prepare again for the new placement
        return super()._apply(fn, recurse)
