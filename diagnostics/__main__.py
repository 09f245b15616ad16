"""``python -m diagnostics`` — same as the ``matfun-diagnostics`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
