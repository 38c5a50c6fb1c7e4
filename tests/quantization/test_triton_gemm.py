"""The quantized Triton GEMMs against their torch references (tiny shapes under TRITON_INTERPRET=1
on CPU; compiled on a GPU, where the `gpu` test adds real shapes and bfloat16)."""

import importlib
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")


def _kernels():
    mod = importlib.import_module("anymodel.native_overrides.quantization.triton_gemm")
    if not HAS_CUDA and type(mod._dequant_gemm_kernel).__name__ != "InterpretedFunction":
        os.environ["TRITON_INTERPRET"] = "1"  # imported before: re-decorate under the interpreter
        mod = importlib.reload(mod)
    return mod


def _fp8_case(M, N, K, block, device, dtype=torch.float32):
    from anymodel.native_overrides.quantization.formats import BlockFp8

    torch.manual_seed(0)
    w = torch.randn(N, K).to(torch.float8_e4m3fn)
    scale = torch.rand(-(-N // block[0]), -(-K // block[1])) + 0.5
    x = torch.randn(M, K, dtype=dtype)
    t = {"weight": w, "weight_scale_inv": scale}
    want = BlockFp8(block).apply(t, (N, K), x, None)
    got = _kernels().fp8_block_gemm(x.to(device), w.to(device), scale.to(device), block)
    return got.cpu().float(), want.float()


def _w4_case(M, N, K, group, device, dtype=torch.float32):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    from anymodel.native_overrides.quantization.compressed import compressed_tensors_method

    torch.manual_seed(0)
    values = torch.randint(-8, 8, (N, K), dtype=torch.int8)
    packed = pack_to_int32(values, 4)
    scales = torch.rand(N, K // group) + 0.1
    config = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"g": {
        "targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": group}}}}
    method = compressed_tensors_method(config)
    x = torch.randn(M, K, dtype=dtype)
    t = {"weight_packed": packed, "weight_scale": scales, "weight_shape": torch.tensor([N, K])}
    want = method.apply(t, (N, K), x, None)
    got = _kernels().w4a16_gemm(x.to(device), packed.to(device), scales.to(device), group)
    return got.cpu().float(), want.float()


DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.mark.parametrize("M, N, K, block", [(3, 20, 48, (16, 16)), (1, 32, 32, (16, 32))])
def test_fp8_block_gemm_matches_the_reference(M, N, K, block):
    got, want = _fp8_case(M, N, K, block, DEVICE)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("M, N, K, group", [(2, 20, 64, 16), (1, 16, 32, 32)])
def test_w4a16_gemm_matches_the_reference(M, N, K, group):
    got, want = _w4_case(M, N, K, group, DEVICE)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_real_shapes_bf16_on_gpu():
    got, want = _fp8_case(37, 1024, 2048, (128, 128), "cuda", torch.bfloat16)
    torch.testing.assert_close(got, want, atol=0.5, rtol=2e-2)
    got, want = _w4_case(37, 1024, 2048, 128, "cuda", torch.bfloat16)
    torch.testing.assert_close(got, want, atol=0.5, rtol=2e-2)
