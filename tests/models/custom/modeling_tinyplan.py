"""A tiny remote-code model: fused QKV and gate-up projections, reshapes through `self.num_heads`,
a `blocks` ModuleList, tied embeddings. Backend-compatible: attention goes through
ALL_ATTENTION_FUNCTIONS and **kwargs reach it."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_tinyplan import TinyPlanConfig


def _rotate(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _sdpa_eager(module, q, k, v, mask, scaling=None, **kwargs):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
    return out.transpose(1, 2), None


class TinyPlanRotary(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dim, self.theta = config.hidden_size // config.num_attention_heads, config.rope_theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self):
        return 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim))

    def forward(self, x, position_ids):
        freqs = position_ids[..., None].float() * self.inv_freq  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class TinyPlanAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        width = (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, width, bias=True)
        self.out_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=True)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, **kwargs):
        b, t, _ = hidden_states.shape
        q_size, kv_size = self.num_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        q, k, v = self.qkv_proj(hidden_states).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        cos, sin = (x.unsqueeze(1) for x in position_embeddings)
        q, k = q * cos + _rotate(q) * sin, k * cos + _rotate(k) * sin
        impl = self.config._attn_implementation
        attend = _sdpa_eager if impl in (None, "eager", "sdpa") else ALL_ATTENTION_FUNCTIONS[impl]
        out, _ = attend(self, q, k, v, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs)
        return self.out_proj(out.reshape(b, t, self.num_heads * self.head_dim))


class TinyPlanMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class TinyPlanMix(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.proj_in = nn.Linear(config.hidden_size, config.mix_size, bias=True)
        self.gate = nn.Linear(config.mix_size, config.mix_size, bias=False)
        self.proj_out = nn.Linear(config.mix_size, config.hidden_size, bias=True)

    def forward(self, x):
        h = self.proj_in(x)  # gathered: full width on every rank
        return self.proj_out(torch.tanh(self.gate(h)) * h)


class TinyPlanBlock(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size)
        self.attn = TinyPlanAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.hidden_size)
        self.mlp = TinyPlanMLP(config)
        self.mix = TinyPlanMix(config)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        hidden_states = hidden_states + self.attn(self.ln_1(hidden_states), position_embeddings, attention_mask, **kwargs)
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states + 0.5 * self.mix(hidden_states)


class TinyPlanPreTrainedModel(PreTrainedModel):
    config_class = TinyPlanConfig
    base_model_prefix = "model"
    _supports_attention_backend = True
    _no_split_modules = ["TinyPlanBlock"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, TinyPlanRotary):  # Transformers 5 materialises buffers empty: recompute
            init.copy_(module.inv_freq, module.compute_inv_freq())


class TinyPlanModel(TinyPlanPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList([TinyPlanBlock(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(config.hidden_size)
        self.rotary = TinyPlanRotary(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        for key in ("use_cache", "return_dict", "output_attentions", "output_hidden_states", "cache", "past_key_values"):
            kwargs.pop(key, None)
        hidden_states = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        if position_ids is None:
            position_ids = torch.arange(hidden_states.shape[1], device=hidden_states.device)[None]
        position_embeddings = self.rotary(hidden_states, position_ids)
        for block in self.blocks:
            hidden_states = block(hidden_states, attention_mask, position_embeddings=position_embeddings, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.ln_f(hidden_states))


class TinyPlanForCausalLM(TinyPlanPreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "model.wte.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config):
        super().__init__(config)
        self.model = TinyPlanModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.wte

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        hidden = self.model(input_ids=input_ids, position_ids=position_ids).last_hidden_state
        return CausalLMOutputWithPast(logits=self.lm_head(hidden))
