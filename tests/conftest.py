"""Suite-wide settings. Tiny models gain nothing from intra-op threads, and on a shared 2-core
machine (servers, TP workers and pytest at once) spinning OpenMP threads slow every step by 10-30x."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by server and worker subprocesses
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test touches the network
# Tiny test models take the oneDNN-packed GEMM path too (production packs only large weights).
os.environ.setdefault("ANYMODEL_CPU_PACK_MIN_NUMEL", "0")

import torch  # noqa: E402

torch.set_num_threads(1)
# Without CUDA, Triton kernels run in Triton's interpreter. Triton picks the mode when it is first
# imported (its own @jit helpers, tl.zeros and tl.sum among them, are decorated then), and libraries
# import it early: Transformers' MoE integration, xgrammar. So it is chosen here, before any of them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
