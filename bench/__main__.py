"""``python -m bench``: the CPU benchmark suite (`bench.run`)."""

import sys

from bench.run import main

sys.exit(main())
