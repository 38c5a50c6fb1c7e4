"""A tiny remote-code (auto_map) config that declares its own parallel plans, in non-Llama names."""

from transformers import PreTrainedConfig


class TinyPlanConfig(PreTrainedConfig):
    model_type = "tinyplan"
    # Every linear style a plan can name, on purpose: fused QKV / gate-up, gathered and split-input mixes.
    base_model_tp_plan = {
        "wte": "embedding_rowwise",
        "blocks.*.attn.qkv_proj": "packed_colwise",
        "blocks.*.attn.out_proj": "rowwise",
        "blocks.*.mlp.gate_up_proj": "packed_colwise",
        "blocks.*.mlp.down_proj": "rowwise",
        "blocks.*.mix.proj_in": "colwise_gather_output",
        "blocks.*.mix.gate": "replicate",
        "blocks.*.mix.proj_out": "rowwise_split_input",
        "blocks.*.ln_1": "replicated_with_grad_allreduce",
    }
    base_model_pp_plan = {
        "wte": (["input_ids"], ["inputs_embeds"]),
        "blocks": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "ln_f": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 97
    hidden_size: int = 48
    intermediate_size: int = 80
    mix_size: int = 40
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    rope_theta: float = 10000.0
    max_position_embeddings: int = 256
    initializer_range: float = 0.1
    tie_word_embeddings: bool = True
