"""Names and file names of the repository layout (no I/O)::

    REPO/<name>/config.toml            (or Triton's config.pbtxt, not both)
    REPO/<name>/<version>/model.onnx | model.npz | model.py
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["CONFIG_FILE", "PBTXT_FILE", "MODEL_FILES", "is_model_name"]

CONFIG_FILE = "config.toml"
#: Triton's model configuration (protobuf text format), read when there is no config.toml.
PBTXT_FILE = "config.pbtxt"

#: backend -> the file a version directory holds for it.
MODEL_FILES: Mapping[str, str] = MappingProxyType({"onnx": "model.onnx", "npz": "model.npz", "python": "model.py"})

_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_model_name(name: str) -> bool:
    """A model name: 1-64 of ``[A-Za-z0-9_.-]``, starting with a letter or digit (so never hidden)."""
    return type(name) is str and _MODEL_NAME_RE.match(name) is not None
