"""Let the examples run from a checkout without installing the client package."""

import sys
from pathlib import Path

_CLIENT = Path(__file__).resolve().parent.parent / "clients" / "python"
if _CLIENT.is_dir() and str(_CLIENT) not in sys.path:
    sys.path.insert(0, str(_CLIENT))
