"""Config of OldStyle, test remote code written the way older Hub models were (see modeling_oldstyle.py)."""

from transformers import PretrainedConfig


class OldStyleConfig(PretrainedConfig):
    model_type = "oldstyle"

    def __init__(self, vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-6,
                 tie_word_embeddings=False, own_attention=True, mask_window=None, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.own_attention = own_attention  # False: attention through ALL_ATTENTION_FUNCTIONS
        self.mask_window = mask_window  # a sliding window in the mask only, under a name no loader knows
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
