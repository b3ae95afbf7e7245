"""`python -m slq.cli`: the `slq` command (torchrun needs a module to run)."""

import sys

from . import main

sys.exit(main())
