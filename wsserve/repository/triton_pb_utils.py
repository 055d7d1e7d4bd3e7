"""``triton_python_backend_utils``, as a Triton Python backend ``model.py`` imports it (``import
triton_python_backend_utils as pb_utils``): the part of the API ordinary models use.

:mod:`.triton_backend` puts this module in ``sys.modules`` under that name while it executes a
Triton ``model.py`` (and only then).  Names and behaviour follow Triton's
(triton-inference-server/python_backend ``src/resources/triton_python_backend_utils.py`` and
``src/pb_*.cc``):

- :class:`Tensor` ``(name, array)``: ``name()``, ``as_numpy()``, ``is_cpu()`` (always true).  A
  ``TYPE_STRING`` input's ``as_numpy()`` is an object array of ``bytes``, as in Triton; a string
  output may be an object array of ``bytes`` or ``str`` (or a numpy ``S``/``U`` array).
- :class:`InferenceRequest`, as ``execute`` gets it: ``inputs()``, ``requested_output_names()``,
  ``request_id()``, ``correlation_id()``, ``flags()``, ``parameters()`` (a JSON string),
  ``is_cancelled()`` (true once the request ended on wsserve's side: cancelled, its client gone,
  its deadline, an unload; decoupled or not), ``set_release_flags(flags)``
  (``TRITONSERVER_REQUEST_RELEASE_ALL`` / ``TRITONSERVER_REQUEST_RELEASE_RESCHEDULE``: request
  rescheduling, :mod:`wsserve.reschedule`).  Built by a model in ``execute`` (business logic
  scripting, BLS: ``InferenceRequest(model_name=, inputs=, requested_output_names=, model_version=-1, timeout=0)``,
  ``timeout`` in microseconds) it runs on another model the server serves: ``exec()`` returns its
  :class:`InferenceResponse` (an error in ``has_error()``/``error()``, never raised), ``await
  async_exec()`` in an ``async def execute`` the same (see :mod:`wsserve.bls`); with
  ``decoupled=True`` an iterator of the called model's responses as they come (awaited: set at the
  first one), :class:`wsserve.bls.ResponseIterator`.  ``exec()`` in ``initialize`` or ``finalize``
  raises :class:`TritonModelException` (a thread of the model's own may call, as in Triton:
  :func:`.bls.from_code`).
  ``get_response_sender()``: a decoupled model's request's :class:`ResponseSender` (another
  model's, or one a model built: :class:`TritonModelException`).
- :class:`ResponseSender` (decoupled mode): ``send(response=None, flags=0)``, ``is_cancelled()``;
  Triton's argument checks and messages (``src/response_sender.cc``).
- :class:`InferenceResponse` ``(output_tensors=[...], error=None, parameters=None)``:
  ``output_tensors()``, ``has_error()``, ``error()``, ``parameters()`` (a JSON string).
  ``parameters``: a dict of ``str`` keys to ``bool``/``int``/``str`` values (Triton's rule and
  message; an ``int`` within int64; keys and values valid UTF-8), at most :data:`MAX_RESPONSE_PARAMETERS` of them and
  :data:`MAX_RESPONSE_PARAMETERS_BYTES` bytes as JSON; the client gets them as the response's
  ``parameters`` (OIP HTTP and gRPC, the WebSocket ``result`` and ``response`` frames).
- :class:`MetricFamily` ``(name, description, kind)`` (``MetricFamily.COUNTER``, ``GAUGE``,
  ``HISTOGRAM``) and its ``Metric(labels=None, buckets=None)``: ``increment(v)``, ``set(v)``,
  ``observe(v)``, ``value()``, as Triton's custom metrics (on the server's ``/metrics``; rules,
  caps and lifetime: :mod:`wsserve.custommetrics`).  Made in ``initialize``, ``execute``,
  ``finalize`` or a thread of the model's; an error raises :class:`TritonModelException` with
  Triton's prefix (``Failed to increment metric value: ...``).  Dropping a ``MetricFamily``
  object deletes its metrics, as in Triton; unloading the version deletes all it made.
- :class:`TritonError` ``(message, code=TritonError.INTERNAL)``: ``message()``, ``code()``; the code
  chooses the request's wire error (an exception here: ``execute`` may also raise it).
- :class:`TritonModelException`; :class:`ModelConfig` (what ``auto_complete_config`` gets);
  :class:`Logger` (``log_info``/``log_warn``/``log_error``/``log_verbose``: the ``wsserve.model`` log).
- ``get_input_tensor_by_name``, ``get_output_tensor_by_name``, ``get_input_config_by_name``,
  ``get_output_config_by_name``, ``using_decoupled_model_transaction_policy``,
  ``triton_string_to_numpy``, ``triton_to_numpy_type``, ``numpy_to_triton_type``,
  ``serialize_byte_tensor``, ``deserialize_bytes_tensor`` (the length-prefixed form of string
  tensors).

No module state: every value lives on the objects.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import numbers
import threading
import weakref
from typing import Any

import numpy as np

from .. import custommetrics
from . import bls

__all__ = [
    "Tensor",
    "InferenceRequest",
    "InferenceResponse",
    "MetricFamily",
    "Metric",
    "MetricKind",
    "MAX_RESPONSE_PARAMETERS",
    "MAX_RESPONSE_PARAMETERS_BYTES",
    "ResponseSender",
    "TritonError",
    "TritonModelException",
    "ModelConfig",
    "Logger",
    "TRITON_STRING_TO_NUMPY",
    "get_input_tensor_by_name",
    "get_output_tensor_by_name",
    "get_input_config_by_name",
    "get_output_config_by_name",
    "using_decoupled_model_transaction_policy",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "deserialize_bytes_tensor",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
]

TRITON_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
#: Triton's DataType enum numbers (model_config.proto) -> numpy, as ``triton_to_numpy_type`` maps them.
_NUMBER_TO_NUMPY: dict[int, Any] = {
    1: np.bool_, 2: np.uint8, 3: np.uint16, 4: np.uint32, 5: np.uint64, 6: np.int8, 7: np.int16,
    8: np.int32, 9: np.int64, 10: np.float16, 11: np.float32, 12: np.float64, 13: np.object_,
}

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
#: ``InferenceRequest.set_release_flags``' values (Triton's ``TRITONSERVER_RequestReleaseFlag``).
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2


#: Parameters one :class:`InferenceResponse` may carry, and their bytes as JSON.
MAX_RESPONSE_PARAMETERS = 64
MAX_RESPONSE_PARAMETERS_BYTES = 16384
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


class TritonModelException(Exception):
    """Triton's exception for a failed backend call (here: the features wsserve does not offer)."""


class TritonError(Exception):
    """An error a model puts in an :class:`InferenceResponse` (``error=``): that request fails with
    the wire error of its ``code`` (:data:`~.triton_backend.WIRE_ERRORS`).  The codes are Triton's
    ``TRITONSERVER_Error_Code`` numbers.  Unlike Triton's it may also be raised by ``execute``
    (an extension): every request of that ``execute`` then fails with its code."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self._message = str(message)
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {self._code!r})"


class Tensor:
    """A named numpy array: ``Tensor(name, array)``.  ``array`` must be a numpy array (Triton's rule)."""

    def __init__(self, name: str, array: np.ndarray) -> None:
        if not isinstance(name, str):
            raise TritonModelException(f"a Tensor's name must be a str, got {type(name).__name__}")
        if not isinstance(array, np.ndarray):
            raise TritonModelException(f"Tensor {name!r}: the data must be a numpy array, got {type(array).__name__}")
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        return self._array.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        return Tensor(name, np.from_dlpack(capsule))

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, {self._array.dtype} {list(self._array.shape)})"


class InferenceRequest:
    """One inference request.  wsserve builds the ones ``execute`` gets; one a model builds itself
    in ``execute`` (BLS: ``pb_utils.InferenceRequest(model_name=..., ...)``) runs on model
    ``model_name`` (version ``model_version``, -1: its default) with :meth:`exec` or
    :meth:`async_exec`; ``timeout``: microseconds it may take (0: no limit)."""

    def __init__(self, model_name: str = "", requested_output_names: list[str] | None = None,
                 inputs: list[Tensor] | None = None, request_id: str = "", correlation_id: int = 0,
                 flags: int = 0, parameters: dict[str, Any] | str | None = None, model_version: int = -1,
                 timeout: int = 0, **_: Any) -> None:
        #: A decoupled model's request (wsserve sets it): its sender, whose cancellation it reports.
        self._sender: ResponseSender | None = None
        #: Another model's request (wsserve sets it): true once it ended on wsserve's side (any thread).
        self._ended: Any = None
        self._model_name = model_name
        self._outputs = list(requested_output_names or [])
        self._inputs = list(inputs or [])
        self._id = request_id
        self._correlation_id = correlation_id
        self._flags = flags
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(parameters or {})
        self._model_version = model_version
        self._timeout = timeout
        self._caller = bls.current()  # built in an execute: its model calls, whichever thread runs it
        #: what ``execute`` asked for this request (:meth:`set_release_flags`); reset before each execute
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def requested_output_names(self) -> list[str]:
        return list(self._outputs)

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def parameters(self) -> str:
        """The request's parameters as a JSON object string (``"{}"``: none)."""
        return self._parameters

    def model_name(self) -> str:
        return self._model_name

    def is_cancelled(self) -> bool:
        """True once the request ended on wsserve's side: its client cancelled it or left, its
        deadline passed, an unload ended it (any model's request wsserve gave ``execute``; one a
        model built: False; one that was answered: False, read from a request kept past
        ``execute``).  Safe from any thread: it reads a flag the server's loop sets (a plain
        attribute, atomic in CPython)."""
        if self._sender is not None:
            return self._sender.is_cancelled()
        return self._ended is not None and bool(self._ended())

    def model_version(self) -> int:
        return self._model_version

    def timeout(self) -> int:
        """Microseconds a BLS request may take (0: no limit)."""
        return self._timeout

    def _bls_caller(self, what: str) -> bls.Caller:
        """Who makes this BLS request (see :meth:`exec`); refused outside a served model."""
        caller = bls.current() or self._caller or bls.from_code()
        if caller is None:
            raise TritonModelException(f"InferenceRequest.{what}() (business logic scripting, BLS) works only "
                                       "while the model serves, as in Triton (in execute or a thread of the "
                                       "model's; not in initialize or finalize)")
        if caller.gateway is None:
            raise TritonModelException(f"InferenceRequest.{what}() (BLS): model {caller.model!r} was loaded "
                                       "without a server, which has no other models to call")
        return caller

    def exec(self, decoupled: bool = False) -> Any:
        """Run this request on model ``model_name`` and wait for its response.  An unknown model or
        version, bad inputs, a full queue, the timeout...: an error response (``has_error()``).
        ``decoupled=True`` (a decoupled model's request): an iterator of its responses as they
        come, the last one ending it (:class:`wsserve.bls.ResponseIterator`); without it a
        decoupled model's call is an error response, as in Triton."""
        caller = self._bls_caller("exec")
        assert caller.gateway is not None
        if decoupled:
            return caller.gateway.call_decoupled(caller, self)
        return caller.gateway.call(caller, self).result()

    def async_exec(self, decoupled: bool = False) -> Any:
        """As :meth:`exec`, started now; an awaitable of the response, for an ``async def execute``
        (raises :class:`TritonModelException` outside a running asyncio loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise TritonModelException("InferenceRequest.async_exec() is awaited in an 'async def execute', as "
                                       "in Triton; a plain execute uses exec()") from None
        caller = self._bls_caller("async_exec")
        assert caller.gateway is not None
        if decoupled:  # an awaitable of the responses' iterator, set when the first one comes
            return caller.gateway.call_decoupled_async(caller, self)
        return caller.gateway.call_async(caller, self)

    def set_release_flags(self, flags: int) -> None:
        """Request rescheduling (Triton's): ``TRITONSERVER_REQUEST_RELEASE_RESCHEDULE`` in ``execute``
        gives this request to a later ``execute`` again (the same object, its response sender still
        open) instead of releasing it; ``TRITONSERVER_REQUEST_RELEASE_ALL`` (the default) releases
        it.  Checked when ``execute`` returns (:mod:`wsserve.reschedule`): served for a model with
        ``sequence_batching { iterative_sequence: true }`` only (a non-decoupled one returns ``None``
        at the request's place); a request that sent its FINAL flag is released whatever this says
        (that FINAL ends it).  Raises :class:`TritonModelException` for another value (an integer is
        needed, as Triton's binding takes one: not ``2.0`` nor ``True``)."""
        value = flags if isinstance(flags, numbers.Integral) and not isinstance(flags, (bool, np.bool_)) else None
        if value not in (TRITONSERVER_REQUEST_RELEASE_ALL, TRITONSERVER_REQUEST_RELEASE_RESCHEDULE):
            raise TritonModelException(f"set_release_flags: flags must be TRITONSERVER_REQUEST_RELEASE_ALL (1) or "
                                       f"TRITONSERVER_REQUEST_RELEASE_RESCHEDULE (2), got {flags!r}")
        self._release_flags = int(value)

    def release_flags(self) -> int:
        """What :meth:`set_release_flags` last set (wsserve's, read after ``execute``)."""
        return self._release_flags

    def get_response_sender(self) -> ResponseSender:
        """The request's :class:`ResponseSender` (a decoupled model's request only: wsserve answers
        other models' requests with ``execute``'s return value)."""
        if self._sender is None:
            raise TritonModelException("InferenceRequest.get_response_sender() is served for a decoupled model's "
                                       "requests only (model_transaction_policy { decoupled: true } in config.pbtxt)")
        return self._sender


class InferenceResponse:
    """``execute``'s answer to one request: its output tensors, or an ``error`` (a :class:`TritonError`)."""

    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | str | None = None,
                 parameters: dict[str, bool | int | str] | None = None) -> None:
        self._tensors = list(output_tensors or [])
        self._error = TritonError(error) if isinstance(error, str) else error
        self._parameters = _response_parameters(parameters)

    def parameters(self) -> str:
        """The response's parameters as a JSON object string (``"{}"``: none), as Triton's."""
        return json.dumps(self._parameters)

    def parameters_dict(self) -> dict[str, bool | int | str]:
        """The parameters as a dict (wsserve's: what the client gets)."""
        return dict(self._parameters)

    def output_tensors(self) -> list[Tensor]:
        return list(self._tensors)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def _response_parameters(parameters: Any) -> dict[str, bool | int | str]:
    """``InferenceResponse(parameters=)`` checked: Triton's type rule and messages (``pb_stub.cc``
    ``PyParametersToJSON``), then wsserve's bounds; raises :class:`TritonModelException`."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise TritonModelException(f"InferenceResponse parameters must be a dict, got {type(parameters).__name__}")
    if len(parameters) > MAX_RESPONSE_PARAMETERS:
        raise TritonModelException(f"InferenceResponse has {len(parameters)} parameters; at most "
                                   f"{MAX_RESPONSE_PARAMETERS} (MAX_RESPONSE_PARAMETERS)")
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonModelException(f"Expect parameters keys to have type str, found type {type(key)}")
        if not isinstance(value, (bool, int, str)):
            raise TritonModelException(f"Expect parameters values to have type bool/int/str, found type "
                                       f"{type(value)} (parameter {key!r})")
        if type(value) is not bool and isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            raise TritonModelException(f"parameter {key!r}: {value} does not fit in int64")
        for what, text in (("key", key), ("value", value)):
            if isinstance(text, str) and not custommetrics.is_utf8(text):  # no transport could send it (JSON, protobuf)
                raise TritonModelException(f"parameter {key!r}: its {what} is not valid UTF-8 (a lone surrogate)")
    out = {str(k): bool(v) if isinstance(v, bool) else int(v) if isinstance(v, int) else str(v)
           for k, v in parameters.items()}
    size = len(json.dumps(out).encode())
    if size > MAX_RESPONSE_PARAMETERS_BYTES:
        raise TritonModelException(f"InferenceResponse parameters are {size} bytes as JSON; at most "
                                   f"{MAX_RESPONSE_PARAMETERS_BYTES} (MAX_RESPONSE_PARAMETERS_BYTES)")
    return out


class MetricKind(enum.IntEnum):
    """Triton's metric kinds (``pb_utils.MetricFamily.COUNTER`` ...)."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


_KIND_NAMES = {MetricKind.COUNTER: "counter", MetricKind.GAUGE: "gauge", MetricKind.HISTOGRAM: "histogram"}


def _metrics_owner() -> custommetrics.Owner | None:
    """The custom metrics of the model whose code runs here: at load, in ``execute`` or
    ``finalize`` (:func:`wsserve.custommetrics.owning`), or in a thread of the model's own."""
    owner = custommetrics.current_owner()
    if owner is None:
        caller = bls.current() or bls.from_code(2)
        owner = None if caller is None else caller.metrics
    return owner


def _number(value: Any, what: str) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"Metric.{what}() takes a number, got {type(value).__name__}")


class Metric:
    """One series of a :class:`MetricFamily` (made by :meth:`MetricFamily.Metric`).  Its value
    methods raise :class:`TritonModelException` for what its kind lacks (Triton's messages: a
    counter incremented by a negative value, ``set`` on a counter, ``observe`` on a counter or
    gauge, ``value()`` of a histogram), and once its family was deleted."""

    def __init__(self, handle: custommetrics.SeriesHandle) -> None:
        self._handle = handle
        weakref.finalize(self, handle.release)  # dropped by the model: removed, as Triton's destructor does

    def _do(self, op: str, what: str, *args: float) -> Any:
        try:
            return getattr(self._handle, op)(*args)
        except custommetrics.MetricError as exc:
            raise TritonModelException(f"{what}: {exc}") from None

    def increment(self, value: float) -> None:
        self._do("increment", "Failed to increment metric value", _number(value, "increment"))

    def set(self, value: float) -> None:
        self._do("set", "Failed to set metric value", _number(value, "set"))

    def observe(self, value: float) -> None:
        self._do("observe", "Failed to observe metric value", _number(value, "observe"))

    def value(self) -> float:
        return float(self._do("value", "Failed to get metric value"))


class MetricFamily:
    """Triton's ``pb_utils.MetricFamily(name, description, kind)``: a custom metric family on the
    server's ``/metrics`` (see the module docstring and :mod:`wsserve.custommetrics`).  Raises
    :class:`TritonModelException` (``Error when creating MetricFamily: ...``) for a bad name,
    one of the server's own, a name taken by another kind, the cap, or outside a served model."""

    COUNTER = MetricKind.COUNTER
    GAUGE = MetricKind.GAUGE
    HISTOGRAM = MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: MetricKind) -> None:
        owner = _metrics_owner()
        if owner is None:
            raise TritonModelException("Error when creating MetricFamily: a MetricFamily is made by a served "
                                       "model's code (initialize, execute, finalize or a thread of the model's)")
        try:
            kind_name = _KIND_NAMES[MetricKind(kind)]
        except (ValueError, TypeError):
            raise TritonModelException(f"Error when creating MetricFamily: kind must be MetricFamily.COUNTER, "
                                       f"GAUGE or HISTOGRAM, got {kind!r}") from None
        try:
            self._handle = owner.family(name, description, kind_name)
        except custommetrics.MetricError as exc:
            raise TritonModelException(f"Error when creating MetricFamily: {exc}") from None
        weakref.finalize(self, self._handle.release)  # dropped: its metrics removed, as Triton's destructor does

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:  # noqa: N802 - Triton's name
        """A series of this family with ``labels``; ``buckets`` (a list of increasing upper bounds)
        for a histogram only, and required there."""
        try:
            return Metric(self._handle.metric(labels, buckets))
        except custommetrics.MetricError as exc:
            raise TritonModelException(f"Failed to create metric. {exc}") from None


class ResponseSender:
    """A decoupled model's way to answer one request, from any thread, any number of times, until
    the one ``send`` whose ``flags`` is :data:`TRITONSERVER_RESPONSE_COMPLETE_FINAL` (with or
    without a response).  ``deliver(response, final)`` is wsserve's (called in the sender's
    thread, never twice at once for one sender: it checks the response and hands it to the
    request's client); ``cancelled()`` says whether the request ended on wsserve's side (the
    client cancelled or left, the model was unloaded, a response failed it).

    ``send`` raises :class:`TritonModelException` with Triton's messages: a flag other than 0 or
    FINAL, no response with flags 0, any send after the FINAL one.  A response sent after the
    request ended on wsserve's side is dropped (the model learns it from ``is_cancelled()``)."""

    def __init__(self, deliver: Any, cancelled: Any) -> None:
        self._deliver = deliver
        self._cancelled = cancelled
        self._lock = threading.Lock()
        self._closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if flags != TRITONSERVER_RESPONSE_COMPLETE_FINAL and flags != 0:
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            raise TritonModelException("Inference Response object must be provided when the response flags is "
                                       "set to zero.")
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(f"Unable to send response. Expected a pb_utils.InferenceResponse, "
                                       f"got {type(response).__name__}.")
        with self._lock:  # one send at a time per request: its responses reach the client in send order
            if self._closed:
                raise TritonModelException("Unable to send response. Response sender has been closed.")
            final = flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL
            if final:
                self._closed = True
            self._deliver(response, final)

    def is_cancelled(self) -> bool:
        return bool(self._cancelled())


class ModelConfig:
    """What ``auto_complete_config(auto_complete_model_config)`` gets: the configuration as a dict
    (``as_dict()``) and Triton's setters.  wsserve does not complete a configuration from the model:
    a setter that would change config.pbtxt's meaning raises ``ValueError`` saying to write it there."""

    def __init__(self, model_config: str) -> None:
        self._config: dict[str, Any] = json.loads(model_config)

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def _refuse(self, what: str) -> None:
        raise ValueError(f"auto_complete_config of model {self._config.get('name', '')!r} {what}: wsserve does not "
                         "auto-complete a Python model's configuration; write it in config.pbtxt")

    def set_max_batch_size(self, max_batch_size: int) -> None:
        if max_batch_size != self._config.get("max_batch_size", 0):
            self._refuse(f"sets max_batch_size {max_batch_size} (config.pbtxt: {self._config.get('max_batch_size', 0)})")

    def set_dynamic_batching(self) -> None:
        if "dynamic_batching" not in self._config:
            self._refuse("sets dynamic_batching")

    def _add(self, side: str, tensor: dict[str, Any]) -> None:
        listed = next((t for t in self._config.get(side, []) if t.get("name") == tensor.get("name")), None)
        if listed is None:
            self._refuse(f"adds {side} {tensor.get('name')!r}")
        elif "data_type" in tensor and tensor["data_type"] != listed.get("data_type"):
            self._refuse(f"gives {side} {tensor['name']!r} data_type {tensor['data_type']} (config.pbtxt: {listed.get('data_type')})")
        elif "dims" in tensor and [int(d) for d in tensor["dims"]] != [int(d) for d in listed.get("dims", [])]:
            self._refuse(f"gives {side} {tensor['name']!r} dims {list(tensor['dims'])} (config.pbtxt: {listed.get('dims')})")

    def add_input(self, input: dict[str, Any]) -> None:  # noqa: A002 - Triton's parameter name
        self._add("input", input)

    def add_output(self, output: dict[str, Any]) -> None:
        self._add("output", output)

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        want = bool(transaction_policy_dict.get("decoupled", False))
        if want != using_decoupled_model_transaction_policy(self._config):
            self._refuse(f"sets model_transaction_policy decoupled {str(want).lower()} (config.pbtxt: "
                         f"{str(not want).lower()})")


class Logger:
    """Triton's ``pb_utils.Logger``: the model's messages go to the server's log (``wsserve.model``)."""

    INFO, WARNING, ERROR, VERBOSE = range(4)
    _LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.DEBUG}

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        logging.getLogger("wsserve.model").log(Logger._LEVELS.get(level, logging.INFO), "%s", message)

    @staticmethod
    def log_info(message: str) -> None:
        Logger.log(message, Logger.INFO)

    @staticmethod
    def log_warn(message: str) -> None:
        Logger.log(message, Logger.WARNING)

    @staticmethod
    def log_error(message: str) -> None:
        Logger.log(message, Logger.ERROR)

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger.log(message, Logger.VERBOSE)


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    """The request's input ``name``, or None."""
    return next((t for t in inference_request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    """The response's output ``name``, or None."""
    return next((t for t in inference_response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``input`` entry ``name`` of a parsed model configuration, or None."""
    return next((t for t in model_config.get("input", []) if t["name"] == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``output`` entry ``name`` of a parsed model configuration, or None."""
    return next((t for t in model_config.get("output", []) if t["name"] == name), None)


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """``"TYPE_FP32"`` -> ``np.float32`` (``KeyError`` for a name that is not a Triton type)."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> Any:
    """A Triton DataType number -> the numpy type; None for an unknown number."""
    return _NUMBER_TO_NUMPY.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """A numpy type -> the Triton DataType number; None when Triton has none."""
    for number, np_type in _NUMBER_TO_NUMPY.items():
        if np.dtype(np_type) == np.dtype(data_type):
            return number
    return None


def serialize_byte_tensor(input_tensor: np.ndarray) -> np.ndarray:
    """A string tensor (object array of ``bytes``/other values, or a numpy ``S`` array) as one
    0-d object array holding its elements in row-major order, each a 4-byte little-endian length
    then its bytes (a value that is not ``bytes``: its ``str`` UTF-8 encoded), as Triton's does;
    an empty tensor: ``np.empty([0])``.  Raises :class:`TritonModelException` for another dtype."""
    if input_tensor.size == 0:
        return np.empty([0])
    if input_tensor.dtype != np.object_ and input_tensor.dtype.type != np.bytes_:
        raise TritonModelException("cannot serialize bytes tensor: invalid datatype")
    parts = []
    for v in input_tensor.flat:
        data = v if isinstance(v, bytes) else str(v).encode("utf-8")
        parts.append(len(data).to_bytes(4, "little") + data)
    return np.asarray(b"".join(parts), dtype=np.object_)


def deserialize_bytes_tensor(encoded_tensor: Any) -> np.ndarray:
    """The elements of a length-prefixed buffer (:func:`serialize_byte_tensor`'s form) as a 1-D
    object array of ``bytes``.  Raises :class:`TritonModelException` when a length runs past the
    buffer."""
    if isinstance(encoded_tensor, np.ndarray):
        data = encoded_tensor.item() if encoded_tensor.dtype == np.object_ else encoded_tensor.tobytes()
    else:
        data = bytes(encoded_tensor)
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise TritonModelException("cannot deserialize bytes tensor: it ends inside an element's length")
        size = int.from_bytes(data[pos : pos + 4], "little")
        pos += 4
        if size > len(data) - pos:
            raise TritonModelException("cannot deserialize bytes tensor: an element's length runs past its end")
        out.append(data[pos : pos + size])
        pos += size
    return np.array(out, dtype=np.object_)
