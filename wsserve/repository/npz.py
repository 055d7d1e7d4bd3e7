"""``model.npz``: the numpy backend's file format, its reader/writer, and built-in architectures.

The one reader and writer of this format in wsserve: the repository loader,
the trainer, ``wsserve train`` and ``wsserve compress`` all go through it.

Format 1 (fixed; other tools write it too)::

    np.savez(f, allow_pickle=False, __meta__=<1-D uint8: UTF-8 JSON>, **arrays)
    __meta__ = {"format": 1, "architecture": "<a key of ARCHITECTURES>", "meta": {...}}

``arrays`` per architecture (anything missing or extra is an error); array
names are ``[A-Za-z0-9][A-Za-z0-9_.-]*``, at most 128 characters:

- ``linear``: ``weight`` [1] and ``bias`` [1], float64 (as ``LinearModel.to_arrays()``)
- ``mlp``: ``w0, b0, w1, b1, ...`` float32, ``w_i`` [d_i, d_{i+1}] (widths 1..65536), ``b_i`` [d_{i+1}]
  (as ``MLPModel.to_arrays()``; the number of layers is derived from the names)
- ``mlp-int8``: ``w{i}.int8`` int8, ``w{i}.scale`` float32, ``b{i}`` float32, meta
  ``layers`` (:class:`wsserve.models.mlp_int8.MLPInt8Model`)
- ``mlp-sparse``: ``w{i}.mask`` uint8 bitmap, ``w{i}.values`` float32, ``b{i}`` float32,
  meta ``layers`` and ``shapes`` (:class:`wsserve.models.mlp_sparse.MLPSparseModel`)
- ``charlm`` (generative): ``embed`` [V+1, d], ``w1`` [k*d, H], ``b1`` [H], ``w2`` [H, V],
  ``b2`` [V], float32 or float64 (as ``CharLM.to_arrays()``)

``meta`` is free-form JSON (no NaN or infinities); ``meta["metrics"]`` (an
object), when present, is reported as the model's metrics, and
``meta["compression"]`` (written by ``wsserve compress``) as the version's
compression figures.

Reading never unpickles and bounds everything before numpy allocates: the
file size, the zip members' declared sizes, every member's ``.npy`` header
(numeric dtype, bounded size) before its data, the data read with
``allow_pickle=False``.  The bounds hold while reading too: only stored and
deflated members are read (zipfile inflates those a chunk at a time and stops
at the member's declared size, so a member that holds more than its zip entry
says is cut there and refused as truncated), and numpy allocates what the checked
``.npy`` header declares, never more.  :data:`ARCHITECTURES` maps an architecture name to
the function that builds a :class:`~wsserve.models.base.PredictiveModel` from
the arrays; add new architectures there.  Writing (:func:`encode_npz`) builds
the model from the arrays first, so a file written here always loads.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from ..models.base import PredictiveModel
from ..models.charlm import CharLM
from ..models.linear import LinearModel
from ..models.mlp import MLPModel
from ..models.mlp_layers import MAX_WIDTH
from ..modelstore import read_npy_header
from .config import MAX_VERSION
from .errors import ModelLoadError
from .layout import CONFIG_FILE, MODEL_FILES, is_model_name

__all__ = [
    "NPZ_FORMAT",
    "ARCHITECTURES",
    "MAX_NPZ_BYTES",
    "NpzContents",
    "read_npz",
    "build_npz_model",
    "encode_npz",
    "write_npz_bytes",
    "save_npz_model",
    "write_builtin_version",
]

NPZ_FORMAT = 1
_META_KEY = "__meta__"
_META_FIELDS = frozenset({"format", "architecture", "meta"})
_MAX_META_BYTES = 1 << 20
_MAX_MEMBERS = 1024
#: Bytes a member may add besides its data: zip headers, its name (twice), the .npy header.
_MEMBER_OVERHEAD = 4096
_MAX_MLP_LAYERS = 256
#: Default bound on the total bytes of the arrays of one model.npz.
MAX_NPZ_BYTES = 1 << 32
#: Zip compression methods read: stored (np.savez) and deflated (np.savez_compressed), whose output
#: zipfile bounds per read; never bzip2 or lzma (inflated whole, however large).
_READ_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_MLP_NAME_RE = re.compile(r"^[wb](0|[1-9][0-9]{0,3})$")
_ARRAY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# --------------------------------------------------------------------------- architectures

def _expect_names(arrays: Mapping[str, np.ndarray], expected: set[str], arch: str) -> None:
    got = set(arrays)
    if got != expected:
        parts = []
        if expected - got:
            parts.append(f"missing {', '.join(sorted(expected - got))}")
        if got - expected:
            parts.append(f"unexpected {', '.join(sorted(got - expected))}")
        raise ValueError(f"{arch} arrays: {'; '.join(parts)} (expected {', '.join(sorted(expected))})")


def _expect(a: np.ndarray, name: str, dtype: Any, ndim: int) -> None:
    if a.dtype != dtype or a.ndim != ndim:
        raise ValueError(f"array {name!r} is {a.dtype} with {a.ndim} dims; expected {np.dtype(dtype)} with {ndim}")


def _metrics(meta: Mapping[str, Any]) -> dict[str, Any]:
    metrics = meta.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ValueError(f"meta.metrics must be an object, got {type(metrics).__name__}")
    return metrics


def _build_linear(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> PredictiveModel:
    _expect_names(arrays, {"weight", "bias"}, "linear")
    for name in ("weight", "bias"):
        _expect(arrays[name], name, np.float64, 1)
        if arrays[name].shape != (1,):
            raise ValueError(f"array {name!r} has shape {list(arrays[name].shape)}; expected [1]")
    return LinearModel.from_arrays(dict(arrays), {"metrics": _metrics(meta)})


def _build_mlp(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> PredictiveModel:
    # the layer count is the highest index named (w3 -> 4 layers), so a gap reads "missing b1"
    indices = [int(m.group(1)) for m in map(_MLP_NAME_RE.match, arrays) if m is not None]
    layers = max(indices) + 1 if indices else 0
    if not 1 <= layers <= _MAX_MLP_LAYERS:
        raise ValueError(f"mlp needs 1..{_MAX_MLP_LAYERS} layers (arrays w0, b0, w1, b1, ...); got {sorted(arrays)}")
    _expect_names(arrays, {f"{p}{i}" for i in range(layers) for p in "wb"}, "mlp")
    for i in range(layers):
        _expect(arrays[f"w{i}"], f"w{i}", np.float32, 2)
        _expect(arrays[f"b{i}"], f"b{i}", np.float32, 1)
        if not all(1 <= d <= MAX_WIDTH for d in arrays[f"w{i}"].shape):  # as the compressed forms
            raise ValueError(f"array 'w{i}' has shape {list(arrays[f'w{i}'].shape)}; each dimension must be in 1..{MAX_WIDTH}")
    return MLPModel.from_arrays(dict(arrays), {"layers": layers, "metrics": _metrics(meta)})


def _build_mlp_int8(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> PredictiveModel:
    # imported here: the compression package imports this module (it reads and writes versions)
    from ..models.mlp_int8 import MLPInt8Model

    return MLPInt8Model.from_arrays(arrays, meta)


def _build_mlp_sparse(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> PredictiveModel:
    from ..models.mlp_sparse import MLPSparseModel

    return MLPSparseModel.from_arrays(arrays, meta)


def _build_charlm(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Any:
    _expect_names(arrays, {"embed", "w1", "b1", "w2", "b2"}, "charlm")
    for name, ndim in (("embed", 2), ("w1", 2), ("b1", 1), ("w2", 2), ("b2", 1)):
        a = arrays[name]
        if a.dtype not in (np.float32, np.float64) or a.ndim != ndim:
            raise ValueError(f"array {name!r} is {a.dtype} with {a.ndim} dims; expected float32/float64 with {ndim}")
    return CharLM.from_arrays(dict(arrays), {"metrics": _metrics(meta)})


#: architecture name -> builder ``(arrays, meta) -> model`` (raises ``ValueError`` on bad contents):
#: a :class:`~wsserve.models.base.PredictiveModel`, or a token model for the generative ones.
ARCHITECTURES: Mapping[str, Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], Any]] = (
    MappingProxyType({"linear": _build_linear, "mlp": _build_mlp, "mlp-int8": _build_mlp_int8,
                      "mlp-sparse": _build_mlp_sparse, "charlm": _build_charlm})
)
#: Architectures served by ``generate`` (the others by ``predict``).
GENERATIVE_ARCHITECTURES = frozenset({"charlm"})


# --------------------------------------------------------------------------- reading

@dataclass(frozen=True, slots=True)
class NpzContents:
    """A checked model.npz: its architecture (a key of :data:`ARCHITECTURES`), arrays, free-form meta
    and the file's size in bytes."""

    path: Path
    architecture: str
    arrays: Mapping[str, np.ndarray]
    meta: Mapping[str, Any]
    size_bytes: int = 0


def _max_file_bytes(max_bytes: int) -> int:
    """The largest file that can hold ``max_bytes`` of arrays: plus the header and per-member overhead."""
    return max_bytes + _MAX_META_BYTES + _MAX_MEMBERS * _MEMBER_OVERHEAD


def _read_members(path: Path, max_bytes: int) -> tuple[dict[str, np.ndarray], int]:
    out: dict[str, np.ndarray] = {}
    total = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > _max_file_bytes(max_bytes):
            raise ModelLoadError(path, f"is {size} bytes, more than arrays of at most {max_bytes} bytes need")
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
            if len(infos) > _MAX_MEMBERS:
                raise ModelLoadError(path, f"holds {len(infos)} members; at most {_MAX_MEMBERS}")
            declared = sum(info.file_size for info in infos)
            if declared > _max_file_bytes(max_bytes):
                raise ModelLoadError(path, f"members expand to {declared} bytes, more than arrays of at most {max_bytes} bytes need")
            for info in infos:
                member = info.filename
                if info.compress_type not in _READ_METHODS:  # zipfile inflates bzip2/lzma data without an output
                    # bound per read: a few compressed bytes could take gigabytes before the size checks
                    raise ModelLoadError(path, f"member {member!r} is compressed with "
                                               f"{zipfile.compressor_names.get(info.compress_type, info.compress_type)}; "
                                               "only stored or deflated members are read (as np.savez and "
                                               "np.savez_compressed write them)")
                if not member.endswith(".npy") or not (member[:-4] == _META_KEY or _ARRAY_RE.match(member[:-4])):
                    raise ModelLoadError(path, f"unexpected member {member!r} (an .npz holds only NAME.npy arrays)")
                name = member[:-4]
                if name in out:
                    raise ModelLoadError(path, f"member {member!r} appears twice")
                with zf.open(info) as fp:
                    try:
                        shape, dtype = read_npy_header(fp)
                    except ValueError as exc:
                        raise ModelLoadError(path, f"array {name!r} {exc}") from None
                if dtype.hasobject or dtype.kind not in "biuf":
                    raise ModelLoadError(path, f"array {name!r} has dtype {dtype}: only numeric arrays are loaded (no pickled objects)")
                nbytes = math.prod(shape) * dtype.itemsize
                total += nbytes
                if total > max_bytes:
                    raise ModelLoadError(path, f"arrays need more than {max_bytes} bytes (array {name!r} has shape {list(shape)})")
                with zf.open(info) as fp:
                    out[name] = np.lib.format.read_array(fp, allow_pickle=False)
    return out, size


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def read_npz(path: Path | str, *, max_bytes: int = MAX_NPZ_BYTES) -> NpzContents:
    """Read and check a model.npz (format, header, array dtypes and sizes; not yet the architecture's arrays).

    Raises :class:`ModelLoadError` naming the file for: a missing/unreadable
    file, not a zip, truncated, corrupt or encrypted data, object (pickled) or non-numeric
    arrays, more than ``max_bytes`` of arrays (or a file or zip members bigger
    than such arrays need), a missing or malformed ``__meta__`` header (NaN or
    infinities, or nesting too deep to parse, included), an unknown format or architecture.
    """
    path = Path(path)
    try:
        arrays, size = _read_members(path, max_bytes)
    except ModelLoadError:
        raise
    except FileNotFoundError:
        raise ModelLoadError(path, "does not exist") from None
    except IsADirectoryError:
        raise ModelLoadError(path, "is a directory") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError,
            RuntimeError) as exc:  # RuntimeError: zipfile's "is encrypted, password required"
        raise ModelLoadError(path, f"unreadable ({type(exc).__name__}: {exc})") from None

    raw = arrays.pop(_META_KEY, None)
    if raw is None:
        raise ModelLoadError(path, f"missing the {_META_KEY} header array")
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > _MAX_META_BYTES:
        raise ModelLoadError(path, f"{_META_KEY} must be a 1-D uint8 array of at most {_MAX_META_BYTES} bytes, got {raw.dtype} {list(raw.shape)}")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(path, f"{_META_KEY} is not UTF-8 JSON ({exc})") from None
    except RecursionError:  # json recurses per nested array/object: 1 MiB of "[" would escape
        raise ModelLoadError(path, f"{_META_KEY} is not UTF-8 JSON (arrays or objects nested too deeply)") from None
    if not isinstance(header, dict):
        raise ModelLoadError(path, f"{_META_KEY} must be a JSON object, got {type(header).__name__}")
    if set(header) != _META_FIELDS:
        raise ModelLoadError(path, f"{_META_KEY} must have exactly the fields {', '.join(sorted(_META_FIELDS))}; got {', '.join(sorted(header))}")
    if header["format"] != NPZ_FORMAT or type(header["format"]) is not int:
        raise ModelLoadError(path, f"format {header['format']!r} is not supported (expected {NPZ_FORMAT})")
    arch = header["architecture"]
    if type(arch) is not str or arch not in ARCHITECTURES:
        raise ModelLoadError(path, f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    if not isinstance(header["meta"], dict):
        raise ModelLoadError(path, f"{_META_KEY}.meta must be a JSON object")
    return NpzContents(path, arch, MappingProxyType(arrays), MappingProxyType(header["meta"]), size)


def build_npz_model(contents: NpzContents) -> PredictiveModel:
    """Build the architecture's model from checked contents. Raises :class:`ModelLoadError` naming the file."""
    try:
        return ARCHITECTURES[contents.architecture](contents.arrays, contents.meta)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelLoadError(contents.path, f"bad {contents.architecture} model: {exc}") from None


# --------------------------------------------------------------------------- writing

def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def encode_npz(architecture: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bytes:
    """The exact bytes of a model.npz holding ``arrays`` and ``meta`` for ``architecture``.

    The contents are checked first by building the model (so these bytes
    always load).  Raises ``ValueError`` for an unknown architecture, bad array
    names/dtypes/shapes/values or non-JSON (or NaN/infinite) ``meta``.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r} (known: {', '.join(ARCHITECTURES)})")
    clean: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        if not isinstance(name, str) or name == _META_KEY or not _ARRAY_RE.match(name):
            raise ValueError(f"bad array name {name!r}")
        a = np.ascontiguousarray(arr)
        if a.dtype.hasobject or a.dtype.kind not in "biuf":
            raise ValueError(f"array {name!r} has unsupported dtype {a.dtype}")
        clean[name] = a
    ARCHITECTURES[architecture](clean, meta)  # raises ValueError on bad contents
    text = json.dumps({"format": NPZ_FORMAT, "architecture": architecture, "meta": dict(meta)},
                      allow_nan=False, sort_keys=True, default=_json_default)
    header = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    if header.size > _MAX_META_BYTES:
        raise ValueError(f"meta takes {header.size} bytes as JSON; at most {_MAX_META_BYTES}")
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **{_META_KEY: header}, **clean)
    return buf.getvalue()


def write_npz_bytes(version_dir: Path | str, data: bytes) -> Path:
    """Write ``data`` (from :func:`encode_npz`) as ``version_dir/model.npz`` atomically; return its path.

    Temporary file + fsync + ``os.replace``: a reader sees the old file, the
    new one or none.  ``version_dir`` must exist.  Raises ``OSError`` (no
    temporary file is left behind).
    """
    path = Path(version_dir) / MODEL_FILES["npz"]
    _atomic_write(path, lambda f: f.write(data))
    return path


def save_npz_model(
    version_dir: Path | str, architecture: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> Path:
    """:func:`encode_npz` then :func:`write_npz_bytes`: ``version_dir/model.npz``, atomically; return its path.

    Raises ``ValueError`` as :func:`encode_npz` (nothing written) and
    ``OSError`` on I/O failure.  ``version_dir`` must exist.
    """
    return write_npz_bytes(version_dir, encode_npz(architecture, arrays, meta))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _builtin_config(model: LinearModel | MLPModel | CharLM) -> str:
    info = model.info
    if isinstance(model, CharLM):
        return '# written by wsserve for a built-in model\ntask = "generation"\n'
    dtype = "float64" if isinstance(model, LinearModel) else "float32"
    return (
        "# written by wsserve for a built-in model\n"
        f'task = "{info.task}"\n'
        f"input_shape = {list(info.input_shape)}\n"
        f'input_dtype = "{dtype}"\n'
        f"output_shape = {list(info.output_shape)}\n"
        'output_dtype = "float64"\n'
    )


def write_builtin_version(
    repo_dir: Path | str, name: str, model: LinearModel | MLPModel | CharLM, version: int
) -> Path:
    """Write a built-in model as ``repo_dir/name/version/model.npz`` plus ``repo_dir/name/config.toml``.

    The config.toml is (re)written atomically only when its contents differ.  A
    new version directory is assembled under a hidden temporary name and moved
    in with one ``rename`` (what a repository watcher expects); an existing one
    gets its model.npz replaced atomically.  Returns the version directory.
    Raises ``ValueError`` for a bad name/version, ``TypeError`` for another
    model class, ``OSError`` on I/O failure.
    """
    if not is_model_name(name):
        raise ValueError(f"bad model name {name!r}")
    if type(version) is not int or not 0 < version <= MAX_VERSION:
        raise ValueError(f"bad version {version!r}: a positive integer is required")
    if isinstance(model, LinearModel):
        arch = "linear"
    elif isinstance(model, MLPModel):
        arch = "mlp"
    elif isinstance(model, CharLM):
        arch = "charlm"
    else:
        raise TypeError(f"write_builtin_version takes a LinearModel, MLPModel or CharLM, got {type(model).__name__}")
    arrays, meta = model.to_arrays()
    model_dir = Path(repo_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    config_path = model_dir / CONFIG_FILE
    text = _builtin_config(model).encode()
    try:
        current = config_path.read_bytes()
    except FileNotFoundError:
        current = None
    if current != text:
        _atomic_write(config_path, lambda f: f.write(text))
    final = model_dir / str(version)
    if final.is_dir():
        save_npz_model(final, arch, arrays, meta)
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=model_dir))
    try:
        os.chmod(tmp, 0o755)
        save_npz_model(tmp, arch, arrays, meta)
        os.rename(tmp, final)
    except BaseException:
        for child in tmp.iterdir() if tmp.exists() else ():
            child.unlink()
        if tmp.exists():
            tmp.rmdir()
        raise
    return final
