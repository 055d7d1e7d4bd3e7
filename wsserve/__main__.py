"""``python -m wsserve`` is the ``wsserve`` command."""

import sys

from .cli import main

sys.exit(main())
