"""OldStyle: test remote code that computes its constants in `__init__`, as older Hub code did.

Written for these tests (not copied from any model). Every constant below is computed once in
`__init__` and never appears in the checkpoint, so a loader that builds the model on the meta
device (Transformers 5) and only runs `_init_weights` (which knows none of them) leaves them
uninitialised:

    rotary.inv_freq, cos_cached, sin_cached   non-persistent buffers (cos/sin in the default dtype)
    rotary.positions                          a non-persistent buffer made on torch.get_default_device()
    attn.head_gain                            a persistent buffer the checkpoint omits (the builder drops it)
    attn.causal                               a causal-mask buffer [1, 1, P, P] (own attention only)
    attn.out_scale                            a plain tensor attribute (no buffer at all)

Two attention flavours share the constants (config.own_attention): `OldStyleForCausalLM` attends
itself with the causal buffer and its own cache (the compat path), `OldStyleInterfaceForCausalLM`
goes through ALL_ATTENTION_FUNCTIONS (the paged path). `config.mask_window` gives the latter a
sliding window that only its mask applies (no `sliding_window` in the config, no kwarg). `_init_weights` initialises only Linear / Embedding.
"""

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, sliding_window_overlay
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_oldstyle import OldStyleConfig


class OldStyleRotary(nn.Module):
    def __init__(self, dim, max_positions, base):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("positions", torch.arange(max_positions, device=torch.get_default_device()),
                             persistent=False)
        freqs = torch.outer(self.positions.float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos().to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("sin_cached", emb.sin().to(torch.get_default_dtype()), persistent=False)

    def forward(self, x, position_ids):
        """x [B, H, T, D], position_ids [B, T]"""
        cos = self.cos_cached[self.positions[position_ids]][:, None].to(x.dtype)
        sin = self.sin_cached[self.positions[position_ids]][:, None].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class OldStyleAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = 1
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.rotary = OldStyleRotary(self.head_dim, config.max_position_embeddings, config.rope_theta)
        self.register_buffer("head_gain", torch.linspace(0.5, 1.5, self.num_heads)[None, None, :, None])
        p = config.max_position_embeddings
        self.register_buffer("causal", torch.tril(torch.ones(p, p, dtype=torch.bool))[None, None], persistent=False)
        self.out_scale = torch.tensor(0.75)

    def forward(self, x, position_ids, attention_mask=None, cache=None, **kwargs):
        b, t, _ = x.shape
        projections = (self.q_proj, self.k_proj, self.v_proj)
        q, k, v = (proj(x).view(b, t, -1, self.head_dim).transpose(1, 2) for proj in projections)  # [B, H, T, D]
        q, k = self.rotary(q, position_ids), self.rotary(k, position_ids)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if self.config.own_attention:
            out = self._attend(q, k, v, attention_mask)
        else:
            attend = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
            out, _ = attend(self, q, k, v, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs)
        out = out * self.head_gain.to(out.dtype) * self.out_scale.to(out.device, out.dtype)  # [B, T, H, D]
        return self.o_proj(out.reshape(b, t, -1))

    def _attend(self, q, k, v, padding_mask=None):
        """q [B, H, T, D], k/v [B, H, S, D], padding_mask [B, S] (1: a real token) -> [B, T, H, D];
        the last T of S keys are the queries."""
        t, s = q.shape[2], k.shape[2]
        allowed = self.causal[:, :, s - t : s, :s]
        if padding_mask is not None:
            allowed = allowed & padding_mask[:, None, None, -s:].bool()
        scores = (q @ k.transpose(-1, -2)) * self.scaling
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return (scores.softmax(-1) @ v).transpose(1, 2)


class OldStyleMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class OldStyleLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = OldStyleAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = OldStyleMLP(config)

    def forward(self, hidden_states, **kwargs):
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), **kwargs)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class OldStylePreTrainedModel(PreTrainedModel):
    config_class = OldStyleConfig
    base_model_prefix = "model"
    _keys_to_ignore_on_load_missing = [r"head_gain"]  # so Transformers does not even report it missing

    def _init_weights(self, module):  # as old code did: linears and embeddings only
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)


class OldStyleModel(OldStylePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(OldStyleLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        cache = past_key_values
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            start = cache.get_seq_length() if cache is not None else 0
            position_ids = (start + torch.arange(hidden_states.shape[1], device=hidden_states.device))[None]
        mask = attention_mask  # own attention: the [B, S] padding mask as given
        if not self.config.own_attention:
            window = self.config.mask_window
            mask = create_causal_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask,
                                      cache=cache, position_ids=position_ids,
                                      and_mask_function=sliding_window_overlay(window) if window else None)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_ids=position_ids, attention_mask=mask, cache=cache, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), past_key_values=cache)


class OldStyleInterfaceModel(OldStyleModel):
    _supports_sdpa = True
    _supports_attention_backend = True


class OldStyleForCausalLM(OldStylePreTrainedModel, GenerationMixin):
    base_class = OldStyleModel

    def __init__(self, config):
        super().__init__(config)
        self.model = self.base_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, logits_to_keep=0, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        logits = self.lm_head(out.last_hidden_state[:, -logits_to_keep:])
        return CausalLMOutputWithPast(logits=logits, past_key_values=out.past_key_values)


class OldStyleInterfaceForCausalLM(OldStyleForCausalLM):
    """The same model attending through ALL_ATTENTION_FUNCTIONS (config.own_attention=False)."""

    base_class = OldStyleInterfaceModel
    _supports_sdpa = True
    _supports_attention_backend = True
