"""On-disk cache of trained model weights, keyed by the full training config.

One file per ``(name, config)``: ``<cache_dir>/<name>-<key>.npz`` where ``key``
is :func:`config_key`.  The file is a plain ``.npz`` (no pickle): the model's
arrays under their own names plus one ``__meta__`` uint8 array holding UTF-8
JSON::

    {"format": FORMAT_VERSION, "name": ..., "key": ..., "config": {...},
     "arrays": [sorted array names], "meta": {...caller's meta...}}

Contracts:

- :func:`save` is atomic: it writes a temporary file in ``cache_dir`` and
  ``os.replace``-s it into place, so a reader sees either the old file, the
  new file, or no file - never a partial one (barring disk corruption).
- :func:`load` returns ``None`` when no file exists for the key, and raises
  :class:`ModelFileError` (naming the file and the problem) when a file exists
  but cannot be trusted: not a zip/npz, truncated, bad CRC, object arrays,
  missing/extra arrays, bad or mismatched header.  Callers retrain on it.
- Changing ``FORMAT_VERSION``, the name, or any config value changes the key,
  so stale weights are never loaded for a new config.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "ModelFileError",
    "default_cache_dir",
    "config_key",
    "model_path",
    "load",
    "save",
]

#: Bump when the file layout changes; old files then simply miss the cache.
FORMAT_VERSION = 1

_META_KEY = "__meta__"
#: Bound on the bytes of the arrays one cache file may declare (checked before numpy allocates).
MAX_FILE_ARRAY_BYTES = 1 << 32
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ARRAY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ModelFileError(ValueError):
    """A cache file exists but is unusable. ``path`` is the file, ``reason`` what is wrong."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"model file {str(path)!r}: {reason}")
        self.path = Path(path)
        self.reason = reason


def default_cache_dir() -> Path:
    """``$WSSERVE_CACHE_DIR`` if set and non-empty, else ``~/.cache/wsserve``."""
    env = os.environ.get("WSSERVE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "wsserve"


def _canonical_json(obj: Any) -> str:
    # sort_keys + no whitespace + no NaN: one spelling per value.  Tuples
    # serialise as lists, so (1, 2) and [1, 2] give the same key on purpose.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=True, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"bad model name {name!r}: use letters, digits, '_', '.', '-' (max 64)")


def config_key(name: str, config: Mapping[str, Any]) -> str:
    """16 hex chars of sha256 over canonical JSON of ``[FORMAT_VERSION, name, config]``.

    Raises ``TypeError``/``ValueError`` if ``config`` is not JSON-serialisable
    (or holds NaN/inf).
    """
    _check_name(name)
    text = _canonical_json([FORMAT_VERSION, name, dict(config)])
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def model_path(cache_dir: Path, name: str, config: Mapping[str, Any]) -> Path:
    """The file :func:`save` writes and :func:`load` reads for ``(name, config)``."""
    return Path(cache_dir) / f"{name}-{config_key(name, config)}.npz"


def save(
    cache_dir: Path,
    name: str,
    config: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
) -> Path:
    """Write ``arrays`` and JSON ``meta`` for ``(name, config)`` atomically; return the path.

    Array names must match ``[A-Za-z0-9][A-Za-z0-9_.-]*``; arrays must be of a
    numeric/bool dtype (no object arrays).  ``meta`` must be JSON-serialisable.
    Creates ``cache_dir`` if needed.  Raises ``ValueError``/``TypeError`` on bad
    arguments and ``OSError`` on I/O failure (no temporary file is left behind).
    """
    key = config_key(name, config)
    path = Path(cache_dir) / f"{name}-{key}.npz"
    clean: dict[str, np.ndarray] = {}
    for aname, arr in arrays.items():
        if not isinstance(aname, str) or not _ARRAY_RE.match(aname):
            raise ValueError(f"bad array name {aname!r}")
        a = np.asarray(arr)
        if a.dtype.hasobject or a.dtype.kind not in "biufc":
            raise TypeError(f"array {aname!r} has unsupported dtype {a.dtype}")
        clean[aname] = np.ascontiguousarray(a)
    header = {
        "format": FORMAT_VERSION,
        "name": name,
        "key": key,
        "config": dict(config),
        "arrays": sorted(clean),
        "meta": dict(meta),
    }
    header_bytes = np.frombuffer(_canonical_json(header).encode("ascii"), dtype=np.uint8)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-{key}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; weights are not secret
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **{_META_KEY: header_bytes}, **clean)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def read_npy_header(fp: Any) -> tuple[tuple[int, ...], np.dtype]:
    """The ``(shape, dtype)`` an ``.npy`` stream declares, read from its header only (nothing is
    allocated).  Raises ``ValueError`` for a format other than 1.0 and 2.0 (and whatever numpy
    raises for a malformed header)."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"uses .npy format {version}; only 1.0 and 2.0 are read")
    return shape, dtype


def _check_sizes(f: Any, path: Path) -> None:
    """Refuse an archive whose members declare more than :data:`MAX_FILE_ARRAY_BYTES` (their
    ``.npy`` headers and zip sizes), before numpy allocates what they declare.  A file that is
    no zip is left to ``np.load`` (which says what it is)."""
    if not zipfile.is_zipfile(f):
        f.seek(0)
        return
    f.seek(0)
    with zipfile.ZipFile(f) as zf:
        infos = zf.infolist()
        declared = sum(info.file_size for info in infos)
        if declared > MAX_FILE_ARRAY_BYTES + (1 << 20):
            raise ModelFileError(path, f"members expand to {declared} bytes; at most {MAX_FILE_ARRAY_BYTES} are read")
        total = 0
        for info in infos:
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                # zipfile inflates bzip2/lzma data without an output bound per read: a few compressed bytes
                # could take gigabytes before any size or CRC check (np.savez writes neither)
                raise ModelFileError(path, f"member {info.filename!r} is compressed with "
                                           f"{zipfile.compressor_names.get(info.compress_type, info.compress_type)}; "
                                           "only stored or deflated members are read")
            if not info.filename.endswith(".npy"):
                continue  # np.load refuses what it cannot read
            with zf.open(info) as fp:
                try:
                    shape, dtype = read_npy_header(fp)
                except ValueError as exc:
                    raise ModelFileError(path, f"member {info.filename!r} {exc}") from None
            total += math.prod(shape) * dtype.itemsize if all(d >= 0 for d in shape) else 0
            if total > MAX_FILE_ARRAY_BYTES:
                raise ModelFileError(path, f"arrays need more than {MAX_FILE_ARRAY_BYTES} bytes "
                                           f"({info.filename!r} has shape {list(shape)})")
    f.seek(0)


def load(
    cache_dir: Path, name: str, config: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """Return ``(arrays, meta)`` saved for ``(name, config)``, or ``None`` if there is no file.

    Raises :class:`ModelFileError` if the file exists but is corrupt, truncated,
    holds pickled/object data, declares arrays of more than :data:`MAX_FILE_ARRAY_BYTES`
    (refused before anything is allocated), holds a member compressed other than stored or
    deflated (bzip2, lzma: zipfile inflates those without a bound), or its header does not match ``(name, config)``
    or the arrays it lists.  Arrays are returned fully read into memory.
    """
    key = config_key(name, config)
    path = Path(cache_dir) / f"{name}-{key}.npz"
    if not path.is_file():
        return None
    try:
        # Open the file ourselves: np.load(path) leaks the handle when the zip is bad.
        with open(path, "rb") as f:
            _check_sizes(f, path)
            obj = np.load(f, allow_pickle=False)
            if not isinstance(obj, np.lib.npyio.NpzFile):
                raise ModelFileError(path, f"not an .npz archive (got {type(obj).__name__})")
            with obj as npz:
                loaded = {k: npz[k] for k in npz.files}
    except ModelFileError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ModelFileError(path, f"unreadable ({type(exc).__name__}: {exc})") from exc

    raw = loaded.pop(_META_KEY, None)
    if raw is None:
        raise ModelFileError(path, f"missing {_META_KEY} header")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelFileError(path, f"{_META_KEY} header has dtype {raw.dtype}, ndim {raw.ndim}")
    try:
        header = json.loads(raw.tobytes().decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(path, f"header is not JSON ({exc})") from exc
    except RecursionError:  # json recurses once per nested array/object
        raise ModelFileError(path, "header is not JSON (arrays or objects nested too deeply)") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, "header is not a JSON object")

    if header.get("format") != FORMAT_VERSION:
        raise ModelFileError(path, f"format {header.get('format')!r}, expected {FORMAT_VERSION}")
    if header.get("name") != name:
        raise ModelFileError(path, f"holds model {header.get('name')!r}, expected {name!r}")
    if header.get("key") != key:
        raise ModelFileError(path, f"key {header.get('key')!r} does not match config key {key!r}")
    # The key is a hash prefix; also compare the config itself to rule out collisions.
    try:
        stored = _canonical_json(header.get("config"))
    except (ValueError, TypeError):  # NaN or an infinity (parsed from the file), which a config never holds
        stored = None
    if stored != _canonical_json(dict(config)):
        raise ModelFileError(path, "stored config differs from the requested config")
    listed = header.get("arrays")
    if not isinstance(listed, list) or not all(type(n) is str for n in listed) or sorted(loaded) != sorted(listed):
        raise ModelFileError(
            path, f"arrays {sorted(loaded)} do not match header list {listed!r}"
        )
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise ModelFileError(path, "meta is not a JSON object")
    return loaded, meta
