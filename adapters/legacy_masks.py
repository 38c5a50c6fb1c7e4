"""`transformers.modeling_attn_mask_utils` as Transformers 4.x had it, for remote code that imports it.

Transformers 5 removed the module (masks are built by `masking_utils` now); remote modeling files
written for 4.x still import `AttentionMaskConverter` and the `_prepare_4d_*` helpers. These give
the 4.x results: additive float masks [B, 1, Q, K] holding 0 where a query may attend and the
dtype's minimum where it may not, with the same `None` returns where 4.x let SDPA go maskless.

Conventions (4.x's): `past` tokens precede the Q new ones, so query i sits at position past + i and
K = past + Q. A sliding window of w lets a query see itself and the w keys before it.
"""

from __future__ import annotations

import torch


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [.., Q, K] -> 0 where allowed, finfo(dtype).min elsewhere."""
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min)


def _causal_allowed(q_len: int, past: int, sliding_window: int | None, device) -> torch.Tensor:
    """bool [Q, K]: query i (position past + i) may see key j."""
    query_pos = torch.arange(q_len, device=device)[:, None] + past
    key_pos = torch.arange(past + q_len, device=device)[None, :]
    allowed = key_pos <= query_pos
    if sliding_window is not None:
        allowed &= query_pos - key_pos <= sliding_window
    return allowed


def _is_tracing(tensor: torch.Tensor | None) -> bool:
    return isinstance(tensor, torch.fx.Proxy) or torch.jit.is_tracing() or (
        hasattr(torch, "compiler") and torch.compiler.is_compiling())


class AttentionMaskConverter:
    """4.x's converter: 2-D padding masks and causal structure -> additive 4-D masks."""

    def __init__(self, is_causal: bool, sliding_window: int | None = None):
        if sliding_window is not None and sliding_window <= 0:
            raise ValueError(f"sliding_window must be a positive integer, got {sliding_window}")
        self.is_causal = is_causal
        self.sliding_window = sliding_window

    def to_causal_4d(self, batch_size: int, query_length: int, key_value_length: int, dtype: torch.dtype,
                     device="cpu") -> torch.Tensor | None:
        """[B, 1, Q, K] causal mask; None for one query token without a window (nothing to mask)."""
        if not self.is_causal:
            raise ValueError(f"to_causal_4d needs is_causal=True, this converter has is_causal={self.is_causal}")
        if query_length == 1 and self.sliding_window is None:
            return None
        past = key_value_length - query_length
        return self._make_causal_mask((batch_size, query_length), dtype, device, past, self.sliding_window)

    def to_4d(self, attention_mask_2d: torch.Tensor, query_length: int, dtype: torch.dtype,
              key_value_length: int | None = None) -> torch.Tensor:
        """[B, K] padding mask (1 = keep) -> [B, 1, Q, K], causal structure added when is_causal."""
        batch = attention_mask_2d.shape[0]
        causal = None
        if self.is_causal and (query_length > 1 or self.sliding_window is not None):
            if key_value_length is None:
                raise ValueError("to_4d of a causal converter needs key_value_length")
            past = key_value_length - query_length
            causal = self._make_causal_mask((batch, query_length), dtype, attention_mask_2d.device, past,
                                            self.sliding_window)
        elif self.sliding_window is not None:
            raise NotImplementedError("sliding windows need a causal mask")
        padding = self._expand_mask(attention_mask_2d, dtype, tgt_len=query_length).to(attention_mask_2d.device)
        if causal is None:
            return padding
        return causal.masked_fill(padding.bool(), torch.finfo(dtype).min)

    @staticmethod
    def _make_causal_mask(input_ids_shape, dtype: torch.dtype, device, past_key_values_length: int = 0,
                          sliding_window: int | None = None) -> torch.Tensor:
        batch, q_len = input_ids_shape
        mask = _additive(_causal_allowed(q_len, past_key_values_length, sliding_window, device), dtype)
        return mask[None, None].expand(batch, 1, q_len, q_len + past_key_values_length)

    @staticmethod
    def _expand_mask(mask: torch.Tensor, dtype: torch.dtype, tgt_len: int | None = None) -> torch.Tensor:
        """[B, K] with 1 = keep -> [B, 1, Q, K] additive (min where the key is padding)."""
        batch, src_len = mask.shape
        keep = mask[:, None, None, :].expand(batch, 1, tgt_len or src_len, src_len).bool()
        return _additive(keep, dtype)

    @staticmethod
    def _unmask_unattended(expanded_mask: torch.Tensor, min_dtype: float) -> torch.Tensor:
        """Rows that mask every key (left padding) attend to all instead: SDPA's memory-efficient
        kernel returns NaN for fully masked rows; their outputs are never used."""
        fully_masked = torch.all(expanded_mask == min_dtype, dim=-1, keepdim=True)
        return expanded_mask.mul(~fully_masked)

    @staticmethod
    def _ignore_causal_mask_sdpa(attention_mask, inputs_embeds, past_key_values_length: int,
                                 sliding_window: int | None = None, is_training: bool = False) -> bool:
        """True when SDPA's own `is_causal` gives the same result as the mask: no padding, no
        window in reach, and either one query or no past."""
        q_len = inputs_embeds.shape[1]
        kv_len = q_len + past_key_values_length
        plain_shape = q_len == 1 or kv_len == q_len
        window_out_of_reach = sliding_window is None or kv_len < sliding_window
        if attention_mask is None:
            return plain_shape and window_out_of_reach and not (is_training and _is_tracing(inputs_embeds))
        if not window_out_of_reach or attention_mask.dim() == 4 or _is_tracing(attention_mask):
            return False
        return plain_shape and bool(torch.all(attention_mask == 1))


def _from_given_4d(mask: torch.Tensor, expected: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A 4-D mask of 1 = keep, 0 = masked, as 4.x accepted it -> additive."""
    if tuple(mask.shape) != expected:
        raise ValueError(f"Attention mask should be of size {expected}, but is {tuple(mask.shape)}")
    inverted = 1.0 - mask.to(dtype)
    return inverted.masked_fill(inverted.bool(), torch.finfo(dtype).min)


def _prepare_4d_causal_attention_mask(attention_mask, input_shape, inputs_embeds, past_key_values_length: int,
                                      sliding_window: int | None = None):
    converter = AttentionMaskConverter(is_causal=True, sliding_window=sliding_window)
    batch, q_len = input_shape[0], input_shape[-1]
    kv_len = q_len + past_key_values_length
    dtype = inputs_embeds.dtype
    if attention_mask is not None and attention_mask.dim() == 2:
        return converter.to_4d(attention_mask, q_len, dtype, key_value_length=kv_len)
    if attention_mask is not None and attention_mask.dim() == 4:
        return _from_given_4d(attention_mask, (batch, 1, q_len, kv_len), dtype)
    return converter.to_causal_4d(batch, q_len, kv_len, dtype, device=inputs_embeds.device)


def _prepare_4d_causal_attention_mask_for_sdpa(attention_mask, input_shape, inputs_embeds,
                                               past_key_values_length: int, sliding_window: int | None = None):
    """As above, but None where SDPA's `is_causal` suffices (see `_ignore_causal_mask_sdpa`)."""
    converter = AttentionMaskConverter(is_causal=True, sliding_window=sliding_window)
    batch, q_len = input_shape[0], input_shape[-1]
    kv_len = q_len + past_key_values_length
    if converter._ignore_causal_mask_sdpa(attention_mask, inputs_embeds, past_key_values_length, sliding_window):
        return None
    dtype = inputs_embeds.dtype
    if attention_mask is None:
        return converter.to_causal_4d(batch, q_len, kv_len, dtype, device=inputs_embeds.device)
    if attention_mask.dim() == 4:
        return _from_given_4d(attention_mask, (batch, 1, q_len, kv_len), dtype)
    mask = converter.to_4d(attention_mask, q_len, dtype, key_value_length=kv_len)
    if mask.device.type == "cuda" and not _is_tracing(mask):
        mask = AttentionMaskConverter._unmask_unattended(mask, torch.finfo(dtype).min)
    return mask


def _prepare_4d_attention_mask(mask: torch.Tensor, dtype: torch.dtype, tgt_len: int | None = None) -> torch.Tensor:
    """[B, K] padding mask -> [B, 1, Q, K] additive, no causal structure (encoders, cross-attention)."""
    return AttentionMaskConverter._expand_mask(mask, dtype, tgt_len)


def _prepare_4d_attention_mask_for_sdpa(mask: torch.Tensor, dtype: torch.dtype, tgt_len: int | None = None):
    if not _is_tracing(mask) and bool(torch.all(mask == 1)):
        return None
    return AttentionMaskConverter._expand_mask(mask, dtype, tgt_len)


def _create_4d_causal_attention_mask(input_shape, dtype: torch.dtype, device, past_key_values_length: int = 0,
                                     sliding_window: int | None = None):
    converter = AttentionMaskConverter(is_causal=True, sliding_window=sliding_window)
    kv_len = past_key_values_length + input_shape[-1]
    return converter.to_causal_4d(input_shape[0], input_shape[-1], kv_len, dtype, device=device)
