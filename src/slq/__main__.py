"""`python -m slq`: the `slq` command."""

import sys

from .cli import main

sys.exit(main())
