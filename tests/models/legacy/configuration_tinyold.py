"""A config written the Transformers 4.x way: no pad/bos/eos ids passed to the base class."""

from transformers import PretrainedConfig


class TinyOldConfig(PretrainedConfig):
    model_type = "tinyold"

    def __init__(self, vocab_size=384, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=True, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
