"""Which CPU weights get the oneDNN-packed GEMM: large float32 ones (its fixed cost loses on small ones)."""

import torch

from anymodel.native_overrides.linear import can_pack, packed_or_plain_linear, prepare_cpu_weight


def test_only_large_float32_weights_are_packed(monkeypatch):
    monkeypatch.delenv("ANYMODEL_CPU_PACK_MIN_NUMEL", raising=False)  # the production threshold
    assert not can_pack(torch.empty(256, 256))
    assert can_pack(torch.empty(512, 512))
    assert not can_pack(torch.empty(512, 512, dtype=torch.bfloat16))
    small = torch.randn(64, 128)
    assert prepare_cpu_weight(small) is None
    x = torch.randn(16, 128)
    torch.testing.assert_close(packed_or_plain_linear(x, small, None, None), x @ small.T)
    monkeypatch.setenv("ANYMODEL_CPU_PACK_MIN_NUMEL", "0")  # what the rest of the suite runs with
    assert can_pack(torch.empty(256, 256))
    packed = prepare_cpu_weight(small)
    assert packed is not None
    torch.testing.assert_close(packed_or_plain_linear(x, small, packed, None), x @ small.T)
