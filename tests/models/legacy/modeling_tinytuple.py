"""TinyOld as 2022-23 remote code kept its cache: `past_key_values` is a tuple of (k, v) per layer,
[B, H, L, D] each, taken and returned as such; any other cache object is refused."""

import torch
from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .modeling_tinyold import TinyOldForCausalLM, TinyOldModel


class _LayerCaches:
    """What the attention layers call (`update`), over the tuple: each layer's K/V grown by cat."""

    def __init__(self, past):
        self.kv = list(past) if past is not None else []

    def update(self, key, value, layer_idx):
        if layer_idx < len(self.kv):
            key = torch.cat([self.kv[layer_idx][0], key], dim=-2)
            value = torch.cat([self.kv[layer_idx][1], value], dim=-2)
            self.kv[layer_idx] = (key, value)
        else:
            self.kv.append((key, value))
        return key, value


class TinyTupleModel(TinyOldModel):
    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                **kwargs):
        if past_key_values is not None and not isinstance(past_key_values, tuple):
            raise TypeError(f"past_key_values must be a tuple of (key, value) per layer, "
                            f"not {type(past_key_values).__name__}")
        b, q = input_ids.shape
        x = self.embed(input_ids)
        past = past_key_values[0][0].shape[-2] if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + q)[None].expand(b, q)
        mask = _prepare_4d_causal_attention_mask(attention_mask, (b, q), x, past)
        cos, sin = self.rotary(position_ids)
        caches = _LayerCaches(past_key_values) if use_cache else None
        for layer in self.layers:
            x = layer(x, cos, sin, mask, caches)
        present = tuple(caches.kv) if use_cache else None
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), past_key_values=present)


class TinyTupleForCausalLM(TinyOldForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        self.model = TinyTupleModel(config)
        self.post_init()
