"""The tensor dtypes wsserve moves between the wire and a model: one table, by wire name.

Every codec that names a dtype uses this table: the model repository's
:class:`~wsserve.repository.tensors.TensorSpec` (``config.toml`` ``dtype``),
the binary tensor frames of :mod:`wsserve.tensorframe`, and the Open Inference
Protocol datatypes (``FP32`` ...), which map onto it by :data:`OIP_NAMES`.
Every numpy dtype here is little-endian (the wire byte order).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

__all__ = ["DTYPES", "OIP_NAMES", "ITEMSIZE"]

#: wire name -> little-endian numpy dtype.
DTYPES: Mapping[str, np.dtype] = MappingProxyType(
    {
        "float32": np.dtype("<f4"),
        "float64": np.dtype("<f8"),
        "int32": np.dtype("<i4"),
        "int64": np.dtype("<i8"),
        "bool": np.dtype(np.bool_),
    }
)

#: wire name -> bytes per value.
ITEMSIZE: Mapping[str, int] = MappingProxyType({k: v.itemsize for k, v in DTYPES.items()})

#: wire name -> the Open Inference Protocol v2 datatype of the same values.
OIP_NAMES: Mapping[str, str] = MappingProxyType(
    {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64", "bool": "BOOL"}
)
