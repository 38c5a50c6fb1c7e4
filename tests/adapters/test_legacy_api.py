"""The Transformers 4.x shims for remote code: present only inside the block, with 4.x semantics."""

import importlib

import pytest
import torch

from anymodel.adapters import legacy_masks as m
from anymodel.adapters.legacy_api import legacy_transformers_api, patch_legacy_classes, shimmed_names
from anymodel.adapters.legacy_generation import DisjunctiveConstraint, PhrasalConstraint

NEG = torch.finfo(torch.float32).min


def allowed(mask: torch.Tensor) -> torch.Tensor:
    """additive [B, 1, Q, K] -> bool [B, Q, K]"""
    return (mask == 0)[:, 0]


def test_shims_exist_only_inside_the_block():
    with pytest.raises(ImportError):
        importlib.import_module("transformers.modeling_attn_mask_utils")
    with legacy_transformers_api():
        from transformers import DisjunctiveConstraint as D  # noqa: F401  (transformers_stream_generator's imports)
        from transformers import BeamSearchScorer, ConstrainedBeamSearchScorer, PhrasalConstraint  # noqa: F401
        from transformers.generation.utils import SampleOutput, GreedySearchDecoderOnlyOutput  # noqa: F401
        from transformers.modeling_attn_mask_utils import AttentionMaskConverter  # noqa: F401
        from transformers.utils.import_utils import is_torch_fx_available

        assert is_torch_fx_available()
        with pytest.raises(NotImplementedError, match="generate"):
            BeamSearchScorer(batch_size=1, num_beams=2, device="cpu")
    with pytest.raises(ImportError):
        importlib.import_module("transformers.modeling_attn_mask_utils")
    with pytest.raises(ImportError):
        exec("from transformers import DisjunctiveConstraint")
    assert "transformers.modeling_attn_mask_utils" in shimmed_names()


def test_causal_mask_with_left_padding():
    pad = torch.tensor([[0, 1, 1], [1, 1, 1]])
    embeds = torch.zeros(2, 3, 4)
    mask = m._prepare_4d_causal_attention_mask(pad, (2, 3), embeds, 0)
    causal = torch.tril(torch.ones(3, 3, dtype=torch.bool))
    assert mask.shape == (2, 1, 3, 3) and mask.dtype == torch.float32
    assert torch.equal(allowed(mask)[1], causal)
    assert torch.equal(allowed(mask)[0], causal & torch.tensor([False, True, True]))
    assert set(mask.unique().tolist()) == {0.0, NEG}


def test_causal_mask_with_past_and_window():
    # 2 new tokens after 3 cached ones (positions 3, 4), window 2: a query sees itself and 2 before it
    mask = m._prepare_4d_causal_attention_mask(None, (1, 2), torch.zeros(1, 2, 4), 3, sliding_window=2)
    expected = torch.tensor([[False, True, True, True, False], [False, False, True, True, True]])
    assert torch.equal(allowed(mask)[0], expected)


def test_one_token_without_window_needs_no_mask():
    assert m._prepare_4d_causal_attention_mask(None, (1, 1), torch.zeros(1, 1, 4), 5) is None
    assert m._prepare_4d_causal_attention_mask_for_sdpa(None, (1, 4), torch.zeros(1, 4, 4), 0) is None
    ones = torch.ones(1, 4, dtype=torch.long)
    assert m._prepare_4d_causal_attention_mask_for_sdpa(ones, (1, 4), torch.zeros(1, 4, 4), 0) is None
    assert m._prepare_4d_attention_mask_for_sdpa(ones, torch.float32) is None
    padded = torch.tensor([[0, 1, 1, 1]])
    sdpa = m._prepare_4d_causal_attention_mask_for_sdpa(padded, (1, 4), torch.zeros(1, 4, 4), 0)
    assert torch.equal(sdpa, m._prepare_4d_causal_attention_mask(padded, (1, 4), torch.zeros(1, 4, 4), 0))


def test_decode_step_mask_must_cover_past_and_new_tokens():
    # what StableLM-epoch-style code does on a decode step with a mask over one token only
    with pytest.raises(ValueError, match=r"Attention mask should be of size \(1, 1, 1, 5\)"):
        m._prepare_4d_causal_attention_mask(torch.ones(1, 1, 1, 1), (1, 1), torch.zeros(1, 1, 4), 4)
    mask = m._prepare_4d_causal_attention_mask(torch.ones(1, 5), (1, 1), torch.zeros(1, 1, 4), 4)
    assert mask.shape == (1, 1, 1, 5) and bool((mask == 0).all())


def test_expand_mask_is_not_causal():
    mask = m._prepare_4d_attention_mask(torch.tensor([[1, 1, 0]]), torch.float16, tgt_len=2)
    assert mask.shape == (1, 1, 2, 3) and mask.dtype == torch.float16
    assert torch.equal(allowed(mask)[0], torch.tensor([[True, True, False]] * 2))


def test_phrasal_constraint_steps_and_resets():
    c = PhrasalConstraint([5, 6, 7])
    assert c.advance() == 5 and c.remaining() == 3
    assert c.update(5) == (True, False, False)
    assert c.update(9) == (False, False, True) and c.remaining() == 3  # a wrong token starts over
    for t in (5, 6):
        c.update(t)
    assert c.update(7) == (True, True, False) and c.advance() is None
    assert c.copy(stateful=True).completed and not c.copy().completed


def test_disjunctive_constraint():
    c = DisjunctiveConstraint([[1, 2, 3], [1, 4]])
    assert c.advance() == [1]
    c.update(1)
    assert c.advance() == [2, 4] and c.remaining() == 2
    assert c.update(4) == (True, True, False) and c.remaining() == 0
    with pytest.raises(ValueError, match="prefix"):
        DisjunctiveConstraint([[1, 2], [1, 2, 3]])


def test_legacy_config_defaults_and_tied_keys_list():
    from transformers import LlamaConfig, LlamaForCausalLM

    class OldConfig(LlamaConfig):
        pass

    class OldForCausalLM(LlamaForCausalLM):
        config_class = OldConfig
        _tied_weights_keys = ["lm_head.weight"]  # 4.x: a list of keys tied to the input embeddings

    patch_legacy_classes(OldConfig, OldForCausalLM)
    config = OldConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    assert config.max_length == 20 and config.num_beams == 1 and config.pruned_heads == {}
    with pytest.raises(AttributeError):
        config.no_such_setting
    with pytest.raises(AttributeError):
        LlamaConfig().max_length  # in-library classes are untouched
    model = OldForCausalLM(config)
    assert model._tied_weights_keys == {"lm_head.weight": "model.embed_tokens.weight"}
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
