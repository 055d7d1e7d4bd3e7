"""Binary tensor frames: a small JSON header and raw little-endian tensor bytes.  Sans-I/O.

Layout of one binary WebSocket message (both directions)::

    offset 0      uint32 little-endian N: the header's length in bytes (N <= MAX_HEADER_BYTES)
    offset 4      N bytes: a UTF-8 JSON object (the header); senders pad it with trailing
                  spaces so that 4 + N is a multiple of 8 (the payload is then 8-byte aligned)
    offset 4 + N  the payload: the tensors' values, little-endian, C order, concatenated in the
                  order the header lists them, with no padding between tensors

The header describes the tensors either with ``"dtype"`` and ``"shape"`` (one
unnamed tensor) or with ``"inputs"``/``"outputs"``: a list of ``{"name",
"dtype", "shape"}`` (several named tensors).  Every other header field is the
frame's own (``type``, ``id``, ``model``, ...), exactly as in a JSON frame.

Functions (pure; bytes in, values out):

- :func:`split` - the header object and a view of the payload;
- :func:`read_tensors` - the tensor descriptions of a header, checked against
  the payload's length (every size is bounded before anything is allocated);
- :func:`view_tensors` - the described tensors as arrays (copied: writable,
  aligned, owning their memory), refusing NaN/Inf and bools that are not 0/1;
- :func:`conform` - those arrays made to fit a model's input specs (shape,
  dtype casts the JSON path allows);
- :func:`encode` - a frame from a header and arrays (the server's answers).

Errors: :class:`~wsserve.errors.BadRequest` for a frame or header that is
malformed (length prefix, JSON, field types, an unknown dtype name),
:class:`~wsserve.errors.InvalidInput` for tensors that do not fit (sizes,
shapes, dtypes, values), each message naming the tensor and the problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from .dtypes import BFLOAT16, DTYPES, ITEMSIZE, float_max, is_float
from .errors import BadRequest, InvalidInput
from .jsontypes import json_type, shown
from .shapes import MAX_VALUES, VARIABLE, fits

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_TENSORS",
    "MAX_DIMS",
    "TensorDesc",
    "TensorPayload",
    "Spec",
    "split",
    "read_tensors",
    "view_tensors",
    "conform",
    "encode",
    "header_length",
]

#: Longest header (bytes, padding included); announced in ``hello`` as ``max_binary_header_bytes``.
MAX_HEADER_BYTES = 4096
#: Most tensors one frame may describe.
MAX_TENSORS = 64
#: Most dimensions of one tensor (the batch dimension included).
MAX_DIMS = 9
_PREFIX = 4
_ALIGN = 8


@dataclass(frozen=True, slots=True)
class TensorDesc:
    """One tensor of a frame: ``name`` (None for the unnamed form), wire ``dtype``, full ``shape``
    (batch dimension first), and where its bytes are in the payload."""

    name: str | None
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def label(self) -> str:
        return "the tensor" if self.name is None else f"tensor {self.name!r}"


@dataclass(frozen=True, slots=True)
class TensorPayload:
    """A binary request's tensors, described and size-checked but not yet converted:
    :func:`view_tensors` then :func:`conform` make the model's arrays (after admission)."""

    descs: tuple[TensorDesc, ...]
    payload: memoryview

    @property
    def nbytes(self) -> int:
        return len(self.payload)


class Spec(Protocol):
    """A model input as :func:`conform` needs it (a :class:`~wsserve.repository.tensors.TensorSpec`)."""

    name: str
    shape: tuple[int, ...]
    dtype: str



# --------------------------------------------------------------------------- decode


def header_length(n: int) -> int:
    """Bytes of a header of ``n`` bytes once padded so the payload starts 8-byte aligned."""
    return n + (-(_PREFIX + n)) % _ALIGN


def split(data: bytes | bytearray | memoryview, *, max_header_bytes: int = MAX_HEADER_BYTES) -> tuple[dict[str, Any], memoryview]:
    """The header object and the payload (a view of ``data``, not a copy).

    Raises ``BadRequest`` when the message is shorter than its length prefix says,
    the header is longer than ``max_header_bytes``, or it is not a UTF-8 JSON object.
    """
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    size = len(view)
    if size < _PREFIX:
        raise BadRequest(f"binary frame of {size} bytes: it must start with a 4-byte header length")
    n = int.from_bytes(view[:_PREFIX], "little")
    if n > max_header_bytes:
        raise BadRequest(f"binary frame header of {n} bytes; the limit is {max_header_bytes} (max_binary_header_bytes)")
    if n > size - _PREFIX:
        raise BadRequest(f"binary frame header length {n} exceeds the {size - _PREFIX} bytes after the length prefix")
    try:
        header = orjson.loads(view[_PREFIX : _PREFIX + n])
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"binary frame header is not valid UTF-8 JSON: {exc}") from None
    if type(header) is not dict:
        raise BadRequest(f"binary frame header must be a JSON object, got {json_type(header)}")
    return header, view[_PREFIX + n :]


def _shape(value: Any, label: str) -> tuple[int, ...]:
    """A shape: a list of 1..MAX_DIMS integers (types here: BadRequest; values: the caller's)."""
    if type(value) is not list or not 1 <= len(value) <= MAX_DIMS:
        raise BadRequest(f"{label}: 'shape' must be an array of 1 to {MAX_DIMS} integers, got {json_type(value)}"
                         + (f" of {len(value)}" if type(value) is list else ""))
    for d in value:
        if type(d) is not int:
            raise BadRequest(f"{label}: 'shape' must hold integers, got {shown(d)}")
    return tuple(value)


def _dtype(value: Any, label: str) -> str:
    if type(value) is not str:
        raise BadRequest(f"{label}: 'dtype' must be a string, got {json_type(value)}")
    if value not in DTYPES:
        raise BadRequest(f"{label}: unknown dtype {shown(value)}; known: {', '.join(DTYPES)}")
    return value


def read_tensors(header: Mapping[str, Any], payload_bytes: int, *, max_rows: int, key: str = "inputs") -> tuple[TensorDesc, ...]:
    """The tensors ``header`` describes, each checked against the ``payload_bytes`` there are.

    ``key`` names the list of named tensors (``inputs`` in requests, ``outputs`` in
    answers); without it the header must carry ``dtype`` and ``shape``.  Every
    dimension must be >= 1, the batch dimension (the first) <= ``max_rows`` and
    equal across tensors; each tensor's size (the product of its shape times the
    dtype's bytes) is computed with an early stop, so nothing here is ever larger
    than the payload; the sizes must add up to exactly ``payload_bytes``.
    Raises ``BadRequest`` (field types, unknown dtype) or ``InvalidInput`` (sizes).
    """
    named = header.get(key)
    if named is None:
        dtype_v, shape_v = header.get("dtype"), header.get("shape")
        if type(dtype_v) is str and dtype_v in ITEMSIZE and type(shape_v) is list and len(shape_v) == 2:
            n, width = shape_v  # hot path: one [n, width] tensor
            if type(n) is int and type(width) is int and 1 <= n <= max_rows and width >= 1 \
                    and n * width * ITEMSIZE[dtype_v] == payload_bytes:
                return (TensorDesc(None, dtype_v, (n, width), 0, payload_bytes),)
        if "dtype" not in header or "shape" not in header:
            raise BadRequest(f"binary frame header needs 'dtype' and 'shape' (one tensor) or '{key}' (a list of "
                             "{name, dtype, shape})")
        items: list[tuple[str | None, Any, Any]] = [(None, header["dtype"], header["shape"])]
    else:
        if "dtype" in header or "shape" in header:
            raise BadRequest(f"binary frame header has both '{key}' and 'dtype'/'shape'; use one form")
        if type(named) is not list or not 1 <= len(named) <= MAX_TENSORS:
            raise BadRequest(f"'{key}' must be an array of 1 to {MAX_TENSORS} objects {{name, dtype, shape}}")
        items = []
        seen: set[str] = set()
        for i, t in enumerate(named):
            if type(t) is not dict:
                raise BadRequest(f"'{key}' item {i} must be an object {{name, dtype, shape}}, got {json_type(t)}")
            name = t.get("name")
            if type(name) is not str or not 1 <= len(name) <= 256:
                raise BadRequest(f"'{key}' item {i}: 'name' must be a string of 1 to 256 characters")
            if name in seen:
                raise BadRequest(f"'{key}' names {shown(name)} twice")
            seen.add(name)
            items.append((name, t.get("dtype"), t.get("shape")))
    out: list[TensorDesc] = []
    offset = 0
    rows: int | None = None
    for name, dtype_v, shape_v in items:
        label = "binary frame" if name is None else f"tensor {name!r}"
        dtype = _dtype(dtype_v, label)
        shape = _shape(shape_v, label)
        desc = "the tensor" if name is None else f"tensor {name!r}"
        for d in shape:
            if d < 1:
                raise InvalidInput(f"{desc} has shape {list(shape)}; every dimension must be >= 1")
        n = shape[0]
        if n > max_rows:
            raise InvalidInput(f"{desc} has {n} rows; the limit is {max_rows}")
        if rows is None:
            rows = n
        elif n != rows:
            raise InvalidInput(f"{desc} has {n} rows but the first tensor has {rows}; every tensor needs the same rows")
        itemsize = ITEMSIZE[dtype]
        remaining = payload_bytes - offset
        size = itemsize
        for d in shape:  # early stop: never a number larger than the payload times the largest dimension
            size *= d
            if size > remaining:
                raise InvalidInput(f"{desc} of shape {list(shape)} and dtype {dtype} needs more than the "
                                   f"{remaining} payload bytes left")
        out.append(TensorDesc(name, dtype, shape, offset, size))
        offset += size
    if offset != payload_bytes:
        raise InvalidInput(f"binary frame payload has {payload_bytes} bytes; the header's tensors need {offset}")
    return tuple(out)


def _first_bad(mask: np.ndarray, shape: tuple[int, ...]) -> str:
    """``row i`` (and the position in it) of the first true value of a flat mask."""
    flat = int(np.argmax(mask))
    per_row = math.prod(shape[1:]) if len(shape) > 1 else 1
    row, rest = divmod(flat, per_row)
    if len(shape) <= 1:
        return f"row {row}"
    where = "".join(f"[{i}]" for i in np.unravel_index(rest, shape[1:]))
    return f"row {row}{where}"


def view_tensors(payload: memoryview | bytes, descs: Sequence[TensorDesc]) -> list[np.ndarray]:
    """The tensors as arrays (native byte order, C order, owning their memory).

    Raises ``InvalidInput`` for a float value that is not finite (NaN or an
    infinity: no model declares that it takes them, so they are always refused)
    and for a ``bool`` byte other than 0 or 1; the message names the row.
    """
    out = []
    for d in descs:
        dt = DTYPES[d.dtype]
        raw = np.frombuffer(payload, dtype=dt, count=d.nbytes // dt.itemsize, offset=d.offset)
        if d.dtype == "bool":
            bad = raw.view(np.uint8) > 1
            if bad.any():
                raise InvalidInput(f"{d.label} {_first_bad(bad, d.shape)} holds a byte other than 0 or 1 (dtype bool)")
        elif is_float(dt) and not (_all_finite(raw) if dt.kind == "f" else np.isfinite(raw).all()):
            raise InvalidInput(f"{d.label} {_first_bad(~np.isfinite(raw), d.shape)} holds a value that is not finite")
        arr = raw.copy() if dt.isnative else raw.astype(dt.newbyteorder("="))
        out.append(arr.reshape(d.shape))
    return out


def _all_finite(raw: np.ndarray) -> bool:
    """True if every value of the 1-D ``raw`` is finite.  The sum of squares (one BLAS call,
    cheaper than ``isfinite``) is finite only if every value is (NaN and infinities propagate;
    squares never cancel); when it is not (a NaN, an infinity, or just an overflow of large
    finite values beyond about 1e19: silenced, it is not the client's error), ``isfinite`` decides."""
    with np.errstate(over="ignore", invalid="ignore"):
        square = raw.dot(raw)
    if math.isfinite(square):
        return True
    return bool(np.isfinite(raw).all())


def _cast(arr: np.ndarray, desc: TensorDesc, spec: Spec) -> np.ndarray:
    """``arr`` as the spec's dtype, where the JSON path would take the same values: any number
    into a float input (a value beyond a narrower float's range refused: float32's, float16's
    65,504); integers, and integral floats (bfloat16 too), into an integer input when they are in its range;
    only bool into bool."""
    want = spec.dtype
    if desc.dtype == want:
        return arr
    label = desc.label
    if want == "bytes":  # a string tensor: a JSON predict's strings; frames carry fixed-size values only
        raise InvalidInput(f"{label} is {desc.dtype}; input '{spec.name}' takes strings (BYTES): send them in a "
                           "JSON predict")
    target = DTYPES[want]
    have = arr.dtype.kind
    if is_float(target):
        if have not in "iu" and not is_float(arr.dtype):
            raise InvalidInput(f"{label} is {desc.dtype}; input '{spec.name}' takes {want} (or another numeric dtype)")
        limit = float_max(target)
        if is_float(arr.dtype) and float_max(arr.dtype) > limit:  # float64 into float32, float32 into bfloat16
            over = np.abs(arr.astype(np.float64)) > limit
        elif have in "iu" and target.itemsize < 8:  # float16's 65,504 (float32's range holds every int64)
            over = np.abs(arr.astype(np.float64)) > limit
        else:
            over = None
        if over is not None and over.any():
            raise InvalidInput(f"{label} {_first_bad(over, desc.shape)} holds a value beyond {want}'s range "
                               f"(input '{spec.name}' is {want})")
        return arr.astype(target.newbyteorder("="))
    if target.kind in "iu":
        info = np.iinfo(target)
        if have in "iu":
            # Compared as Python-int bounds against the array's own type (numpy 2 compares a uint64
            # array with a negative bound exactly, and an int64 one with 2**64 - 1).
            over = (arr < info.min) | (arr > info.max)
            if over.any():
                raise InvalidInput(f"{label} {_first_bad(over, desc.shape)} holds a value beyond {want}'s range "
                                   f"(input '{spec.name}' is {want})")
            return arr.astype(target.newbyteorder("="))
        if is_float(arr.dtype):
            if arr.dtype.itemsize < 4:  # float16, bfloat16: compared in float32, which holds the bounds (up to
                arr = arr.astype(np.float32)  # 2**64; float16 would overflow) and each value exactly
            # As JSON: integral floats within range are taken; 1.5 is not.  The top bound is
            # 2**bits (unsigned) or 2**(bits-1), exact as a float (info.max is not: as a float
            # int64's rounds up to that very value, which would pass ``> info.max`` and wrap).
            over = (arr != np.floor(arr)) | (arr < info.min) | (arr >= float(info.max) + 1.0)
        else:
            raise InvalidInput(f"{label} is {desc.dtype}; input '{spec.name}' takes {want}")
        if over.any():
            raise InvalidInput(f"{label} {_first_bad(over, desc.shape)} holds a value that is not an integer in "
                               f"input '{spec.name}''s {want} range")
        return arr.astype(target.newbyteorder("="))
    raise InvalidInput(f"{label} is {desc.dtype}; input '{spec.name}' takes {want} (true/false only)")


def conform(arrays: Sequence[np.ndarray], descs: Sequence[TensorDesc], specs: Sequence[Spec]) -> tuple[Any, int, int]:
    """``(tensors, n, nbytes)``: the arrays fitted to a model's input ``specs``.

    The unnamed form suits a model with one input; named tensors must name
    the model's inputs (any order; an ``optional`` one may be left out).  Each tensor's shape after the
    batch dimension must equal the input's; dtypes are cast where the JSON
    path takes the same values (numbers into float inputs; integers, and
    integral floats in range, into int inputs; only bool into bool).
    ``tensors`` is one array for a single-input model, else ``{name: array}``.
    Raises ``InvalidInput`` naming the tensor and the problem.
    """
    if descs[0].name is None:
        if len(specs) != 1:
            names = ", ".join(repr(s.name) for s in specs)
            raise InvalidInput(f"the model takes several named inputs ({names}); list them in 'inputs'")
        pairs = [(arrays[0], descs[0], specs[0])]
    else:
        by_name = {d.name: i for i, d in enumerate(descs)}
        wanted = [s.name for s in specs]
        unknown = [d.name for d in descs if d.name not in wanted]
        if unknown:
            raise InvalidInput(f"'inputs' names unknown input {shown(unknown[0])}; the model takes {', '.join(map(repr, wanted))}")
        missing = [s.name for s in specs if s.name not in by_name and not getattr(s, "optional", False)]
        if missing:
            raise InvalidInput(f"'inputs' is missing input {missing[0]!r}; the model takes {', '.join(map(repr, wanted))}")
        pairs = [(arrays[by_name[s.name]], descs[by_name[s.name]], s) for s in specs if s.name in by_name]
    out: dict[str, np.ndarray] = {}
    nbytes = 0
    for arr, desc, spec in pairs:
        if not fits(desc.shape[1:], spec.shape):  # -1 (a model without batch dimension's): any size
            raise InvalidInput(f"{desc.label} has shape {list(desc.shape)}; the model takes [n, "
                               + ", ".join(map(str, spec.shape)) + "]" if spec.shape else
                               f"{desc.label} has shape {list(desc.shape)}; the model takes [n]")
        if VARIABLE in spec.shape and math.prod(desc.shape[1:]) > MAX_VALUES:  # the request sized it: bound it
            raise InvalidInput(f"{desc.label} has shape {list(desc.shape)}: {math.prod(desc.shape[1:])} values per row; "
                               f"at most {MAX_VALUES}")
        cast = _cast(arr, desc, spec)
        out[spec.name] = cast
        nbytes += cast.nbytes
    n = descs[0].shape[0]
    if len(specs) == 1:
        return out[specs[0].name], n, nbytes
    return out, n, nbytes  # an optional input left out has no entry: the model gets none


# --------------------------------------------------------------------------- encode


#: numpy dtype -> its wire name (:data:`~wsserve.dtypes.DTYPES`, native order included).
_WIRE_NAMES = {**{DTYPES[n]: n for n in DTYPES if n != BFLOAT16},
               **{DTYPES[n].newbyteorder("="): n for n in DTYPES if n != BFLOAT16}}  # bfloat16: by its name (_wire)


def _wire(arr: np.ndarray) -> tuple[str, np.ndarray]:
    """A wire dtype name for ``arr`` and the array in it (little-endian, C order): its own dtype's
    name when :data:`~wsserve.dtypes.DTYPES` has it, else the widest of its kind (float64, int64;
    a big-endian array: its little-endian twin)."""
    name = _WIRE_NAMES.get(arr.dtype)
    if name is None and arr.dtype.kind == "V" and arr.dtype.name == BFLOAT16:
        name = BFLOAT16
    if name is None:
        kind = arr.dtype.kind
        if kind == "b":
            name = "bool"
        elif kind == "f":
            name = "float64"
        elif kind in "iu":
            name = "uint64" if kind == "u" else "int64"
        else:
            raise TypeError(f"cannot send an array of dtype {arr.dtype} in a binary frame")
    want = DTYPES[name]
    if arr.dtype != want or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=want)
    return name, arr


def _raw(arr: np.ndarray) -> memoryview:
    """The bytes of the C-contiguous, non-empty ``arr`` (a view; a bfloat16 array, which exports no
    buffer of its own, through its bytes)."""
    return (arr.view(np.uint8) if arr.dtype.kind == "V" else arr).data.cast("B")


def encode(fields: Mapping[str, Any], tensors: np.ndarray | Mapping[str, np.ndarray], *, key: str = "outputs") -> bytes:
    """One binary frame: ``fields`` (type, id, ...), the tensors' descriptions, then their bytes.

    One array is described by ``dtype`` and ``shape``; a ``{name: array}`` by a
    list under ``key``.  Each array goes in its own dtype when :data:`~wsserve.dtypes.DTYPES`
    has it (a big-endian one swapped), else widened (float128 -> float64).  The header is
    padded with spaces so the payload starts at an 8-byte boundary.  An answer's tensor may hold
    no values (a 0 in its shape: a decoupled response of no rows, a variable dimension of none):
    it is described and has no bytes.
    """
    if isinstance(tensors, np.ndarray):
        name, arr = _wire(tensors)
        head = orjson.dumps(fields)[:-1] + b',"dtype":"' + name.encode() + b'","shape":' + \
            orjson.dumps(arr.shape) + b"}"
        if head[1:2] == b",":  # empty fields
            head = b"{" + head[2:]
        pad = header_length(len(head)) - len(head)
        return b"".join(((len(head) + pad).to_bytes(4, "little"), head, b" " * pad,
                         _raw(arr) if arr.size else b""))  # (a 0 in the shape: no bytes; no cast of it)
    header = dict(fields)
    described = []
    arrays = []
    for tname, a in tensors.items():
        name, arr = _wire(np.asarray(a))
        described.append({"name": tname, "dtype": name, "shape": list(arr.shape)})
        arrays.append(arr)
    header[key] = described
    head = orjson.dumps(header)
    pad = header_length(len(head)) - len(head)
    parts = [(len(head) + pad).to_bytes(4, "little"), head, b" " * pad]
    parts.extend(_raw(a) if a.size else b"" for a in arrays)
    return b"".join(parts)
