"""Config of TinyCustom, a from-scratch decoder LM shipped as `auto_map` remote code in tests.

Its own field names (dim, n_layers, ...) reach generic code through `attribute_map`, as in many
real remote-code models: config.hidden_size -> config.dim, and so on.
"""

from transformers import PretrainedConfig


class TinyCustomConfig(PretrainedConfig):
    model_type = "tinycustom"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {
        "hidden_size": "dim",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "intermediate_size": "ffn_dim",
    }
    # Module-name patterns under the base model (`backbone`); applied to a built model.
    base_model_tp_plan = {
        "blocks.*.mixer.wq": "colwise",
        "blocks.*.mixer.wk": "colwise",
        "blocks.*.mixer.wv": "colwise",
        "blocks.*.mixer.wo": "rowwise",
        "blocks.*.ffn.w_gate": "colwise",
        "blocks.*.ffn.w_up": "colwise",
        "blocks.*.ffn.w_down": "rowwise",
    }
    base_model_pp_plan = {
        "embed": (["input_ids"], ["inputs_embeds"]),
        "blocks": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm_out": (["hidden_states"], ["hidden_states"]),
    }

    def __init__(
        self,
        vocab_size=384,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        ffn_dim=128,
        attn_scale_factor=0.7,  # scaling = 0.7 / sqrt(head_dim): a backend must use module.scaling
        rope_theta=10000.0,
        norm_eps=1e-6,
        max_position_embeddings=512,
        initializer_range=0.02,
        use_cache=True,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.dim = dim
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.ffn_dim = ffn_dim
        self.attn_scale_factor = attn_scale_factor
        self.rope_theta = rope_theta
        self.norm_eps = norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )
