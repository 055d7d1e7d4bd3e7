"""Binary tensor frames (the server's docs/PROTOCOL.md, "Binary tensor frames"): numpy optional.

One binary WebSocket message is a 4-byte little-endian header length ``N``, ``N`` bytes of
JSON header (padded with spaces so the payload starts 8-byte aligned), then the tensors'
raw little-endian bytes in C order. The header describes one tensor with ``dtype`` and
``shape``, or several with ``inputs``/``outputs``: a list of ``{name, dtype, shape}``.

- :class:`Tensor` holds raw bytes with their dtype and shape; :func:`as_tensor` makes one
  from a numpy array, an ``array.array`` (with a shape) or bytes (with a dtype and a shape).
- bfloat16 (Triton's ``TYPE_BF16``) is sent from float values rounded to it
  (``as_tensor(x, dtype="bfloat16")``, :func:`float32_to_bfloat16`: no ``ml_dtypes`` needed),
  from their 16-bit patterns, or from an ``ml_dtypes.bfloat16`` array (known by its dtype's name).
- :func:`encode_frame` builds a request; :func:`decode_frame` reads a reply into a frame
  dict whose ``outputs`` are numpy arrays (numpy installed and ``as_numpy``) or
  :class:`Tensor` objects (``.tolist()`` gives nested lists without numpy).
"""

from __future__ import annotations

import array
import functools
import math
import struct
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["DTYPES", "BFLOAT16", "Tensor", "BinaryFrame", "as_tensor", "float32_to_bfloat16", "encode_frame",
           "decode_frame", "peek_header"]

#: The wire name of bfloat16 values (Triton's ``TYPE_BF16``, the OIP's ``BF16``): 2 bytes a value,
#: little-endian, the upper half of the float32 of the same value.
BFLOAT16 = "bfloat16"
#: wire dtype -> (struct/array format, bytes per value); bfloat16's format is that of its 16-bit
#: patterns (``H``): :meth:`Tensor.tolist` and :meth:`Tensor.numpy` give the float32 values they are.
DTYPES: Mapping[str, tuple[str, int]] = {
    "float32": ("f", 4), "float64": ("d", 8), "int32": ("i", 4), "int64": ("q", 8), "bool": ("?", 1),
    "float16": ("e", 2), "int8": ("b", 1), "int16": ("h", 2),
    "uint8": ("B", 1), "uint16": ("H", 2), "uint32": ("I", 4), "uint64": ("Q", 8), BFLOAT16: ("H", 2),
}
#: The dtypes every wsserve server takes in a binary frame (one whose ``hello`` lists no
#: ``binary_dtypes``): an array of another dtype is widened to one of these unless the server lists it.
CLASSIC_DTYPES = ("float32", "float64", "int32", "int64", "bool")
#: array.array typecodes -> wire dtype (by item size where the C type's size varies)
_ARRAY_CODES = {"f": "float32", "d": "float64"}
_LITTLE = sys.byteorder == "little"


class BinaryFrame(bytes):
    """An encoded request to send as a binary WebSocket message (plain ``bytes`` go as text)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Tensor:
    """Raw little-endian values in C order: ``len(data) == prod(shape) * itemsize(dtype)``.  A
    dimension may be 0 in a reply (a decoupled model's response of no rows, a variable dimension of
    none); a request's must be >= 1 (:func:`encode_frame` refuses it)."""

    data: bytes
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        if not self.shape or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in self.shape):
            raise ValueError(f"shape must be a non-empty sequence of integers >= 0, got {list(self.shape)}")
        want = math.prod(self.shape) * DTYPES[self.dtype][1]
        if len(self.data) != want:
            raise ValueError(f"{len(self.data)} bytes do not hold shape {list(self.shape)} of {self.dtype} ({want} bytes)")

    def tolist(self) -> list[Any]:
        """The values as nested lists (no numpy needed); bfloat16's as the float32 values they are."""
        data, (fmt, size) = self.data, DTYPES[self.dtype]
        if self.dtype == BFLOAT16:
            data, fmt, size = _bfloat16_to_float32(data), "f", 4
        count = len(data) // size
        if not count:  # a 0 in the shape: nested lists down to the first 0, which is an empty list
            return _empty(self.shape)
        flat: list[Any] = list(struct.unpack(f"<{count}{fmt}", data))
        for d in reversed(self.shape[1:]):
            flat = [flat[i : i + d] for i in range(0, len(flat), d)]
        return flat

    def numpy(self) -> Any:
        """The values as a numpy array (a copy, writable; bfloat16's as the float32 values they are,
        numpy having no bfloat16). Raises ``ImportError`` without numpy."""
        import numpy as np

        if self.dtype == BFLOAT16:
            return np.frombuffer(_bfloat16_to_float32(self.data), dtype="<f4").reshape(self.shape).copy()
        return np.frombuffer(self.data, dtype=np.dtype(DTYPES_NP[self.dtype])).reshape(self.shape).copy()


DTYPES_NP = {"float32": "<f4", "float64": "<f8", "int32": "<i4", "int64": "<i8", "bool": "?",
             "float16": "<f2", "int8": "<i1", "int16": "<i2", "uint8": "<u1", "uint16": "<u2", "uint32": "<u4",
             "uint64": "<u8"}
_INT64_MAX = 2**63 - 1
_NP_NAMES = {"f2": "float16", "f4": "float32", "f8": "float64", "i1": "int8", "i2": "int16", "i4": "int32",
             "i8": "int64", "u1": "uint8", "u2": "uint16", "u4": "uint32", "u8": "uint64", "b1": "bool"}


def _is_bfloat16(dtype: Any) -> bool:
    """``dtype`` is ``ml_dtypes.bfloat16``'s (known by its name: ``ml_dtypes`` is never imported)."""
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == BFLOAT16


def _numpy_tensor(value: Any, keep: Collection[str] = ()) -> Tensor | None:
    np = sys.modules.get("numpy")
    if np is None or not isinstance(value, np.ndarray):
        return None
    if _is_bfloat16(value.dtype):  # its own dtype where the server takes it, else the float32 it is (exact)
        bits = np.ascontiguousarray(value).view(np.uint16).astype("<u2")
        shape = tuple(int(d) for d in value.shape) or (1,)
        if BFLOAT16 in keep:
            return Tensor(bits.tobytes(), BFLOAT16, shape)
        return Tensor(_bfloat16_to_float32(bits.tobytes()), "float32", shape)
    kind, size = value.dtype.kind, value.dtype.itemsize
    own = _NP_NAMES.get(f"{kind}{size}")
    if own is not None and (own in keep or own in CLASSIC_DTYPES):
        dtype = own
    elif kind == "f":
        dtype = "float32" if size <= 4 else "float64"
    elif kind in "iu":
        dtype = "int32" if size < 4 or (kind == "i" and size == 4) else "int64"
        if kind == "u" and size == 8 and value.size and int(value.max()) > _INT64_MAX:  # it would wrap around
            raise ValueError(f"a uint64 array holds {int(value.max())}, beyond int64: it can go only to a server "
                             "whose hello lists uint64 in binary_dtypes (an older server does not; nor is one "
                             "known before the client's first connection)")
    elif kind == "b":
        dtype = "bool"
    else:
        raise TypeError(f"cannot send a numpy array of dtype {value.dtype} as a tensor")
    arr = np.ascontiguousarray(value, dtype=np.dtype(DTYPES_NP[dtype]))
    if arr.ndim == 0:
        arr = arr.reshape(1)
    return Tensor(arr.tobytes(), dtype, tuple(int(d) for d in arr.shape))


def as_tensor(value: Any, *, dtype: str | None = None, shape: Sequence[int] | None = None,
              keep: Collection[str] = ()) -> Tensor:
    """A :class:`Tensor` from a numpy array, an ``array.array`` (with ``shape``, e.g. ``[n, d]``;
    default ``[len]``), raw little-endian ``bytes`` with ``dtype`` and ``shape``, or a
    :class:`Tensor` (returned as is).

    A numpy array goes in its own dtype when that is float32, float64, int32, int64 or bool, or
    is in ``keep`` (the server's ``hello`` ``binary_dtypes``: float16, uint8, bfloat16 ...); otherwise
    it is widened (float16 -> float32, uint8 -> int32, uint32 -> int64, an ``ml_dtypes.bfloat16``
    array -> float32, each exactly), as every server takes; a uint64 array only when int64 holds
    every value (never wrapped around).

    ``dtype="bfloat16"`` with an array sends it as bfloat16 whatever ``keep`` says (a server that
    does not take bfloat16 refuses it as an unknown dtype): float values (a numpy float16, float32
    or float64 array, an ``array.array("f")``) rounded to the nearest bfloat16, ties to even, as
    ``ml_dtypes`` rounds (a value beyond bfloat16's range becomes an infinity, NaN stays NaN; the
    server refuses both); 16-bit patterns (a numpy uint16 or ``ml_dtypes.bfloat16`` array, an
    ``array.array("H")``, or bytes) as they are. No other ``dtype`` is taken with an array.

    Raises:
        TypeError: an unsupported value, or a ``dtype`` with an array other than ``"bfloat16"``.
            ValueError: sizes that do not match, or a uint64 value beyond int64 when uint64 is not
            in ``keep``.
    """
    if isinstance(value, Tensor):
        return value
    if dtype is not None and not isinstance(value, (bytes, bytearray, memoryview)):
        if dtype != BFLOAT16:
            raise TypeError(f"dtype={dtype!r} is taken only with raw bytes (with an array: only 'bfloat16', "
                            "to send its values rounded to bfloat16)")
        return _bfloat16_tensor(value, shape)
    t = _numpy_tensor(value, keep)
    if t is not None:
        return t
    if isinstance(value, array.array):
        code, size = value.typecode, value.itemsize
        if code in "fd":
            wire = _ARRAY_CODES[code]
        elif code in "bhilq" or (code in "BHIL" and size < 8):
            wire = "int32" if size < 4 or (size == 4 and code.islower()) else "int64"
        else:
            raise TypeError(f"cannot send array.array of typecode {code!r}")
        fmt, wsize = DTYPES[wire]
        if wsize == size and (code in "fd" or code.islower()):
            data = value if _LITTLE else array.array(code, value)
            if not _LITTLE:
                data.byteswap()
            raw = data.tobytes()
        else:
            raw = struct.pack(f"<{len(value)}{fmt}", *value)
        return Tensor(raw, wire, tuple(shape) if shape is not None else (len(value),))
    if isinstance(value, (bytes, bytearray, memoryview)):
        if dtype is None or shape is None:
            raise TypeError("raw bytes need dtype= and shape=")
        return Tensor(bytes(value), dtype, tuple(shape))
    raise TypeError(f"binary inputs must be a numpy array, array.array, bytes (with dtype and shape) or Tensor, "
                    f"got {type(value).__name__}")


def _bfloat16_tensor(value: Any, shape: Sequence[int] | None) -> Tensor:
    """``as_tensor(value, dtype="bfloat16", shape=shape)`` of an array (see :func:`as_tensor`)."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        if _is_bfloat16(value.dtype) or (value.dtype.kind == "u" and value.dtype.itemsize == 2):
            bits = np.ascontiguousarray(value).view(np.uint16).astype("<u2")
        elif value.dtype.kind == "f":
            bits = _numpy_bfloat16_bits(np, value)
        else:
            raise TypeError(f"dtype='bfloat16' takes float values or uint16 bit patterns, not a numpy array of "
                            f"dtype {value.dtype}")
        given = tuple(int(d) for d in value.shape) or (1,)
        return Tensor(bits.tobytes(), BFLOAT16, tuple(shape) if shape is not None else given)
    if isinstance(value, array.array) and value.typecode in "fH" and value.itemsize == (4 if value.typecode == "f" else 2):
        words = array.array(value.typecode, value)
        if not _LITTLE:
            words.byteswap()
        raw = words.tobytes()
        return Tensor(float32_to_bfloat16(raw) if value.typecode == "f" else raw, BFLOAT16,
                      tuple(shape) if shape is not None else (len(value),))
    raise TypeError("dtype='bfloat16' takes a numpy float, uint16 or ml_dtypes.bfloat16 array, an array.array "
                    f"of typecode 'f' or 'H', or bytes; got {type(value).__name__}"
                    + (f" of typecode {value.typecode!r}" if isinstance(value, array.array) else ""))


def _bfloat16_word(w: int) -> int:
    """The bfloat16 nearest the float32 of bit pattern ``w`` (ties to even; NaN: the quiet NaN of its sign)."""
    if w & 0x7FFFFFFF > 0x7F800000:
        return (w >> 16) & 0x8000 | 0x7FC0
    return (w + 0x7FFF + ((w >> 16) & 1)) >> 16


def float32_to_bfloat16(raw: bytes) -> bytes:
    """Little-endian float32 values as the little-endian bfloat16 values nearest them, ties to even,
    as ``ml_dtypes`` rounds (a value beyond bfloat16's ±3.3895e38 by half a step becomes an infinity;
    NaN stays NaN, the quiet one of its sign). Pure Python: no numpy needed."""
    if len(raw) % 4:
        raise ValueError(f"{len(raw)} bytes are not a whole number of float32 values")
    words = struct.unpack(f"<{len(raw) // 4}I", raw)
    return struct.pack(f"<{len(words)}H", *map(_bfloat16_word, words))


def _numpy_bfloat16_bits(np: Any, value: Any) -> Any:
    """The uint16 bit patterns of the bfloat16 values nearest a numpy float array's (ties to even, as
    :func:`float32_to_bfloat16`).  float64 goes through float32 rounded *to odd* (an inexact result
    has its last bit set), which keeps the final rounding the one of the float64 value itself."""
    if value.dtype.itemsize > 4:
        x = np.asarray(value, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            f = x.astype(np.float32)
            back = f.astype(np.float64)
        inexact = (back != x) & ~np.isnan(x)
        towards_zero = np.where(inexact & (np.abs(back) > np.abs(x)), np.nextafter(f, np.float32(0)), f)
        words = np.ascontiguousarray(towards_zero, dtype="<f4").view("<u4") | inexact.astype("<u4")
    else:
        words = np.ascontiguousarray(value, dtype="<f4").view("<u4")
    nan = (words & 0x7FFFFFFF) > 0x7F800000
    rounded = (words + 0x7FFF + ((words >> 16) & 1)) >> 16  # wraps only for a NaN, replaced below
    return np.where(nan, (words >> 16) & 0x8000 | 0x7FC0, rounded).astype("<u2")


def _empty(shape: Sequence[int]) -> list[Any]:
    """The nested lists of a shape holding a 0: ``(2, 0, 3)`` -> ``[[], []]``."""
    return [] if shape[0] == 0 else [_empty(shape[1:]) for _ in range(shape[0])]


def encode_frame(fields: Mapping[str, Any], tensors: Tensor | Mapping[str, Tensor], *, key: str = "inputs") -> BinaryFrame:
    """Header ``fields`` plus the tensors' descriptions, padded, then the tensors' bytes.  Raises
    ``ValueError`` for a tensor with a 0 in its shape (a request's dimensions are >= 1)."""
    for t in [tensors] if isinstance(tensors, Tensor) else tensors.values():
        if 0 in t.shape:
            raise ValueError(f"shape must be a non-empty sequence of integers >= 1, got {list(t.shape)}")
    header = dict(fields)
    if isinstance(tensors, Tensor):
        header["dtype"], header["shape"] = tensors.dtype, list(tensors.shape)
        parts = [tensors.data]
    else:
        header[key] = [{"name": n, "dtype": t.dtype, "shape": list(t.shape)} for n, t in tensors.items()]
        parts = [t.data for t in tensors.values()]
    head = orjson.dumps(header)
    pad = (-(4 + len(head))) % 8
    return BinaryFrame(b"".join([(len(head) + pad).to_bytes(4, "little"), head, b" " * pad, *parts]))


#: A reply's dtypes this client decodes widened: wire dtype -> (the dtype it is decoded as, bytes per
#: wire value).  bfloat16 (a Triton ``TYPE_BF16`` output: the upper half of the float32 of the same
#: value) becomes that float32, exactly, with or without numpy (which has no bfloat16).
_WIDENED: Mapping[str, tuple[str, int]] = {"bfloat16": ("float32", 2)}


def _bfloat16_to_float32(raw: bytes) -> bytes:
    """Little-endian bfloat16 values as the little-endian float32 values they are (each one's two
    bytes become the upper half of a float32 whose lower half is zero)."""
    out = bytearray(2 * len(raw))
    out[2::4] = raw[0::2]
    out[3::4] = raw[1::2]
    return bytes(out)


def _tensor(desc: Mapping[str, Any], payload: memoryview, offset: int) -> tuple[Tensor, int]:
    dtype, shape = desc.get("dtype"), desc.get("shape")
    widened = _WIDENED.get(dtype) if isinstance(dtype, str) else None
    if (dtype not in DTYPES and widened is None) or not isinstance(shape, list) or not shape:
        raise ValueError(f"binary frame: bad tensor description {dict(desc)!r}")
    # a reply's dimension may be 0 (a response of no rows, a variable dimension of none): no bytes
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"binary frame: bad shape {shape!r}")
    size = (widened[1] if widened else DTYPES[dtype][1]) if all(shape) else 0
    for d in shape if size else ():
        size *= d
        if offset + size > len(payload):  # (an early stop: never a product beyond the payload)
            raise ValueError("binary frame: the payload is shorter than its header says")
    raw = bytes(payload[offset : offset + size])
    if widened is not None:
        dtype, raw = widened[0], _bfloat16_to_float32(raw)
    return Tensor(raw, dtype, tuple(shape)), offset + size


def decode_frame(data: bytes, *, as_numpy: bool) -> dict[str, Any]:
    """A binary reply as a frame dict: the header's fields, ``outputs`` (one tensor, or ``{name: tensor}``)
    as numpy arrays when ``as_numpy`` and numpy is installed, else :class:`Tensor`.  A ``bfloat16``
    tensor comes widened to ``float32``, which holds each value exactly.

    Raises:
        ValueError: a malformed frame.
    """
    view = memoryview(data)
    if len(view) < 4:
        raise ValueError("binary frame shorter than its length prefix")
    n = int.from_bytes(view[:4], "little")
    if n > len(view) - 4:  # (no cap of its own: a model's response parameters lengthen it; the frame bounds it)
        raise ValueError(f"binary frame header length {n} is out of range")
    header = orjson.loads(view[4 : 4 + n])
    if not isinstance(header, dict):
        raise ValueError("binary frame header is not a JSON object")
    payload = view[4 + n :]
    named = header.pop("outputs", None)
    if named is None:
        out: Any
        out, end = _tensor(header, payload, 0)
        header.pop("dtype", None)
        header.pop("shape", None)
    else:
        if not isinstance(named, list):
            raise ValueError("binary frame: 'outputs' must be a list")
        out, end = {}, 0
        for desc in named:
            if not isinstance(desc, dict) or not isinstance(desc.get("name"), str):
                raise ValueError("binary frame: bad 'outputs' entry")
            if desc["name"] in out:  # a second tensor of that name would silently replace the first
                raise ValueError(f"binary frame: 'outputs' names {desc['name']!r:.80} twice")
            out[desc["name"]], end = _tensor(desc, payload, end)
    if end != len(payload):
        raise ValueError(f"binary frame payload has {len(payload)} bytes; the header describes {end}")
    if as_numpy and _have_numpy():
        out = {k: t.numpy() for k, t in out.items()} if isinstance(out, dict) else out.numpy()
    header["outputs"] = out
    return header


def peek_header(data: bytes) -> dict[str, Any] | None:
    """The JSON header of a binary frame, or ``None`` when even that cannot be read; used to
    find which request a malformed binary reply answers. Never raises."""
    try:
        n = int.from_bytes(data[:4], "little")
        if len(data) < 4 or n > len(data) - 4:
            return None
        header = orjson.loads(bytes(data[4 : 4 + n]))
    except (ValueError, TypeError):
        return None
    return header if isinstance(header, dict) else None


@functools.cache
def _have_numpy() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True
