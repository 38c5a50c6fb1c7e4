"""Shared fixtures for the attention tests: the device, the Triton modules, and a paged batch builder.

Without CUDA the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py before anything imports Triton); on a GPU the same tests run compiled.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

from anymodel.attention_backend.metadata import AttentionMetadata  # noqa: E402


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if HAS_CUDA else "cpu")


def triton_modules():
    """(package, paged_attention module, store_kv module), interpreted on CPU even if imported earlier."""
    names = ["anymodel.attention_backend.triton.store_kv", "anymodel.attention_backend.triton.paged_attention",
             "anymodel.attention_backend.triton"]
    mods = [importlib.import_module(n) for n in names]
    if not HAS_CUDA and type(mods[1]._paged_attention_kernel).__name__ != "InterpretedFunction":
        os.environ["TRITON_INTERPRET"] = "1"  # imported before this conftest: re-decorate the kernels
        mods = [importlib.reload(m) for m in mods]
    store_mod, pa_mod, pkg = mods
    return pkg, pa_mod, store_mod


@pytest.fixture(scope="session")
def triton_backend():
    return triton_modules()[0]


@pytest.fixture(scope="session")
def triton_pa():
    return triton_modules()[1]


@dataclass
class PagedBatch:
    query: torch.Tensor  # [T, Hq, D]
    key: torch.Tensor  # [T, Hkv, D]: this step's new K/V, not yet in the cache
    value: torch.Tensor
    key_cache: torch.Tensor  # [N, B, Hkv, D], context K/V already stored
    value_cache: torch.Tensor
    meta: AttentionMetadata


def make_batch(query_lens, seq_lens, *, num_heads=4, num_kv_heads=2, head_dim=16, block_size=16,
               dtype=torch.float32, device="cpu", seed=0, spare_blocks=3) -> PagedBatch:
    """A step of len(query_lens) requests on a paged cache with shuffled, non-contiguous blocks.

    Block 0 is never allocated (it is the block tables' padding); cache slots nobody owns hold
    large garbage (100.0), so a kernel that reads past seq_len gets visibly wrong results.
    """
    g = torch.Generator().manual_seed(seed)
    R = len(query_lens)
    blocks_per_req = [-(-s // block_size) for s in seq_lens]
    num_blocks = 1 + sum(blocks_per_req) + spare_blocks
    ids = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    block_tables = torch.zeros(R, max(blocks_per_req), dtype=torch.int32)
    for i, n in enumerate(blocks_per_req):
        block_tables[i, :n] = torch.tensor(ids[:n])
        ids = ids[n:]
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.full(shape, 100.0)
    value_cache = torch.full(shape, 100.0)
    key_cache[0] = value_cache[0] = 0.0
    slots_ctx, slots_new = [], []
    for i, (q, s) in enumerate(zip(query_lens, seq_lens)):
        slots = [int(block_tables[i, p // block_size]) * block_size + p % block_size for p in range(s)]
        slots_ctx += slots[: s - q]
        slots_new += slots[s - q:]
    _fill(key_cache, slots_ctx, g)
    _fill(value_cache, slots_ctx, g)
    T = sum(query_lens)
    new = [torch.randn(T, n, head_dim, generator=g) for n in (num_heads, num_kv_heads, num_kv_heads)]
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0] + torch.tensor(query_lens).cumsum(0).tolist(), dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=block_tables,
        slot_mapping=torch.tensor(slots_new, dtype=torch.int64),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        block_size=block_size,
    ).to(device)
    q, k, v = (t.to(device=device, dtype=dtype) for t in new)
    return PagedBatch(q, k, v, key_cache.to(device=device, dtype=dtype), value_cache.to(device=device, dtype=dtype),
                      meta)


def _fill(cache: torch.Tensor, slots: list[int], g: torch.Generator) -> None:
    flat = cache.view(-1, *cache.shape[2:])
    flat[torch.tensor(slots, dtype=torch.long)] = torch.randn(len(slots), *cache.shape[2:], generator=g)


@pytest.fixture(scope="session")
def paged_batch():
    """The builder above, as a fixture (test modules do not import conftest)."""
    return make_batch
