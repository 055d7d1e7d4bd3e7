"""Add a version to a model of a repository: ``REPO/<name>/<highest + 1>/``, appearing in one rename.

Used by every tool that writes versions (``wsserve train``, ``wsserve compress``).

Call :func:`add_version` with a ``fill(directory)`` callback that writes the
version's files (``model.npz`` via :func:`wsserve.repository.npz.write_npz_bytes`,
``model.onnx``, ...).  The directory it gets is a hidden temporary one,
``REPO/<name>/.tmp-*`` (the repository scanner ignores hidden entries); once
``fill`` returns, its files and the directory are fsync-ed and the directory is
moved in with one ``os.rename`` to the next free version number.  A server
watching the repository (``--reload``) therefore sees no version directory or
a complete one.  If another writer took the number first, the next is tried.
On any error (in ``fill`` too) the temporary directory is removed and nothing
else is left but possibly an empty ``REPO/<name>``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from .config import MAX_VERSION
from .versions import parse_version

__all__ = ["NewVersion", "existing_versions", "add_version"]

T = TypeVar("T")

_RENAME_ATTEMPTS = 100


@dataclass(frozen=True, slots=True)
class NewVersion(Generic[T]):
    """Where :func:`add_version` put the version, and what ``fill`` returned."""

    version: int
    path: Path  # the version directory
    result: T


def existing_versions(model_dir: Path | str) -> list[int]:
    """The version directories under ``model_dir`` as a server's scan sees them, ascending; [] if it is missing.

    Same rules as :func:`~.scan.scan`: a canonical number in ``1..MAX_VERSION``
    (:func:`~.versions.parse_version`) naming a directory, a symlink to one included
    (the server serves it, so a new version must number above it).
    """
    try:
        entries = list(os.scandir(model_dir))
    except FileNotFoundError:
        return []
    found = []
    for e in entries:
        version = parse_version(e.name)
        try:
            if version is not None and e.is_dir():
                found.append(version)
        except OSError:  # a symlink loop (ELOOP): not a version a server serves
            continue
    return sorted(found)


def _fsync(path: Path, *, directory: bool) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def add_version(model_dir: Path | str, fill: Callable[[Path], T]) -> NewVersion[T]:
    """Create ``model_dir`` if needed, let ``fill`` write a version into a hidden directory, move it in.

    The version number is the highest existing one + 1 (1 for the first).
    Raises what ``fill`` raises, and ``OSError`` when the directory cannot be
    written or no number could be claimed; nothing is left behind then.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
    try:
        result = fill(tmp_dir)
        for child in tmp_dir.iterdir():
            if child.is_file():
                _fsync(child, directory=False)
        os.chmod(tmp_dir, 0o755)  # mkdtemp makes it 0700; a server may run as another user
        _fsync(tmp_dir, directory=True)
        version = max(existing_versions(model_dir), default=0) + 1
        for _ in range(_RENAME_ATTEMPTS):
            if version > MAX_VERSION:
                raise OSError(f"no version number left under {model_dir}: the highest a server reads is {MAX_VERSION}")
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
                    _fsync(model_dir, directory=True)
                    return NewVersion(version=version, path=target, result=result)
            version += 1  # taken (by another writer, or a stray file): try the next
        raise OSError(f"could not claim a version number under {model_dir} in {_RENAME_ATTEMPTS} attempts")
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
