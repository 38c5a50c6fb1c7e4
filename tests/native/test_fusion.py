"""adapters/fusion.py: fused q/k/v and gate/up GEMMs on the Transformers-backend path give the same
results, keep every parameter name and shape, and stay correct when siblings get different inputs."""

import torch
from torch import nn

from anymodel import LLM
from anymodel.adapters.fusion import apply_fusion, fuse_siblings
from tests.reference import greedy_case, llm_greedy


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(8, 8), nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x, memory=None):
        kv_in = x if memory is None else memory  # cross-attention: k/v read another tensor
        return self.q_proj(x), self.k_proj(kv_in), self.v_proj(kv_in)


@torch.inference_mode()
def test_fused_siblings_equal_separate_linears():
    torch.manual_seed(0)
    module = _Attention()
    x, memory = torch.randn(5, 8), torch.randn(3, 8)
    expected = [module(x), module(x, memory), module(x)]
    assert fuse_siblings(module) == 1
    got = [module(x), module(x, memory), module(x)]
    for exp, out in zip(expected, got):
        for e, o in zip(exp, out):
            torch.testing.assert_close(o, e, atol=1e-6, rtol=0)


def test_backend_is_fused_and_keeps_its_parameters(tmp_path):
    path, prompts, reference = greedy_case("qwen2", tmp_path, 6, n=4, seed=3)
    llm = LLM(str(path), dtype="float32", model_impl="transformers")
    names_before = llm.apply_model(lambda m: {n: tuple(p.shape) for n, p in m.named_parameters()})
    assert llm_greedy(llm, prompts, 6) == reference

    def probe(m):
        attn = m.model.layers[0].self_attn
        shared = attn.q_proj.weight.untyped_storage().data_ptr() == attn.v_proj.weight.untyped_storage().data_ptr()
        return shared, "forward" in attn.q_proj.__dict__, {n: tuple(p.shape) for n, p in m.named_parameters()}

    [(shared, patched, names_after)] = llm.apply_model(probe)
    assert shared and patched and names_after == names_before[0]


def test_apply_fusion_is_idempotent_enough():
    torch.manual_seed(0)
    module = _Attention()
    x = torch.randn(2, 8)
    expected = module(x)
    apply_fusion(module)
    apply_fusion(module)  # already-patched linears are left alone
    for e, o in zip(expected, module(x)):
        torch.testing.assert_close(o, e, atol=1e-6, rtol=0)
