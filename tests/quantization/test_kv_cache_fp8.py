"""kv_cache_dtype="fp8" / "fp8_e4m3" / "fp8_e5m2": K/V stored one byte per element (saturating cast,
scale 1.0), dequantized on read by the torch backend. No token-identity promise against the float32
cache (README gives the zoo's agreement); the storage semantics and the budget are exact."""

import re
import types

import pytest
import torch

from anymodel import LLM
from anymodel.attention_backend import torch_ref
from tests.reference import greedy_case, llm_greedy


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_store_then_gather_is_the_saturating_cast(dtype):
    key = torch.randn(5, 2, 8) * 300  # e4m3 saturates beyond 448
    value = torch.randn(5, 2, 8)
    caches = [torch.zeros(4, 4, 2, 8, dtype=dtype) for _ in range(2)]
    slots = torch.tensor([0, 3, 5, 9, 14])
    torch_ref.store_kv(key, value, caches[0], caches[1], slots)
    limit = torch.finfo(dtype).max
    for cache, rows in zip(caches, (key, value)):
        stored = cache.view(-1, 2, 8)[slots].float()
        torch.testing.assert_close(stored, rows.clamp(-limit, limit).to(dtype).float(), atol=0, rtol=0)
        assert torch.isfinite(stored).all()


def test_fp8_cache_serves_with_a_quarter_of_the_float32_bytes(tmp_path):
    path, prompts, reference = greedy_case("gemma2", tmp_path, 6, n=4, seed=1)
    plain = LLM(str(path), dtype="float32", num_kv_blocks=32)
    fp8 = LLM(str(path), dtype="float32", kv_cache_dtype="fp8", num_kv_blocks=32)
    assert llm_greedy(plain, prompts, 6) == reference
    tokens = llm_greedy(fp8, prompts, 6)
    assert [t[0] for t in tokens] == [t[0] for t in reference]  # the first token of each (a loose sanity bound)
    per_block = [int(re.search(r"(\d+) bytes per block", llm.describe()).group(1)) for llm in (plain, fp8)]
    assert per_block[0] == 4 * per_block[1]  # the same KV memory holds 4x the blocks (2x against bf16)
    assert "float8_e4m3fn" in fp8.describe()


def test_fp8_cache_needs_the_torch_backend_and_a_paged_cache(tmp_path):
    from anymodel.worker.worker import kv_cache_dtype_for

    kernels = types.ModuleType("anymodel.attention_backend.triton.kernels")  # stands for any non-torch backend
    with pytest.raises(ValueError, match=r"kv_cache_dtype='fp8_e5m2' needs attention_backend='torch' \(the "
                                         r"anymodel.attention_backend.triton.kernels kernels"):
        kv_cache_dtype_for("fp8_e5m2", kernels, torch.nn.Linear(1, 1))
    compat, _, _ = greedy_case("bloom", tmp_path / "bloom", 1, n=1)
    with pytest.raises(ValueError, match=r"kv_cache_dtype='fp8' needs anymodel's paged KV cache"):
        LLM(str(compat), dtype="float32", kv_cache_dtype="fp8", num_kv_blocks=8)


def test_checkpoint_kv_scales_are_refused_not_ignored(tmp_path):
    from safetensors.torch import load_file, save_file

    path, _, _ = greedy_case("llama", tmp_path, 1, n=1)
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.0.self_attn.k_scale"] = torch.tensor(0.5)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ValueError, match=r"kv_cache_dtype='fp8': the checkpoint carries per-layer KV scales "
                                         r"\(model.layers.0.self_attn.k_scale"):
        LLM(str(path), dtype="float32", kv_cache_dtype="fp8", model_impl="transformers", num_kv_blocks=8)
