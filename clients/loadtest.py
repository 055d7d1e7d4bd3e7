#!/usr/bin/env python3
"""Standalone load test: ``python clients/loadtest.py URL ...`` (same as ``wsserve loadtest URL ...``).

Works from a checkout without installing: the repository root is put on
``sys.path``.  ``python clients/loadtest.py --help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsserve.loadtest import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
