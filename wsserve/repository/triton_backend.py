"""Triton's Python backend: a ``model.py`` defining ``class TritonPythonModel``, served unchanged.

**model.py runs arbitrary code with the server's rights** (as wsserve's own model.py does, see
:mod:`.python_backend`): load it only from the operator's repository.

A model directory whose config.pbtxt says ``backend: "python"`` (:mod:`.pbtxt`) is loaded here.
The file is executed as :func:`~.python_backend.exec_model_file` does, with
:mod:`.triton_pb_utils` importable as ``triton_python_backend_utils`` while it executes (while
any Triton model.py executes, several loads at once included, never holding a lock while one runs;
whatever held that name before is put back once none does).  Then, as Triton does:

- ``TritonPythonModel.auto_complete_config(pb_utils.ModelConfig)``, when defined, is called once;
  it may only confirm config.pbtxt (wsserve does not complete a configuration from the model).
- One ``TritonPythonModel()`` per instance (config.pbtxt's ``instance_group`` count), each
  ``initialize(args)``-ed with ``args`` = ``model_config`` (the configuration as a JSON string),
  ``model_name``, ``model_version``, ``model_repository`` (the model's directory),
  ``model_instance_kind`` (``"CPU"``), ``model_instance_name`` (``<name>_0_<i>``),
  ``model_instance_device_id`` (``"0"``).  An instance runs one ``execute`` at a time.
- ``execute(requests)`` gets one ``pb_utils.InferenceRequest`` per wsserve request in the batch
  (:meth:`TritonPythonModel.predict_requests`: the worker passes each queued request's rows),
  each holding that request's rows ``[rows, *dims]`` (``max_batch_size > 0``); with
  ``max_batch_size: 0`` one request per row, tensors of exactly ``dims``.  It must return one
  ``pb_utils.InferenceResponse`` per request, each holding every output config.pbtxt lists, of
  the listed dtype kind and shape; anything else fails the batch with a ``ValueError`` naming the
  model and what is wrong.  A ``-1`` in an input's dims takes each request's size (the worker
  batches requests of one shape only); a ``-1`` in an output's is each response's own: such a model
  returns :class:`~wsserve.worker.RequestOutputs` (each request's outputs whole, their sizes
  intact) rather than one joined array, and a variable output of more than
  :data:`~wsserve.shapes.MAX_VALUES` values per row is a wrong answer, naming it.  A response with ``error=`` fails only its request, with the wire error
  of its ``pb_utils.TritonError`` code (:data:`WIRE_ERRORS`, as Triton's frontends answer the
  code), the message kept: :meth:`TritonPythonModel.predict_requests` returns the other requests'
  rows of that ``execute`` with the errors (:class:`~wsserve.worker.RequestErrors`), so nothing
  is executed again.  With ``sequence_batching { iterative_sequence: true }`` a request
  ``execute`` rescheduled (``set_release_flags``) has ``None`` at its place (Triton's rule; anything
  else there fails the ``execute``, with Triton's message) and is given to a later ``execute``, the same ``pb_utils.InferenceRequest``
  (:class:`~wsserve.worker.Held`, :mod:`wsserve.reschedule`); without it, that request fails.  A ``pb_utils.TritonError`` *raised* by ``execute`` fails the batch with its
  code (the worker's isolation then runs each request alone, as for any exception).
- Business Logic Scripting: ``execute`` runs inside :func:`.bls.executing` (this model, its
  :attr:`TritonPythonModel.bls_gateway`), so a ``pb_utils.InferenceRequest(model_name=...)`` it
  builds can ``exec()`` on the server's models (:mod:`wsserve.bls`).  An ``async def execute`` is
  run to its end on an asyncio loop of its own in the instance's thread (its ``async_exec()``
  awaitables live there).  Such a model never runs on the event loop (``off_loop``).
- An input or output that config.pbtxt reshapes is given to ``execute`` and taken back in its
  ``reshape`` shape (rows first with a batch dimension); requests and answers carry ``dims``.
- ``request.is_cancelled()`` (as in Triton, for any model): true once that request ended on
  wsserve's side, before or while ``execute`` runs (its client's ``cancel``, its connection or HTTP
  client gone, a gRPC cancel, its deadline; the worker's :func:`~wsserve.worker.ended_check`,
  read from the instance's thread without a lock).  Each request of a batch has its own; whatever
  ``execute`` answers for a request that ended is dropped (its client had its one terminal frame),
  the batch's other requests answered as usual; an answer the checks refuse (no outputs, not a
  response) fails only that ended request, never its batch.
- ``request.request_id()`` is the client's request id (the WebSocket ``id``, the OIP ``id``) as
  text, ``""`` without one; the worker reads it only for this backend.
- Decoupled mode (config.pbtxt's ``model_transaction_policy { decoupled: true }``,
  :attr:`TritonPythonModel.decoupled`): the worker is a :class:`~wsserve.decoupled.DecoupledWorker`,
  which calls :meth:`TritonPythonModel.execute_decoupled` once per request (a model with
  ``sequence_batching { iterative_sequence: true }``: :meth:`TritonPythonModel.execute_decoupled_batch`
  with several, and again for a request ``execute`` rescheduled with ``set_release_flags``, the
  same ``pb_utils.InferenceRequest``; :mod:`wsserve.reschedule`).  ``execute`` gets that
  one request, whose ``get_response_sender()`` is a ``pb_utils.ResponseSender``; it must return
  None.  Each response sent (from any thread, also after ``execute`` returned) may carry any
  subset of the listed outputs (none included, as Triton's decoupled responses may); each one it
  carries is checked as a returned one is (its dtype kind and dims; its own row count for a model
  with a batch dimension), one config.pbtxt does not list is left out (the Python backend prunes
  a response to the requested outputs); a wrong one, or one with ``error=`` (its code's wire
  error), ends the request.  Warmed up by its ``model_warmup`` samples only (as Triton: each run
  ``batch_size`` one-row requests, each awaited until its FINAL, the responses checked then
  dropped; a failure fails the load naming the sample).
- ``finalize()``, when defined, once per instance at :meth:`close`, and on the instances already
  initialized when another's ``initialize`` fails (the version is then refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import custommetrics
from ..errors import (
    BadRequest,
    Cancelled,
    Internal,
    InvalidInput,
    Overloaded,
    WsserveError,
)
from ..models.base import call_model_code
from ..reschedule import RELEASE_ALL, RELEASE_RESCHEDULE, after_execute, not_iterative
from ..shapes import MAX_VALUES, VARIABLE
from ..worker import (
    Held,
    Ragged,
    RequestErrors,
    RequestOutputs,
    RequestParameters,
    concat_rows,
)
from . import bls
from . import triton_pb_utils as pb
from .backend import Batch, RepositoryModel, check_outputs, make_info
from .config import ModelConfig
from .errors import ModelLoadError
from .python_backend import DEFAULT_FLOPS_PER_ROW, exec_model_file
from .tensors import TensorSpec
from .warmup import warmup_batches

__all__ = ["TritonPythonModel", "TritonError", "PB_UTILS_MODULE", "WIRE_ERRORS"]

log = logging.getLogger("wsserve.repository")

#: The name a Triton model.py imports the utilities under.
PB_UTILS_MODULE = "triton_python_backend_utils"


class _WarmupStream:
    """A decoupled warm-up request's side of :meth:`TritonPythonModel.execute_decoupled` (the
    :class:`~wsserve.decoupled.DecoupledStream` methods it calls, from any thread): its responses
    dropped, its end (FINAL or a failure) awaited by :meth:`wait`."""

    #: how often :meth:`wait` looks at the load's ``stop`` (seconds)
    POLL_S = 0.05

    def __init__(self, stop: threading.Event | None) -> None:
        self._stop = stop
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self.failure: WsserveError | None = None
        self.stopped = False  # ended because the load was abandoned
        self.model_request: Any = None  # (kept across a rescheduled warm-up request's executes)

    def respond(self, outputs: dict[str, np.ndarray] | None, final: bool,
                parameters: dict[str, Any] | None = None) -> None:
        if final:
            with self._lock:
                self._ended.set()

    def fail(self, exc: WsserveError) -> None:
        with self._lock:  # (the first end counts: a failure after FINAL is none)
            if not self._ended.is_set():
                self.failure = exc
                self._ended.set()

    def cancelled(self) -> bool:
        return self._ended.is_set() or (self._stop is not None and self._stop.is_set())

    def wait(self) -> WsserveError | None:
        """Block until the request ended (its FINAL: None; a failure: it) or the load's ``stop`` is
        set (:attr:`stopped`; the model then sees its request cancelled)."""
        while not self._ended.wait(self.POLL_S):
            if self._stop is not None and self._stop.is_set():
                self.stopped = True
                self._ended.set()
                return None
        return self.failure


class _PbUtilsShim:
    """Puts :mod:`.triton_pb_utils` in ``sys.modules`` as :data:`PB_UTILS_MODULE` while at least one
    Triton model.py executes, and puts back what held that name when the last one ends.  The lock is
    held only to count, never while a model.py runs: a model.py whose top-level code hangs (a load
    abandoned after its timeout) must not stop the other Triton models from loading."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._before: Any = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._before = sys.modules.get(PB_UTILS_MODULE)
                sys.modules[PB_UTILS_MODULE] = pb  # type: ignore[assignment]
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    if self._before is None:
                        sys.modules.pop(PB_UTILS_MODULE, None)
                    else:
                        sys.modules[PB_UTILS_MODULE] = self._before
                    self._before = None


#: The one shim of the process (``sys.modules`` is one per process too).
_SHIM = _PbUtilsShim()


#: Triton's error codes (``pb_utils.TritonError.<CODE>``) -> the wire error a request failed with one
#: gets, and the HTTP status and gRPC status (a ``grpc.StatusCode`` name) Triton's frontends answer
#: that code with (server's ``HttpCodeFromError`` / ``GrpcStatusCode``).  A code not listed is UNKNOWN's.
WIRE_ERRORS: dict[int, tuple[type[WsserveError], int, str]] = {
    pb.TritonError.UNKNOWN: (Internal, 400, "UNKNOWN"),
    pb.TritonError.INTERNAL: (Internal, 500, "INTERNAL"),
    pb.TritonError.NOT_FOUND: (BadRequest, 404, "NOT_FOUND"),
    pb.TritonError.INVALID_ARG: (InvalidInput, 400, "INVALID_ARGUMENT"),
    pb.TritonError.UNAVAILABLE: (Overloaded, 503, "UNAVAILABLE"),
    pb.TritonError.UNSUPPORTED: (BadRequest, 501, "UNIMPLEMENTED"),
    pb.TritonError.ALREADY_EXISTS: (BadRequest, 400, "ALREADY_EXISTS"),
    pb.TritonError.CANCELLED: (Cancelled, 400, "CANCELLED"),
}


class ExecuteRaised(RuntimeError):
    """``TritonPythonModel.execute`` raised (something other than a ``pb_utils.TritonError``):
    every request of that ``execute`` fails, as in Triton; the model itself is not broken by it."""


class TritonError(Exception):
    """A request failed by the model with a ``pb_utils.TritonError``: its message is the model's,
    ``code`` Triton's error code (:data:`WIRE_ERRORS`)."""

    def __init__(self, message: str, code: int = pb.TritonError.INTERNAL) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def of(cls, error: Any) -> TritonError:
        """The exception for a response's ``error`` (a ``pb_utils.TritonError``, or anything else: INTERNAL)."""
        if isinstance(error, pb.TritonError):
            return cls(error.message(), error.code())
        return cls(str(error))

    def to_wire(self, message: str) -> WsserveError:
        """The wire error of :attr:`code` carrying ``message`` (the worker's, naming the model), with
        Triton's HTTP status (``http_status``) and gRPC status (``grpc_status``) for that code."""
        kind, http_status, grpc_status = WIRE_ERRORS.get(self.code, WIRE_ERRORS[pb.TritonError.UNKNOWN])
        error = kind(message)
        error.http_status = http_status  # type: ignore[attr-defined]
        error.grpc_status = grpc_status  # type: ignore[attr-defined]
        return error


def exec_triton_model_file(path: Path, name: str, version: int) -> ModuleType:
    """Execute a Triton ``model.py`` with ``triton_python_backend_utils`` importable (only meanwhile;
    several may execute at once, each seeing it)."""
    with _SHIM.installed():
        return exec_model_file(path, name, version)


def _specs(config: ModelConfig) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """config.pbtxt's tensors (every one named, shaped and typed: :mod:`.pbtxt` checked it)."""
    def specs(tensors: Any) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.shape or t.triton_dims, t.dtype, t.optional) for t in tensors)
    return specs(config.inputs), specs(config.outputs)


def _grouped(outs: list[dict[str, np.ndarray]], owner: list[int]) -> list[list[dict[str, np.ndarray]]]:
    """``outs`` (one per executed request, in order) grouped by the wsserve request owning each
    (``owner[i]``, ascending from 0): one list per request."""
    groups: list[list[dict[str, np.ndarray]]] = [[] for _ in range(owner[-1] + 1 if owner else 0)]
    for out, i in zip(outs, owner, strict=True):
        groups[i].append(out)
    return groups


def _bounded(model: str, i: int, name: str, value: Any, batching: bool) -> None:
    """Refuse (``ValueError`` naming the output) response ``i``'s output ``name`` with a variable
    dimension when one row of it holds more than :data:`~wsserve.shapes.MAX_VALUES` values (the
    whole tensor without a batch dimension)."""
    shape = getattr(value, "shape", None)
    if shape is None:
        return  # not an array: check_outputs names it
    values = math.prod(shape[1:] if batching else shape)
    if values > MAX_VALUES:
        raise ValueError(f"model {model!r}: execute's response {i}: output {name!r} has shape {list(shape)}: "
                         f"{values} values per row; at most {MAX_VALUES} where a dimension is variable (-1)")


def _call_execute(execute: Any, requests: list[Any]) -> Any:
    """``execute(requests)``; an ``async def execute``'s coroutine run to its end on an asyncio
    loop of its own, in this thread (its ``async_exec`` awaitables live there)."""
    out = execute(requests)
    return asyncio.run(out) if inspect.iscoroutine(out) else out


class TritonPythonModel(RepositoryModel):
    """A Triton Python backend model.py (see the module docstring). Raises :class:`ModelLoadError`
    naming the file on any problem at load."""

    backend = "python"
    #: Never run on the event loop, however cheap (:class:`~wsserve.worker.PredictWorker`): a BLS
    #: ``exec()`` waits for the loop, and an ``async def execute`` runs a loop of its own.
    off_loop = True
    #: How ``execute``'s BLS requests reach the server's models (:class:`wsserve.bls.BlsGateway`,
    #: set by the registry before the warm-up); None (loaded without a server): ``exec()`` raises.
    bls_gateway: bls.Gateway | None = None
    #: ``predict_requests`` takes each request's :class:`~wsserve.worker.Held` (``held``): its
    #: ``cancelled()`` is ``request.is_cancelled()`` in ``execute``, as in Triton.
    takes_ended = True

    def __init__(self, name: str, version: int, path: Path, config: ModelConfig, *,
                 custom_metrics: custommetrics.CustomMetrics | None = None) -> None:
        """``custom_metrics``: the server's (:attr:`wsserve.metrics.Metrics.custom`), where the
        model's ``pb_utils.MetricFamily`` objects go; None (loaded without a server): a store of
        its own, shown nowhere."""
        assert config.triton_model_config is not None, "a config.pbtxt with backend: \"python\""
        self.name, self.version, self.path, self.config = name, version, Path(path), config
        #: What this version's code made of custom metrics: removed at :meth:`close`.
        self._metrics = (custom_metrics or custommetrics.CustomMetrics()).owner(name, version)
        try:
            self._init(name, version, config)
        except BaseException:
            self._metrics.close()
            raise

    def _init(self, name: str, version: int, config: ModelConfig) -> None:
        self.inputs, self.outputs = _specs(config)
        #: config.pbtxt's ``reshape``: input name -> the model's per-row dims; output name -> the wire's
        self._reshape_in = {t.name: t.model_dims for t in config.inputs or () if t.model_dims is not None}
        self._reshape_out = {t.name: t.triton_dims or () for t in config.outputs or () if t.model_dims is not None}
        #: each numeric input's data type: a request's tensor reaches execute in it (a one-float-vector
        #: model's JSON rows are gathered as float64)
        self._input_dtypes = {s.name: s.np_dtype for s in self.inputs if s.dtype != "bytes"}
        #: An output has a variable (-1) dimension: each request is answered at its own size there
        #: (:class:`~wsserve.worker.RequestOutputs`); otherwise one array holds the batch's rows.
        self._ragged = any(s.variable for s in self.outputs)
        #: config.pbtxt's ``allow_ragged_batch`` inputs: requests of any shape there share an ``execute``
        #: (each request its own tensor, as Triton's Python backend gives it); the worker reads it.
        self.ragged_inputs = frozenset(t.name for t in config.inputs or () if t.ragged)
        #: config.pbtxt's ``model_transaction_policy { decoupled: true }`` (see the module docstring).
        self.decoupled = config.decoupled
        #: config.pbtxt's ``sequence_batching { iterative_sequence: true }``: ``execute`` may reschedule a
        #: request (``set_release_flags``; its worker gives it to a later execute: a decoupled model's
        #: :class:`~wsserve.decoupled.DecoupledWorker`, another's :class:`~wsserve.worker.PredictWorker`)
        self.iterative_sequence = config.iterative_sequence
        #: The running warm-up's ``stop`` (set: its load was abandoned past its timeout), read by
        #: :meth:`predict` between the executes of a rescheduled request; None outside :meth:`warmup`.
        self._warmup_stop: threading.Event | None = None
        with custommetrics.owning(self._metrics):
            module = exec_triton_model_file(self.path, name, version)
        cls = getattr(module, "TritonPythonModel", None)
        if not isinstance(cls, type):
            raise ModelLoadError(self.path, "defines no class TritonPythonModel (backend: \"python\" in config.pbtxt)")
        if not callable(getattr(cls, "execute", None)):
            raise ModelLoadError(self.path, "class TritonPythonModel has no execute(requests) method")
        self._auto_complete(cls)
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._instances: list[Any] = []
        try:
            for i in range(config.instances):
                self._instances.append(self._instance(cls, i))
                self._free.put(self._instances[-1])
        except ModelLoadError:
            self._finalize_quietly()  # the instances initialized before the one that failed
            raise
        self.info = make_info(self, task="other", parameters=0, metrics={}, extra={"triton_backend": "python"})
        module.__dict__[bls.CALLER_HOOK] = self._serving_caller  # BLS from the model's own threads

    def _serving_caller(self) -> bls.Caller | None:
        """This model as a BLS caller once initialized, until closed (see :func:`.bls.from_code`)."""
        return None if self.closed else bls.Caller(self.name, self.version, self.bls_gateway, self._metrics)

    def _call_at_load(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            with custommetrics.owning(self._metrics):
                return fn(*args)
        except BaseException as exc:  # noqa: BLE001 - sys.exit() or KeyboardInterrupt included
            raise ModelLoadError(self.path, f"TritonPythonModel.{what} raised {type(exc).__name__}: {exc}") from exc

    def _auto_complete(self, cls: type) -> None:
        hook = getattr(cls, "auto_complete_config", None)
        if callable(hook):
            self._call_at_load("auto_complete_config", hook, pb.ModelConfig(self.config.triton_model_config or "{}"))

    def _instance(self, cls: type, i: int) -> Any:
        """One ``TritonPythonModel()``, initialized as Triton initializes instance ``i``."""
        instance = self._call_at_load("__init__", cls)
        init = getattr(instance, "initialize", None)
        if callable(init):
            self._call_at_load("initialize", init, {
                "model_config": self.config.triton_model_config,
                "model_instance_kind": "CPU",
                "model_instance_name": f"{self.name}_0_{i}",
                "model_instance_device_id": "0",
                "model_repository": str(self.path.parent.parent),
                "model_version": str(self.version),
                "model_name": self.name,
            })
        return instance

    # -- serving

    def flops_per_row(self) -> int:
        return self.config.flops_per_row or DEFAULT_FLOPS_PER_ROW

    def _named(self, batch: Batch) -> dict[str, np.ndarray]:
        return dict(batch) if isinstance(batch, dict) else {self.inputs[0].name: batch}

    def _unnamed(self, outputs: dict[str, np.ndarray]) -> Batch:
        return outputs[self.outputs[0].name] if len(self.outputs) == 1 else outputs

    def predict(self, batch: Batch) -> Batch:
        """The batch as one request (``max_batch_size > 0``) or one request per row; see the module
        docstring (a model with ``iterative_sequence``: executed again while it reschedules the
        request, as :func:`~wsserve.reschedule.after_execute` decides: at most
        :data:`~wsserve.reschedule.MAX_RESCHEDULES` times, past it ``ValueError`` with its message;
        in :meth:`warmup`, once its ``stop`` is set - its load abandoned - the request is cancelled,
        ``is_cancelled()``, and not executed again: ``RuntimeError``).
        Raises :class:`TritonError` (the first) when a response is an error."""
        x = self._named(batch)
        rows = [len(next(iter(x.values())))]
        if self.iterative_sequence and self.config.batching:  # (a warm-up's) executed again while rescheduled
            stop = self._warmup_stop
            stopped: Callable[[], bool] = stop.is_set if stop is not None else (lambda: False)
            held = [Held(stopped)]
            try:
                while True:  # decided as the worker decides a request's (and _decoupled_warmup a sample's)
                    y = self.predict_requests(batch, rows, None, held)
                    flags = RELEASE_RESCHEDULE if held[0].again else RELEASE_ALL
                    decision, message = after_execute(self.name, flags, iterative=True, ended=stopped(),
                                                      final_sent=False, reschedules=held[0].reschedules)
                    if decision != "requeue":
                        break
                    held[0].again = False
                    held[0].reschedules += 1
                if message is not None:  # ("fail": past MAX_RESCHEDULES)
                    raise ValueError(message)
                if held[0].again:  # released while rescheduled: ended, by stop
                    raise RuntimeError(f"model {self.name!r} rescheduled a warm-up request after its load was "
                                       "abandoned (past its load timeout): the warm-up stopped")
            finally:
                held[0].request = None  # (its InferenceRequest <-> Held cycle is not left to the cyclic GC)
        else:
            y = self.predict_requests(batch, rows)
        if isinstance(y, RequestParameters):
            y = y.outputs
        if isinstance(y, RequestErrors):
            raise next(iter(y.errors.values()))
        return y.parts[0] if isinstance(y, RequestOutputs) else y

    def predict_requests(self, batch: Batch, rows: list[int], ids: list[str] | None = None,
                         held: list[Held] | None = None) -> Batch | RequestErrors | RequestParameters:
        """``batch``'s rows as consecutive requests of ``rows[i]`` rows each (request id ``ids[i]``,
        ``""`` without ``ids``), in one ``execute`` call (``max_batch_size: 0``: one request per row,
        each with its request's id).  Returns the outputs of every row in order (a model with a
        variable output dimension: :class:`~wsserve.worker.RequestOutputs`, each request's outputs
        at its own size, a request's rows joined; rows of one request answered at different sizes
        raise :class:`~wsserve.errors.InvalidInput` naming the output); when some responses
        are errors, :class:`~wsserve.worker.RequestErrors` holding them as :class:`TritonError` by
        index in ``rows`` (the first of a request's), their rows zeros.  Raises ``ValueError`` for a
        wrong answer (a variable output of more than :data:`~wsserve.shapes.MAX_VALUES` values
        per row included), ``RuntimeError`` for an exception in ``execute``, :class:`TritonError`
        for a ``pb_utils.TritonError`` it raised (each naming the model).  Responses with
        ``parameters``: all that wrapped in :class:`~wsserve.worker.RequestParameters`, each
        request's (the parameters of its rows' responses merged in row order, without a batch
        dimension).  ``held``: each request's :class:`~wsserve.worker.Held` (the worker's, for a model
        whose :attr:`takes_ended` is true): its ``cancelled()`` is the request's
        ``InferenceRequest.is_cancelled()`` (every row's of it); a model with ``iterative_sequence``
        (``max_batch_size > 0``) keeps its ``pb_utils.InferenceRequest`` there, given again to the next
        execute, and a request ``execute`` rescheduled
        (``set_release_flags(TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)``; its response ``None``, Triton's rule:
        anything else raises ``ValueError`` with Triton's message, unless that request ended) has ``again`` set and zeros for its rows."""
        self._require_open()
        x = self._named(batch)
        ids = ids or [""] * len(rows)
        ended: list[Any] = [h.cancelled for h in held] if held else [None] * len(rows)
        if not self.config.batching:
            n = len(next(iter(x.values())))
            # each row's request (its index in ``rows``); rows not adding up to the batch: all the first's
            owner = [i for i, r in enumerate(rows) for _ in range(r)] if sum(rows) == n else [0] * n
            requests = [{k: v[i] for k, v in x.items()} for i in range(n)]
            request_ids = [ids[i] for i in owner]
            request_ended = [ended[i] for i in owner]
        else:
            requests, start = [], 0
            for i, r in enumerate(rows):  # a ragged input (allow_ragged_batch): each request's own array
                requests.append({k: v.parts[i] if isinstance(v, Ragged) else v[start:start + r] for k, v in x.items()})
                start += r
            owner, request_ids, request_ended = list(range(len(rows))), ids, ended
        iterative = held if held and self.iterative_sequence and self.config.batching else None
        outs, params = self._execute(requests, request_ids, request_ended, iterative)
        parameters: dict[int, dict[str, Any]] = {}
        for i, p in enumerate(params):
            if p:
                parameters.setdefault(owner[i], {}).update(p)
        errors: dict[int, BaseException] = {}
        for i, out in enumerate(outs):
            if isinstance(out, TritonError):
                errors.setdefault(owner[i], out)
        for i in range(len(outs)):  # every row of a failed request (never delivered) a placeholder:
            if owner[i] in errors:  # its other rows' sizes cannot differ from the failed one's then
                outs[i] = self._placeholder(requests[i])
        if not self.config.batching:
            outs = [{k: v[None] for k, v in o.items()} for o in outs]
        y: Batch | RequestOutputs
        if self._ragged:
            y = RequestOutputs(tuple(self._unnamed(concat_rows(p)) if len(p) > 1 else self._unnamed(p[0])
                                     for p in _grouped(outs, owner)))
        else:
            y = self._unnamed({s.name: np.concatenate([o[s.name] for o in outs]) for s in self.outputs})
        answer = RequestErrors(y, errors) if errors else y
        return RequestParameters(answer, parameters) if parameters else answer

    def _placeholder(self, request: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Zeros for the outputs of a request answered with an error (never delivered; a variable
        dimension 0)."""
        lead = (len(next(iter(request.values()))),) if self.config.batching else ()
        return {s.name: s.zeros(lead + tuple(0 if d == VARIABLE else d for d in s.shape)) for s in self.outputs}

    def _execute(self, requests: list[dict[str, np.ndarray]], ids: list[str], ended: list[Any] | None = None,
                 held: list[Held] | None = None) -> tuple[list[dict[str, np.ndarray] | TritonError], list[dict[str, Any]]]:
        """One ``execute`` of ``requests`` (ids ``ids``; ``ended``: each one's ``is_cancelled()``
        check, None: never): each one's checked outputs, or its error, and each response's
        parameters (``{}``: none).  ``held``: an iterative model's, see :meth:`predict_requests`."""
        wanted = [s.name for s in self.outputs]
        # a stateful model's request id is a SequenceId: its correlation id and START/END flags
        pb_requests = [pb.InferenceRequest(model_name=self.name, requested_output_names=wanted, request_id=str(rid),
                                           inputs=[pb.Tensor(k, self._model_side(k, v)) for k, v in r.items()],
                                           correlation_id=getattr(rid, "correlation_id", 0),
                                           flags=getattr(rid, "flags", 0))
                       if held is None or not isinstance(held[i].request, pb.InferenceRequest) else held[i].request
                       for i, (r, rid) in enumerate(zip(requests, ids, strict=True))]
        for request, check in zip(pb_requests, ended or (), strict=False):
            request._ended = check  # is_cancelled(): the request ended on wsserve's side
        if held is not None:
            for h, request in zip(held, pb_requests, strict=True):
                h.again = False
                h.request = request  # the same object at its next execute, if it is rescheduled
                request._release_flags = pb.TRITONSERVER_REQUEST_RELEASE_ALL  # each execute asks anew
        instance = self._free.get()
        try:
            with bls.executing(bls.Caller(self.name, self.version, self.bls_gateway, self._metrics)):
                responses = call_model_code(_call_execute, instance.execute, pb_requests)
        except pb.TritonError as exc:
            raise TritonError(exc.message(), exc.code()) from exc
        except Exception as exc:
            raise ExecuteRaised(f"TritonPythonModel.execute raised {type(exc).__name__}: {exc}") from exc
        finally:
            self._free.put(instance)
        if not isinstance(responses, (list, tuple)) or len(responses) != len(requests):
            got = f"{len(responses)} responses" if isinstance(responses, (list, tuple)) else type(responses).__name__
            raise ValueError(f"model {self.name!r}: execute must return one InferenceResponse per request "
                             f"({len(requests)}), got {got}")
        outs: list[dict[str, np.ndarray] | TritonError] = []
        params: list[dict[str, Any]] = []
        for i, (req, resp) in enumerate(zip(requests, responses, strict=True)):
            if pb_requests[i].release_flags() & pb.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
                if resp is not None:  # Triton's stub refuses it, failing the execute (any non-decoupled model)
                    if not (ended and ended[i] is not None and ended[i]()):
                        raise ValueError(f"model {self.name!r}: Expected a None object in the execute function "
                                         f"return list for reschduled request, found type "
                                         f"'{type(resp).__name__}' (execute's response {i})")
                    # (an ended request: its answer is dropped, so it fails alone, as below)
                    outs.append(TritonError(f"model {self.name!r}: request cancelled", pb.TritonError.CANCELLED))
                elif held is not None:  # given to a later execute by the worker
                    held[i].again = True
                    outs.append(self._placeholder(req))
                else:  # without iterative_sequence this request fails, as in Triton; the others are answered
                    outs.append(TritonError(not_iterative(self.name), pb.TritonError.INVALID_ARG))
                params.append({})
                continue
            try:
                if not isinstance(resp, pb.InferenceResponse):
                    raise ValueError(f"model {self.name!r}: execute's response {i} is a {type(resp).__name__}, "
                                     "not a pb_utils.InferenceResponse")
                outs.append(TritonError.of(resp.error()) if resp.has_error() else self._outputs(i, req, resp))
            except ValueError:
                if not (ended and ended[i] is not None and ended[i]()):
                    raise
                # a request that ended (cancelled, gone, past its deadline): its answer is dropped, so
                # whatever execute gave it (no outputs, None) fails it alone, not its batch
                outs.append(TritonError(f"model {self.name!r}: request cancelled", pb.TritonError.CANCELLED))
                params.append({})
                continue
            params.append({} if resp.has_error() else resp.parameters_dict())
        return outs, params

    def _model_side(self, name: str, value: np.ndarray) -> np.ndarray:
        """Input ``name`` of one request as the model takes it: in its config data type, and in
        config.pbtxt's ``reshape`` (rows first with a batch dimension), or as it came."""
        dtype = self._input_dtypes.get(name)
        if dtype is not None and value.dtype != dtype:
            value = value.astype(dtype)
        model_dims = self._reshape_in.get(name)
        if model_dims is None:
            return value
        return value.reshape((len(value), *model_dims) if self.config.batching else model_dims)

    def _wire_side(self, i: int, name: str, value: Any) -> Any:
        """Output ``name`` of response ``i`` in config.pbtxt's ``dims`` where its ``reshape`` is what the
        model gives (rows first with a batch dimension).  Raises ``ValueError`` naming the output when
        its values do not fit them."""
        wire = self._reshape_out.get(name)
        if wire is None or not isinstance(value, np.ndarray):
            return value
        try:
            return value.reshape((len(value), *wire) if self.config.batching and value.ndim else wire)
        except ValueError:
            raise ValueError(f"model {self.name!r}: execute's response {i}: output {name!r} has shape "
                             f"{list(value.shape)}, which config.pbtxt's dims {list(wire)} cannot hold "
                             "(reshaped from the model's)") from None

    def _outputs(self, i: int, request: dict[str, np.ndarray], response: Any) -> dict[str, np.ndarray]:
        """Response ``i``'s outputs checked against config.pbtxt (shape, dtype kind; cast within it)."""
        got: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            tensor = pb.get_output_tensor_by_name(response, spec.name)
            if tensor is None:
                names = [t.name() for t in response.output_tensors()]
                raise ValueError(f"model {self.name!r}: execute's response {i} has no output {spec.name!r} (it has {names})")
            got[spec.name] = self._wire_side(i, spec.name, tensor.as_numpy())
            if spec.variable:
                _bounded(self.name, i, spec.name, got[spec.name], self.config.batching)
        if self.config.batching:
            n = len(next(iter(request.values())))
            where = f"model {self.name!r}: execute's response {i}: "
        else:  # per-row request: check as a one-row batch
            n, got = 1, {k: v[None] if isinstance(v, np.ndarray) else v for k, v in got.items()}
            where = f"model {self.name!r}: execute's response {i} (max_batch_size 0: a batch dimension 1 shown): "
        try:
            out = check_outputs(got, self.outputs, n)
        except ValueError as exc:
            raise ValueError(where + str(exc)) from None
        named = out if isinstance(out, dict) else {self.outputs[0].name: out}
        return named if self.config.batching else {k: v[0] for k, v in named.items()}

    def execute_decoupled(self, inputs: dict[str, np.ndarray], request_id: str, stream: Any) -> int:
        """A decoupled model's ``execute`` of one request (in an instance's thread; blocks while it
        runs).  ``inputs``: the request's tensors ``[rows, *dims]`` (no batch dimension: one row,
        given to the model as ``dims``); ``stream``: a :class:`~wsserve.decoupled.DecoupledStream`
        (its ``respond(outputs, final)``, ``fail(exc)`` and ``cancelled()``, any thread).  Every
        failure of the request goes to ``stream.fail`` naming the model; nothing is raised.  Returns
        the request's release flags (``set_release_flags``; ``TRITONSERVER_REQUEST_RELEASE_ALL`` when
        it failed): a rescheduled request's ``stream`` comes back with the same ``pb_utils``
        request in ``stream.model_request``, which this call keeps there."""
        return self.execute_decoupled_batch([(inputs, request_id, stream)])[0]

    def execute_decoupled_batch(self, items: list[tuple[dict[str, np.ndarray], str, Any]]) -> list[int]:
        """:meth:`execute_decoupled` of several requests ``(inputs, request_id, stream)`` in one
        ``execute`` (a model with ``iterative_sequence``: its worker batches them); their release
        flags in order.  A failure of the whole ``execute`` (it raised, or returned something) fails
        each of them."""
        self._require_open()
        name = self.name
        requests = [self._decoupled_request(*item) for item in items]
        for request in requests:
            request._release_flags = pb.TRITONSERVER_REQUEST_RELEASE_ALL  # each execute asks anew
        streams = [stream for _, _, stream in items]
        released = [pb.TRITONSERVER_REQUEST_RELEASE_ALL] * len(items)
        instance = self._free.get()
        try:
            with bls.executing(bls.Caller(self.name, self.version, self.bls_gateway, self._metrics)):  # exec() from execute
                returned = call_model_code(_call_execute, instance.execute, requests)  # async def too
        except pb.TritonError as exc:
            for stream in streams:
                stream.fail(TritonError(exc.message(), exc.code()).to_wire(f"model {name!r} failed: TritonError: {exc}"))
            return released
        except Exception as exc:  # noqa: BLE001 - the requests fail, the model serves on
            log.error("model %s: execute raised", name, exc_info=exc)
            for stream in streams:
                stream.fail(Internal(f"model {name!r} failed: TritonPythonModel.execute raised {type(exc).__name__}: {exc}"))
            return released
        finally:
            self._free.put(instance)
        if returned is not None:  # Triton's message (python_backend's pb_stub.cc)
            for stream in streams:
                stream.fail(Internal(f"Python model {name!r} is using the decoupled mode and the execute function "
                                     f"must return None (it returned a {type(returned).__name__})"))
            return released
        return [request.release_flags() for request in requests]

    def _decoupled_request(self, inputs: dict[str, np.ndarray], request_id: str, stream: Any) -> Any:
        """The ``pb_utils.InferenceRequest`` of a decoupled request: made at its first execute (its
        response sender delivering to ``stream``), kept in ``stream.model_request`` and given again
        when the request is rescheduled."""
        request = getattr(stream, "model_request", None)
        if isinstance(request, pb.InferenceRequest):
            return request
        name = self.name

        def deliver(response: Any, final: bool) -> None:  # the ResponseSender's, in the model's thread
            if response is None:
                stream.respond(None, final)
            elif response.has_error():
                error = TritonError.of(response.error())
                stream.fail(error.to_wire(f"model {name!r} failed: TritonError: {error}"))
            else:
                try:
                    outputs = self._stream_outputs(response)
                except (ValueError, InvalidInput) as exc:
                    stream.fail(Internal(f"model {name!r} sent a wrong response: {exc}"))
                    return
                stream.respond(outputs, final, response.parameters_dict() or None)

        # (JSON rows of a one-float-vector model come as checked nested lists: the model gets arrays)
        dtypes = {s.name: s.np_dtype for s in self.inputs if s.dtype != "bytes"}
        named = {k: v if isinstance(v, np.ndarray) else np.asarray(v, dtype=dtypes.get(k))
                 for k, v in self._named(inputs).items()}
        tensors = named if self.config.batching else {k: v[0] for k, v in named.items()}
        request = pb.InferenceRequest(model_name=name, requested_output_names=[s.name for s in self.outputs],
                                      request_id=request_id,
                                      inputs=[pb.Tensor(k, self._model_side(k, v)) for k, v in tensors.items()])
        request._sender = pb.ResponseSender(deliver, stream.cancelled)
        stream.model_request = request
        return request

    def _stream_outputs(self, response: Any) -> dict[str, np.ndarray]:
        """A decoupled response's outputs checked against config.pbtxt: ``{name: [rows, ...]}`` (its
        own rows; no batch dimension: a leading 1), in config.pbtxt's order.  A response may carry any
        subset of the listed outputs, none included (Triton's decoupled responses do); each one it
        carries is checked (dtype kind, dims; with a batch dimension, every one the same rows).  An
        output config.pbtxt does not list is left out, as the Python backend prunes a response to
        the request's requested output names.  Raises ``ValueError`` naming what is wrong."""
        if not isinstance(response, pb.InferenceResponse):
            raise ValueError(f"a response is a {type(response).__name__}, not a pb_utils.InferenceResponse")
        got: dict[str, np.ndarray] = {}
        specs = []
        for spec in self.outputs:
            tensor = pb.get_output_tensor_by_name(response, spec.name)
            if tensor is None:
                continue
            value = self._wire_side(0, spec.name, tensor.as_numpy())  # config.pbtxt's reshape: back in dims
            if not self.config.batching:
                value = value[None]
            elif value.ndim == 0:
                raise ValueError(f"output {spec.name!r} has no batch dimension (max_batch_size > 0)")
            if spec.variable:
                _bounded(self.name, 0, spec.name, value, True)
            got[spec.name] = value
            specs.append(spec)
        if not got:
            return got
        n = len(next(iter(got.values())))
        out = check_outputs(got, specs, n)
        return out if isinstance(out, dict) else {specs[0].name: out}

    def warmup(self, batch: Batch | None = None, *, stop: threading.Event | None = None) -> None:
        """As :meth:`RepositoryModel.warmup`, but an error response to the rows of zeros, or ``execute``
        raising on them, is only logged: a model may refuse such input and be right for every real
        request, and one calling other models (BLS) may find them still loading (Triton runs no
        warm-up but config.pbtxt's ``model_warmup``, whose failures do fail the load here too).  A decoupled
        model runs its config.pbtxt ``model_warmup`` samples only (:meth:`_decoupled_warmup`), and
        is not warmed up without them; a stateful one (``sequence_batching``: its requests need a
        sequence and its control inputs) is not either (Triton warms up neither without ``model_warmup``)."""
        if self.decoupled:
            if batch is None and self.config.warmup:
                self._decoupled_warmup(stop)
            else:
                log.info("%s: not warmed up: the model is decoupled and config.pbtxt has no model_warmup", self.path)
            return
        if self.config.sequence is not None:
            log.info("%s: not warmed up: the model is stateful (sequence_batching)", self.path)
            return
        self._warmup_stop = stop  # (a rescheduled warm-up request stops there too: predict)
        try:
            super().warmup(batch, stop=stop)
        except ModelLoadError as exc:
            if not isinstance(exc.__cause__, (TritonError, ExecuteRaised)) or (batch is None and self.config.warmup):
                raise  # (a model_warmup sample the config names must be answered, as Triton's warm-up must)
            log.warning("%s: warm-up request (rows of zeros) answered with an error: %s; served anyway",
                        self.path, exc.__cause__)
        finally:
            self._warmup_stop = None

    def _decoupled_warmup(self, stop: threading.Event | None = None) -> None:
        """config.pbtxt's ``model_warmup`` for a decoupled model, as Triton runs it: each sample
        ``count`` times, each time ``batch_size`` requests of one row (the sample's values), one
        ``execute`` each (:meth:`execute_decoupled`, one after the other), each waited for until
        its FINAL; the responses are checked as a client's are, then dropped.  Raises
        :class:`ModelLoadError` naming the sample when a request ends otherwise (an error
        response, a wrong response, ``execute`` raising or returning something, a reschedule
        :func:`~wsserve.reschedule.after_execute` refuses or bounds: a sample is rescheduled as a
        request is, by :data:`~wsserve.reschedule.MAX_RESCHEDULES`), or once ``stop``
        is set (the load was abandoned past its timeout: a model that never sends FINAL ends
        there; the request it waits on is then cancelled, ``is_cancelled()``)."""
        assert self.config.path is not None
        for sample, arrays in warmup_batches(self.config.warmup, self.inputs, self.config.path.parent, self.path):
            for _ in range(sample.count):
                for row in range(sample.batch_size):
                    request = _WarmupStream(stop)
                    rows = {k: v[row:row + 1] for k, v in arrays.items()}
                    reschedules = 0
                    while not request.cancelled():  # (a rescheduled sample runs again, by a request's rules)
                        flags = self.execute_decoupled(rows, "", request)
                        decision, message = after_execute(self.name, flags, iterative=self.iterative_sequence,
                                                          ended=request.cancelled(), final_sent=False,
                                                          reschedules=reschedules)
                        if decision == "requeue":
                            reschedules += 1
                            continue
                        if message is not None:
                            request.fail(Internal(message) if decision == "fail" else InvalidInput(message))
                        break
                    failure = request.wait()
                    if request.stopped:
                        raise ModelLoadError(self.path, f"model_warmup stopped at sample {sample.name!r}: its load "
                                                        "was abandoned (past its load timeout)")
                    if failure is not None:
                        raise ModelLoadError(self.path, f"model_warmup sample {sample.name!r} failed: {failure.message}")
            del arrays  # one sample's arrays at a time (see warmup_batches)
        log.info("%s: warmed up with %d model_warmup sample(s)", self.path, len(self.config.warmup))

    def close(self) -> None:
        """``finalize()`` on every instance that has one (once; the first exception propagates after all ran)."""
        if self.closed:
            return
        super().close()
        failure = self._finalize_all()
        self._metrics.close()  # what the version made leaves /metrics (Triton: its objects' destructors)
        if failure is not None:
            raise failure

    def _finalize_all(self) -> Exception | None:
        """``finalize()`` on every instance that has one; the first exception raised, if any."""
        failure: Exception | None = None
        for instance in self._instances:
            finalize = getattr(instance, "finalize", None)
            if callable(finalize):
                try:
                    with custommetrics.owning(self._metrics):
                        call_model_code(finalize)
                except Exception as exc:  # noqa: BLE001 - finalize the others first
                    failure = failure or exc
        return failure

    def _finalize_quietly(self) -> None:
        """:meth:`_finalize_all` for a load that failed: its exception is logged (the load's is raised)."""
        failure = self._finalize_all()
        if failure is not None:
            log.warning("%s: finalize() after a failed initialize raised %s: %s", self.path, type(failure).__name__, failure)
