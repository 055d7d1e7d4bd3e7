"""The batching worker of one predictive model version: :class:`PredictWorker`.

It owns one :class:`~wsserve.batching.BatchQueue` and forms batches from loop
callbacks (no task per request or per model), greedily or after
``max_delay_ms``, across every connection and every HTTP request; it runs the
model (off the event loop in an executor when the batch is costly enough,
inline when it is cheaper than the thread hop) and hands each request its
output rows through its :class:`PredictSink`.

Inputs and outputs are a *batch*: one array ``[n, *shape]`` for a model with
a single input/output, or ``{name: array}`` for several (named tensors).
A model with a variable (-1) input dimension besides the batch gets batches of
one row shape only (each request sizes it; requests of another shape wait for
another batch, as with Triton's dynamic batcher): its queue groups by shape.
Outputs keep the model's dtypes; a float output row that is not finite fails
only its own request with ``invalid_input`` (so do attributions that are not finite).
A model taking a batch as its requests whose outputs have a variable dimension answers each
request at its own size: ``predict_requests`` returns :class:`RequestOutputs` (one part per
request), each part checked and handed to its request whole (the one-array path is unchanged).

Failure isolation: when a batch of several requests fails - the model raised
(or its explainer did), or it returned outputs that are not a numeric array (or
an object array of ``bytes``: a string tensor) of the batch's rows - each request of the batch is computed again alone, one after
the other, where the batch ran (in the executor, or inline when the batch was
inline).  Only a request whose own rows fail gets ``internal`` (naming the
model and the error); the others get their normal results, with the row count
they were computed in as their batch size.  A batch of one request fails it at
once (nothing to isolate), and a request computed alone is never recomputed,
so a model that fails on every row ends each request once.  The batch counts
once in the statistics (its rows, its first attempt's compute time plus the
recomputes); :attr:`PredictWorker.isolated_batches` and the observer's optional
``on_isolated(model)`` count the batches isolated.

Requests a model fails by themselves: a model taking a batch as its requests
(``predict_requests(x, rows, ids)``, a Triton Python model) may answer some of
them with an error and the others with their rows, from the same call, by
returning :class:`RequestErrors`: only those requests fail, each with its own
error, the others get their rows, and nothing is computed again (Triton's
per-request error responses).  ``ids`` are the requests' client ids
(:func:`request_id_of`), read only for such a model.  A model whose ``takes_ended``
is true also gets a fourth argument, one :class:`Held` per request, whose ``cancelled()`` (the
request's :func:`ended_check`) it may call from any thread while it computes to stop a request
that ended meanwhile (cancelled, its client
gone, its deadline passed; a Triton Python model's ``request.is_cancelled()``); whatever
it still answers for such a request is dropped, as for any ended request, and the other
requests of the batch are not touched.  A model failure's wire
error is ``internal``, unless the exception has a ``to_wire(message)`` method
choosing it (a Triton ``TritonError``: its code's, see
:mod:`wsserve.repository.triton_backend`).

Explanations: a request whose sink has ``explain`` true also gets per-feature
attributions for its rows, computed in the same batch and the same call as
the outputs (by the worker's :class:`~wsserve.explain.Explainer`, off the loop
like any costly batch).  Each of its rows counts :data:`EXPLAIN_ROW_COST` units
against ``max_batch_size`` and ``max_queue_rows`` (see
:mod:`wsserve.batching`): with the default batch of 256, at most 8 rows to
explain share a batch - one 1024-point integrated-gradients chunk for the
``mlp`` (about 9-13 ms on one core) - so explanations cannot stall the
predictions batched with them for long.

Response cache (Triton's, :mod:`wsserve.respcache`): a worker given a
:class:`~wsserve.respcache.ResponseCache` and a scope (:meth:`PredictWorker.use_cache`)
looks each plain request up in ``submit`` - not one that explains, nor a streamed
one (a sink whose ``stream`` is true).  A hit never enters the queue: its sink
gets all its rows on the next loop iteration (``call_soon``; never after
:meth:`~PredictWorker.cancel`) with queue and compute time 0 and batch size its
rows.  A miss is queued as usual and its outputs are stored once the whole
request was computed in one batch with every row finite (after its sink had
them).  Hits and misses (with the time to look up and store; a miss once it is queued, not
one a full queue refuses) are counted in
:attr:`~PredictWorker.stats` and by the observer's optional
``on_cache(model, result)`` (``"hit"`` / ``"miss"``).

Request rescheduling (Triton's non-decoupled iterative sequences, :mod:`wsserve.reschedule`): a
model taking a batch as its requests whose ``iterative_sequence`` is true (config.pbtxt's
``sequence_batching { iterative_sequence: true }``) gets each request's :class:`Held` as a fourth
argument of ``predict_requests``; a request its execute rescheduled (:attr:`Held.again`) gets no
rows from it, and :func:`~wsserve.reschedule.after_execute` decides: back first in its level of
the queue (:meth:`BatchQueue.requeue <wsserve.batching.BatchQueue.requeue>`, not admitted again),
or ended with ``internal`` past ``max_reschedules``; one that ended meanwhile (cancel, deadline,
disconnect: :meth:`Held.cancelled` true, which the model reads as ``is_cancelled()``) is given to
no later execute.  Its answer comes from the execute that answers it, once.  Such a request is
never split over batches (one larger than a batch is refused ``invalid_input``), a failed batch
fails each of its requests (no isolation: a request executed again would be stepped twice), and
the pool gives such a model no response cache (Triton's sequence batcher caches nothing).

Call order: ``PredictWorker(...)``; ``start()`` (on the loop); ``submit`` /
``cancel`` from the loop thread; ``await close()`` (idempotent).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import monotonic
from typing import Any, Protocol

import numpy as np

from .batching import Batch, BatchQueue, PriorityLevels, QueuePolicy, Slice, WorkItem
from .config import INLINE_MAX_FLOPS
from .dtypes import is_float
from .errors import (
    BadRequest,
    DeadlineExceeded,
    Internal,
    InvalidInput,
    ShuttingDown,
    WsserveError,
)
from .explain import Explainer
from .metrics import VersionStats
from .reschedule import MAX_RESCHEDULES, RELEASE_RESCHEDULE, after_execute
from .respcache import CacheScope, ResponseCache, request_key
from .stats import WorkerStatistics

__all__ = ["EXPLAIN_ROW_COST", "MAX_MERGED_PARAMETERS", "Held", "PredictSink", "PredictWorker", "BatchObserver", "BatchOutputs",
           "Ragged", "RequestErrors", "RequestOutputs", "RequestParameters", "Tensors", "count_rows", "concat_rows",
           "ended_check", "merge_parameters", "request_id_of", "slice_rows", "too_many_parameters"]

log = logging.getLogger("wsserve.worker")

#: One array ``[n, *shape]``, or ``{name: array}`` for named tensors.
Tensors = np.ndarray | dict[str, np.ndarray]

#: Cost units of one row to explain (a plain row costs 1): integrated gradients on the ``mlp`` are
#: 128 forward+backward passes, ~1.1-1.6 ms a row, against ~2 us a row for a plain batch-256 predict.
EXPLAIN_ROW_COST = 32

def count_rows(block: Tensors) -> int:
    """Rows in a delivery (an array, or named arrays of equal length)."""
    if isinstance(block, dict):
        return len(next(iter(block.values())))
    return int(block.shape[0])


def concat_rows(parts: list[Tensors]) -> Tensors:
    """Rows of several deliveries, in order (per name for named outputs).  Raises
    :class:`~wsserve.errors.InvalidInput` when their rows differ in shape (a model without a batch
    dimension whose output has a variable dimension, e.g. TopK's ``k`` given per row, answered each
    row at its own size: one array cannot hold them), naming the output and both shapes."""
    if isinstance(parts[0], dict):
        return {k: _concat([p[k] for p in parts], k) for k in parts[0]}  # type: ignore[index]
    return _concat(parts, None)  # type: ignore[arg-type]


def _concat(arrays: list[np.ndarray], name: str | None) -> np.ndarray:
    first = arrays[0].shape[1:]
    for a in arrays[1:]:
        if a.shape[1:] != first:
            what = "the output" if name is None else f"output {name!r}"
            raise InvalidInput(f"{what} has rows of shape {list(first)} and {list(a.shape[1:])} in one request: "
                               "the model answers each row at its own size, which one array cannot hold; send "
                               "such rows in separate requests")
    return np.concatenate(arrays)


def slice_rows(block: Tensors, a: int, b: int) -> Tensors:
    """Rows ``a:b`` of a delivery (per name for named outputs)."""
    if isinstance(block, dict):
        return {k: v[a:b] for k, v in block.items()}
    return block[a:b]



class PredictSink(Protocol):
    """Receives one request's results, on the event-loop thread, in row order.

    Contract: ``on_rows`` is called for consecutive row ranges starting at 0
    until all ``n`` rows are delivered, unless ``on_error`` is called first;
    after ``on_error`` nothing more is called.  Neither may block.

    Optional: a sink with a true ``explain`` attribute gets ``on_rows(...,
    attributions=a)`` with ``a`` ``[rows, d]`` float64 (the same rows as
    ``outputs``); sinks without it are never passed ``attributions``.

    Optional: a sink with a true ``shared_outputs`` attribute (never one that
    explains) whose rows all come in one batch, of a model that returned one
    ``[rows, c >= 1]`` array with every row finite, gets instead of ``on_rows``
    ``on_batch_outputs(out, a, b, queue_s)``: its rows are ``out.y[a:b]``, and
    ``out`` (a :class:`BatchOutputs`) is the same object for every such sink of
    the batch, so they can share work done once on the whole batch (one JSON
    encoding of its rows).
    """

    inputs: Tensors  # [n, ...] (or {name: [n, ...]})
    n: int
    nbytes: int
    finished: bool  # True once the request has its terminal frame

    def on_rows(self, start: int, outputs: Tensors, batch_rows: int, queue_s: float, compute_s: float) -> None: ...

    def on_error(self, exc: WsserveError) -> None: ...


class Held:
    """One request of a batch, as ``predict_requests(x, rows, ids, held)``'s fourth argument gives it
    (in batch order) to a model whose ``takes_ended`` is true (a Triton Python model).
    :meth:`cancelled` (any thread): the request ended (cancelled, its deadline, its client left, an
    unload; its :func:`ended_check`).  For a model that may reschedule a request (config.pbtxt
    ``sequence_batching { iterative_sequence: true }``, the model's ``iterative_sequence`` true;
    :mod:`wsserve.reschedule`) the same object is kept across the request's executes: the model (in
    its thread, while it executes) keeps its own object for the request in :attr:`request` (the same
    ``pb_utils.InferenceRequest`` each execute) and sets :attr:`again` when its execute rescheduled
    the request (its rows in the returned outputs are then placeholders, never delivered); the
    worker reads and resets :attr:`again` after the execute, on the loop, and once the request is
    answered or ends takes the Held off the item and drops its :attr:`request` (:func:`_let_go`).
    Another model's is made anew for each batch (:attr:`request` and :attr:`again` unused)."""

    __slots__ = ("request", "again", "reschedules", "_ended")

    def __init__(self, ended: Callable[[], bool]) -> None:
        self.request: Any = None
        self.again = False
        self.reschedules = 0  # times it was requeued (the worker's)
        self._ended = ended

    def cancelled(self) -> bool:
        return bool(self._ended())


@dataclass(frozen=True, slots=True)
class RequestErrors:
    """What ``predict_requests(x, rows, ids)`` returns when it failed some requests by themselves:
    ``outputs`` holds every row of the batch (a failed request's rows are placeholders, never
    delivered), ``errors`` maps the index in ``rows`` of each failed request to its exception."""

    outputs: Any
    errors: Mapping[int, BaseException]


@dataclass(frozen=True, slots=True)
class RequestOutputs:
    """What ``predict_requests(x, rows, ids)`` returns (alone, or as :attr:`RequestErrors.outputs`)
    for a model whose outputs have a variable dimension: ``parts[i]`` is request ``i``'s outputs
    (``rows[i]`` rows, an array or ``{name: array}``), each request's of its own size there (as
    each Triton ``InferenceResponse`` has its own shapes).  The worker checks each part against its
    request's rows and hands it out whole; a failed request's part is never read."""

    parts: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class RequestParameters:
    """What ``predict_requests(x, rows, ids)`` returns when its responses carry parameters (a
    Triton Python model's ``InferenceResponse(parameters=)``): ``outputs`` is what it would return
    otherwise (outputs, :class:`RequestErrors` or :class:`RequestOutputs`), ``parameters`` maps the
    index in ``rows`` of a request to its response's parameters (``{str: bool | int | str}``,
    bounded by the model).  The worker hands each request's to its sink's ``on_parameters(params)``
    (a sink without it ignores them) before its rows."""

    outputs: Any
    parameters: Mapping[int, Mapping[str, Any]]


#: Distinct response parameters one request's answer may gather over the responses it is split
#: across (each response's are bounded by the model: a Triton Python model's at 64 and 16 KiB).
MAX_MERGED_PARAMETERS = 64


def merge_parameters(merged: Mapping[str, Any] | None, parameters: Mapping[str, Any]) -> dict[str, Any] | None:
    """``merged`` updated with ``parameters`` (a later response's value of a key wins), or None when
    that would hold more than :data:`MAX_MERGED_PARAMETERS` keys: the sink then ends its request
    with ``internal`` (a sink never raises to the worker)."""
    out = {**(merged or {}), **parameters}
    return out if len(out) <= MAX_MERGED_PARAMETERS else None


def too_many_parameters(model: str) -> Internal:
    """The error of a request whose responses' parameters :func:`merge_parameters` refused."""
    return Internal(f"model {model!r} answered one request with more than {MAX_MERGED_PARAMETERS} distinct response "
                    "parameters over the responses it was split across (MAX_MERGED_PARAMETERS)")


def _give_parameters(sink: Any, parameters: Mapping[str, Any]) -> None:
    """``sink.on_parameters(parameters)`` when the sink takes response parameters (see
    :class:`RequestParameters`)."""
    take = getattr(sink, "on_parameters", None)
    if take is not None:
        take(parameters)


def request_id_of(sink: Any) -> str:
    """The client's id of ``sink``'s request as text (a WebSocket ``id``, an OIP ``id``), or ``""``
    when it has none: its ``request_id`` attribute, when it has one."""
    rid = getattr(sink, "request_id", None)
    return "" if rid is None else rid if isinstance(rid, str) else str(rid)


def _rows_vary(model: Any) -> bool:
    """Whether ``model`` declares an input dimension each request sizes (a
    :attr:`~wsserve.repository.tensors.TensorSpec.variable` spec; a stateful model's
    ``sequence_inputs`` too: a state whose dims vary): its cost per row is then unknown."""
    return any(getattr(spec, "variable", False) for spec in (*(getattr(model, "inputs", None) or ()),
                                                             *getattr(model, "sequence_inputs", ())))


@dataclass(frozen=True, slots=True)
class Ragged:
    """A ragged input of a batch (config.pbtxt's ``allow_ragged_batch``, :mod:`wsserve.repository.ragged`):
    ``parts[i]`` is the ``i``-th request's (slice's) array, rows first, of its own shape; the
    backend joins them as its kind of model takes them.  :func:`_gather` makes it for a model whose
    ``ragged_inputs`` name the input."""

    parts: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)


def _row_shape(inputs: Any, ragged: frozenset[str] = frozenset()) -> Any:
    """The row shape of a request's ``inputs`` as a hashable key (``[n, *row]`` -> ``row``; named
    inputs: ``((name, row), ...)`` by name, so also which inputs it gives): a model with a variable
    dimension or an optional input batches together only requests whose keys are equal (:class:`~wsserve.batching.BatchQueue`'s ``by_shape``).  ``None``
    for JSON rows (only a fixed-shape model gets those).  An input named in ``ragged`` counts by its
    name only (requests of any shape there share a batch); ``"*"`` there: the only input."""
    if isinstance(inputs, dict):
        return tuple(sorted((k, None if k in ragged else v.shape[1:]) for k, v in inputs.items()))
    shape = getattr(inputs, "shape", None)
    return None if shape is None or "*" in ragged else shape[1:]


class BatchOutputs:
    """One computed batch's outputs, handed whole to the sinks that take ``on_batch_outputs``
    (see :class:`PredictSink`): ``y`` (``[rows, c]``, contiguous, every row finite), ``rows``
    (the batch's), ``compute_s`` (its compute time), and ``encoded``, None until a sink stores
    there what it derived from ``y`` for the others (the worker never reads it)."""

    __slots__ = ("y", "rows", "compute_s", "encoded")

    def __init__(self, y: np.ndarray, rows: int, compute_s: float) -> None:
        self.y = y
        self.rows = rows
        self.compute_s = compute_s
        self.encoded: Any = None


class BatchObserver(Protocol):
    """Optional hook for metrics: ``on_batch`` is called once per computed batch (an isolated
    batch included, once, after its last recompute).  An observer may also define
    ``on_isolated(model: str) -> None``, called once per batch whose failure made the worker
    compute its requests alone (see the module docstring)."""

    def on_batch(self, model: str, rows: int, compute_s: float) -> None: ...


def _gather(slices: tuple[Any, ...], ragged: frozenset[str] = frozenset()) -> Tensors:
    """The batch's inputs: each slice's rows, concatenated (per name for named tensors).

    An input named in ``ragged`` (``"*"``: an unnamed only input) is not concatenated: it is a
    :class:`Ragged` of each slice's rows (its requests' shapes differ there).

    A sink's ``inputs`` may also be a list of checked JSON rows (small requests to models
    with one float vector input, see :data:`wsserve.pool.LIST_ROWS_MAX_VALUES`): numbers only, every
    row the model's width, so ``np.array(rows, dtype=np.float64)`` cannot fail.  The
    rows of all such slices become one array in one call."""
    if ragged:
        return _gather_ragged(slices, ragged)
    if len(slices) == 1:
        s = slices[0]
        sink = s.item.payload
        whole = s.start == 0 and s.stop == sink.n
        x = sink.inputs
        if type(x) is list:
            return np.array(x if whole else x[s.start : s.stop], dtype=np.float64)
        if whole:
            return x
        if isinstance(x, dict):
            return {k: v[s.start : s.stop] for k, v in x.items()}
        return x[s.start : s.stop]
    first = slices[0].item.payload.inputs
    if isinstance(first, dict):
        return {k: np.concatenate([s.item.payload.inputs[k][s.start : s.stop] for s in slices]) for k in first}
    rows: list[Any] = []
    arrays: list[np.ndarray] = []
    for s in slices:
        x = s.item.payload.inputs
        if type(x) is list:
            rows += x[s.start : s.stop]
        else:
            if rows:  # keep the batch's row order: the lists so far become an array first
                arrays.append(np.array(rows, dtype=np.float64))
                rows = []
            arrays.append(x[s.start : s.stop])
    if not arrays:
        return np.array(rows, dtype=np.float64)
    if rows:
        arrays.append(np.array(rows, dtype=np.float64))
    return np.concatenate(arrays)


def _gather_ragged(slices: tuple[Any, ...], ragged: frozenset[str]) -> Any:
    """:func:`_gather` for a model with ragged inputs (JSON rows, a fixed-width ragged input's, as an array)."""
    def part(x: Any, s: Any) -> Any:
        whole = s.start == 0 and s.stop == s.item.payload.n
        x = x if whole else x[s.start : s.stop]
        return np.array(x, dtype=np.float64) if type(x) is list else x

    first = slices[0].item.payload.inputs
    if not isinstance(first, dict):
        return Ragged(tuple(part(s.item.payload.inputs, s) for s in slices))
    out: dict[str, Any] = {}
    for k in first:
        arrays = [part(s.item.payload.inputs[k], s) for s in slices]
        out[k] = Ragged(tuple(arrays)) if k in ragged else arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return out


def _strings(a: np.ndarray) -> bool:
    """True for a string tensor: an object array whose every element is ``bytes``."""
    return a.dtype.kind == "O" and all(type(v) is bytes for v in a.flat)


def _check_outputs(y: Any, rows: int) -> tuple[Tensors, np.ndarray | None]:
    """Validate a model's outputs; return them (contiguous) and, when some float row is
    not finite, a boolean ``[rows]`` mask of the finite ones.  Raises on bad outputs."""
    arrays = y.items() if isinstance(y, dict) else (("", y),)
    out: dict[str, np.ndarray] = {}
    finite_rows: np.ndarray | None = None
    for name, a in arrays:
        if not isinstance(a, np.ndarray) or (a.dtype.kind not in "fiub" and not is_float(a.dtype) and not _strings(a)):
            label = f"output {name!r}" if name else "model"
            raise TypeError(f"{label} returned {type(a).__name__} of {getattr(a, 'dtype', '?')}, not a numeric array "
                            "(nor an object array of bytes)")
        if a.ndim < 1 or a.shape[0] != rows:
            raise ValueError(f"model returned shape {a.shape} for {rows} rows")
        a = np.ascontiguousarray(a)
        if is_float(a.dtype):
            finite = np.isfinite(a)
            if not finite.all():
                ok = finite.reshape(rows, -1).all(axis=1)
                finite_rows = ok if finite_rows is None else finite_rows & ok
        out[name] = a
    return (out if isinstance(y, dict) else out[""]), finite_rows


#: Rows of one request computed in a batch: ``(start, stop, outputs, attributions, first non-finite
#: row or None, batch rows, queue_s, compute_s)``.
_Part = tuple[int, int, Any, "np.ndarray | None", "int | None", int, float, float]


def _parts_mismatch(parts: int, requests: int) -> ValueError:
    """The error of :class:`RequestOutputs` holding ``parts`` parts for a batch of ``requests`` requests."""
    return ValueError(f"model returned outputs for {parts} requests; the batch has {requests}")


def _start(part: _Part) -> int:
    return part[0]


def _alone(s: Slice, ragged: frozenset[str] = frozenset()) -> tuple[Tensors, list[tuple[int, int]] | None]:
    """One slice's inputs and explain spans, as :meth:`PredictWorker._run` takes them for it alone."""
    return _gather((s,), ragged), ([(0, s.rows)] if s.item.cost != 1 else None)


def _by_request(slices: tuple[Slice, ...], ended: bool = False, iterative: bool = False) -> tuple[list[Any], ...]:
    """The ``rows`` and ``ids`` of ``predict_requests``: each slice's rows and its request's id;
    with ``ended`` (a model whose ``takes_ended`` is true) also each request's :class:`Held`, whose
    :meth:`Held.cancelled` is its :func:`ended_check`: a new one per batch, or with ``iterative`` (a
    model that may reschedule its requests) the one the request keeps across its executes
    (:func:`_held`)."""
    rows, ids = [s.rows for s in slices], [request_id_of(s.item.payload) for s in slices]
    if iterative:
        return rows, ids, [_held(s.item) for s in slices]
    return (rows, ids, [Held(ended_check(s.item)) for s in slices]) if ended else (rows, ids)


def _ended(item: WorkItem) -> bool:
    """True once ``item``'s request ended on the server's side (see :func:`ended_check`)."""
    sink = item.payload  # None: answered (all its rows delivered, or the model's own error for it)
    if sink is None:
        return False
    return item.cancelled or sink.finished or bool(getattr(sink, "client_ended", False))


def ended_check(item: WorkItem) -> Callable[[], bool]:
    """A callable, true once ``item``'s request ended on the server's side: its client cancelled it or
    left (the WebSocket ``cancel``, its connection closed, an HTTP client gone, a gRPC cancel), its
    deadline passed, or the server ended it (a shutdown, a bound); once it was answered (all its rows
    delivered, or the model's own error for it: an error response, ``execute`` raising) it stays
    false, as a request nobody cancelled (a model reading it from a request kept past ``execute``).  A sink
    may end earlier for this only: a true ``client_ended`` attribute (a
    stateful model's step, which runs on after its client left).  Called from any thread: it reads
    plain attributes the loop thread sets (``item.cancelled``, ``item.payload``, the sink's
    ``finished``), each read atomic in CPython, so it needs no lock; it may lag the loop by one
    assignment, never report an unended request ended."""
    return functools.partial(_ended, item)


def _held(item: WorkItem) -> Held:
    """``item``'s :class:`Held` (made at its first execute)."""
    if item.held is None:
        item.held = Held(ended_check(item))
    return item.held


def _let_go(item: WorkItem) -> None:
    """The worker is done with ``item`` (a request of a model that may reschedule: answered, ended,
    or ended while requeued): drop its :class:`Held` and the Held's ``request``, which would
    otherwise keep two reference cycles (``item -> Held -> ended_check -> item``, and ``Held ->
    pb_utils.InferenceRequest -> is_cancelled check -> Held``) and with them the request's inputs
    until the cyclic GC runs.  A model that keeps the request object still reads its
    ``is_cancelled()``."""
    held = item.held
    if held is not None:
        item.held = None
        held.request = None


def _failure(future: asyncio.Future[Any]) -> BaseException | None:
    """What a finished executor future failed with (None: it has a result)."""
    if future.cancelled():
        return RuntimeError("computation cancelled")
    return future.exception()


def _first_non_finite(a: np.ndarray) -> int | None:
    """The index of the first row of ``a`` (``[rows, ...]``) holding a NaN or an infinity, or None."""
    finite = np.isfinite(a)
    if finite.all():
        return None
    return int(np.argmin(finite.reshape(len(a), -1).all(axis=1)))


def _live(item: WorkItem) -> bool:
    """True while ``item``'s request has not ended (not finished, cancelled, or fully delivered)."""
    sink = item.payload
    return sink is not None and not sink.finished


class _Isolation:
    """A failed batch whose requests are computed alone: ``pending`` slices still to compute (in
    batch order), ``started`` (when the batch started) and ``compute_s`` (its first attempt's
    compute time plus the recomputes so far)."""

    __slots__ = ("batch", "pending", "started", "first_s", "compute_s")

    def __init__(self, batch: Batch, started: float, first_s: float) -> None:
        self.batch = batch
        self.pending: deque[Slice] = deque(batch.slices)
        self.started = started
        self.first_s = first_s
        self.compute_s = first_s


def _rows(y: Tensors, a: int, b: int) -> Tensors:
    if isinstance(y, dict):
        return {k: v[a:b] for k, v in y.items()}
    return y[a:b]


class PredictWorker:
    """Batches and runs ``predict`` for one model version.

    Driven by loop callbacks, not a task: ``submit`` schedules a tick with
    ``call_soon`` when the model is idle; a tick forms one batch and either
    computes it inline (cheap batches) or hands it to the executor and ticks
    again when it is done.  Requests that arrive in the same loop iteration
    therefore share a batch, and an idle server adds no wait.  With
    ``instances`` > 1, up to that many batches compute side by side; rows a batch
    computed ahead of an earlier batch of the same request wait for it (its sink
    gets its rows in order).
    """

    def __init__(
        self,
        model: Any,
        *,
        name: str | None = None,
        max_batch_size: int = 256,
        max_delay_ms: float | None = None,
        max_queue_rows: int | None = None,
        max_queue_bytes: int | None = None,
        max_queue_requests: int | None = None,
        default_timeout_ms: float | None = None,
        allow_timeout_override: bool = True,
        timeout_action: str = "REJECT",
        priorities: PriorityLevels = PriorityLevels(),
        instances: int = 1,
        inline_max_flops: int = INLINE_MAX_FLOPS,
        observer: BatchObserver | None = None,
        after_batch: Callable[[], None] | None = None,
        explainer: Explainer | None = None,
        explain_refusal: str | None = None,
        explain_row_cost: int = EXPLAIN_ROW_COST,
        max_reschedules: int = MAX_RESCHEDULES,
    ) -> None:
        """``after_batch`` runs after each batch's results were handed out (the
        server uses it to write the replies at once rather than a loop iteration later).
        ``explainer``: how this model's rows are explained (None: they are not, and
        ``explain_refusal`` says why).  The model's queue policy (Triton's
        ``default_queue_policy``): ``max_queue_requests`` requests may wait at most (at each priority
        level for a config.pbtxt model, ``priorities.configured``, as Triton's ``max_queue_size``);
        ``default_timeout_ms`` is the deadline of a request queued without one (and, unless
        ``allow_timeout_override``, of every request; a request may only shorten it: see
        :func:`~wsserve.batching.queue_deadline`), until its first rows are scheduled
        (:attr:`~wsserve.batching.WorkItem.deadline_until_started`).  ``timeout_action`` (Triton's):
        ``"REJECT"``, a request past that queue deadline ends (``deadline_exceeded``); ``"DELAY"``, it
        waits on behind its level's requests whose queue timeout has not passed
        (:attr:`~wsserve.batching.WorkItem.delay_at`), and only its own deadline, if it has one, ends it.
        ``priorities``: the model's priority levels (its queue's classes; default: wsserve's two,
        ``priority`` 1 high); a level's own queue policy (``priorities.policies``) replaces these four
        fields for the requests queued there.  ``max_reschedules``: the times one request of a model
        whose ``iterative_sequence`` is true may be rescheduled (see the module docstring)."""
        if instances < 1:
            raise ValueError(f"instances must be >= 1, got {instances}")
        if explain_row_cost < 2:  # a row's cost above 1 is how a batch's rows to explain are found
            raise ValueError(f"explain_row_cost must be >= 2, got {explain_row_cost}")
        self.model = model
        #: The model takes a batch as its requests' rows (``predict_requests``), not as one block.
        self._by_request = callable(getattr(model, "predict_requests", None))
        #: ... and takes each request's :class:`Held` too, its :func:`ended_check` (``predict_requests(x,
        #: rows, ids, held)``: a model whose ``takes_ended`` is true, a Triton Python model's
        #: ``request.is_cancelled()``).
        self._takes_ended = self._by_request and bool(getattr(model, "takes_ended", False))
        self.explainer = explainer
        self.explain_refusal = None if explainer is not None else (
            explain_refusal or f"model {model.info.name!r} cannot be explained")
        self._explain_cost = explain_row_cost
        self.name = name if name is not None else model.info.name
        self._after_batch = after_batch
        #: The model has a variable (-1) input dimension: requests are batched only with requests of
        #: their own row shape (Triton's dynamic batcher), each queued with its :func:`_row_shape`.
        # a variable dimension, or an optional input: batch only requests of one shape and one set of inputs
        self._by_shape = _rows_vary(model) or any(getattr(s, "optional", False) for s in getattr(model, "inputs", None) or ())
        #: The default queue policy (Triton's ``default_queue_policy``): a level's own, if any, is in
        #: ``priorities.policies`` (:meth:`PriorityLevels.policy <wsserve.batching.PriorityLevels.policy>`).
        self.queue_policy = QueuePolicy(None, default_timeout_ms, allow_timeout_override, timeout_action)
        own = dict(priorities.policies)
        # the levels whose policy (their own, else the default one) delays a request past its queue timeout
        delayed_levels = tuple(level for level in range(1, priorities.classes + 1)
                               if own.get(level, self.queue_policy).delays)
        #: The model's ragged inputs (config.pbtxt's ``allow_ragged_batch``): requests of any shape there
        #: share a batch, handed to the model as :class:`Ragged` (``"*"``: its only input, unnamed).
        ragged = frozenset(getattr(model, "ragged_inputs", ()))
        only = [s.name for s in getattr(model, "inputs", None) or ()]
        self._ragged: frozenset[str] = ragged | {"*"} if len(only) == 1 and only[0] in ragged else ragged
        #: Ragged batching (ragged inputs, or an ONNX model's batch inputs and outputs): the model counts
        #: and shapes each request apart, so a request is never split over batches; one larger than a
        #: batch is refused (Triton's rule).
        self._unsplit = bool(ragged) or bool(getattr(model, "ragged_batching", False))
        #: config.pbtxt's ``sequence_batching { iterative_sequence: true }`` (a model taking a batch as its
        #: requests): its execute may reschedule a request (see the module docstring); such a request is
        #: never split over batches either (it is one InferenceRequest, given whole to each execute).
        self._iterative = self._by_request and getattr(model, "iterative_sequence", False) is True
        if type(max_reschedules) is not int or max_reschedules < 0:
            raise ValueError(f"max_reschedules must be an integer >= 0, got {max_reschedules!r}")
        self.max_reschedules = max_reschedules
        self.queue = BatchQueue(
            max_batch_size=max_batch_size, max_delay_ms=max_delay_ms, max_queue_rows=max_queue_rows,
            max_queue_bytes=max_queue_bytes, max_queue_requests=max_queue_requests, by_shape=self._by_shape,
            whole_requests=self._by_request,  # one InferenceRequest per request, as Triton's batcher keeps it
            priority_levels=priorities.classes, default_priority_level=priorities.default_class,
            # config.pbtxt's max_queue_size bounds each of its levels (Triton's); config.toml's, the whole queue
            max_queue_requests_per_level=priorities.configured,
            # a level with its own queue policy (priority_queue_policy) has its own bound
            level_max_queue_requests={level: p.max_queue_requests for level, p in priorities.policies},
            delayed_levels=delayed_levels,
        )
        #: The model's priority levels (its queue's classes; what the transports report and check).
        self.priorities = priorities
        #: The queue deadline of a request without one, in seconds (None: none), and whether a request may shorten it.
        self.default_timeout_s = None if default_timeout_ms is None else default_timeout_ms / 1000.0
        self.allow_timeout_override = allow_timeout_override
        self._instances = instances
        # A model with a variable (-1) input dimension has rows as large as each request makes them: the
        # cost per row is unknown, so none runs on the loop (one large row would stall every connection).
        # Nor does a model whose ``off_loop`` is true (its code may wait for the loop: a Triton model's BLS).
        self._inline_max_rows = 0 if self._by_shape or getattr(model, "off_loop", False) else \
            max(0, inline_max_flops // max(1, model.flops_per_row()))
        self._observer = observer
        #: This version's :class:`~wsserve.metrics.VersionStats` (the pool sets it when it serves the
        #: version; None: not counted).  Each computed batch is recorded there.
        self.stats: VersionStats | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = 0  # batches computing in the executor
        self._tick_handle: asyncio.Handle | None = None
        self._tick_at: float | None = None  # monotonic time of a scheduled window tick
        self._closed = False
        self._computing: dict[int, tuple[WorkItem, ...]] = {}  # items of each batch in the executor
        #: rows computed ahead of an earlier batch of the same request (instances > 1), waiting for it
        self._early: dict[WorkItem, list[_Part]] = {}
        self._executor_batches = 0
        #: Batches of several requests that failed and whose requests were computed alone.
        self.isolated_batches = 0
        #: Compute a failed batch's requests again alone (see the module docstring); false for a model
        #: whose requests change its state (a stateful model's: :mod:`wsserve.sequence_worker`), whose
        #: failed batch fails every request of it, as Triton's does.
        self.isolate_failures = not self._iterative  # (an iterative model's execute steps its requests)
        self._last_batch = 0
        self._idle: asyncio.Event | None = None
        self._cache: ResponseCache | None = None
        #: This version's response-cache scope (None: its responses are not cached).
        self.cache_scope: CacheScope | None = None
        #: Its config enables the response cache (the pool calls :meth:`use_cache` when it serves it).
        self.cache_wanted = False

    def use_cache(self, cache: ResponseCache, model: str, version: str) -> None:
        """Cache this worker's plain predicts in ``cache``, in a new scope for ``model`` ``version``
        (call once, before requests; :meth:`drop_cache` ends it)."""
        self._cache = cache
        self.cache_scope = cache.open_scope(model, version)

    def drop_cache(self) -> None:
        """Drop this version's cached responses and cache none from now on (the version is unloaded
        or replaced: a reload must never answer from the old weights).  Idempotent."""
        if self._cache is not None and self.cache_scope is not None:
            self._cache.close_scope(self.cache_scope)
        self.cache_scope = None

    # -- lifecycle

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=self._instances, thread_name_prefix=f"wsserve-{self.name}")
        self._idle = asyncio.Event()
        self._idle.set()

    async def close(self) -> None:
        """Stop forming batches and end every request still queued or computing with
        ``ShuttingDown`` (as the generation engine does).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.drop_cache()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        for item in self.queue.drain():
            self._end(item, ShuttingDown("the server is shutting down"))
            if self._iterative:
                _let_go(item)
        for items in self._computing.values():
            for item in items:
                self._end(item, ShuttingDown("the server is shutting down"))
        self._computing = {}
        self._early = {}
        if self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once nothing is queued or computing (a retired version finishing its work)."""
        assert self._idle is not None, "start() first"
        while len(self.queue) or self._running:
            self._idle.clear()
            await self._idle.wait()

    # -- requests

    def submit(self, sink: PredictSink, *, priority: int = 0, deadline: float | None = None,
               admitted: bool = False) -> WorkItem:
        """Queue ``sink``'s rows at the level of the request's ``priority`` (any non-negative integer;
        Triton's rule: 0, or one above the model's levels, is its default level: :class:`BatchQueue
        <wsserve.batching.BatchQueue>`).  ``admitted``: the caller bounded the request against this
        queue already (:meth:`BatchQueue.check_room <wsserve.batching.BatchQueue.check_room>`), so a
        full queue does not refuse it.  Raises ``Overloaded`` when the queue is full,
        ``ShuttingDown`` after :meth:`close`, ``BadRequest`` for a sink that
        wants explanations from a model that has none and ``InvalidInput`` for more rows than a batch
        holds to a model with ragged batching; the sink is then never called."""
        if self._closed:
            raise ShuttingDown("model worker is shutting down")
        n = sink.n
        explain = getattr(sink, "explain", False)
        if explain and self.explainer is None:
            raise BadRequest(self.explain_refusal or "cannot be explained")
        if (self._unsplit or self._iterative) and n > self.queue.max_batch_size:
            why = "ragged batching" if self._unsplit else "iterative_sequence, a request is rescheduled whole"
            raise InvalidInput(f"inference request batch-size must be <= {self.queue.max_batch_size} for "
                               f"{self.name!r} ({why}: a request is never split over batches)")
        now = monotonic()
        until_started = False
        delay_at = None
        priorities = self.priorities
        # the level's queue policy (the model's default one when no level has its own)
        policy = priorities.policy(priority, self.queue_policy) if priorities.policies else self.queue_policy
        if policy.default_timeout_ms is not None:
            chosen = policy.deadline(deadline, now)
            if policy.timeout_action == "DELAY":  # past its queue timeout it waits on; its own deadline holds
                delay_at = chosen if chosen != deadline else None  # (shortened to its own: that ends it first)
            else:
                until_started, deadline = chosen != deadline, chosen  # the default: a queue deadline only
        item = WorkItem(n, priority, deadline, sink.nbytes // n if n else 0, sink,
                        cost=self._explain_cost if explain else 1, deadline_until_started=until_started)
        if delay_at is not None:
            item.delay_at = delay_at
        if self._by_shape:
            item.shape = _row_shape(sink.inputs, self._ragged)
        missed: tuple[bytes, float] | bool | None = None
        if self.cache_scope is not None and not explain and not getattr(sink, "stream", False):
            missed = self._cache_lookup(item)
            if missed is True:  # a hit: answered without the queue
                return item
        self.queue.add(item, now, admitted=admitted)  # Overloaded (a full queue): not a miss, nothing is computed
        if type(missed) is tuple:
            self._cache_counted(False, missed[1])
            item.cache_key = missed[0]
        if self._running < self._instances:
            if self._tick_handle is None:
                self._schedule(now, now)
            elif self._tick_at is not None and self.queue.ready_at(now) == now:
                self._tick_handle.cancel()  # the window filled up: go now
                self._schedule(now, now)
        return item

    def _cache_lookup(self, item: WorkItem) -> tuple[bytes, float] | bool | None:
        """Look ``item`` up in the response cache.  A hit (True): its answer is scheduled and it is
        counted (the item is not to be queued).  A miss: ``(key, seconds the lookup took)``, counted
        by the caller once the item is queued (a full queue refuses it uncounted).  None: inputs
        that cannot be keyed."""
        assert self._cache is not None and self.cache_scope is not None and self._loop is not None
        began = monotonic()
        key = request_key(self.cache_scope, item.payload.inputs)
        if key is None:  # inputs that cannot be keyed (objects other than str/bytes): not cached
            return None
        outputs = self._cache.get(key)
        seconds = monotonic() - began
        if outputs is None:
            return key, seconds
        self._cache_counted(True, seconds)
        self._loop.call_soon(self._cache_hit, item, outputs)
        return True

    def _cache_counted(self, hit: bool, seconds: float) -> None:
        """Count one lookup in :attr:`stats` and the observer's ``on_cache``."""
        if self.stats is not None:
            self.stats.on_cache(hit, seconds)
        hook = getattr(self._observer, "on_cache", None)
        if hook is not None:
            hook(self.name, "hit" if hit else "miss")

    def _cache_hit(self, item: WorkItem, outputs: Tensors) -> None:
        """A hit's rows to its sink, unless it was cancelled or ended meanwhile."""
        sink = item.payload
        if item.cancelled or sink is None or sink.finished:
            item.payload = None  # nothing more for it (and no sink <-> item cycle left behind)
            return
        item.next_row = item.delivered = item.rows
        try:
            sink.on_rows(0, outputs, item.rows, 0.0, 0.0)
        except Exception as exc:  # noqa: BLE001 - a bug in the sink
            self._sink_failed(item, exc)
        item.payload = None
        if self._after_batch is not None:
            self._after_batch()

    def _cache_store(self, item: WorkItem, outputs: Tensors) -> None:
        """Store a missed request's outputs (all its rows, from one batch) under its key."""
        key, item.cache_key = item.cache_key, None
        scope = self.cache_scope
        if key is None or scope is None or self._cache is None:
            return
        began = monotonic()
        self._cache.put(scope, key, outputs)
        if self.stats is not None:
            self.stats.cache_miss_s += monotonic() - began

    def cancel(self, item: WorkItem) -> None:
        """Drop ``item``'s rows that are not computed yet.  Never calls its sink."""
        if self.queue.cancel(item) and self._iterative:  # a rescheduled request ended while requeued
            _let_go(item)
        self._note_idle()

    def statistics(self) -> WorkerStatistics:
        q = self.queue.statistics(monotonic())
        return WorkerStatistics(
            kind="predict", queued=q.requests, queued_rows=q.rows, queued_bytes=q.bytes,
            running=sum(len(items) for items in self._computing.values()), oldest_age_s=q.oldest_age_s,
            batches=q.batches, computed=q.rows_scheduled, executor_batches=self._executor_batches,
            last_batch_size=self._last_batch, isolated_batches=self.isolated_batches,
        )

    # -- the batching loop

    def _note_idle(self) -> None:
        if self._idle is not None and not self._running and not len(self.queue):
            self._idle.set()

    def _schedule(self, at: float, now: float) -> None:
        loop = self._loop
        assert loop is not None, "start() first"
        if at <= now:
            self._tick_at = None
            self._tick_handle = loop.call_soon(self._tick)
        else:
            self._tick_at = at
            self._tick_handle = loop.call_later(at - now, self._tick)

    def _tick(self) -> None:
        self._tick_handle = None
        self._tick_at = None
        if self._running >= self._instances or self._closed:
            return
        queue = self.queue
        now = monotonic()
        ready = queue.ready_at(now)
        if ready is None:
            self._note_idle()
            return
        if ready > now:
            self._schedule(ready, now)
            return
        batch = queue.next_batch(now)
        if batch is None:
            self._note_idle()
            return
        for item in batch.expired:
            try:
                item.payload.on_error(DeadlineExceeded("deadline passed while queued"))
            except Exception as exc:  # noqa: BLE001
                self._sink_failed(item, exc)
            if self._iterative:
                _let_go(item)
        if batch.slices:
            self._compute(batch)
        if self._running < self._instances and self._tick_handle is None and len(queue):
            # Next batch on the next loop iteration, after pending socket I/O.
            self._schedule(now, now)
        else:
            self._note_idle()

    def _requests(self, slices: tuple[Slice, ...]) -> tuple[list[Any], ...] | None:
        """What :meth:`_run` passes ``predict_requests`` for ``slices`` (None: ``predict``)."""
        return _by_request(slices, self._takes_ended, self._iterative) if self._by_request else None

    def _run(self, x: Tensors, spans: list[tuple[int, int]] | None,
             requests: tuple[list[Any], ...] | None = None) -> tuple[Any, np.ndarray | None]:
        """The batch's outputs (or :class:`RequestErrors`), and the attributions of the rows in
        ``spans`` (batch row ranges, in order) stacked in that order.  ``requests``: each request's
        rows and id, in batch order, for a model with ``predict_requests(x, rows, ids)`` (a Triton
        Python model: one InferenceRequest per request), and each one's :class:`Held` for a model
        whose ``takes_ended`` is true (:func:`_by_request`); None: ``predict(x)``.  One call, on the
        loop or in the executor."""
        y = self.model.predict(x) if requests is None else self.model.predict_requests(x, *requests)
        if not spans:
            return y, None
        assert self.explainer is not None and isinstance(x, np.ndarray)
        rows = x[spans[0][0]:spans[0][1]] if len(spans) == 1 else np.concatenate([x[a:b] for a, b in spans])
        return y, self.explainer.attributions(rows)

    def _compute(self, batch: Batch) -> None:
        slices = batch.slices
        started = monotonic()
        self._last_batch = batch.rows
        spans: list[tuple[int, int]] | None = None
        if batch.cost != batch.rows:  # some rows are to be explained
            spans, offset = [], 0
            for s in slices:
                if s.item.cost != 1:
                    spans.append((offset, offset + s.rows))
                offset += s.rows
        # integrated gradients (possibly a model.py's own input_gradient) never run on the loop
        inline = batch.cost <= self._inline_max_rows and (
            not spans or self.explainer is None or self.explainer.method == "linear-exact")
        requests = self._requests(slices)
        try:
            x = _gather(slices, self._ragged)
            result: tuple[Any, np.ndarray | None] | BaseException | None = \
                self._run(x, spans, requests) if inline else None
        except Exception as exc:
            result = exc
        if result is None:  # to the executor: :meth:`_computed` handles it
            assert self._executor is not None and self._loop is not None
            self._running += 1
            self._executor_batches += 1
            key = id(batch)
            self._computing[key] = tuple(s.item for s in slices)
            future = self._loop.run_in_executor(self._executor, self._run, x, spans, requests)
            future.add_done_callback(lambda f: self._computed(batch, key, f, started))
            return
        try:  # it failed, or was computed on the loop: handled here
            if isinstance(result, BaseException):
                self._batch_failed(batch, result, started, inline=inline)
            else:
                self._deliver(batch, result[0], started, result[1], inline=True)
        finally:
            if self._iterative:
                self._done_with(batch)

    def _computed(self, batch: Batch, key: int, future: asyncio.Future[Any], started: float) -> None:
        self._running -= 1
        self._computing.pop(key, None)
        try:
            if self._closed:  # close() has ended its requests; a wait_idle() waits for this batch
                self._note_idle()
                return
            exc = _failure(future)
            if exc is not None:
                self._batch_failed(batch, exc, started, inline=False)
            else:
                y, attributions = future.result()
                self._deliver(batch, y, started, attributions, inline=False)
        finally:
            if self._iterative:
                self._done_with(batch)
            if not self._closed:  # the next batch, even when handling this one raised (a bug)
                self._resume()

    def _done_with(self, batch: Batch) -> None:
        """After an iterative model's execute of ``batch`` was handled (once per batch: by
        :meth:`_compute` when it failed or ran on the loop, else by :meth:`_computed`):
        :func:`_let_go` each request that was not requeued (answered, or ended)."""
        for s in batch.slices:
            item = s.item
            if item.cancelled or item.remaining <= 0:
                _let_go(item)

    def _resume(self) -> None:
        """After a batch in the executor ended: the next tick if rows are queued, else maybe idle."""
        if self._tick_handle is None and len(self.queue):
            now = monotonic()
            self._schedule(now, now)
        else:
            self._note_idle()

    # -- failures and their isolation

    def _batch_failed(self, batch: Batch, exc: BaseException, started: float, *, inline: bool) -> None:
        """``batch`` failed (the model or explainer raised, or its outputs are bad).  One request:
        it ends with ``internal``.  Several: each is computed alone, where the batch ran (see the
        module docstring), so only the requests whose own rows fail end with ``internal``."""
        if len(batch.slices) < 2 or not self.isolate_failures:
            self._failed(batch, exc)
            return
        first_s = monotonic() - started
        self.isolated_batches += 1
        log.warning("model %s failed on a batch of %d rows from %d requests (%s: %s); computing each request "
                    "alone", self.name, batch.rows, len(batch.slices), type(exc).__name__, exc)
        hook = getattr(self._observer, "on_isolated", None)
        if hook is not None:
            hook(self.name)
        iso = _Isolation(batch, started, first_s)
        if inline:
            self._isolate_inline(iso)
            return
        self._running += 1  # the batch keeps its instance until its last request is recomputed
        self._isolate_next(iso, id(batch))

    def _isolate_inline(self, iso: _Isolation) -> None:
        """Compute each live request of ``iso`` alone, on the loop (its batch ran inline)."""
        while iso.pending:
            s = iso.pending.popleft()
            if not _live(s.item):  # cancelled, timed out, or ended by another sink's callback
                continue
            begun = monotonic()
            try:
                x, spans = _alone(s, self._ragged)
                y, attributions = self._run(x, spans, self._requests((s,)))
            except Exception as exc:  # noqa: BLE001 - this request's own failure
                self._alone_done(iso, s, None, None, exc, monotonic() - begun)
            else:
                self._alone_done(iso, s, y, attributions, None, monotonic() - begun)
        self._isolation_done(iso)

    def _isolate_next(self, iso: _Isolation, key: int) -> None:
        """Hand ``iso``'s next live request, alone, to the executor; or end the isolation when none
        is left.  ``_computing[key]`` holds the requests still to compute, for :meth:`close`."""
        assert self._loop is not None
        while iso.pending and not _live(iso.pending[0].item):
            iso.pending.popleft()
        if not iso.pending:
            self._computing.pop(key, None)
            self._running -= 1
            self._isolation_done(iso)
            self._resume()
            return
        self._computing[key] = tuple(s.item for s in iso.pending)
        s = iso.pending[0]
        begun = monotonic()
        try:
            x, spans = _alone(s, self._ragged)
            requests = self._requests((s,))
            future = self._loop.run_in_executor(self._executor, self._run, x, spans, requests)
        except Exception as exc:  # noqa: BLE001 - cannot happen for a live slice; end it, not the batch
            iso.pending.popleft()
            self._alone_done(iso, s, None, None, exc, 0.0)
            self._isolate_next(iso, key)
            return
        future.add_done_callback(lambda f: self._recomputed(iso, key, s, f, begun))

    def _recomputed(self, iso: _Isolation, key: int, s: Slice, future: asyncio.Future[Any], begun: float) -> None:
        if self._closed:  # close() has ended the requests still pending
            self._running -= 1
            self._note_idle()
            return
        iso.pending.popleft()
        exc = _failure(future)
        y, attributions = future.result() if exc is None else (None, None)
        self._alone_done(iso, s, y, attributions, exc, monotonic() - begun)
        self._isolate_next(iso, key)

    def _alone_done(self, iso: _Isolation, s: Slice, y: Any, attributions: np.ndarray | None,
                    exc: BaseException | None, seconds: float) -> None:
        """One request of an isolated batch was computed alone: hand it its rows, or end it with
        ``internal`` when its own rows failed (or a callback ended it meanwhile: nothing)."""
        iso.compute_s += seconds
        if not _live(s.item):
            return
        if isinstance(y, RequestParameters):  # its one request's
            if 0 in y.parameters:
                _give_parameters(s.item.payload, y.parameters[0])
            y = y.outputs
        if isinstance(y, RequestErrors):  # its one request failed by itself
            exc = next(iter(y.errors.values()))
        elif type(y) is RequestOutputs:  # its one request's part
            if len(y.parts) == 1:
                y = y.parts[0]
            else:  # (a model may return anything: never let it escape this callback)
                exc = _parts_mismatch(len(y.parts), 1)
        if exc is None:
            try:
                y, finite_rows = _check_outputs(y, s.rows)
            except Exception as bad:  # noqa: BLE001
                exc = bad
        if exc is not None:
            self._failed(Batch((s,), s.rows), exc, alone=True)
        else:
            self._hand_out((s,), y, finite_rows, attributions, iso.started, iso.first_s + seconds, s.rows)
        if self._after_batch is not None:
            self._after_batch()

    def _isolation_done(self, iso: _Isolation) -> None:
        """Count the isolated batch once: its rows, and the compute time of all its attempts."""
        batch = iso.batch
        if self._observer is not None:
            self._observe(batch.rows, iso.compute_s)
        if self.stats is not None:
            self.stats.on_batch(batch.rows, len(batch.slices), iso.compute_s, monotonic())

    def _observe(self, rows: int, compute_s: float) -> None:
        """The observer's ``on_batch``; one that raises (a metrics bug) is logged, and the batch's
        requests still get their answers (it is called before they are handed out)."""
        try:
            self._observer.on_batch(self.name, rows, compute_s)  # type: ignore[union-attr]
        except Exception:
            log.exception("model %r: the batch observer failed on a batch of %d rows", self.name, rows)

    def _failed(self, batch: Batch, exc: BaseException, *, alone: bool = False) -> None:
        """A model failure fails the requests of ``batch`` with ``internal`` (``alone``: one request
        of an isolated batch, computed by itself)."""
        what = "a request's %d rows computed alone" if alone else "a batch of %d rows"
        log.error("model %s failed on " + what, self.name, batch.rows, exc_info=exc)
        for s in batch.slices:
            self._request_failed(s, exc)

    def _request_failed(self, s: Slice, exc: BaseException) -> None:
        """End ``s``'s request (unless it ended) with the wire error of the model's failure ``exc``: its
        answer, so the worker is done with it (its payload dropped: :func:`ended_check` reads false)."""
        self._early.pop(s.item, None)  # rows computed ahead of these are not delivered either
        if s.item.payload is None or s.item.payload.finished:
            return
        self.queue.cancel(s.item)
        try:
            s.item.payload.on_error(self._wire_error(exc))
        except Exception as sink_exc:  # noqa: BLE001
            self._sink_failed(s.item, sink_exc)
        s.item.payload = None

    def _wire_error(self, exc: BaseException) -> WsserveError:
        """The error a request gets for the model's failure ``exc``: ``internal`` naming the model and
        the error, or what ``exc.to_wire(that message)`` makes of it (a Triton error's code)."""
        message = f"model {self.name!r} failed: {type(exc).__name__}: {exc}"
        to_wire = getattr(exc, "to_wire", None)
        return to_wire(message) if callable(to_wire) else Internal(message)

    def _end(self, item: WorkItem, exc: WsserveError) -> None:
        try:
            if _live(item):
                item.payload.on_error(exc)
        except Exception as sink_exc:  # noqa: BLE001
            log.error("result sink of a %s request failed in on_error", self.name, exc_info=sink_exc)

    def _sink_failed(self, item: WorkItem, exc: BaseException) -> None:
        """A sink raised: stop its rows and end it (best effort) with ``exc`` when it is
        :class:`~wsserve.errors.InvalidInput` (rows the request's reply cannot hold, see
        :func:`concat_rows`), else with ``internal``, logged with its traceback (a bug)."""
        self.queue.cancel(item)
        if isinstance(exc, InvalidInput):
            log.info("a %s request failed: %s", self.name, exc)
            error: WsserveError = exc
        else:
            log.error("result sink of a %s request failed", self.name, exc_info=exc)
            error = Internal(f"internal error delivering results: {type(exc).__name__}: {exc}")
        try:
            if not item.payload.finished:
                item.payload.on_error(error)
        except Exception:  # noqa: BLE001
            log.exception("result sink failed again in on_error")

    def _deliver(self, batch: Batch, y: Any, started: float, attributions: np.ndarray | None, *,
                 inline: bool) -> None:
        compute_s = monotonic() - started
        again = self._rescheduled(batch) if self._iterative else None
        errors = None
        if isinstance(y, RequestParameters):
            for i, params in y.parameters.items():
                if 0 <= i < len(batch.slices) and _live(batch.slices[i].item):
                    _give_parameters(batch.slices[i].item.payload, params)
            y = y.outputs
        if isinstance(y, RequestErrors):
            y, errors = y.outputs, y.errors
        if type(y) is RequestOutputs:
            self._deliver_parts(batch, y.parts, errors, started, compute_s, attributions, inline=inline, again=again)
            return
        try:  # a model may return anything: never let it escape this callback
            y, finite_rows = _check_outputs(y, batch.rows)
        except Exception as exc:
            self._batch_failed(batch, exc, started, inline=inline)
            return
        self._count_batch(batch, started, compute_s)
        failed = None if errors is None else self._requests_failed(batch, errors)
        if again:
            failed = again if failed is None else failed | again
        self._hand_out(batch.slices, y, finite_rows, attributions, started, compute_s, batch.rows, failed)
        if self._after_batch is not None:
            self._after_batch()

    def _count_batch(self, batch: Batch, started: float, compute_s: float) -> None:
        """Record a computed batch in the queue's estimate, the observer and :attr:`stats`."""
        self.queue.note_batch(compute_s)
        if self._observer is not None:
            self._observe(batch.rows, compute_s)
        if self.stats is not None:
            self.stats.on_batch(batch.rows, len(batch.slices), compute_s, started + compute_s)

    def _deliver_parts(self, batch: Batch, parts: tuple[Any, ...], errors: Mapping[int, BaseException] | None,
                       started: float, compute_s: float, attributions: np.ndarray | None, *, inline: bool,
                       again: set[WorkItem] | None = None) -> None:
        """:meth:`_deliver` for :class:`RequestOutputs`: each slice's part (``parts[i]`` for
        ``batch.slices[i]``) is checked against its rows, then handed to it whole; a part that is
        bad (or parts not one per slice) fails the batch as bad outputs do (isolation).  ``again``:
        the requests the model rescheduled (their parts are not handed out)."""
        failing = errors or {}
        checked: list[tuple[Tensors, np.ndarray | None] | None] = []
        try:  # a model may return anything: never let it escape this callback
            if len(parts) != len(batch.slices):
                raise _parts_mismatch(len(parts), len(batch.slices))
            for i, (s, part) in enumerate(zip(batch.slices, parts, strict=True)):
                checked.append(None if i in failing else _check_outputs(part, s.rows))
        except Exception as exc:
            self._batch_failed(batch, exc, started, inline=inline)
            return
        self._count_batch(batch, started, compute_s)
        failed = None if errors is None else self._requests_failed(batch, errors)
        if again:
            failed = again if failed is None else failed | again
        explained = 0  # rows of ``attributions`` passed so far (stacked in slice order)
        for s, done in zip(batch.slices, checked, strict=True):
            attr = None
            if s.item.cost != 1:
                attr = None if attributions is None else attributions[explained:explained + s.rows]
                explained += s.rows
            if done is not None:
                self._hand_out((s,), done[0], done[1], attr, started, compute_s, batch.rows, failed)
        if self._after_batch is not None:
            self._after_batch()

    def _rescheduled(self, batch: Batch) -> set[WorkItem]:
        """After an iterative model's execute of ``batch``: the requests it rescheduled
        (:attr:`Held.again`), each decided by :func:`wsserve.reschedule.after_execute` - one that
        ended meanwhile is left alone (it has its terminal frame), one past ``max_reschedules`` ends
        with ``internal`` naming the bound, the others go back first in their level of the queue
        (:meth:`BatchQueue.requeue <wsserve.batching.BatchQueue.requeue>`, in batch order).  Returns
        them all: none gets rows from this execute."""
        again: set[WorkItem] = set()
        for s in reversed(batch.slices):  # requeued last first: they keep their order at the front
            item, held = s.item, s.item.held
            if held is None or not held.again:
                continue
            held.again = False
            again.add(item)
            decision, message = after_execute(self.name, RELEASE_RESCHEDULE, iterative=True, ended=_ended(item),
                                              final_sent=False, reschedules=held.reschedules,
                                              max_reschedules=self.max_reschedules)
            if decision == "requeue":
                held.reschedules += 1
                self.queue.requeue(item)
            elif decision != "release":
                self._end(item, Internal(message or "rescheduled"))
        return again

    def _requests_failed(self, batch: Batch, errors: Mapping[int, BaseException]) -> set[WorkItem]:
        """End the requests of ``batch`` the model failed by themselves (``errors``: by slice index;
        see :class:`RequestErrors`), each with its own error; return their items (skipped by
        :meth:`_hand_out`).  An index outside the batch is ignored."""
        failed: set[WorkItem] = set()
        for i, exc in errors.items():
            if 0 <= i < len(batch.slices):
                s = batch.slices[i]
                log.info("model %s answered a request's %d rows with an error: %s: %s", self.name, s.rows,
                         type(exc).__name__, exc)
                self._request_failed(s, exc)
                failed.add(s.item)
        return failed

    def _hand_out(self, slices: tuple[Slice, ...], y: Tensors, finite_rows: np.ndarray | None,
                  attributions: np.ndarray | None, started: float, compute_s: float, batch_rows: int,
                  failed: set[WorkItem] | None = None) -> None:
        """Hand each slice its rows of the checked outputs ``y`` (and attributions, stacked in slice
        order for the slices that explain) of a computation of ``batch_rows`` rows; the slices of
        the items in ``failed`` (ended by :meth:`_requests_failed`) get nothing."""
        explained = 0  # rows of ``attributions`` handed out so far
        offset = 0
        single = not isinstance(y, dict)
        # sinks taking a whole request's rows from the batch's outputs share one BatchOutputs
        shareable = (single and finite_rows is None and y.ndim == 2 and y.shape[1] > 0  # type: ignore[union-attr]
                     and y.dtype.kind != "O")  # type: ignore[union-attr]  # strings: encode_result's own path
        shared: BatchOutputs | None = None
        for s in slices:
            item = s.item
            end = offset + s.rows
            sink = item.payload
            first_attr = explained
            if item.cost != 1:
                explained += s.rows
            if failed is not None and item in failed:
                offset = end
                continue
            if sink.finished:  # cancelled or timed out while computing
                if self._early:
                    self._early.pop(item, None)  # its later rows, computed ahead, go too
                offset = end
                continue
            queue_s = started - item.enqueued_at
            if shareable and s.rows == item.rows and getattr(sink, "shared_outputs", False):
                try:  # one sink's failure must not keep the rest of the batch from their frames
                    if shared is None:
                        shared = BatchOutputs(y, batch_rows, compute_s)  # type: ignore[arg-type]
                    item.delivered = s.stop
                    sink.on_batch_outputs(shared, offset, end, queue_s)
                except Exception as exc:  # noqa: BLE001 - a bug in one request's sink
                    self._sink_failed(item, exc)
                if item.cache_key is not None:
                    self._cache_store(item, y[offset:end])
                # Its last rows are handed out: the worker is done with this item.  Dropping the sink
                # breaks the sink <-> item reference cycle (a job keeps its item to cancel it), so
                # both are freed at once rather than by the cyclic GC, which otherwise cost ~8% of
                # a busy server's CPU.
                item.payload = None
                offset = end
                continue
            bad = None
            if finite_rows is not None and not finite_rows[offset:end].all():
                bad = s.start + int(np.argmin(finite_rows[offset:end]))
            out = y[offset:end] if single else _rows(y, offset, end)
            attr = attributions[first_attr:explained] if item.cost != 1 and attributions is not None else None
            part = (s.start, s.stop, out, attr, bad, batch_rows, queue_s, compute_s)
            if s.start != item.delivered:
                # With instances > 1 an earlier batch holding this request's previous rows is still
                # computing: these rows wait for it, so the sink gets its rows in order.
                self._early.setdefault(item, []).append(part)
            else:
                self._hand(item, part)
                if item.cache_key is not None and bad is None and s.start == 0 and s.stop == item.rows:
                    self._cache_store(item, out)
                if self._early and item in self._early:
                    self._hand_early(item)
            offset = end

    def _hand(self, item: WorkItem, part: _Part) -> None:
        """Rows ``start .. stop`` of ``item`` to its sink (its rows before ``start`` went already)."""
        start, stop, out, attr, bad, batch_rows, queue_s, compute_s = part
        sink = item.payload
        item.delivered = stop
        try:  # one sink's failure must not keep the rest of the batch from their frames
            bad_attr = _first_non_finite(attr) if bad is None and attr is not None else None
            if bad is not None:
                self.queue.cancel(item)
                sink.on_error(InvalidInput(f"output row {bad} is not finite"))
            elif bad_attr is not None:  # as for outputs: never NaN in a reply, only this request ends
                self.queue.cancel(item)
                sink.on_error(InvalidInput(f"attributions of row {start + bad_attr} are not finite"))
            elif attr is not None:
                sink.on_rows(start, out, batch_rows, queue_s, compute_s, attributions=attr)
            else:
                sink.on_rows(start, out, batch_rows, queue_s, compute_s)
        except Exception as exc:  # noqa: BLE001 - a bug in one request's sink
            self._sink_failed(item, exc)
        if stop == item.rows:
            item.payload = None  # done with this item (see _deliver)

    def _hand_early(self, item: WorkItem) -> None:
        """Hand ``item``'s rows that were computed ahead of earlier ones, as far as they now follow on."""
        early = sorted(self._early.pop(item), key=_start)
        while early and item.payload is not None and not item.payload.finished and early[0][0] == item.delivered:
            self._hand(item, early.pop(0))
        if early and item.payload is not None and not item.payload.finished:
            self._early[item] = early  # an earlier batch is still computing
