"""Block FP8 checkpoints (quant_method "fp8", weight_block_size): greedy tokens equal a plain float32
Transformers model whose weights are the dequantized values, on the Transformers backend and the
native Llama, in one process and at tensor_parallel_size=2; weights stay float8 in memory."""

import pytest
import torch

from anymodel import LLM
from tests.models.zoo import mixed_prompts
from tests.quantization.checkpoints import block_fp8, quantized_pair, tensor_fp8
from tests.reference import hf_greedy, llm_greedy


@pytest.fixture(scope="module")
def fp8_case(tmp_path_factory):
    quant, plain = quantized_pair("llama", tmp_path_factory.mktemp("fp8"), block_fp8((16, 16)))
    prompts = mixed_prompts(plain, n=4, seed=1)
    return quant, prompts, hf_greedy(plain, prompts, 6)


def _stored(model):
    """What the first layer's q projection stores (native: the fused qkv_proj)."""
    attn = model.model.layers[0].self_attn
    layer = getattr(attn, "qkv_proj", None) or attn.q_proj
    return {name: (str(p.dtype), tuple(p.shape)) for name, p in layer.named_parameters()}


@pytest.mark.parametrize("impl, stored", [
    # hidden 64, q 4 heads x 16 = 64 rows: 4 x 4 blocks of 16 x 16
    ("transformers", {"weight": ("torch.float8_e4m3fn", (64, 64)), "weight_scale_inv": ("torch.float32", (4, 4))}),
    # fused q/k/v: 64 + 32 + 32 rows, the three projections' block scales stacked
    ("native", {"weight": ("torch.float8_e4m3fn", (128, 64)), "weight_scale_inv": ("torch.float32", (8, 4))}),
])
def test_block_fp8_one_process(fp8_case, impl, stored):
    quant, prompts, reference = fp8_case
    llm = LLM(str(quant), dtype="float32", model_impl=impl, num_kv_blocks=64)
    assert llm.engine.hf_config.quantization_config["quant_method"] == "fp8"
    assert llm_greedy(llm, prompts, 6) == reference
    assert llm.apply_model(_stored) == [stored]
    assert "quantization  fp8: block FP8 (float8_e4m3fn weights, 16x16 block scales)\n" in llm.describe()


@pytest.mark.parametrize("impl", ["transformers", "native"])
def test_block_fp8_tp2(fp8_case, impl):
    """Scales shard along the block grid with their weights (the bug this replaces: the sharded
    loader cast raw float8 to float32 and dropped weight_scale_inv, giving wrong tokens)."""
    quant, prompts, reference = fp8_case
    llm = LLM(str(quant), dtype="float32", model_impl=impl, tensor_parallel_size=2, num_kv_blocks=64)
    try:
        assert llm_greedy(llm, prompts, 6) == reference
        shapes = llm.apply_model(_stored)
        q_rows = 32 if impl == "transformers" else 64  # per rank: 2 q heads (+ 1 k and 1 v head fused)
        assert [s["weight_scale_inv"][1] for s in shapes] == [(q_rows // 16, 4)] * 2
    finally:
        llm.engine.shutdown()


def test_block_fp8_dequantize_matches_the_formula():
    from anymodel.native_overrides.quantization.formats import BlockFp8

    w = torch.randn(40, 24)  # partial last blocks on both dims
    q = w.to(torch.float8_e4m3fn)
    scale = torch.rand(3, 2) + 0.5  # ceil(40 / 16), ceil(24 / 16)
    expected = q.float() * scale.repeat_interleave(16, 0)[:40].repeat_interleave(16, 1)[:, :24]
    got = BlockFp8((16, 16)).dequantize({"weight": q, "weight_scale_inv": scale}, (40, 24), torch.float32)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.parametrize("static, impl", [(True, "native"), (False, "transformers")])
def test_per_tensor_fp8(tmp_path, static, impl):
    """No weight_block_size: one scale per checkpoint tensor; the native fused q/k/v and gate/up keep
    each projection's own (per-slice scales); static input scales are read, unused (weight-only)."""
    quant, plain = quantized_pair("llama", tmp_path, tensor_fp8(static))
    prompts = mixed_prompts(plain, n=4, seed=5)
    llm = LLM(str(quant), dtype="float32", model_impl=impl, num_kv_blocks=64)
    assert llm_greedy(llm, prompts, 6) == hf_greedy(plain, prompts, 6)
    stored = llm.apply_model(_stored)[0]
    assert stored["weight_scale"] == ("torch.float32", (128 if impl == "native" else 64, 1))
    assert ("input_scale" in stored) == static
