"""Without CUDA the LoRA Triton kernels run in Triton's interpreter, which must be chosen before
Triton is first imported (its own @jit helpers, tl.sum among them, are decorated then): set here,
at collection, as tests/attention_backend/conftest.py does. Nothing on a CPU-only machine runs
Triton otherwise, so the variable is harmless to the other tests."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
