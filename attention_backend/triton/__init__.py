"""Triton kernels for paged-KV attention, with the same contract as `torch_ref`.

    store_kv(key[T,Hkv,D], value, key_cache[N,B,Hkv,D], value_cache, slot_mapping[T])
    paged_attention(query[T,Hq,D], key_cache, value_cache, meta, *, scale, causal=True,
                    sliding_window=None, softcap=None) -> out[T,Hq,D]

On CPU tensors the kernels only run under the Triton interpreter (`TRITON_INTERPRET=1`, set before
this package is imported); that is how the tests check them against `torch_ref`.
"""

from anymodel.attention_backend.triton.paged_attention import paged_attention
from anymodel.attention_backend.triton.store_kv import store_kv

__all__ = ["store_kv", "paged_attention", "CUDA_GRAPHS"]

# No host syncs and launch shapes fixed by the metadata's sizes: decode steps can be captured in
# CUDA graphs (runtime/worker/cuda_graph.py). torch_ref plans on the host; flash_attn is not checked yet.
CUDA_GRAPHS = True
