"""The sharded loading path (meta build, checkpoint names through Transformers' renamings, tied
heads, real buffers) gives the same model as from_pretrained when nothing is sharded."""

import pytest
import torch

from anymodel import loader
from anymodel.adapters.causal_lm import load_causal_lm
from anymodel.adapters.parallel import load_parallel_causal_lm
from anymodel.attention_backend import torch_ref
from anymodel.attention_backend.forward_context import ForwardContext
from anymodel.distributed import ParallelState
from anymodel.worker.model_runner import ModelRunner
from tests.parallel.tiny_models import build


def logits(model, ids):
    runner = ModelRunner(model, torch.device("cpu"), 16, torch_ref)
    meta = runner._metadata([len(ids)], [len(ids)], [[0]], torch.arange(len(ids)))
    with torch.inference_mode(), ForwardContext.discovery(meta):  # the dense single-request pass
        hidden = model(torch.tensor([ids]), torch.arange(len(ids))[None], meta)
        return model.compute_logits(hidden)


def both(cls, has_lm_head, path, config):
    sharded = load_parallel_causal_lm(cls, has_lm_head, path, config, torch.float32, ParallelState())
    reference = load_causal_lm(cls, has_lm_head, path, config, torch.float32)
    return sharded, reference


@pytest.mark.parametrize("arch", ["llama", "qwen2", "custom", "gpt2"])
def test_single_rank_load_equals_from_pretrained(arch, tmp_path):
    path = build(arch, tmp_path / arch)
    config = loader.load_config(path, trust_remote_code=True)
    spec = loader.resolve_causal_lm_class(config, path, trust_remote_code=True)
    sharded, reference = both(spec.cls, spec.has_lm_head, path, config)
    ids = [5, 17, 42, 8, 99, 3]
    torch.testing.assert_close(logits(sharded, ids), logits(reference, ids), atol=0, rtol=0)


def test_base_only_class_gets_a_tied_head(tmp_path):
    """A remote-code AutoModel without a head: the head is read from the embeddings (tied)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    path = build("custom", tmp_path / "custom")
    config = loader.load_config(path, trust_remote_code=True)
    base_cls = get_class_from_dynamic_module("modeling_tinyplan.TinyPlanModel", str(path))
    sharded, reference = both(base_cls, False, path, config)
    assert not hasattr(sharded.model, "lm_head")
    torch.testing.assert_close(sharded.lm_head.weight, sharded.model.wte.weight, atol=0, rtol=0)
    torch.testing.assert_close(logits(sharded, [7, 9, 11]), logits(reference, [7, 9, 11]), atol=0, rtol=0)
