"""Write a trained model as a new version of a model repository.

Layout (shared with the repository loader)::

    REPO/<name>/<version>/model.npz

``<version>`` is a decimal integer directory; a new one is the highest existing
integer + 1 (1 for the first). ``model.npz`` is the repository's format
(:mod:`wsserve.repository.npz`, written by its :func:`~wsserve.repository.npz.encode_npz`):
the model's ``to_arrays()`` arrays plus ``__meta__``, a 1-D uint8 array of UTF-8 JSON::

    {"format": 1, "architecture": "linear" | "mlp", "meta": {...}}

where ``meta`` is the model's own ``to_arrays()`` meta (``metrics``, and
``layers`` for ``mlp``: what ``from_arrays`` reads) plus the caller's extra keys
(``trained_with``, ``partitions``, ``workers``, ...).

Atomicity is :func:`wsserve.repository.newversion.add_version`'s: the file is
written inside a hidden temporary directory ``REPO/<name>/.tmp-*``, fsync-ed, then
the directory is moved in with one ``os.rename`` to its version number. A reader
watching ``REPO/<name>`` sees either no version directory or a complete one. If
another writer took the number first, the next number is tried.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.linear import LinearModel
from ..models.mlp import MLPModel
from ..repository.newversion import add_version, existing_versions
from ..repository.npz import NPZ_FORMAT, encode_npz, write_npz_bytes

__all__ = [
    "FORMAT", "META_KEY", "MODEL_FILE", "WrittenVersion", "architecture_of", "existing_versions", "write_version",
]

FORMAT = NPZ_FORMAT
META_KEY = "__meta__"
MODEL_FILE = "model.npz"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class WrittenVersion:
    """Where :func:`write_version` put the model."""

    name: str
    version: int
    path: Path  # the version directory


def architecture_of(model: object) -> str:
    """``"linear"`` or ``"mlp"``; ``TypeError`` for any other model."""
    if isinstance(model, LinearModel):
        return "linear"
    if isinstance(model, MLPModel):
        return "mlp"
    raise TypeError(f"cannot write a {type(model).__name__} to a repository (linear and mlp only)")


def write_version(
    repo: Path | str, name: str, model: Any, *, extra_meta: Mapping[str, Any] | None = None
) -> WrittenVersion:
    """Write ``model`` as the next version of ``name`` in ``repo`` (created if missing).

    Raises ``ValueError`` for a bad name or metadata that is not JSON (NaN
    included), ``TypeError`` for a model that is not ``linear``/``mlp``,
    ``OSError`` when the repository cannot be written. On any error nothing is
    left behind but possibly the (empty) ``repo/<name>`` directory.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"model name must match {_NAME_RE.pattern}, got {name!r}")
    architecture = architecture_of(model)
    arrays, meta = model.to_arrays()
    data = encode_npz(architecture, arrays, {**meta, **dict(extra_meta or {})})
    written = add_version(Path(repo) / name, lambda directory: write_npz_bytes(directory, data))
    return WrittenVersion(name=name, version=written.version, path=written.path)
