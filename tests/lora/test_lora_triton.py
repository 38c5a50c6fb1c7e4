"""The Triton shrink / expand kernels against the torch reference (anymodel/lora/ops.py), tiny shapes:
in Triton's interpreter on CPU (TRITON_INTERPRET=1), compiled on a GPU (the `gpu` test)."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anymodel.lora import ops

HAS_CUDA = torch.cuda.is_available()


def _triton_ops():
    if not HAS_CUDA:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated: set before (re)import
    module = importlib.import_module("anymodel.lora.triton_ops")
    if not HAS_CUDA and type(module._shrink_kernel).__name__ != "InterpretedFunction":
        module = importlib.reload(module)
    return module


def _agree(device: str, dtype: torch.dtype, tol: float) -> None:
    tri = _triton_ops()
    g = torch.Generator().manual_seed(0)
    S, R, n_in, n_out = 3, 6, 40, 24  # not powers of two: the masks are exercised
    a, b = torch.randn(S, R, n_in, generator=g), torch.randn(S, n_out, R, generator=g)
    for slots in ([-1, 0, 2, 2, -1, 1, 0], [1] * 5):
        T = len(slots)
        x, y = torch.randn(T, n_in, generator=g), torch.randn(T, n_out, generator=g)
        ref_map = ops.LoRAMapping.build(slots, torch.device("cpu"), S)
        want = ops.lora_expand(y, ops.lora_shrink(x, a, ref_map), b, ref_map)
        dev_map = ops.LoRAMapping.build(slots, torch.device(device), S)
        to = dict(device=device, dtype=dtype)
        h = tri.lora_shrink(x.to(**to), a.to(**to), dev_map)
        want_h = torch.stack([a[s] @ x[t] if s >= 0 else torch.zeros(R) for t, s in enumerate(slots)])
        torch.testing.assert_close(h.float().cpu(), want_h, atol=tol, rtol=tol)
        got = tri.lora_expand(y.to(**to), h, b.to(**to), dev_map)
        torch.testing.assert_close(got.float().cpu(), want, atol=tol, rtol=tol)


@pytest.mark.skipif(HAS_CUDA, reason="the GPU test below runs the compiled kernels")
def test_triton_kernels_equal_the_torch_reference_interpreted():
    """In a fresh interpreter: Triton picks its interpreter when it is first imported (its own @jit
    helpers, tl.sum among them, are decorated then), and earlier tests of this session may have
    imported it already (xgrammar does)."""
    root = Path(__file__).resolve().parents[2]
    code = "import torch; from tests.lora.test_lora_triton import _agree; _agree('cpu', torch.float32, 1e-4)"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_triton_kernels_equal_the_torch_reference_on_gpu():
    _agree("cuda", torch.float32, 1e-3)
    _agree("cuda", torch.bfloat16, 1e-1)
