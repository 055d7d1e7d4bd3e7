"""The tensor dtypes wsserve moves between the wire and a model: one table, by wire name.

Every codec that names a dtype uses this table: the model repository's
:class:`~wsserve.repository.tensors.TensorSpec` (``config.toml`` ``dtype``),
the binary tensor frames of :mod:`wsserve.tensorframe`, and the Open Inference
Protocol datatypes (``FP32`` ...), which map onto it by :data:`OIP_NAMES`.
Every numpy dtype here is little-endian (the wire byte order).  The table holds every fixed-size
type Triton and the OIP name but ``BF16`` (numpy has no bfloat16): ``float16``/``float32``/``float64``,
``int8``/``int16``/``int32``/``int64``, ``uint8``/``uint16``/``uint32``/``uint64`` and ``bool``.

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

__all__ = ["BYTES", "DTYPES", "OIP_NAMES", "ITEMSIZE", "TENSOR_DTYPES", "array_bytes", "json_ready"]

#: wire name -> little-endian numpy dtype.
DTYPES: Mapping[str, np.dtype] = MappingProxyType(
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
    }
)

#: The wire name of string tensors: numpy object arrays whose elements are ``bytes``.
BYTES = "bytes"

#: :data:`DTYPES` and :data:`BYTES` (object): the dtypes a repository model's tensor may have.
TENSOR_DTYPES: Mapping[str, np.dtype] = MappingProxyType({**DTYPES, BYTES: np.dtype(object)})

#: wire name -> bytes per value.
ITEMSIZE: Mapping[str, int] = MappingProxyType({k: v.itemsize for k, v in DTYPES.items()})

#: wire name -> the Open Inference Protocol v2 datatype of the same values.
OIP_NAMES: Mapping[str, str] = MappingProxyType(
    {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64", "bool": "BOOL", "float16": "FP16",
     "int8": "INT8", "int16": "INT16", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
     BYTES: "BYTES"}
)


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
    """``array`` as ``orjson`` (with ``OPT_SERIALIZE_NUMPY``) writes it: a numeric array C-contiguous;
    a string tensor (an object array of ``bytes``) as nested lists of strings, each element decoded
    as UTF-8 with an invalid byte replaced by U+FFFD (every JSON answer's rule for strings)."""
    if array.dtype.kind == "O":
        return _DECODE(array).tolist()
    return np.ascontiguousarray(array)


_DECODE = np.frompyfunc(lambda v: v.decode("utf-8", "replace"), 1, 1)
