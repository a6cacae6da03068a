"""``python -m primus_runtime``: see :mod:`primus_runtime.cli`."""

import sys

from primus_runtime.cli import main

sys.exit(main())
