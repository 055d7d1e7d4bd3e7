"""Write a trained model as a new version of a model repository.

Layout (shared with the repository loader)::

    REPO/<name>/<version>/model.npz

``<version>`` is a decimal integer directory; a new one is the highest existing
integer + 1 (1 for the first). ``model.npz`` is a plain ``np.savez`` (no pickle,
readable with ``np.load(..., allow_pickle=False)``) holding the model's
``to_arrays()`` arrays plus ``__meta__``, a 1-D uint8 array of UTF-8 JSON::

    {"format": 1, "architecture": "linear" | "mlp", "meta": {...}}

where ``meta`` is the model's own ``to_arrays()`` meta (``metrics``, and
``layers`` for ``mlp``: what ``from_arrays`` reads) plus the caller's extra keys
(``trained_with``, ``partitions``, ``workers``, ...).

Atomicity: the file is written as a temporary file and ``os.replace``-d to
``model.npz`` inside a hidden temporary directory ``REPO/<name>/.tmp-*``, both
fsync-ed, then the directory is moved in with one ``os.rename`` to its version
number. A reader watching ``REPO/<name>`` sees either no version directory or a
complete one. If another writer took the number first, the next number is tried.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..models.linear import LinearModel
from ..models.mlp import MLPModel

__all__ = [
    "FORMAT", "META_KEY", "MODEL_FILE", "WrittenVersion", "architecture_of", "existing_versions", "write_version",
]

FORMAT = 1
META_KEY = "__meta__"
MODEL_FILE = "model.npz"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION_RE = re.compile(r"^(0|[1-9][0-9]{0,17})$")
_RENAME_ATTEMPTS = 100


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


def existing_versions(model_dir: Path) -> list[int]:
    """Integer version directories under ``model_dir`` (others are ignored), ascending."""
    try:
        entries = list(os.scandir(model_dir))
    except FileNotFoundError:
        return []
    return sorted(int(e.name) for e in entries if _VERSION_RE.match(e.name) and e.is_dir(follow_symlinks=False))


def _npz_bytes(model: Any, architecture: str, extra_meta: Mapping[str, Any]) -> bytes:
    arrays, meta = model.to_arrays()
    if META_KEY in arrays:
        raise ValueError(f"a model array may not be named {META_KEY!r}")
    header = {"format": FORMAT, "architecture": architecture, "meta": {**meta, **extra_meta}}
    text = json.dumps(header, sort_keys=True, allow_nan=False, ensure_ascii=False)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **{k: np.asarray(v) for k, v in arrays.items()},
             **{META_KEY: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)})
    return buf.getvalue()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    data = _npz_bytes(model, architecture_of(model), dict(extra_meta or {}))
    model_dir = Path(repo) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
    try:
        fd, tmp_file = tempfile.mkstemp(prefix=".model-", suffix=".npz", dir=tmp_dir)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes it 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_file, tmp_dir / MODEL_FILE)
        os.chmod(tmp_dir, 0o755)  # mkdtemp makes it 0700; a server may run as another user
        _fsync_dir(tmp_dir)
        version = max(existing_versions(model_dir), default=0) + 1
        for _ in range(_RENAME_ATTEMPTS):
            target = model_dir / str(version)
            # rename(2) refuses a non-empty target but would replace an *empty*
            # directory: claim only numbers that do not exist yet.
            if not os.path.lexists(target):
                try:
                    os.rename(tmp_dir, target)
                except OSError:
                    if not os.path.lexists(target):
                        raise
                else:
                    _fsync_dir(model_dir)
                    return WrittenVersion(name=name, version=version, path=target)
            version += 1  # taken (by another writer, or a stray file): try the next
        raise OSError(f"could not claim a version number under {model_dir} in {_RENAME_ATTEMPTS} attempts")
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
