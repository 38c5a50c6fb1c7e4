"""Benchmarks, all in one place: `anymodel bench throughput|latency` (generation.py, against
plain Transformers in the same process; the systems it times are in systems.py) and
`anymodel bench attention` (attention.py: the paged kernels against SDPA, GPU)."""
