"""Triton's ragged batching (config.pbtxt's per-input ``allow_ragged_batch``, ``batch_input`` and
``batch_output``; triton-inference-server/server ``docs/user_guide/ragged_batching.md``), sans-I/O:
the values a batch's requests make, computed from their tensors' shapes.

- A *ragged* input: requests whose shapes differ there share a batch.  The worker hands the
  backend a :class:`~wsserve.worker.Ragged` (each request's own array); the ONNX backend feeds the
  graph their values concatenated, flattened into one dimension (:func:`concat_flat`, what Triton's
  onnxruntime backend does: ``[sum of the requests' element counts]``), a Triton Python model gets
  each request's own tensor.
- A *batch input* (:class:`BatchInput`) is a graph input the server computes per batch from the
  shapes of one ``source_input`` in each request (:func:`batch_input_value`); clients never send
  it.  Its ``data_type`` is ``TYPE_INT32`` or ``TYPE_FP32`` (Triton's rule).
- A *batch output* (:class:`BatchOutput`, ``BATCH_SCATTER_WITH_INPUT_SHAPE``): the graph's output
  is read as consecutive blocks, request ``i`` taking as many values as its shape holds: the
  output's dims with the batch dimension first, each ``-1`` the size of the source input's same
  dimension in that request (:func:`scatter`).

Bounds: every count here is of values a request already carried (its message is bounded by the
transport's maximum size, its rows by ``max_batch_size``), and a batch holds at most
``max_batch_size`` rows: no value computed here exceeds the batch's own element count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BATCH_INPUT_KINDS", "BatchInput", "BatchOutput", "batch_input_value", "concat_flat", "scatter"]

#: Triton's ``BatchInput.Kind`` names served (every one of model_config.proto's).
BATCH_INPUT_KINDS = ("BATCH_ELEMENT_COUNT", "BATCH_ACCUMULATED_ELEMENT_COUNT",
                     "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE",
                     "BATCH_ITEM_SHAPE", "BATCH_ITEM_SHAPE_FLATTEN")


@dataclass(frozen=True, slots=True)
class BatchInput:
    """One config.pbtxt ``batch_input``: ``kind`` (one of :data:`BATCH_INPUT_KINDS`), ``target`` (the
    graph input it feeds), ``dtype`` (``"int32"`` or ``"float32"``), ``source`` (the input whose
    shapes it is computed from)."""

    kind: str
    target: str
    dtype: str
    source: str


@dataclass(frozen=True, slots=True)
class BatchOutput:
    """One config.pbtxt ``batch_output`` (``BATCH_SCATTER_WITH_INPUT_SHAPE``): the ``targets`` (outputs)
    scattered to the requests by the shapes of input ``source``."""

    targets: tuple[str, ...]
    source: str


def batch_input_value(kind: str, shapes: Sequence[tuple[int, ...]], dtype: str) -> np.ndarray:
    """The value of a batch input of ``kind`` for a batch whose requests' source input have ``shapes``
    (each a request's whole shape, its batch dimension first), in ``dtype`` (Triton's semantics):

    - ``BATCH_ELEMENT_COUNT``: ``[requests]``, each request's element count;
    - ``BATCH_ACCUMULATED_ELEMENT_COUNT``: ``[requests]``, the running sums of those (where each
      request's values end in the concatenated input);
    - ``BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO``: ``[requests + 1]``, the same after a 0 (where
      each starts, and the end);
    - ``BATCH_MAX_ELEMENT_COUNT_AS_SHAPE``: ``[max element count]`` of zeros (its shape is the value;
      Triton leaves the data uninitialized);
    - ``BATCH_ITEM_SHAPE``: ``[rows, rank - 1]``, each row's shape without the batch dimension (a
      request of ``r`` rows gives ``r`` equal lines);
    - ``BATCH_ITEM_SHAPE_FLATTEN``: the same flattened, ``[rows * (rank - 1)]``.

    Raises ``ValueError`` for another kind, or item shapes of different ranks."""
    dt = np.dtype(dtype)
    counts = [math.prod(s) for s in shapes]
    if kind == "BATCH_ELEMENT_COUNT":
        return np.array(counts, dt)
    if kind == "BATCH_ACCUMULATED_ELEMENT_COUNT":
        return np.cumsum(np.array(counts, np.int64)).astype(dt)
    if kind == "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO":
        return np.cumsum(np.array([0, *counts], np.int64)).astype(dt)
    if kind == "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE":
        return np.zeros(max(counts, default=0), dt)
    if kind in ("BATCH_ITEM_SHAPE", "BATCH_ITEM_SHAPE_FLATTEN"):
        ranks = {len(s) for s in shapes}
        if len(ranks) > 1:
            raise ValueError(f"{kind}: the source input's requests have shapes of different ranks "
                             f"{sorted(ranks)}")
        width = (ranks.pop() - 1) if ranks else 0
        lines = [list(s[1:]) for s in shapes for _ in range(s[0] if s else 0)]
        items = np.array(lines, dt).reshape(len(lines), width)
        return items.reshape(-1) if kind == "BATCH_ITEM_SHAPE_FLATTEN" else items
    raise ValueError(f"unknown batch input kind {kind!r} (served: {', '.join(BATCH_INPUT_KINDS)})")


def concat_flat(parts: Sequence[np.ndarray]) -> np.ndarray:
    """A ragged input's requests' values, each flattened, concatenated in order: one dimension
    ``[sum of their element counts]`` (Triton's onnxruntime backend's ragged input)."""
    if len(parts) == 1:
        return parts[0].reshape(-1)
    return np.concatenate([p.reshape(-1) for p in parts])


def scatter(output: np.ndarray, shapes: Sequence[tuple[int, ...]], dims: tuple[int, ...],
            name: str) -> list[np.ndarray]:
    """A batch output ``output`` (``BATCH_SCATTER_WITH_INPUT_SHAPE``) as each request's part: request
    ``i``'s shape is ``(-1, *dims)`` (the output's config dims after its batch dimension) with each
    ``-1`` replaced by ``shapes[i]``'s size at the same index, its values the next that many of
    ``output`` (flattened, in order).  Raises ``ValueError`` naming ``name`` when a shape cannot be
    made (the source input has fewer dimensions) or ``output`` holds another number of values."""
    flat = output.reshape(-1)
    want = (-1, *dims)
    parts, offset = [], 0
    for s in shapes:
        if any(d == -1 and j >= len(s) for j, d in enumerate(want)):
            raise ValueError(f"batch output {name!r}: its dims {list(dims)} have a -1 where the source input "
                             f"(shape {list(s)}) has no dimension")
        shape = tuple(s[j] if d == -1 else d for j, d in enumerate(want))
        count = math.prod(shape)
        if offset + count > flat.size:
            raise ValueError(f"batch output {name!r} has {flat.size} values; its requests' shapes need more")
        parts.append(flat[offset:offset + count].reshape(shape))
        offset += count
    if offset != flat.size:
        raise ValueError(f"batch output {name!r} has {flat.size} values; its requests' shapes take {offset}")
    return parts
