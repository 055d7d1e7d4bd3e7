"""The tensor dtypes wsserve moves between the wire and a model: one table, by wire name.

Every codec that names a dtype uses this table: the model repository's
:class:`~wsserve.repository.tensors.TensorSpec` (``config.toml`` ``dtype``),
the binary tensor frames of :mod:`wsserve.tensorframe`, and the Open Inference
Protocol datatypes (``FP32`` ...), which map onto it by :data:`OIP_NAMES`.
Every numpy dtype here is little-endian (the wire byte order).  The table holds every fixed-size
type Triton and the OIP name: ``float16``/``float32``/``float64``, ``bfloat16`` (Triton's
``TYPE_BF16``, the OIP's ``BF16``), ``int8``/``int16``/``int32``/``int64``,
``uint8``/``uint16``/``uint32``/``uint64`` and ``bool``.

``bfloat16`` is not a numpy type: its dtype is ``ml_dtypes.bfloat16`` (2 bytes, the upper half of a
float32, little-endian; its numpy ``kind`` is ``"V"``, so test it with :func:`is_float`, not
``kind == "f"``), and ``ml_dtypes`` is imported the first time the table is asked for that dtype's
value (a lookup of the name, ``"bfloat16" in DTYPES``, imports nothing): a server that serves no
bfloat16 tensor never loads it.

String tensors (Triton's ``TYPE_STRING``, the OIP's ``BYTES``) are apart: :data:`BYTES`
(``"bytes"``), held as numpy object arrays of ``bytes`` (as Triton's Python backend gives
them), are in :data:`TENSOR_DTYPES` (a repository model's tensors, from config.pbtxt) but not in
:data:`DTYPES` (config.toml, the binary tensor frames: fixed-size values only).
:func:`array_bytes` counts what such an array holds.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = ["BFLOAT16", "BYTES", "DTYPES", "OIP_DTYPES", "OIP_NAMES", "ITEMSIZE", "TENSOR_DTYPES", "array_bytes",
           "float_max", "is_float", "json_ready"]

#: The wire name of bfloat16 values (Triton's ``TYPE_BF16``): ``ml_dtypes.bfloat16``.
BFLOAT16 = "bfloat16"


def _bfloat16() -> np.dtype:
    """``ml_dtypes.bfloat16``'s numpy dtype (imports ``ml_dtypes``, a dependency of wsserve)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


class _Table(Mapping[str, np.dtype]):
    """A read-only name -> dtype table whose ``bfloat16`` value is made when first read (see the
    module docstring): every other value is held; the order is the table's as written."""

    __slots__ = ("_dtypes", "_names")

    def __init__(self, dtypes: dict[str, np.dtype | None]) -> None:
        self._dtypes = dtypes  # None: bfloat16, resolved on each read (a dict look-up once imported)
        self._names = tuple(dtypes)

    def __getitem__(self, name: str) -> np.dtype:
        dt = self._dtypes[name]
        return _bfloat16() if dt is None else dt

    def __contains__(self, name: object) -> bool:
        return name in self._dtypes

    def __iter__(self) -> Any:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


#: wire name -> little-endian numpy dtype.
DTYPES: Mapping[str, np.dtype] = _Table(
    {
        "float32": np.dtype("<f4"),
        "float64": np.dtype("<f8"),
        "int32": np.dtype("<i4"),
        "int64": np.dtype("<i8"),
        "bool": np.dtype(np.bool_),
        "float16": np.dtype("<f2"),
        "int8": np.dtype("<i1"),
        "int16": np.dtype("<i2"),
        "uint8": np.dtype("<u1"),
        "uint16": np.dtype("<u2"),
        "uint32": np.dtype("<u4"),
        "uint64": np.dtype("<u8"),
        BFLOAT16: None,
    }
)

#: The wire name of string tensors: numpy object arrays whose elements are ``bytes``.
BYTES = "bytes"

#: :data:`DTYPES` and :data:`BYTES` (object): the dtypes a repository model's tensor may have.
TENSOR_DTYPES: Mapping[str, np.dtype] = _Table({**DTYPES._dtypes, BYTES: np.dtype(object)})  # type: ignore[attr-defined]

#: wire name -> bytes per value.
ITEMSIZE: Mapping[str, int] = MappingProxyType({**{k: v.itemsize for k, v in DTYPES._dtypes.items()  # type: ignore[attr-defined]
                                                   if v is not None}, BFLOAT16: 2})

#: wire name -> the Open Inference Protocol v2 datatype of the same values.
OIP_NAMES: Mapping[str, str] = MappingProxyType(
    {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64", "bool": "BOOL", "float16": "FP16",
     "int8": "INT8", "int16": "INT16", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
     BFLOAT16: "BF16", BYTES: "BYTES"}
)


#: OIP datatype -> its little-endian numpy dtype (``BYTES``: object), as :data:`TENSOR_DTYPES` (``BF16``
#: made when first read).
OIP_DTYPES: Mapping[str, np.dtype] = _Table({OIP_NAMES[k]: v for k, v in TENSOR_DTYPES._dtypes.items()})  # type: ignore[attr-defined]


def is_float(dtype: np.dtype) -> bool:
    """``dtype`` holds floating-point values: numpy's floats (``kind == "f"``) and bfloat16 (whose
    numpy kind is ``"V"``)."""
    return dtype.kind == "f" or (dtype.kind == "V" and dtype.name == BFLOAT16)


def float_max(dtype: np.dtype) -> float:
    """The largest finite value of the floating-point ``dtype`` (bfloat16's: 3.3895e38)."""
    if dtype.kind == "f":
        return float(np.finfo(dtype).max)
    return _BF16_MAX


#: bfloat16's largest finite value: (2 - 2**-7) * 2**127 (as float32's exponent range).
_BF16_MAX = (2 - 2.0**-7) * 2.0**127


def array_bytes(array: np.ndarray) -> int:
    """The memory ``array`` holds (what the byte limits count): ``nbytes``; for an object array (a
    string tensor) also each element's ``bytes`` object (its length and a ~33-byte header:
    ``sys.getsizeof``) besides its 8-byte pointer: a request of many short strings counts what it costs
    (two characters hold ~43 bytes, not the 6 of their length prefix and text)."""
    if array.dtype.kind != "O":
        return int(array.nbytes)
    return int(array.nbytes) + _BYTES_HEADER * array.size + sum(map(len, array.ravel().tolist()))


#: ``sys.getsizeof(b"")``: what a ``bytes`` object holds besides its bytes (33 on 64-bit CPython).
_BYTES_HEADER = sys.getsizeof(b"")


def json_ready(array: np.ndarray) -> Any:
    """``array`` as ``orjson`` (with ``OPT_SERIALIZE_NUMPY``) writes it: a numeric array C-contiguous
    (a bfloat16 one as float32, which holds each of its values exactly);
    a string tensor (an object array of ``bytes``) as nested lists of strings, each element decoded
    as UTF-8 with an invalid byte replaced by U+FFFD (every JSON answer's rule for strings)."""
    if array.dtype.kind == "O":
        return _DECODE(array).tolist()
    if array.dtype.kind == "V":  # bfloat16 (orjson writes numpy's own types only): float32 holds each exactly
        return np.ascontiguousarray(array, dtype=np.float32)
    return np.ascontiguousarray(array)


_DECODE = np.frompyfunc(lambda v: v.decode("utf-8", "replace"), 1, 1)
