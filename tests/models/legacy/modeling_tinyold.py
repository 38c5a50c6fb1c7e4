"""A causal LM written the way 2023 remote code was: APIs Transformers 5 removed, its own attention
with a mask from `_prepare_4d_causal_attention_mask`, rotary tables as non-persistent buffers,
4.x config defaults read as attributes, and a list-style `_tied_weights_keys`."""

import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.generation.utils import SampleOutput  # noqa: F401  (4.x output names)
from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.import_utils import is_torch_fx_available

from .configuration_tinyold import TinyOldConfig

if is_torch_fx_available():
    _prepare_4d_causal_attention_mask = torch.fx.wrap(_prepare_4d_causal_attention_mask)


class TinyOldRotary(nn.Module):
    def __init__(self, dim, max_positions, base):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self, position_ids):
        return self.cos_cached[position_ids], self.sin_cached[position_ids]


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class TinyOldAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache):
        b, q, _ = x.shape
        qkv = self.qkv(x).view(b, q, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        cos, sin = cos[:, None], sin[:, None]
        query = query * cos + rotate_half(query) * sin
        key = key * cos + rotate_half(key) * sin
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        out = scores.softmax(-1) @ value
        return self.out(out.transpose(1, 2).reshape(b, q, -1))


class TinyOldLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.attn = TinyOldAttention(config, layer_idx)
        self.norm2 = nn.LayerNorm(config.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(config.hidden_size, 4 * config.hidden_size), nn.GELU(),
                                 nn.Linear(4 * config.hidden_size, config.hidden_size))

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.attn(self.norm1(x), cos, sin, mask, cache)
        return x + self.mlp(self.norm2(x))


class TinyOldPreTrainedModel(PreTrainedModel):
    config_class = TinyOldConfig
    base_model_prefix = "model"


class TinyOldModel(TinyOldPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id  # a 4.x default (None) this config never set
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.rotary = TinyOldRotary(config.hidden_size // config.num_attention_heads,
                                    config.max_position_embeddings, config.rope_theta)
        self.layers = nn.ModuleList(TinyOldLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                **kwargs):
        b, q = input_ids.shape
        x = self.embed(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + q)[None].expand(b, q)
        mask = _prepare_4d_causal_attention_mask(attention_mask, (b, q), x, past)
        cos, sin = self.rotary(position_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, past_key_values if use_cache else None)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), past_key_values=past_key_values)


class TinyOldForCausalLM(TinyOldPreTrainedModel):
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.model = TinyOldModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                **kwargs):
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, use_cache)
        return CausalLMOutputWithPast(logits=self.lm_head(out.last_hidden_state), past_key_values=out.past_key_values)
