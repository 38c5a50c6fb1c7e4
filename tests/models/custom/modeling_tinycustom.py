"""TinyCustom: a from-scratch decoder-only LM, shipped as `auto_map` remote code in tests.

Not a copy of an HF model: its own module names (backbone.embed, blocks.N.mixer.wq/wk/wv/wo,
blocks.N.ffn.w_gate/w_up/w_down, norm_out), RMSNorm, half-split rotary, GQA, a non-default
attention scale 0.7/sqrt(d) and tied embeddings. Attention goes through
ALL_ATTENTION_FUNCTIONS[config._attn_implementation] with **kwargs passed down, so any registered
backend (sdpa, flash, a paged one) serves it; HF's DynamicCache makes plain `generate` work.

    embed -> [x + mixer(norm(x)); x + ffn(norm(x))] * n_layers -> norm_out -> lm_head (= embed^T)
"""

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_tinycustom import TinyCustomConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rotate(x, position_ids, theta: float):
    """x [B, H, T, D], position_ids [B, T]. Frequencies are computed here, not kept in a buffer,
    so a model materialised from the meta device needs no re-initialisation."""
    d = x.shape[-1]
    inv_freq = theta ** -(torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = position_ids[:, None, :, None].float() * inv_freq  # [B, 1, T, D/2]
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def eager_attention(module, q, k, v, attention_mask, scaling, dropout=0.0, **kwargs):
    """q [B, H, T, D], k/v [B, KVH, S, D] -> ([B, T, H, D], probs [B, H, T, S])."""
    k = k.repeat_interleave(module.num_key_value_groups, dim=1)
    v = v.repeat_interleave(module.num_key_value_groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scaling
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    elif attention_mask is not None:
        scores = scores + attention_mask
    probs = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
    return (probs @ v).transpose(1, 2).contiguous(), probs


class Mixer(nn.Module):
    def __init__(self, config: TinyCustomConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.n_heads // config.n_kv_heads  # read by HF backends
        self.scaling = config.attn_scale_factor * config.head_dim**-0.5
        self.is_causal = True
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(self, x, position_ids, attention_mask=None, cache=None, **kwargs):
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = self.wk(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # [B, KVH, T, D]
        v = self.wv(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        theta = self.config.rope_theta
        q, k = rotate(q, position_ids, theta), rotate(k, position_ids, theta)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        impl = self.config._attn_implementation
        attend = eager_attention if impl == "eager" else ALL_ATTENTION_FUNCTIONS[impl]
        out, _ = attend(self, q, k, v, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs)
        return self.wo(out.reshape(b, t, -1))  # out: [B, T, H, D]


class FeedForward(nn.Module):
    def __init__(self, config: TinyCustomConfig):
        super().__init__()
        self.w_gate = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.w_up = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.w_down = nn.Linear(config.ffn_dim, config.dim, bias=False)

    def forward(self, x):
        return self.w_down(nn.functional.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, config: TinyCustomConfig, layer_idx: int):
        super().__init__()
        self.norm_mix = RMSNorm(config.dim, config.norm_eps)
        self.mixer = Mixer(config, layer_idx)
        self.norm_ffn = RMSNorm(config.dim, config.norm_eps)
        self.ffn = FeedForward(config)

    def forward(self, hidden_states, **kwargs):
        hidden_states = hidden_states + self.mixer(self.norm_mix(hidden_states), **kwargs)
        return hidden_states + self.ffn(self.norm_ffn(hidden_states))


class TinyCustomPreTrainedModel(PreTrainedModel):
    config_class = TinyCustomConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class TinyCustomModel(TinyCustomPreTrainedModel):
    def __init__(self, config: TinyCustomConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm_out = RMSNorm(config.dim, config.norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        hidden_states = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if (self.config.use_cache if use_cache is None else use_cache) and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            start = cache.get_seq_length() if cache is not None else 0
            steps = torch.arange(hidden_states.shape[1], device=hidden_states.device)
            position_ids = (start + steps)[None]
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden_states,
                                  attention_mask=attention_mask, cache=cache, position_ids=position_ids)
        for block in self.blocks:
            hidden_states = block(hidden_states, position_ids=position_ids, attention_mask=mask,
                                  cache=cache, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm_out(hidden_states), cache=cache)


class TinyCustomForCausalLM(TinyCustomPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "backbone.embed.weight"}

    def __init__(self, config: TinyCustomConfig):
        super().__init__(config)
        self.backbone = TinyCustomModel(config)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, use_cache=None, logits_to_keep=0, **kwargs):
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden_states = out.last_hidden_state[:, -logits_to_keep:]  # 0 keeps every position
        return CausalLMOutputWithPast(logits=self.lm_head(hidden_states), cache=out.cache)
