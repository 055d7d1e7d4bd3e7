"""One model version on disk: ``<version_dir>/model.npz`` (the format shared with the repository).

The file is a plain ``.npz`` written with ``np.savez(..., allow_pickle=False)``:
the model's arrays under their own names (``[A-Za-z0-9][A-Za-z0-9_.-]*``, at
most 128 characters) plus ``__meta__``, a 1-D uint8 array of UTF-8 JSON::

    {"format": 1, "architecture": "<name>", "meta": {...}}

``architecture`` says which class reads the arrays (``mlp``, ``mlp-int8``,
``mlp-sparse``; see :mod:`wsserve.compression.architectures`); ``meta`` is the
model's own JSON object.  NaN/inf are not allowed in the JSON.

Contracts:

- :func:`save_version` / :func:`write_version_bytes` are atomic: a temporary
  file in the version directory is ``os.replace``-d onto ``model.npz``, so a
  reader sees the old file, the new one, or none; on error no temporary file
  is left behind.  :func:`encode_version` gives the exact bytes they write.
- :func:`load_version` bounds everything before numpy allocates: the file
  size, the summed uncompressed size of the zip members, and the header size;
  then it rejects members that are not ``.npy`` arrays, object/pickled
  arrays, bad names, a missing or malformed header.  Every problem raises
  :class:`VersionFileError` (a ``ValueError``) naming the file and the reason.
  It does not check that the arrays fit the architecture: the architecture's
  ``from_arrays`` does that.

The lead will merge this with the repository's reader/writer.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT",
    "MODEL_FILE",
    "MAX_FILE_BYTES",
    "VersionFile",
    "VersionFileError",
    "encode_version",
    "save_version",
    "write_version_bytes",
    "load_version",
    "version_file_path",
]

FORMAT = 1
MODEL_FILE = "model.npz"
#: Default upper bound on a version file, and on the sum of its uncompressed members.
MAX_FILE_BYTES = 1 << 30
#: Upper bound on the ``__meta__`` JSON header.
MAX_HEADER_BYTES = 1 << 20

_META_KEY = "__meta__"
ARRAY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ARCHITECTURE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class VersionFileError(ValueError):
    """A version file is unusable. ``path`` is the file, ``reason`` what is wrong."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"model file {str(path)!r}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VersionFile:
    """What :func:`load_version` read: the header fields, the arrays and the file size."""

    path: Path
    architecture: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    size_bytes: int


def version_file_path(path: str | os.PathLike[str]) -> Path:
    """``path/model.npz`` if ``path`` is a directory (or does not end in ``.npz``), else ``path``."""
    p = Path(path)
    if p.is_dir() or p.suffix != ".npz":
        return p / MODEL_FILE
    return p


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=False, default=_json_default).encode("utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def encode_version(architecture: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bytes:
    """The exact bytes of a version file.

    Raises ``ValueError`` on a bad architecture or array name, ``TypeError`` on
    an object/non-numeric array or non-JSON meta (``ValueError`` for NaN/inf in it).
    """
    if not isinstance(architecture, str) or not ARCHITECTURE_RE.match(architecture):
        raise ValueError(f"bad architecture name {architecture!r}")
    clean: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        if not isinstance(name, str) or not ARRAY_NAME_RE.match(name):
            raise ValueError(f"bad array name {name!r}: use [A-Za-z0-9][A-Za-z0-9_.-]*")
        a = np.asarray(arr)
        if a.dtype.hasobject or a.dtype.kind not in "biuf":
            raise TypeError(f"array {name!r} has unsupported dtype {a.dtype}")
        clean[name] = np.ascontiguousarray(a)
    header = _json_bytes({"format": FORMAT, "architecture": architecture, "meta": dict(meta)})
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **{_META_KEY: np.frombuffer(header, np.uint8)}, **clean)
    return buf.getvalue()


def write_version_bytes(version_dir: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` (from :func:`encode_version`) as ``version_dir/model.npz``.

    Creates ``version_dir`` (and parents) if needed.  Raises ``OSError``; no
    temporary file is left behind.
    """
    directory = Path(version_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MODEL_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{MODEL_FILE}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; weights are not secret
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def save_version(
    version_dir: str | os.PathLike[str],
    architecture: str,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
) -> Path:
    """:func:`encode_version` then :func:`write_version_bytes`; returns the file path."""
    return write_version_bytes(version_dir, encode_version(architecture, arrays, meta))


def load_version(path: str | os.PathLike[str], *, max_file_bytes: int = MAX_FILE_BYTES) -> VersionFile:
    """Read a version file (``path`` is the file or its version directory).

    Raises :class:`VersionFileError` if it is missing, too big, not an npz of
    plain arrays, or its header is malformed (see the module docstring).
    """
    file = version_file_path(path)
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_file_bytes:
                raise VersionFileError(file, f"{size} bytes is over the {max_file_bytes}-byte limit")
            data = f.read(max_file_bytes + 1)
    except FileNotFoundError:
        raise VersionFileError(file, "no such file") from None
    except IsADirectoryError:
        raise VersionFileError(file, "is a directory") from None
    except OSError as exc:
        raise VersionFileError(file, f"unreadable ({exc.strerror or exc})") from exc
    if len(data) > max_file_bytes:  # grew while we read it
        raise VersionFileError(file, f"over the {max_file_bytes}-byte limit")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = zf.infolist()
            total = sum(m.file_size for m in members)
            if total > max_file_bytes:
                raise VersionFileError(file, f"members expand to {total} bytes, over the limit")
            for m in members:
                name = m.filename
                if not name.endswith(".npy") or not (
                    name[:-4] == _META_KEY or ARRAY_NAME_RE.match(name[:-4])
                ):
                    raise VersionFileError(file, f"unexpected member {name!r}")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            loaded = {k: npz[k] for k in npz.files}
    except VersionFileError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise VersionFileError(file, f"not a readable npz ({type(exc).__name__}: {exc})") from exc

    raw = loaded.pop(_META_KEY, None)
    if raw is None:
        raise VersionFileError(file, f"missing the {_META_KEY} header")
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > MAX_HEADER_BYTES:
        raise VersionFileError(file, f"{_META_KEY} must be 1-D uint8 of at most {MAX_HEADER_BYTES} "
                                     f"bytes, got {raw.dtype} {list(raw.shape)}")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise VersionFileError(file, f"header is not UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise VersionFileError(file, "header is not a JSON object")
    if header.get("format") != FORMAT:
        raise VersionFileError(file, f"format {header.get('format')!r}, expected {FORMAT}")
    arch = header.get("architecture")
    if not isinstance(arch, str) or not ARCHITECTURE_RE.match(arch):
        raise VersionFileError(file, f"bad architecture {arch!r}")
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise VersionFileError(file, "meta is not a JSON object")
    for name, arr in loaded.items():
        if arr.dtype.hasobject or arr.dtype.kind not in "biuf":
            raise VersionFileError(file, f"array {name!r} has unsupported dtype {arr.dtype}")
    return VersionFile(path=file, architecture=arch, arrays=loaded, meta=meta, size_bytes=size)
