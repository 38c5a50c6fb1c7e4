"""`python -m anymodel.bench throughput|latency ...`"""

import sys

from anymodel.bench.generation import main

sys.exit(main(sys.argv[1:]))
