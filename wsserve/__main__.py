"""``python -m wsserve`` is the ``wsserve`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # not when re-imported as __mp_main__ by a spawned process (Dask workers)
    sys.exit(main())
