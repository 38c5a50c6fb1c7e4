"""`python -m anymodel.bench throughput|latency|lora ...`"""

import sys

if sys.argv[1:2] == ["lora"]:
    from anymodel.bench.lora import main

    sys.exit(main(sys.argv[2:]))
from anymodel.bench.generation import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
