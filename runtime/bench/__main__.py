"""`python -m anymodel.bench throughput|latency|structured ...`"""

import sys

if sys.argv[1:2] == ["structured"]:
    from anymodel.bench.structured import main

    sys.exit(main(sys.argv[2:]))
from anymodel.bench.generation import main

sys.exit(main(sys.argv[1:]))
