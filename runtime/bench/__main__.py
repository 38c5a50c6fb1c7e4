"""`python -m anymodel.bench throughput|latency|quant ...`"""

import sys

if sys.argv[1:2] == ["quant"]:
    from anymodel.bench.quant import main

    sys.exit(main(sys.argv[2:]))
from anymodel.bench.generation import main

sys.exit(main(sys.argv[1:]))
