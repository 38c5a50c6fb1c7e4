"""Benchmarks, all in one place, one kind a module: `anymodel bench KIND ...` or
`python -m anymodel.bench KIND ...`. throughput|latency (generation.py, against plain Transformers
in the same process; the systems it times are in systems.py), attention (attention.py: the paged
kernels against SDPA, GPU), serve (serve.py: load any OpenAI-compatible server, as vLLM's
`bench serve`), structured (structured.py: JSON-schema requests against the same unconstrained),
quant (quant.py: weight bytes and tokens/s per quantization format against float32), moe (moe.py:
anymodel's experts function against Transformers' grouped_mm and eager)."""

from __future__ import annotations

import importlib

# kind -> (module with main(argv), whether the kind itself is main's first argument)
KINDS: dict[str, tuple[str, bool]] = {
    "attention": ("anymodel.bench.attention", False),
    "throughput": ("anymodel.bench.generation", True),  # one module runs both throughput and latency
    "latency": ("anymodel.bench.generation", True),
    "serve": ("anymodel.bench.serve", False),
    "lora": ("anymodel.bench.lora", False),
    "structured": ("anymodel.bench.structured", False),
    "quant": ("anymodel.bench.quant", False),
    "moe": ("anymodel.bench.moe", False),
}


def run_bench(kind: str, argv: list[str]) -> int:
    """Run benchmark `kind` with its own arguments; its exit status."""
    if kind not in KINDS:
        raise ValueError(f"unknown benchmark {kind!r}; allowed: {', '.join(KINDS)}")
    module, takes_kind = KINDS[kind]
    main = importlib.import_module(module).main
    return int(main([kind, *argv] if takes_kind else list(argv)) or 0)
