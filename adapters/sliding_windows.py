"""Which layers attend through a sliding window, read once from the config.

Transformers enforces windows through the mask its `masking_utils` builds from the config, not
through the attention call: `sliding_window=` is a hint for flash-attention, and some models
(PhiMoE) pass none at all. Our mask-free paged attention therefore takes each layer's window from
here. What a window `w` means is the mask's business, and differs by one between models:

    causal, every model             key k visible from query q  iff  0 <= q - k < w
                                    (sliding_window_causal_mask_function)
    bidirectional, masking_utils    |q - k| <= w   (sliding_window_bidirectional_mask_function: ModernBERT)
    bidirectional, Gemma 3 style    |q - k| <  w   (`use_bidirectional_attention`: its own overlay on the
                                    causal sliding mask, EmbeddingGemma)

`kernel_windows` turns them into our kernels' terms (flash-attention's: |q - k| < w on each side
attended), per layer and direction.

How configs say it, newest first:
    layer_types[i] == "sliding_attention"     Gemma 2/3/4, Cohere 2, GPT-OSS, OLMo 3, Qwen 2/3 (derived
                                              from use_sliding_window + max_window_layers), ...
    sliding_window_pattern = p                older Gemma 3 / Cohere 2 / EXAONE 4: every p-th layer full
    use_sliding_window + max_window_layers    older Qwen 2 remote code: layers >= max_window_layers slide
    sliding_window alone                      Mistral, Mixtral, Phi-3, PhiMoE, Starcoder 2: every layer
`use_sliding_window=False` without layer_types turns windows off (Qwen configs keep a stale
`sliding_window` then). Chunked attention (`attention_chunk_size`) is not a window: the loader
sends it to the compat path. Anything a config says some other way is caught by the start-up
self-check (adapters/self_check.py), which compares against the model's own attention.
"""

from __future__ import annotations

from anymodel.model_facts import text_config_of

SLIDING_LAYER_TYPE = "sliding_attention"


def layer_windows(config) -> tuple[int | None, ...]:
    """Per decoder layer: its window `w` in the mask functions' terms (above), or None (full)."""
    text = text_config_of(config)
    types = getattr(text, "layer_types", None)
    n = len(types) if types else getattr(text, "num_hidden_layers", None) or 0
    window = getattr(text, "sliding_window", None)
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        return (None,) * n
    if types:
        return tuple(window if t == SLIDING_LAYER_TYPE else None for t in types)
    if getattr(text, "use_sliding_window", None) is False:
        return (None,) * n
    pattern = getattr(text, "sliding_window_pattern", None)
    if isinstance(pattern, int) and pattern > 0:
        return tuple(None if (i + 1) % pattern == 0 else window for i in range(n))
    first = getattr(text, "max_window_layers", None)
    if getattr(text, "use_sliding_window", None) and isinstance(first, int):
        return tuple(window if i >= first else None for i in range(n))
    return (window,) * n


def kernel_windows(config) -> tuple[tuple[int, int] | None, ...] | None:
    """Per decoder layer: (causal, bidirectional) window in the kernels' terms, or None (full).
    The attention function picks by the layer's direction (module.is_causal). None for a config
    with no `sliding_window` at all: such a model's own `sliding_window` kwarg, if any, is all
    there is to go by (remote code naming its window otherwise)."""
    text = text_config_of(config)
    if not hasattr(text, "sliding_window"):
        return None
    widen = 0 if getattr(text, "use_bidirectional_attention", False) else 1  # see the module docstring
    return tuple(None if w is None else (w, w + widen) for w in layer_windows(config))

