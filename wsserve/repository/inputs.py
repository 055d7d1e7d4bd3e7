"""Request ``inputs`` (a decoded JSON value) -> arrays of the model's dtypes. Sans-I/O.

:func:`convert_inputs` generalises :func:`wsserve.protocol.validate_inputs`
(same messages for a single unnamed input) to per-row shapes of any rank,
several named inputs, and every dtype of :data:`wsserve.dtypes.DTYPES` (floats, signed and
unsigned integers, bool), and strings
(``bytes``: a Triton Python model's ``TYPE_STRING``; JSON strings, as an object array of
their UTF-8 ``bytes``):

- ``inputs`` is a list of rows, or ``{name: rows}`` for named inputs (a
  single-input model accepts both); an input whose spec is ``optional`` may be left out (the
  result then has no entry for it), every other one is required, and at least one is needed; a row is a number (scalar rows) or nested
  lists matching the input's per-row shape, e.g. ``[n, 2, 3]``.
- Elements must be JSON numbers (``true``/``false``, strings and ``null`` are
  refused; a bool input takes only ``true``/``false``; a string input only
  strings), finite, and fit the
  dtype: float32 and float16 cast (a value beyond their range is refused: 65,504 for
  float16; precision is rounded, as any cast); integer inputs (int8 ... int64, uint8 ... uint64)
  take integers and integral floats (``2.0``) within range and refuse ``1.5``.
- An input with a variable dimension (``-1``: a model without a batch
  dimension's) takes row 0's size there; every other row must have it too.
- Sizes are bounded before anything is allocated: ``1 <= n <= max_rows`` and
  ``n * values_per_row`` (summed over inputs) ``<= max_elements``.

Every refusal is :class:`wsserve.errors.InvalidInput` whose message names the
input (``'inputs'`` or ``'inputs.NAME'``), the row and the offending value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..dtypes import BYTES, is_float
from ..errors import InvalidInput
from ..jsontypes import json_type, shown
from ..shapes import MAX_VALUES, VARIABLE
from .tensors import MAX_DIM, TensorSpec

__all__ = ["convert_inputs", "check_inputs", "batch_rows"]




def batch_rows(batch: np.ndarray | dict[str, np.ndarray]) -> int:
    """Rows in a converted batch (``len`` of the array, or of any input of a dict)."""
    if isinstance(batch, dict):
        return len(next(iter(batch.values())))
    return len(batch)


# --------------------------------------------------------------------------- structure check

def _shape_words(shape: tuple[int, ...]) -> str:
    if len(shape) == 1:
        return f"an array of {shape[0]} numbers"
    return f"nested arrays of shape {list(shape)}"


def _check_leaves(label: str, i: int, where: str, leaf: list[Any], spec: TensorSpec) -> bool:
    """Type-check one innermost list; True if it holds a float. Raises InvalidInput."""
    has_float = False
    if spec.dtype == BYTES:
        for v in leaf:
            if type(v) is not str:
                raise InvalidInput(f"{label} row {i}{where} holds {shown(v)}; input '{spec.name}' takes strings")
        return False
    if spec.dtype == "bool":
        for v in leaf:
            if type(v) is not bool:
                raise InvalidInput(f"{label} row {i}{where} holds {shown(v)}; input '{spec.name}' takes true/false")
        return False
    for v in leaf:
        t = type(v)
        if t is float:
            has_float = True
            if v - v != 0.0:  # inf or nan (never from JSON; possible from Python callers)
                raise InvalidInput(f"{label} row {i}{where} holds {shown(v)}, which is not finite")
        elif t is not int:
            raise InvalidInput(f"{label} row {i}{where} holds {shown(v)}, which is not a number")
    return has_float


def _check_nested(label: str, i: int, node: Any, shape: tuple[int, ...], spec: TensorSpec, where: str = "") -> bool:
    """Recursive structure/type check of one row below the batch dim; True if any float was seen."""
    if not shape:  # scalar row
        return _check_leaves(label, i, where, [node], spec)
    if type(node) is not list:
        if not where:
            raise InvalidInput(f"{label} row {i} must be {_shape_words(shape)}, got {json_type(node)}")
        raise InvalidInput(f"{label} row {i}{where} must be an array of {shape[0]} values, got {json_type(node)}")
    if len(node) != shape[0]:
        raise InvalidInput(f"{label} row {i}{where} has {len(node)} values; the model takes {shape[0]}")
    if len(shape) == 1:
        return _check_leaves(label, i, where, node, spec)
    has_float = False
    for j, child in enumerate(node):
        has_float |= _check_nested(label, i, child, shape[1:], spec, f"{where}[{j}]")
    return has_float


def _locate(rows: list[Any], shape: tuple[int, ...], pred: Any) -> tuple[int, str, Any]:
    """First ``(row, where, value)`` whose value satisfies ``pred`` (rows already structure-checked)."""
    for i, row in enumerate(rows):
        stack: list[tuple[str, Any, int]] = [("", row, 0)]
        while stack:
            where, node, depth = stack.pop()
            if depth == len(shape):
                if pred(node):
                    return i, where, node
                continue
            for j in range(len(node) - 1, -1, -1):
                stack.append((f"{where}[{j}]" if depth < len(shape) - 1 else where, node[j], depth + 1))
    raise AssertionError("no offending value found")


# --------------------------------------------------------------------------- conversion

def _to_int(rows: list[Any], spec: TensorSpec, label: str, has_float: bool) -> np.ndarray:
    lo, hi = spec.bounds  # type: ignore[misc]

    def bad(v: Any) -> bool:
        return (type(v) is float and not v.is_integer()) or not lo <= v <= hi

    if not has_float:
        try:
            arr = np.array(rows, dtype=np.int64)
        except OverflowError:  # beyond int64: uint64's upper half, or out of every range
            arr = _uint64(rows) if spec.dtype == "uint64" else None
        if arr is not None and (spec.dtype == "int64" or (arr.size and lo <= arr.min() and arr.max() <= hi)):
            return arr if spec.dtype == "int64" else arr.astype(spec.np_dtype)
    elif not any(bad(v) for v in _flat(rows, spec.shape)):
        return np.array(_map_leaves(rows, spec.shape, int), dtype=spec.np_dtype)
    i, where, v = _locate(rows, spec.shape, bad)
    why = "integers only" if type(v) is float and not v.is_integer() else f"range [{lo}, {hi}]"
    raise InvalidInput(f"{label} row {i}{where} holds {shown(v)}, which does not fit input '{spec.name}' of dtype {spec.dtype} ({why})")


def _uint64(rows: list[Any]) -> np.ndarray | None:
    """``rows`` of integers as uint64, or None when one is negative or beyond 2**64 - 1."""
    try:
        return np.array(rows, dtype=np.uint64)
    except OverflowError:
        return None


def _fits_float(v: int) -> bool:
    try:
        float(v)
    except OverflowError:
        return False
    return True


def _flat(rows: list[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        yield from rows
        return
    for row in rows:
        yield from _flat(row, shape[1:])


def _map_leaves(node: list[Any], shape: tuple[int, ...], fn: Any) -> list[Any]:
    if not shape:
        return [fn(v) for v in node]
    return [_map_leaves(child, shape[1:], fn) for child in node]


def _sized(label: str, row: Any, spec: TensorSpec) -> TensorSpec:
    """``spec`` with each variable dimension the size row 0 gives it (the rows of one request make one
    array: they share a shape).  Raises :class:`InvalidInput` where row 0 gives none (not an array, or
    an empty one)."""
    dims: list[int] = []
    node = row
    for j, d in enumerate(spec.shape):
        if d == VARIABLE:
            if type(node) is not list or not 0 < len(node) <= MAX_DIM:
                where = "" if j == 0 else f" at depth {j}"
                raise InvalidInput(f"{label} row 0{where} must be an array of 1 to {MAX_DIM} values (input "
                                   f"'{spec.name}' has shape {list(spec.shape)}, -1: any size), got "
                                   f"{'an empty array' if node == [] else json_type(node)}")
            d = len(node)
        dims.append(d)
        node = node[0] if type(node) is list and node else None
    if math.prod(dims) > MAX_VALUES:
        raise InvalidInput(f"{label} row 0 has shape {dims}: {math.prod(dims)} values; at most {MAX_VALUES} (input "
                           f"'{spec.name}' has shape {list(spec.shape)}, -1: any size)")
    return replace(spec, shape=tuple(dims))


def _convert_one(rows: Any, spec: TensorSpec, label: str, max_rows: int, budget: int) -> np.ndarray:
    if type(rows) is not list:
        raise InvalidInput(f"{label} must be an array of rows, got {json_type(rows)}")
    n = len(rows)
    if n == 0:
        raise InvalidInput(f"{label} has no rows")
    if n > max_rows:
        raise InvalidInput(f"{label} has {n} rows; the limit is {max_rows}")
    if spec.variable:  # every row then checked against row 0's sizes
        declared = spec.shape
        spec = _sized(label, rows[0], spec)
        try:
            return _convert_sized(rows, spec, label, budget)
        except InvalidInput as exc:
            raise InvalidInput(f"{exc} (row 0's size: input '{spec.name}' has shape {list(declared)})") from None
    return _convert_sized(rows, spec, label, budget)


def _convert_sized(rows: list[Any], spec: TensorSpec, label: str, budget: int) -> np.ndarray:
    """``rows`` (1..max_rows of them) checked against ``spec`` (fixed dims) and converted."""
    n = len(rows)
    if n * spec.elements > budget:
        raise InvalidInput(f"{label} has {n} rows of {spec.elements} values; the limit is {budget} values")
    shape = spec.shape
    has_float = False
    if len(shape) == 1:  # the common case, inlined: rows of numbers
        width = shape[0]
        for i, row in enumerate(rows):
            if type(row) is not list:
                raise InvalidInput(f"{label} row {i} must be an array of {width} numbers, got {json_type(row)}")
            if len(row) != width:
                raise InvalidInput(f"{label} row {i} has {len(row)} values; the model takes {width}")
            has_float |= _check_leaves(label, i, "", row, spec)
    else:
        for i, row in enumerate(rows):
            has_float |= _check_nested(label, i, row, shape, spec)
    kind = spec.dtype
    if kind == BYTES:  # strings: their UTF-8 bytes, as an object array of the rows' shape
        out = np.empty((n, *shape), dtype=object)
        out.reshape(-1)[:] = [v.encode() for v in _flat(rows, shape)]
        return out
    if is_float(spec.np_dtype):
        try:
            arr = np.array(rows, dtype=np.float64)
        except OverflowError:  # a Python int beyond float64 (never from JSON)
            i, where, v = _locate(rows, shape, lambda v: type(v) is int and not _fits_float(v))
            raise InvalidInput(f"{label} row {i}{where} holds {v}, which is not finite as {kind}") from None
        if kind == "float64":
            return arr
        top = spec.bounds[1]  # type: ignore[index]
        if float(np.abs(arr).max()) > top:
            i, where, v = _locate(rows, shape, lambda v: abs(v) > top)
            raise InvalidInput(f"{label} row {i}{where} holds {shown(v)}, which does not fit input '{spec.name}' of dtype {kind}")
        return arr.astype(spec.np_dtype)
    if kind == "bool":
        return np.array(rows, dtype=np.bool_)
    return _to_int(rows, spec, label, has_float)


_NUMBERS = frozenset((int, float))
_INTS = frozenset((int,))
#: Up to this many values, the fast path checks each value in Python; above, per row in C plus numpy.
_SMALL = 64


def _small_ok(rows: list[Any], spec: TensorSpec, max_rows: int, max_elements: int) -> bool:
    """True if ``rows`` is a small (<= _SMALL values) batch of a 1-D numeric input whose every value fits.

    False means "not decided here" (large, nested, bool, integral floats for an int input, or a problem):
    the caller takes another path, which finds the exact problem if there is one.
    """
    bounds = spec.bounds
    shape = spec.shape
    if bounds is None or len(shape) != 1:
        return False
    n = len(rows)
    width = shape[0]
    if not 0 < n <= max_rows or n * width > _SMALL or n * width > max_elements:
        return False
    lo, hi = bounds
    allowed = _NUMBERS if type(lo) is float else _INTS  # int inputs: integral floats take the slow path
    for row in rows:
        if type(row) is not list or len(row) != width:
            return False
        for v in row:
            if type(v) in allowed and lo <= v <= hi:  # nan fails the comparison, inf the bound
                continue
            return False
    return True


def _fast(rows: list[Any], spec: TensorSpec, max_rows: int, max_elements: int) -> np.ndarray | None:
    """Rows of numbers for a 1-D numeric input, all fine: the array. Anything else: ``None`` (slow path).

    Checks each row's types in C, then bounds with numpy: for batches :func:`_small_ok` leaves.
    """
    bounds = spec.bounds
    shape = spec.shape
    if bounds is None or len(shape) != 1:
        return None
    n = len(rows)
    width = shape[0]
    if not 0 < n <= max_rows or n * width > max_elements:
        return None
    lo, hi = bounds
    is_float = type(lo) is float
    allowed = _NUMBERS if is_float else _INTS
    for row in rows:
        if type(row) is not list or len(row) != width or not allowed.issuperset(map(type, row)):
            return None
    try:
        arr = np.array(rows, dtype=np.float64 if is_float else np.int64)
    except OverflowError:
        return None
    if spec.dtype == "float64":
        return arr if np.isfinite(arr).all() else None
    if not lo <= arr.min() or not arr.max() <= hi:  # nan fails too
        return None
    return arr if spec.dtype == "int64" else arr.astype(spec.np_dtype)


def check_inputs(inputs: Any, specs: Sequence[TensorSpec], *, max_rows: int, max_elements: int) -> Any:
    """Validate like :func:`convert_inputs` but return ``inputs`` itself (the JSON rows, unconverted).

    For a pool that converts a whole batch at once: after this returns,
    ``np.array(rows, dtype=spec.np_dtype)`` on any concatenation of checked rows
    (per input name for several inputs) gives exactly what :func:`convert_inputs`
    would, and cannot fail.  Small single-input batches (the hot single-row
    path) are checked without allocating an array; others are converted once
    and the array dropped, so for large requests :func:`convert_inputs` is the
    cheaper choice.  Raises :class:`~wsserve.errors.InvalidInput` as
    :func:`convert_inputs` does.
    """
    if len(specs) == 1 and type(inputs) is list and _small_ok(inputs, specs[0], max_rows, max_elements):
        return inputs
    convert_inputs(inputs, specs, max_rows=max_rows, max_elements=max_elements)
    return inputs


def convert_inputs(
    inputs: Any, specs: Sequence[TensorSpec], *, max_rows: int, max_elements: int
) -> np.ndarray | dict[str, np.ndarray]:
    """Check and convert a request's ``inputs`` for a model with input ``specs``.

    Returns an array ``[n, *shape]`` of the spec's dtype when the model has one
    input (``inputs`` given as rows or as ``{name: rows}``), else a dict
    ``{name: array}`` with every input and the same ``n`` for all.  Raises
    :class:`~wsserve.errors.InvalidInput` naming the first problem; never
    allocates more than ``max_elements`` values.
    """
    if len(specs) == 1 and type(inputs) is list:  # hot path: unnamed rows
        spec = specs[0]
        if _small_ok(inputs, spec, max_rows, max_elements):
            return np.array(inputs, dtype=spec.np_dtype)
        arr = _fast(inputs, spec, max_rows, max_elements)
        if arr is not None:
            return arr
    if len(specs) == 1:
        spec = specs[0]
        if type(inputs) is dict:
            if set(inputs) != {spec.name}:
                raise InvalidInput(_names_message(inputs, specs) or f"'inputs' gives no input; the model takes {spec.name!r}")
            return _convert_one(inputs[spec.name], spec, f"'inputs.{spec.name}'", max_rows, max_elements)
        return _convert_one(inputs, spec, "'inputs'", max_rows, max_elements)
    if type(inputs) is not dict:
        names = ", ".join(repr(s.name) for s in specs)
        raise InvalidInput(f"'inputs' must be an object {{name: rows}} with the inputs {names}, got {json_type(inputs)}")
    if len(inputs) != len(specs) or any(s.name not in inputs for s in specs):
        message = _names_message(inputs, specs)
        if message is not None:
            raise InvalidInput(message)
        specs = [s for s in specs if s.name in inputs]  # optional inputs left out: the model gets none
    first = specs[0].name
    n = len(inputs[first]) if type(inputs[first]) is list else 0
    per_row = sum(s.elements for s in specs)
    if 0 < n <= max_rows and n * per_row > max_elements:
        raise InvalidInput(f"'inputs' has {n} rows of {per_row} values; the limit is {max_elements} values")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        label = f"'inputs.{spec.name}'"
        rows = inputs[spec.name]
        arr = None
        if type(rows) is list:
            if _small_ok(rows, spec, max_rows, max_elements):
                arr = np.array(rows, dtype=spec.np_dtype)
            else:
                arr = _fast(rows, spec, max_rows, max_elements)
        if arr is None:
            arr = _convert_one(rows, spec, label, max_rows, max_elements)
        if len(arr) != n:
            raise InvalidInput(f"{label} has {len(arr)} rows but 'inputs.{first}' has {n}; every input needs the same rows")
        out[spec.name] = arr
    return out


def _names_message(inputs: dict[str, Any], specs: Sequence[TensorSpec]) -> str | None:
    """What is wrong with the names of ``inputs`` (an unknown one, a required one missing, none at
    all), or None when only optional inputs are left out."""
    wanted = [s.name for s in specs]
    unknown = sorted(k for k in inputs if k not in wanted)
    missing = [s.name for s in specs if s.name not in inputs and not s.optional]
    if unknown:
        problem = f"names unknown input {shown(unknown[0])}"
    elif missing:
        problem = f"is missing input {missing[0]!r}"
    elif not inputs:
        problem = "gives no input"
    else:
        return None  # only optional inputs left out: every such request comes here, so no message is built
    takes = ", ".join(repr(s.name) + (" (optional)" if s.optional else "") for s in specs)
    return f"'inputs' {problem}; the model takes {takes}"
