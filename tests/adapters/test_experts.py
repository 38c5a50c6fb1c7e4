"""The registered experts function (adapters/experts.py) against its per-(token, expert) oracle and
Transformers' own `batched_mm`, for every flag combination `@use_experts_implementation` takes,
with the identity/zero expert id (= num_experts) in the routing."""

import itertools
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, use_experts_implementation

from anymodel.adapters import experts
from anymodel.adapters.experts import (
    EXPERTS_IMPLEMENTATION, anymodel_experts_forward, experts_implementation, experts_paths,
    reference_experts_forward, register_experts, sort_by_expert,
)

E, H, I = 5, 12, 8  # experts, hidden, intermediate


def _experts_class(has_gate: bool, has_bias: bool, is_transposed: bool, post_norm: bool, interleaved: bool):
    class Experts(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.num_experts = E
            up_out = 2 * I if has_gate else I
            up_shape = (E, H, up_out) if is_transposed else (E, up_out, H)
            down_shape = (E, I, H) if is_transposed else (E, H, I)
            setattr(self, "gate_up_proj" if has_gate else "up_proj", nn.Parameter(torch.randn(up_shape) * 0.3))
            self.down_proj = nn.Parameter(torch.randn(down_shape) * 0.3)
            if has_bias:
                setattr(self, "gate_up_proj_bias" if has_gate else "up_proj_bias", nn.Parameter(torch.randn(E, up_out)))
                self.down_proj_bias = nn.Parameter(torch.randn(E, H))
            if post_norm:
                self.post_expert_norm = nn.LayerNorm(H)
            self.act_fn = nn.SiLU() if has_gate else nn.GELU()

        def forward(self, hidden_states, top_k_index, top_k_weights):
            raise AssertionError("the interface must dispatch away from the class's own forward")

    if interleaved:  # GPT-OSS: [g0, u0, g1, u1, ...] with its own clamped gate
        def _apply_gate(self, gate_up):
            gate, up = gate_up[..., ::2].clamp(max=7.0), gate_up[..., 1::2].clamp(-7.0, 7.0)
            return (up + 1) * gate * torch.sigmoid(gate * 1.702)
        Experts._apply_gate = _apply_gate
    return use_experts_implementation(is_concatenated=not interleaved, is_transposed=is_transposed,
                                      has_bias=has_bias, has_gate=has_gate, has_post_expert_norm=post_norm)(Experts)


FLAGS = [f for f in itertools.product([True, False], repeat=5) if not (f[4] and not f[0])]  # interleaved needs a gate


def _routing(tokens: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(E + 1, generator=g)[:k] for _ in range(tokens)]) if tokens else \
        torch.empty(0, k, dtype=torch.long)
    weights = torch.rand(tokens, k, generator=g)
    return torch.randn(tokens, H, generator=g), idx, weights  # idx == E: the identity/zero expert


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "".join("gbtni"[i] if v else "-" for i, v in enumerate(f)))
def test_matches_reference_and_transformers(flags):
    torch.manual_seed(0)
    register_experts()
    module = _experts_class(*flags)(SimpleNamespace(_experts_implementation=EXPERTS_IMPLEMENTATION))
    for tokens, k, seed in [(9, 3, 1), (1, 2, 2), (0, 2, 3), (17, 1, 4), (100, 6, 5)]:  # 600 pairs: the device sort
        x, idx, w = _routing(tokens, k, seed)
        with torch.no_grad():
            ours = module(x, idx, w)  # through the decorator's dispatch
            want = reference_experts_forward(module, x, idx, w)
            module._is_expert_parallel = True  # batched_mm: ids >= num_experts masked as sentinels
            theirs = ALL_EXPERTS_FUNCTIONS["batched_mm"](module, x, idx, w)
            module._is_expert_parallel = False
        assert ours.shape == x.shape
        torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        if tokens:
            assert ours.abs().sum() > 0


def test_identity_expert_contributes_nothing():
    module = _experts_class(True, False, False, False, False)(SimpleNamespace(_experts_implementation="anymodel"))
    x = torch.randn(3, H)
    only_identity = torch.full((3, 2), E)
    with torch.no_grad():
        assert torch.equal(anymodel_experts_forward(module, x, only_identity, torch.ones(3, 2)), torch.zeros(3, H))


@pytest.mark.parametrize("host_max", [0, 512], ids=["device-sort", "host-sort"])
def test_sort_by_expert_segments(host_max, monkeypatch):
    monkeypatch.setattr(experts, "HOST_SORT_MAX_PAIRS", host_max)
    idx = torch.tensor([[2, 0], [5, 2], [0, -1]])
    routed = sort_by_expert(idx, torch.arange(6.0).reshape(3, 2), num_experts=5)
    assert routed.segments == ((0, 0, 2), (2, 2, 4))
    assert routed.tokens.tolist() == [0, 2, 0, 1]  # stable: token order kept within an expert
    assert routed.weights.tolist() == [1.0, 4.0, 0.0, 3.0]


def test_paths_are_reported_and_switchable():
    register_experts()
    config_cls = type("C", (), {"_experts_implementation": property(lambda s: s._experts_implementation_internal)})
    config = config_cls()
    config._experts_implementation_internal = "anymodel"
    model = nn.ModuleList([_experts_class(True, False, False, False, False)(config) for _ in range(2)])
    assert experts_paths(model) == {"Experts: anymodel experts function": 2}
    with experts_implementation(model, "eager"):
        assert experts_paths(model) == {"Experts: Transformers eager loop": 2}
    assert experts_paths(model) == {"Experts: anymodel experts function": 2}


@pytest.mark.parametrize("transposed,bias", list(itertools.product([False, True], repeat=2)))
def test_torch_grouped_mm_path_equals_segment_loop(transposed, bias):
    """The CUDA half-precision path (torch's grouped_mm) checked on CPU float32, where torch has it too."""
    if not hasattr(torch.nn.functional, "grouped_mm"):
        pytest.skip("this torch has no grouped_mm")
    g = torch.Generator().manual_seed(7)
    weight = torch.randn((E, H, I) if transposed else (E, I, H), generator=g)
    b = torch.randn(E, I, generator=g) if bias else None
    _, idx, w = _routing(11, 2, 8)
    routed = sort_by_expert(idx, w, E)
    x = torch.randn(routed.tokens.shape[0], H, generator=g)
    want = experts.grouped_linear(x, weight, b, routed, transposed)  # CPU: the segment loop
    torch.testing.assert_close(experts._torch_grouped_linear(x, weight, b, routed, transposed), want)


@pytest.mark.gpu
@pytest.mark.parametrize("flags", FLAGS[:4], ids=lambda f: "".join("gbtni"[i] if v else "-" for i, v in enumerate(f)))
def test_cuda_bfloat16_matches_reference(flags):
    module = _experts_class(*flags)(SimpleNamespace(_experts_implementation=EXPERTS_IMPLEMENTATION))
    module = module.to("cuda", torch.bfloat16)
    x, idx, w = _routing(33, 2, 9)
    with torch.no_grad():
        ours = anymodel_experts_forward(module, x.cuda().bfloat16(), idx.cuda(), w.cuda().bfloat16())
        want = reference_experts_forward(module.float().cpu(), x, idx, w)
    torch.testing.assert_close(ours.float().cpu(), want, atol=0.15, rtol=0.05)
