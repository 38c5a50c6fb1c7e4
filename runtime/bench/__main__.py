"""`python -m anymodel.bench KIND ...` (the kinds: anymodel.bench.KINDS)."""

import sys

from anymodel.bench import KINDS, run_bench

if len(sys.argv) < 2 or sys.argv[1] not in KINDS:
    sys.exit(f"usage: python -m anymodel.bench {{{','.join(KINDS)}}} [args...]")
sys.exit(run_bench(sys.argv[1], sys.argv[2:]))
