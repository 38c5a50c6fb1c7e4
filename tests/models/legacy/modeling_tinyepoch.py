"""TinyOld as StableLM-epoch style remote code builds its mask: the base model requires the 2-D
`attention_mask` that 4.x `generate` always passed, covering past + new tokens, and turns it into
its 4-D mask with `_prepare_4d_causal_attention_mask`; a missing or short mask is an error, and so
is a `cache_position` other than the cache's next slots."""

import torch
from transformers.cache_utils import DynamicCache
from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .modeling_tinyold import TinyOldForCausalLM, TinyOldModel


class TinyEpochModel(TinyOldModel):
    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                cache_position=None, **kwargs):
        b, q = input_ids.shape
        x = self.embed(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if attention_mask is None:
            raise ValueError("TinyEpochModel needs an attention_mask over past + new tokens")
        if tuple(attention_mask.shape) != (b, past + q):  # as 4.x's mask helpers would refuse it
            raise ValueError(f"Attention mask should be of size {(b, 1, q, past + q)}, "
                             f"but is {tuple(attention_mask[:, None, None].shape)}")
        if cache_position is not None and cache_position.tolist() != list(range(past, past + q)):
            raise ValueError(f"cache_position {cache_position.tolist()} is not the cache's next {q} slots from {past}")
        if position_ids is None:
            position_ids = torch.arange(past, past + q)[None].expand(b, q)
        mask = _prepare_4d_causal_attention_mask(attention_mask, (b, q), x, past)
        cos, sin = self.rotary(position_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, past_key_values if use_cache else None)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), past_key_values=past_key_values)


class TinyEpochForCausalLM(TinyOldForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        self.model = TinyEpochModel(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                **kwargs):
        if attention_mask is None:  # the causal-LM wrapper of such code filled it in for the prompt
            attention_mask = torch.ones_like(input_ids)
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, use_cache)
        return CausalLMOutputWithPast(logits=self.lm_head(out.last_hidden_state), past_key_values=out.past_key_values)
