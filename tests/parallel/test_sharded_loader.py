"""The sharded loading path (meta build, checkpoint names through Transformers' renamings, tied
heads, real buffers) gives the same model as from_pretrained when nothing is sharded."""

import pytest
import torch

from anymodel import loader
from anymodel.adapters.causal_lm import load_causal_lm
from anymodel.adapters.parallel import load_parallel_causal_lm
from anymodel.distributed import ParallelState
from tests.models.zoo import build_tiny_model
from tests.reference import dense_logits


def both(cls, has_lm_head, path, config):
    sharded = load_parallel_causal_lm(cls, has_lm_head, path, config, torch.float32, ParallelState())
    reference = load_causal_lm(cls, has_lm_head, path, config, torch.float32)
    return sharded, reference


@pytest.mark.parametrize("arch", ["llama", "qwen2", "tinyplan", "gpt2"])
def test_single_rank_load_equals_from_pretrained(arch, tmp_path):
    path = build_tiny_model(arch, tmp_path / arch)
    config = loader.load_config(path, trust_remote_code=True)
    spec = loader.resolve_causal_lm_class(config, path, trust_remote_code=True)
    sharded, reference = both(spec.cls, spec.has_lm_head, path, config)
    ids = [5, 17, 42, 8, 99, 3]
    torch.testing.assert_close(dense_logits(sharded, ids), dense_logits(reference, ids), atol=0, rtol=0)


def test_base_only_class_gets_a_tied_head(tmp_path):
    """A remote-code AutoModel without a head: the head is read from the embeddings (tied)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    path = build_tiny_model("tinyplan", tmp_path / "tinyplan")
    config = loader.load_config(path, trust_remote_code=True)
    base_cls = get_class_from_dynamic_module("modeling_tinyplan.TinyPlanModel", str(path))
    sharded, reference = both(base_cls, False, path, config)
    assert not hasattr(sharded.model, "lm_head")
    torch.testing.assert_close(sharded.lm_head.weight, sharded.model.wte.weight, atol=0, rtol=0)
    torch.testing.assert_close(dense_logits(sharded, [7, 9, 11]), dense_logits(reference, [7, 9, 11]), atol=0, rtol=0)
