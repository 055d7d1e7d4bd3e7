"""Tensor specs: the name, per-row shape and dtype of one model input or output.

A *row* is one element of the batch: a model with ``input_shape = [2, 3]``
takes batches of shape ``[n, 2, 3]``.  The per-row shape may be ``()`` (each
row is a single number, e.g. an ONNX classifier's ``label`` output), though
config.toml cannot declare that for an input of a model.py (see
:mod:`.config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dtypes import (  # the one table (also used by the binary tensor frames)
    BYTES,
    DTYPES,
    TENSOR_DTYPES,
    float_max,
    is_float,
)
from ..shapes import VARIABLE, fits

__all__ = ["DTYPES", "TensorSpec", "MAX_DIMS", "MAX_ROW_ELEMENTS", "MAX_DIM"]

#: Bounds on a per-row shape (config.toml and ONNX graphs alike).
MAX_DIMS = 8
MAX_DIM = 1 << 22
MAX_ROW_ELEMENTS = 1 << 22


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output: ``name``, per-row ``shape`` (no batch dim) and ``dtype`` (a key of
    :data:`~wsserve.dtypes.TENSOR_DTYPES`: :data:`DTYPES`, or ``"bytes"``, a string tensor held as an
    object array of ``bytes``).

    A dimension :data:`~wsserve.shapes.VARIABLE` (``-1``) takes any size (config.pbtxt's ``-1``, or an
    ONNX graph's dynamic dimension no config fixes), each request giving its own size there (:meth:`fits`;
    every row of one request the same; with a batch dimension, a batch holds requests of one size)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    #: An input a request may leave out (config.pbtxt's ``optional: true``; the model then gets none).
    optional: bool = False
    # derived from the above:
    #: Values per row (1 for a scalar row); with variable dimensions, the least (each counted as 1).
    elements: int = field(init=False, repr=False, compare=False)
    #: True when a dimension is variable.
    variable: bool = field(init=False, repr=False, compare=False)
    #: The numpy dtype.
    np_dtype: np.dtype = field(init=False, repr=False, compare=False)
    #: Inclusive ``(lo, hi)`` of the values the dtype holds: finite floats, the integer range; ``None`` for bool.
    bounds: tuple[float, float] | tuple[int, int] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.dtype not in TENSOR_DTYPES:
            raise ValueError(f"tensor {self.name!r}: unsupported dtype {self.dtype!r} (supported: "
                             f"{', '.join(TENSOR_DTYPES)})")
        if len(self.shape) > MAX_DIMS or any(type(d) is not int or not (0 < d <= MAX_DIM or d == VARIABLE)
                                             for d in self.shape):
            raise ValueError(f"tensor {self.name!r}: bad shape {list(self.shape)}")
        object.__setattr__(self, "elements", math.prod(max(d, 1) for d in self.shape))
        object.__setattr__(self, "variable", VARIABLE in self.shape)
        dt = TENSOR_DTYPES[self.dtype]
        object.__setattr__(self, "np_dtype", dt)
        if is_float(dt):
            bound: Any = float_max(dt)
            object.__setattr__(self, "bounds", (-bound, bound))
        elif dt.kind in "iu":
            info = np.iinfo(dt)
            object.__setattr__(self, "bounds", (int(info.min), int(info.max)))
        else:
            object.__setattr__(self, "bounds", None)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        """An array of ``shape`` in this tensor's dtype holding zeros (empty strings: ``b""``)."""
        if self.dtype == BYTES:
            return np.full(shape, b"", dtype=object)
        return np.zeros(shape, dtype=self.np_dtype)

    def fits(self, shape: tuple[int, ...]) -> bool:
        """True when a row of ``shape`` is one of this tensor's (equal, but where a dimension is variable)."""
        return fits(shape, self.shape)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.optional:
            out["optional"] = True
        return out
