"""Triton's check of a config.pbtxt's ``dims`` against an ONNX graph's shape, made at load.

Triton's onnxruntime backend (triton-inference-server/onnxruntime_backend,
``src/onnxruntime.cc`` ``ValidateInputs``/``ValidateOutputs`` calling
``CompareDimsSupported`` in ``src/onnxruntime_utils.cc``) refuses a model whose
configuration disagrees with its graph.  Its rule, which :func:`compare_dims`
follows (graph dimensions written ``-1`` where the graph leaves them dynamic or
symbolic):

- With batching (``max_batch_size > 0``, or auto-completed to batch) the
  graph's first dimension must be ``-1`` and the config's ``dims`` are compared
  with ``-1`` prepended (the batch).
- The ranks must be equal.
- An input: a graph dimension ``-1`` accepts any config dimension; a fixed graph
  dimension must equal the config's, so a config ``-1`` against a fixed graph
  dimension is refused (``compare_exact = false``).
- An output: every dimension must be equal, ``-1`` included: a dynamic graph
  dimension needs ``-1`` in the config (``compare_exact = true``).

A graph tensor of rank 0 (a scalar, or a shape the graph does not give: ONNX
Runtime reports both as ``[]``) is not compared: Triton ("only compare the
dimensions if the tensor is not scalar") requires the config's dims to be all
1s instead, feeds the input's one value to the graph as a scalar and answers the
scalar output in the config's dims.  :func:`scalar_dims` is that rule; wsserve
refuses it with batching too (a scalar has no batch dimension: Triton's own
message says the rule is for a model without batching).  Sans-I/O: shapes in, a
message out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["graph_dims", "compare_dims", "scalar_dims", "show_dims"]


def graph_dims(shape: Sequence[Any]) -> tuple[int, ...]:
    """An ONNX Runtime shape (ints, symbolic names, ``None``) as Triton sees it: ``-1`` where not fixed."""
    return tuple(d if type(d) is int and d > 0 else -1 for d in shape)


def show_dims(dims: Sequence[int]) -> str:
    """``[-1, 3]``: a shape as config.pbtxt writes it."""
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _where(graph: Sequence[int], full: Sequence[int], *, exact: bool, source: str) -> str:
    """Why ``full`` (the config's dims, the batch prepended when batching) disagrees with ``graph`` (same rank)."""
    for j, (g, c) in enumerate(zip(graph, full, strict=True)):
        if g == c or (g == -1 and not exact):
            continue
        if g == -1:  # an output's dynamic dimension against a fixed config one
            return (f"dimension {j} is {c} in {source} but dynamic in the graph: an output's dims must equal the "
                    "graph's exactly (-1 where the graph's dimension is dynamic)")
        if c == -1:
            return f"dimension {j} is -1 (variable) in {source} but fixed at {g} in the graph: write {g}"
        return f"dimension {j} is {c} in {source} but {g} in the graph"
    raise AssertionError("no disagreeing dimension")  # the caller found one


def compare_dims(model: str, side: str, name: str, graph: Sequence[int], dims: Sequence[int], *,
                 batching: bool, source: str = "config.pbtxt", why_batched: str = "max_batch_size > 0",
                 exact: bool | None = None) -> str | None:
    """``None`` when config dims ``dims`` agree with the graph's shape ``graph`` (see the module
    docstring; ``side`` is ``"input"`` or ``"output"``, outputs compared exactly), else the reason,
    naming the model, the tensor, the config's dims and the graph's shape.  ``graph`` of rank 0 is
    not compared (``None``).  ``why_batched`` says in the message why a batch dimension is prepended.
    ``exact`` (default: ``side == "output"``): a dynamic graph dimension takes only ``-1``."""
    if not graph:
        return None
    exact = side == "output" if exact is None else exact
    full = (-1, *dims) if batching else tuple(dims)
    said = f"model {model!r}, {side} {name!r}: {source} dims {show_dims(dims)}"
    if batching:
        said += f" (with the batch dimension, {why_batched}: {show_dims(full)})"
    said += f" disagree with the graph's shape {show_dims(graph)}"
    if batching and graph[0] != -1:
        return f"{said}: the graph's first dimension is fixed at {graph[0]}, the batch needs it dynamic"
    if len(graph) != len(full):
        return f"{said}: {len(full)} dimensions in {source}, {len(graph)} in the graph"
    if all(g == c or (g == -1 and not exact) for g, c in zip(graph, full, strict=True)):
        return None
    return f"{said}: {_where(graph, full, exact=exact, source=source)}"


def scalar_dims(model: str, side: str, name: str, dims: Sequence[int], *, batching: bool,
                source: str = "config.pbtxt") -> str | None:
    """``None`` when config dims ``dims`` may stand for a graph scalar (rank 0) by Triton's rule
    (every dimension 1, e.g. ``[1]``; and, in wsserve, no batch dimension), else the reason,
    naming the model, the tensor and both shapes."""
    said = f"model {model!r}, {side} {name!r}: {source} dims {show_dims(dims)} disagree with the graph's shape [] (a scalar)"
    if batching:
        return (f"{said}: a scalar has no batch dimension; set max_batch_size: 0 (dims [1] then stand for the "
                "scalar, as in Triton)")
    if any(d != 1 for d in dims):
        return f"{said}: a scalar's dims must all be 1 (e.g. [1]), as Triton's onnxruntime backend requires"
    return None
