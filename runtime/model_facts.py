"""What a Hugging Face config says about the model, read in one place.

Every loader asks the same questions (which architecture? which config holds the text model's
sizes? how long a context? does it keep state our paged cache cannot hold?); these answer them,
with one set of fallbacks, for every layer of anymodel.
"""

from __future__ import annotations

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")


def architecture_of(config) -> str:
    """The checkpoint's architecture name (`architectures[0]`), else the config class's name."""
    return (getattr(config, "architectures", None) or [type(config).__name__])[0]


def text_config_of(config):
    """The config that holds the language model's sizes (a multimodal config's `text_config`)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def derive_max_model_len(config, requested: int | None) -> int:
    text = text_config_of(config)
    limits = [getattr(text, k) for k in _CONTEXT_KEYS if isinstance(getattr(text, k, None), int)]
    limit = min(limits) if limits else None
    if requested is None:
        return limit or 2048
    if limit is not None and requested > limit:
        raise ValueError(f"max_model_len ({requested}) exceeds the model's context length ({limit}); allowed: <= {limit}")
    return requested


def unsupported_attention(config) -> str | None:
    """Attention patterns the paged kernels do not implement; such models keep their own attention
    (compat path) rather than run ours with silently different tokens."""
    text = text_config_of(config)
    if getattr(text, "attention_chunk_size", None):
        return f"chunked local attention (attention_chunk_size={text.attention_chunk_size})"
    if getattr(text, "index_topk", None):  # DeepSeek-V3.2: an indexer picks the keys each query sees
        return f"sparse attention with a top-k key indexer (index_topk={text.index_topk})"
    return None


def recurrent_state(cls: type, config) -> str | None:
    """Why `cls` keeps state besides per-token K/V (Mamba / SSM / linear-attention layers), or None.

    Our attention function only sees the attention layers; the others would run every step
    without their state (with `use_cache=False`), so their tokens would silently differ. Such
    models run on the compat path, whose Transformers cache carries that state. Two signals, as
    either can be missing: the class flag Transformers' `generate` uses (`_is_stateful`), and
    linear-attention layers in the cache the config asks for (MiniMax's lightning attention sets
    no flag; a hybrid's flag may be missing in remote code)."""
    if getattr(cls, "_is_stateful", False):
        return f"{cls.__name__} keeps recurrent state (`_is_stateful`)"
    try:
        from transformers.cache_utils import DynamicCache, LinearAttentionCacheLayerMixin

        layers = DynamicCache(config=config).layers
    except Exception:  # a config the cache cannot read (older remote code): no layer types to go by
        return None
    kinds = sorted({type(layer).__name__ for layer in layers if isinstance(layer, LinearAttentionCacheLayerMixin)})
    return f"{cls.__name__} has recurrent / linear-attention layers ({', '.join(kinds)})" if kinds else None
