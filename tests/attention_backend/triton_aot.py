"""Compile the Triton kernels ahead of time for GPU targets, without a GPU; prints JSON.

    python tests/attention_backend/triton_aot.py  ->  {case: {"ok", "error", "shared", "config"}}

Run by test_triton_compile.py in a subprocess: the attention tests' conftest switches Triton to its
interpreter for the whole pytest process, and interpreted kernels cannot be compiled.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

# The package re-exports the function `paged_attention`, which shadows the module of that name.
pa = importlib.import_module("anymodel.attention_backend.triton.paged_attention")
store = importlib.import_module("anymodel.attention_backend.triton.store_kv")

TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}

# (cache dtype, head dim, query heads per KV head, block size, max query len, max seq len, causal, window, softcap)
ATTENTION_SHAPES = {
    "llama-prefill-fp16": (torch.float16, 128, 4, 16, 512, 512, True, False, False),
    "llama-decode-split-bf16": (torch.bfloat16, 128, 4, 16, 1, 32768, True, False, False),
    "mha-decode-d64-bf16": (torch.bfloat16, 64, 1, 32, 1, 256, True, False, False),
    "gemma2-prefill-d256-bf16": (torch.bfloat16, 256, 2, 16, 256, 4096, True, True, True),
    "gemma2-prefill-d256-fp32": (torch.float32, 256, 2, 16, 256, 4096, True, True, True),
    "phi-prefill-d80-fp16": (torch.float16, 80, 1, 64, 128, 128, True, False, False),
    "mistral-decode-d128-fp32": (torch.float32, 128, 8, 64, 1, 8192, True, True, False),
    "encoder-d96-group7-fp16": (torch.float16, 96, 7, 16, 64, 64, False, True, False),
    # learnable sinks (GPT-OSS: head dim 64, 8 query heads per KV head, alternating 128-token window)
    "gptoss-prefill-sinks-bf16": (torch.bfloat16, 64, 8, 16, 256, 4096, True, True, False),
    "gptoss-decode-split-sinks-bf16": (torch.bfloat16, 64, 8, 16, 1, 32768, True, False, False),
}
ARCHS = {"sm90": 90, "sm80": 80}


def compile_kernel(kernel, pointers: dict[str, str], floats: tuple[str, ...], constexprs: dict, arch: int,
                   num_warps: int = 4, num_stages: int = 2):
    """Compile `kernel` to a cubin for sm_`arch`; arguments not named are i32 scalars."""
    names = kernel.arg_names
    signature = {
        n: "constexpr" if n in constexprs else pointers.get(n, "fp32" if n in floats else "i32") for n in names
    }
    src = ASTSource(fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def attention_case(shape: str, arch: int):
    dtype, head_dim, group, block_size, max_q, max_seq, causal, window, softcap = ATTENTION_SHAPES[shape]
    pa._num_sms = lambda index: 132  # an H100's SM count, for the split-K heuristic
    cfg = pa.launch_config(torch.device("cuda", 0), dtype, head_dim, group, max_q, max_seq, num_programs=8)
    t = "*" + TRITON_DTYPE[dtype]
    split = cfg.num_splits > 1
    pointers = dict(query=t, key_cache=t, value_cache=t, out="*fp32" if split else t, part_m="*fp32",
                    part_l="*fp32", query_start_loc="*i32", seq_lens="*i32", block_tables="*i32", sinks="*fp32", alibi="*fp32")
    g_pad = triton.next_power_of_2(group)
    constexprs = dict(
        GROUP=group, G_PAD=g_pad, HEAD_DIM=head_dim, D_PAD=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size, BLOCK_Q=cfg.block_q, BLOCK_M=cfg.block_q * g_pad, TILE_N=cfg.tile_n,
        CAUSAL=causal, USE_WINDOW=window, USE_SOFTCAP=softcap, NUM_SPLITS=cfg.num_splits,
        DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32", USE_SINKS="sinks" in shape, USE_ALIBI=False,
    )
    kernel = compile_kernel(pa._paged_attention_kernel, pointers, ("score_mul", "cap_mul"), constexprs, arch,
                            cfg.num_warps, cfg.num_stages)
    return kernel, cfg


def reduce_case(head_dim: int, splits: int, arch: int):
    constexprs = dict(HEAD_DIM=head_dim, D_PAD=triton.next_power_of_2(head_dim), NUM_SPLITS=splits,
                      S_PAD=triton.next_power_of_2(splits))
    pointers = dict(part_acc="*fp32", part_m="*fp32", part_l="*fp32", out="*bf16")
    return compile_kernel(pa._reduce_splits_kernel, pointers, (), constexprs, arch), None


def store_case(src: str, dst: str, arch: int):
    pointers = dict(key="*" + src, value="*" + src, key_cache="*" + dst, value_cache="*" + dst, slot_mapping="*i64")
    constexprs = dict(NUM_KV_HEADS=3, H_PAD=4, HEAD_DIM=80, D_PAD=128, BLOCK_SIZE=16)
    return compile_kernel(store._store_kv_kernel, pointers, (), constexprs, arch), None


def cases() -> dict:
    """case name -> zero-argument builder returning (compiled kernel, launch config or None)."""
    out = {}
    for shape in ATTENTION_SHAPES:
        # sm_80 (less shared memory) where it is tightest: head dim 256
        for arch_name, arch in ARCHS.items() if "d256" in shape else [("sm90", 90)]:
            out[f"attention/{shape}/{arch_name}"] = lambda s=shape, a=arch: attention_case(s, a)
    for head_dim, splits in [(128, 8), (80, 3)]:
        out[f"reduce/d{head_dim}-s{splits}/sm90"] = lambda d=head_dim, s=splits: reduce_case(d, s, 90)
    for src, dst in [("bf16", "bf16"), ("fp32", "fp16")]:
        out[f"store/{src}-to-{dst}/sm90"] = lambda a=src, b=dst: store_case(a, b, 90)
    return out


def main() -> int:
    results = {}
    for name, build in cases().items():
        try:
            kernel, cfg = build()
            results[name] = {"ok": bool(kernel.asm["cubin"]), "shared": kernel.metadata.shared,
                             "config": None if cfg is None else vars(cfg)}
        except Exception as e:  # reported per case, so one failure names itself
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
