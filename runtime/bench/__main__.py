"""`python -m anymodel.bench throughput|latency|moe ...`"""

import sys

if sys.argv[1:2] == ["moe"]:
    from anymodel.bench.moe import main

    sys.exit(main(sys.argv[2:]))

from anymodel.bench.generation import main

sys.exit(main(sys.argv[1:]))
