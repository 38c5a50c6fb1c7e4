"""AWQ (AutoAWQ gemm packing) and GPTQ (AutoGPTQ v1 packing) checkpoints built in the test: greedy
tokens equal plain float32 Transformers on the dequantized weights; int32 words stay packed."""

import pytest

from anymodel import LLM
from tests.models.zoo import mixed_prompts
from tests.quantization.checkpoints import awq, gptq, quantized_pair
from tests.reference import hf_greedy, llm_greedy

CASES = {  # name: (format, implementation, the first q / qkv layer's stored shapes)
    # q_proj [64, 64]: qweight [in 64, out 64 / 8], groups of 16 -> 4 rows of zeros / scales
    "awq-g16": (awq(16), "transformers", {"qweight": (64, 8), "qzeros": (4, 8), "scales": (4, 64)}),
    # fused q/k/v (64 + 32 + 32 outputs): the three projections' words side by side
    "awq-g16-native": (awq(16), "native", {"qweight": (64, 16), "qzeros": (4, 16), "scales": (4, 128)}),
    "gptq4-g16-native": (gptq(4, 16), "native",
                         {"qweight": (8, 128), "qzeros": (4, 16), "scales": (4, 128), "g_idx": (64,)}),
    "gptq8-channel": (gptq(8, -1), "transformers", {"qweight": (16, 64), "qzeros": (1, 16), "scales": (1, 64),
                                                    "g_idx": (64,)}),
    "gptq4-v2": (gptq(4, 32, v2=True), "transformers", {"qweight": (8, 64), "qzeros": (2, 8), "scales": (2, 64),
                                                        "g_idx": (64,)}),
}


def _stored_shapes(model):
    attn = model.model.layers[0].self_attn
    layer = getattr(attn, "qkv_proj", None) or attn.q_proj
    return {name: tuple(p.shape) for name, p in layer.named_parameters() if name != "bias"}


def _case(fmt, tmp_path):
    quant, plain = quantized_pair("llama", tmp_path, fmt)
    prompts = mixed_prompts(plain, n=4, seed=3)
    return quant, prompts, hf_greedy(plain, prompts, 6)


@pytest.mark.parametrize("name", list(CASES))
def test_packed_int_one_process(name, tmp_path):
    fmt, impl, shapes = CASES[name]
    quant, prompts, reference = _case(fmt, tmp_path)
    llm = LLM(str(quant), dtype="float32", model_impl=impl, num_kv_blocks=64)
    assert llm_greedy(llm, prompts, 6) == reference
    assert llm.apply_model(_stored_shapes) == [shapes]


def test_gptq_tp2(tmp_path):
    """Row-parallel layers cut the words packed along `in` and the groups on their boundaries."""
    quant, prompts, reference = _case(gptq(4, 16), tmp_path)
    llm = LLM(str(quant), dtype="float32", model_impl="transformers", tensor_parallel_size=2, num_kv_blocks=64)
    try:
        assert llm_greedy(llm, prompts, 6) == reference
        o_proj = llm.apply_model(lambda m: tuple(m.model.layers[0].self_attn.o_proj.qweight.shape))
        assert o_proj == [(4, 64)] * 2  # 32 of 64 input rows per rank, 8 per word
    finally:
        llm.engine.shutdown()


@pytest.mark.parametrize("method, raw, message", [
    ("awq", {"bits": 3, "group_size": 128}, r"AWQ bits=3, version='gemm', zero_point=True is not supported"),
    ("awq", {"bits": 4, "version": "gemv"}, r"version='gemv'"),
    ("gptq", {"bits": 4, "group_size": 128, "desc_act": True}, r"GPTQ desc_act=True .* is not supported"),
    ("gptq", {"bits": 2, "group_size": 128}, r"GPTQ bits=2, checkpoint_format='gptq' is not supported"),
])
def test_unsupported_details_are_refused(method, raw, message):
    from anymodel.native_overrides.quantization.config import QuantConfig
    from anymodel.native_overrides.quantization.methods import method_for

    with pytest.raises(ValueError, match=message):
        method_for(QuantConfig(method, {"quant_method": method, **raw}))


def test_awq_pp2(tmp_path):
    """Pipeline stages quantize only the linears they own (the Transformers backend stages)."""
    quant, prompts, reference = _case(awq(16), tmp_path)
    llm = LLM(str(quant), dtype="float32", model_impl="transformers", pipeline_parallel_size=2, num_kv_blocks=64)
    try:
        assert llm_greedy(llm, prompts, 6) == reference
    finally:
        llm.engine.shutdown()
