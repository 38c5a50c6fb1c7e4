"""compressed-tensors checkpoints (written by the compressed-tensors package's own compressors):
greedy tokens equal plain float32 Transformers on the dequantized weights (CPU semantics:
weight-only dequantization, also for W8A8), on the Transformers backend and the native Llama."""

import pytest
import torch

from anymodel import LLM
from tests.models.zoo import mixed_prompts
from tests.quantization.checkpoints import compressed_tensors, quantized_pair
from tests.reference import hf_greedy, llm_greedy

FP8 = {"num_bits": 8, "type": "float", "symmetric": True}
INT8 = {"num_bits": 8, "type": "int", "symmetric": True}
INT4_GROUP = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 16}
STATIC_FP8_INPUT = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
DYNAMIC_INT8_INPUT = {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True, "symmetric": True}

CASES = {  # name: (format, weights, input activations, implementation, stored dtypes of the first q/qkv layer)
    "fp8-tensor-static": ("float-quantized", {**FP8, "strategy": "tensor"}, STATIC_FP8_INPUT, "native",
                          {"weight": "float8_e4m3fn", "weight_scale": "float32", "input_scale": "float32"}),
    "fp8-channel": ("float-quantized", {**FP8, "strategy": "channel"}, None, "transformers",
                    {"weight": "float8_e4m3fn", "weight_scale": "float32"}),
    "w8a8-int": ("int-quantized", {**INT8, "strategy": "channel"}, DYNAMIC_INT8_INPUT, "native",
                 {"weight": "int8", "weight_scale": "float32"}),
    "w8a16-packed": ("pack-quantized", {**INT8, "strategy": "channel"}, None, "transformers",
                     {"weight_packed": "int32", "weight_scale": "float32", "weight_shape": "int64"}),
    "w4a16-group": ("pack-quantized", {**INT4_GROUP, "symmetric": True}, None, "native",
                    {"weight_packed": "int32", "weight_scale": "float32", "weight_shape": "int64"}),
    "w4a16-group-asym": ("pack-quantized", {**INT4_GROUP, "symmetric": False}, None, "transformers",
                         {"weight_packed": "int32", "weight_scale": "float32", "weight_shape": "int64",
                          "weight_zero_point": "int32"}),
}


def _case(name, tmp_path):
    fmt, weights, acts, impl, stored = CASES[name]
    quant, plain = quantized_pair("llama", tmp_path, compressed_tensors(fmt, weights, acts))
    prompts = mixed_prompts(plain, n=4, seed=2)
    return quant, prompts, hf_greedy(plain, prompts, 6), impl, stored


def _stored_dtypes(model):
    attn = model.model.layers[0].self_attn
    layer = getattr(attn, "qkv_proj", None) or attn.q_proj
    return {name: str(p.dtype).removeprefix("torch.") for name, p in layer.named_parameters() if name != "bias"}


@pytest.mark.parametrize("name", list(CASES))
def test_compressed_tensors_one_process(name, tmp_path):
    quant, prompts, reference, impl, stored = _case(name, tmp_path)
    llm = LLM(str(quant), dtype="float32", model_impl=impl, num_kv_blocks=64)
    assert llm_greedy(llm, prompts, 6) == reference
    assert llm.apply_model(_stored_dtypes) == [stored]


def test_w4a16_group_tp2(tmp_path):
    """Packed int4 words and group scales split on group boundaries (row-parallel o/down: 32 / 64 of
    64 / 128 input columns per rank, groups of 16)."""
    quant, prompts, reference, _, _ = _case("w4a16-group-asym", tmp_path)
    llm = LLM(str(quant), dtype="float32", model_impl="native", tensor_parallel_size=2, num_kv_blocks=64)
    try:
        assert llm_greedy(llm, prompts, 6) == reference
        shapes = llm.apply_model(lambda m: tuple(m.model.layers[0].mlp.down_proj.weight_scale.shape))
        assert shapes == [(64, 4)] * 2  # down_proj: 64 output rows, 64 of 128 inputs in groups of 16
    finally:
        llm.engine.shutdown()


def test_unsupported_compressed_tensors_details_are_refused():
    from anymodel.native_overrides.quantization.compressed import compressed_tensors_method

    config = compressed_tensors("pack-quantized", {**INT4_GROUP, "actorder": "weight"}).config
    with pytest.raises(ValueError, match=r"actorder .weight. is not supported"):
        compressed_tensors_method(config)
    config = compressed_tensors("float-quantized", {**FP8, "strategy": "channel"}).config
    config["kv_cache_scheme"] = {"num_bits": 8, "type": "float", "strategy": "tensor"}
    with pytest.raises(ValueError, match=r"kv_cache_scheme \(a quantized KV cache\) is not supported"):
        compressed_tensors_method(config)


def test_weights_stay_quantized_in_memory(tmp_path):
    """W4A16: the decoder linears take ~1/7 of their float32 bytes (4-bit values + one f32 scale per 16)."""
    from anymodel.native_overrides.quantization.layers import weight_bytes

    quant, plain = quantized_pair("llama", tmp_path, compressed_tensors("pack-quantized", {**INT4_GROUP, "symmetric": True}))
    sizes = {}
    for name, path in (("quant", quant), ("plain", plain)):
        llm = LLM(str(path), dtype="float32", model_impl="native", num_kv_blocks=16)
        sizes[name] = llm.apply_model(lambda m: weight_bytes(m.model.layers))[0]
    assert sizes["quant"] * 5 < sizes["plain"], sizes
