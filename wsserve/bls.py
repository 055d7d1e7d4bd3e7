"""Business Logic Scripting (BLS): a Triton Python model's ``execute`` calling the server's models.

:class:`BlsGateway` is what ``pb_utils.InferenceRequest(...).exec()`` runs through (see
:mod:`wsserve.repository.bls` for the model's side).  One per server, made by the registry and
set on every Triton Python model it loads (``bls_gateway``, before the warm-up).  A call:

- starts in the model's thread (:meth:`BlsGateway.call`, thread-safe) and is handed to the event
  loop through the gateway's incoming queue: the loop starts at most :data:`BLS_STARTS_PER_TURN`
  calls per turn of the loop, in the order they came, so an ``execute`` firing thousands of
  ``async_exec`` calls at once never holds the loop (every connection's reads and writes) for
  longer than that many starts; the thread waits on a future that always ends with a
  ``pb_utils.InferenceResponse``, an error one for every failure (never raised), with Triton's
  code: an unknown model or version ``NOT_FOUND`` naming it; bad inputs (names, dtypes, shapes,
  rows; a requested output the model lacks) ``INVALID_ARG`` naming it; a full queue, the
  ``timeout``, the server stopping ``UNAVAILABLE``; a refused call (below; one to a generative
  model, a plain one to a decoupled model) ``UNSUPPORTED``; one to a stateful model
  (``sequence_batching``: a BLS request carries no sequence) ``INVALID_ARG`` saying so; the called
  model's own error its code.
- on the loop, finds the version as every request does (``pool.lookup``: ``model_version`` -1 is
  the default version, another pins one) and checks and converts the inputs with the OIP's checks
  (:func:`wsserve.rest.oip.input_header` / :func:`~wsserve.rest.oip.input_array`: the same bounds
  as a wire request, ``--max-rows`` and the model's ``max_batch_size`` included), then submits it to
  that version's worker: the same batching queue, limits (``max_queue_rows``, ``max_queue_bytes``,
  a model's ``max_queue_requests``) and batches as the clients' requests, any predictive model (a
  built-in, ONNX, Python, Triton Python, an ensemble), counted in that version's statistics as a
  request once submitted (success or failure, as an ensemble's step requests).  The inputs of one
  caller model's calls in flight count against ``--max-inflight-bytes``, as a connection's do:
  checked from the shapes and the model's dtypes before any value is read or converted on the
  loop (a string tensor's elements are made ``bytes``, and counted, in the caller's thread).
- a model unloaded meanwhile finishes what it holds (its worker drains before it closes), so a call
  queued on it ends normally; one looked up after gets ``NOT_FOUND``.

Deadlocks are refused, not waited into.  A caller's ``execute`` holds one of its model's instances
while it waits; so a call that closes a cycle of waits among the calls in flight (a model calling
itself, ``A`` -> ``B`` while ``B`` -> ``A`` is waiting, through an ensemble's steps too) could
wait forever for an instance that only it frees: it is refused (``UNSUPPORTED``, naming the
cycle).  So is a call that would make a chain of more than :data:`MAX_BLS_DEPTH` nested calls in
flight (each holds a thread and its inputs).  Unlike Triton, a model therefore cannot call itself
recursively, whatever its instance count.  The checks see every caller model's calls in flight
(by model name, any version), so they are exact for cycles and conservative for depth.  A model
that uses BLS never runs on the event loop (a Triton Python model's ``off_loop``); a call made on
the loop thread anyway would deadlock and gets an error response instead.

``timeout`` (microseconds, Triton's) bounds the whole call, counted from its hand-over (in the
caller's thread): waiting in the gateway's incoming queue, queued and computing; past it the call
is cancelled in its model's queue and answered ``UNAVAILABLE`` (one still in the incoming queue is
answered so when the loop reaches it, never started).  The called model's worker is given the same
deadline (a request past it never starts there); whichever of the two notices it first, the caller
reads the one answer ``BLS request to model ... timed out after N us`` (a deadline error of the
called model within :data:`TIMEOUT_SLACK_S` of the call's timeout is that timeout; an earlier one,
such as its queue policy's ``default_timeout_microseconds``, keeps its own message).  Without it a
call waits for its model.  The caller's own request being cancelled does not cancel its ``execute`` nor the calls it
makes (as in Triton): they end on their own, their answers unused; so does a call whose
``async_exec`` awaitable its caller cancelled (``asyncio.wait_for`` gave up on it, or its ``async
def execute`` ended first): the call's future cannot be cancelled.  :meth:`BlsGateway.close` (the
server stopping, after the drain) answers every call still in flight ``UNAVAILABLE`` and any later
one too, so no model thread is left waiting.

A decoupled model is called with ``exec(decoupled=True)`` (:meth:`BlsGateway.call_decoupled`) or
``async_exec(decoupled=True)`` (:meth:`BlsGateway.call_decoupled_async`): the call is the model's
sink (``on_response``, :mod:`wsserve.decoupled`), each response handed to the caller's
:class:`ResponseIterator` as it comes, the last one ending the call (see there); the responses the
caller has not read yet count against the stream's bound (``--max-write-buffer-bytes``: past it an
error response ends the call and the called request is cancelled, its sender never blocked), and
the caller cancelling or dropping the iterator cancels the called request.  ``exec()`` without it
to a decoupled model is refused with Triton's message.

Event-loop thread only, except :meth:`BlsGateway.call`, :meth:`BlsGateway.call_async`,
:meth:`BlsGateway.call_decoupled`, :meth:`BlsGateway.call_decoupled_async` and the iterator's reads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import weakref
from collections import Counter, deque
from collections.abc import Callable
from time import monotonic
from typing import Any

import numpy as np

from .config import ServerConfig
from .dtypes import array_bytes, is_float
from .errors import (
    BadRequest,
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    ShuttingDown,
    WsserveError,
)
from .pool import ModelEntry
from .repository import triton_pb_utils as pb
from .repository.bls import Caller
from .rest import oip
from .worker import (
    Tensors,
    concat_rows,
    count_rows,
    merge_parameters,
    too_many_parameters,
)

__all__ = ["BlsGateway", "BLS_STARTS_PER_TURN", "MAX_BLS_DEPTH", "ResponseIterator"]

log = logging.getLogger("wsserve.bls")

#: Nested BLS calls a chain in flight may hold (A -> B -> C is 2).
MAX_BLS_DEPTH = 8

#: BLS calls the event loop starts per turn (each checks and converts its inputs and queues them,
#: tens of microseconds); the rest wait for the next turn, after the loop has polled its sockets.
BLS_STARTS_PER_TURN = 32

#: How early (seconds) a called model's deadline error may come and still be the call's own
#: ``timeout``: the worker's timer and the gateway's are due together, on a loop clock that may be
#: millisecond-grained (uvloop's), so either may run first.
TIMEOUT_SLACK_S = 0.01

#: numpy dtype -> the OIP datatype name an input of it comes as.
_OIP_OF: dict[np.dtype, str] = {oip.DATATYPES[name]: name for name in oip.DATATYPES if name != "BF16"}  # (below)

#: A wire error's code -> Triton's code (``pb_utils.TritonError``) when it carries none of its own.
_TRITON_CODE = {
    "unknown_model": pb.TritonError.NOT_FOUND,
    "invalid_input": pb.TritonError.INVALID_ARG,
    "bad_request": pb.TritonError.INVALID_ARG,
    "overloaded": pb.TritonError.UNAVAILABLE,
    "shutting_down": pb.TritonError.UNAVAILABLE,
    "deadline_exceeded": pb.TritonError.UNAVAILABLE,
    "cancelled": pb.TritonError.CANCELLED,
    "internal": pb.TritonError.INTERNAL,
}
#: A Triton model's error answered by its gRPC status name (``TritonError.to_wire``) -> its code.
_CODE_OF_GRPC = {"UNKNOWN": 0, "INTERNAL": 1, "NOT_FOUND": 2, "INVALID_ARGUMENT": 3, "UNAVAILABLE": 4,
                 "UNIMPLEMENTED": 5, "ALREADY_EXISTS": 6, "CANCELLED": 7}


class _Refused(WsserveError):
    """A call the gateway refuses (a cycle, too deep, a generative model): ``UNSUPPORTED``."""

    code = "bad_request"


def _error(exc: BaseException) -> pb.InferenceResponse:
    """The error response for ``exc`` (its Triton code: see the module docstring)."""
    if isinstance(exc, _Refused):
        code = pb.TritonError.UNSUPPORTED
    else:
        grpc = getattr(exc, "grpc_status", None)
        code = _CODE_OF_GRPC.get(grpc, pb.TritonError.INTERNAL) if grpc is not None else \
            _TRITON_CODE.get(getattr(exc, "code", ""), pb.TritonError.INTERNAL)
    return pb.InferenceResponse(error=pb.TritonError(str(exc), code))


class _Call:
    """One BLS request: the :class:`~wsserve.worker.PredictSink` its model's worker delivers to,
    and the future its caller waits on (set once, on the loop)."""

    def __init__(self, gateway: BlsGateway, caller: str, request: Any) -> None:
        self.gateway = gateway
        self.caller = caller
        self.model = request.model_name()
        self.version = request.model_version()
        self.timeout_us = request.timeout()
        self.handed_at = monotonic()  # its timeout counts from here: waiting in the incoming queue is queued too
        # copied here, in the caller's thread: an async_exec's caller may change its arrays meanwhile;
        # a string tensor's elements made bytes here too, and counted (never on the loop, unbounded)
        self.given: list[tuple[str, Any, int]] = []
        self.bad: WsserveError | None = None  # an input this thread could not read (its answer)
        try:
            self.given = [(t.name(), *_own(t.as_numpy(), t.name())) for t in request.inputs()]
        except WsserveError as exc:
            self.bad = exc
        self.requested = list(request.requested_output_names())
        self.request_id = str(request.request_id())
        self.future: concurrent.futures.Future[pb.InferenceResponse] = concurrent.futures.Future()
        # running from the start: the caller cannot cancel it (an async_exec awaitable cancelled by
        # asyncio.wait_for, or by its execute ending, cancels only itself), so it is always set once
        self.future.set_running_or_notify_cancel()
        #: an ``async_exec``'s: the model's loop and its asyncio future, set with the others the
        #: same turn ended (one wake-up of that loop per turn, not one per call)
        self.target: tuple[asyncio.AbstractEventLoop, asyncio.Future[pb.InferenceResponse]] | None = None
        # as a sink (set when submitted)
        self.inputs: Tensors | None = None
        self.n = 0
        self.nbytes = 0
        self.finished = False
        self.entry: ModelEntry | None = None
        self.item: Any = None
        self.edges: list[tuple[str, str]] = []
        self.admitted = False  # its bytes and edges are counted (released at its end)
        #: the called model's response parameters for the rows (or response) about to be delivered
        self._parameters: dict[str, Any] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: float | None = None  # monotonic, from its timeout (None: no timeout)
        self.queued_at = 0.0  # monotonic, when submitted
        self.queue_s = -1.0  # its wait before its first batch (-1: no rows yet)
        self._parts: list[Tensors] = []
        self._rows = 0

    def answer_now(self, response: pb.InferenceResponse) -> None:
        """Answer a call that never reached the loop (in the caller's thread)."""
        self.finished = True
        self.future.set_result(response)

    def wanted_outputs(self) -> frozenset[str] | None:
        """The outputs asked for (an ensemble runs only the steps they need); None: all."""
        return frozenset(self.requested) if self.requested else None

    def on_rows(self, start: int, outputs: Tensors, batch_rows: int, queue_s: float, compute_s: float) -> None:
        if self.finished:
            return
        if self.queue_s < 0:
            self.queue_s = max(queue_s, 0.0)
        self._parts.append(outputs)
        self._rows += count_rows(outputs)
        if self._rows >= self.n:
            parts, self._parts = self._parts, []
            try:
                response = self._response(parts[0] if len(parts) == 1 else concat_rows(parts))
            except WsserveError as exc:
                response = _error(exc)
            self.gateway._end(self, response)

    def on_started(self, queue_s: float) -> None:
        """A decoupled called model's worker's: its execute starts after ``queue_s`` in its queue
        (the called model's statistics' queue time; a model that is not decoupled gives it with its rows)."""
        if self.queue_s < 0:
            self.queue_s = max(queue_s, 0.0)

    def on_error(self, exc: WsserveError) -> None:
        if self.finished:
            return
        if isinstance(exc, DeadlineExceeded) and self.deadline is not None \
                and monotonic() >= self.deadline - TIMEOUT_SLACK_S:
            # the called model's worker noticed the call's own deadline before the gateway's timer
            # did (two timers due together): the same timeout, answered with the same message (the
            # worker has ended the request itself: nothing to cancel there)
            exc = self.timed_out()
        self.gateway._end(self, _error(exc))

    def timed_out(self) -> DeadlineExceeded:
        """The error of a call past its ``timeout``, whichever timer noticed it."""
        return DeadlineExceeded(f"BLS request to model {self.model!r} timed out after {self.timeout_us} us")

    def on_parameters(self, parameters: dict[str, Any] | None) -> None:
        """The worker's: the called model's response parameters (a Triton Python model's
        ``InferenceResponse(parameters=)``), given before the rows they belong to.  A request split
        over several batches merges its parts' (a later part's value of a key wins), bounded by
        :data:`~wsserve.worker.MAX_MERGED_PARAMETERS` (past it the call ends with ``INTERNAL``), as a
        client's request merges them; the caller reads them with ``response.parameters()``.  A
        decoupled model's response (:class:`_StreamCall`) takes the ones given just before it."""
        if parameters and not self.finished:
            merged = merge_parameters(self._parameters, parameters)
            if merged is None:
                self.on_error(too_many_parameters(self.model))
                return
            self._parameters = merged

    def _response(self, outputs: Tensors) -> pb.InferenceResponse:
        """The model's outputs as Triton's response: each requested one (all without a list) by
        name, shaped as a wire answer is (no batch dimension for a model without one)."""
        assert self.entry is not None
        _, specs = oip.signature(self.entry.model)
        named = outputs if isinstance(outputs, dict) else {specs[0].name: outputs}
        batched = getattr(self.entry.model, "batching", True)
        wanted = self.requested or list(named)
        for name in wanted:
            if name not in named:
                raise InvalidInput(f"model {self.model!r} has no output {name!r}; it has {', '.join(map(repr, named))}")
        parameters, self._parameters = self._parameters, None
        return pb.InferenceResponse([pb.Tensor(k, named[k] if batched else named[k][0]) for k in wanted],
                                    parameters=parameters or None)


class ResponseIterator:
    """What ``exec(decoupled=True)`` returns (and ``await async_exec(decoupled=True)``): the called
    model's responses, each as its model sent it, in order, the last one ending the call: the
    response sent with ``TRITONSERVER_RESPONSE_COMPLETE_FINAL``, an empty response (no outputs, no
    error) for a FINAL flag sent alone, or an error response (the model's error, the timeout, the
    unread bound, a cancel...).  A model that is not decoupled answers one response, the last.

    - ``for response in it`` waits in the caller's thread; ``async for response in it`` (wsserve's
      extension) awaits on the model's own loop instead.  After the last one it stops; iterated again
      it yields nothing (Triton's replays the responses: wsserve does not keep them).
    - :meth:`cancel` (Triton's) and dropping the iterator before its last response cancel the called
      request: its model sees ``is_cancelled()``; what it sends after is dropped.
    - The responses received and not yet read are bounded by the called model's stream bound
      (``--max-write-buffer-bytes``; see :mod:`wsserve.decoupled`): reading one frees its bytes.

    Made by :class:`BlsGateway`; :meth:`_push` runs on the server's loop, the rest in any thread."""

    def __init__(self, cancel: Callable[[], None]) -> None:
        self._cond = threading.Condition()
        self._items: deque[tuple[pb.InferenceResponse, bool, int]] = deque()
        self._ended = False  # its last response is queued
        self._finished = False  # its last response was read
        self._cancel = cancel
        self._cancelling = False
        #: the called stream's ``written`` (a decoupled model's): a read response's bytes freed
        self._written: Callable[[int], None] | None = None
        #: an ``async for`` waiting (its loop and future); an ``async_exec``'s awaitable, until the first response
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]] | None = None
        self._first: tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]] | None = None

    def __iter__(self) -> ResponseIterator:
        return self

    def __next__(self) -> pb.InferenceResponse:
        with self._cond:
            while not self._items and not self._finished:
                self._cond.wait()
            if not self._items:
                raise StopIteration
            response = self._take()
        return response

    def __aiter__(self) -> ResponseIterator:
        return self

    async def __anext__(self) -> pb.InferenceResponse:
        while True:
            with self._cond:
                if self._items:
                    return self._take()
                if self._finished:
                    raise StopAsyncIteration
                loop = asyncio.get_running_loop()
                future: asyncio.Future[Any] = loop.create_future()
                self._waiter = (loop, future)
            await future

    def cancel(self) -> None:
        """Cancel the called request (a no-op once its last response came); the iterator then ends
        with what came before and a ``CANCELLED`` error response."""
        with self._cond:
            if self._ended or self._cancelling:
                return
            self._cancelling = True
        self._cancel()

    def __del__(self) -> None:
        if not self._ended:
            try:
                self.cancel()
            except Exception:  # noqa: BLE001 - at interpreter exit: nothing left to cancel
                pass

    def _take(self) -> pb.InferenceResponse:
        """The next response (``_cond`` held, one queued)."""
        response, final, nbytes = self._items.popleft()
        if final:
            self._finished = True
        if nbytes and self._written is not None:
            self._written(nbytes)
        return response

    def _push(self, response: pb.InferenceResponse, final: bool, nbytes: int) -> list[tuple[
            asyncio.AbstractEventLoop, asyncio.Future[Any], Any]]:
        """Queue a response; the async futures to set (loop, future, value) for the loop to post."""
        wake = []
        with self._cond:
            if self._ended:
                return []
            self._items.append((response, final, nbytes))
            self._ended = final
            if self._waiter is not None:
                wake.append((*self._waiter, None))
                self._waiter = None
            if self._first is not None:
                wake.append((*self._first, self))
                self._first = None
            self._cond.notify_all()
        return wake


class _StreamCall(_Call):
    """A ``decoupled=True`` call: a decoupled model's sink (``on_response``), its responses handed to
    its :class:`ResponseIterator` as they come (a model that is not decoupled: its one response)."""

    def __init__(self, gateway: BlsGateway, caller: str, request: Any) -> None:
        super().__init__(gateway, caller, request)
        iterator = ResponseIterator(self._cancel_threadsafe)
        #: held by the caller, so this one is weak (dropping it cancels the call); ``keep`` holds it
        #: until the caller has it (an ``async_exec``'s awaitable set)
        self.iterator = weakref.ref(iterator)
        self.keep: ResponseIterator | None = iterator
        self.consumer = f"BLS caller model {caller!r}"  # named by a slow-consumer error

    def answer_now(self, response: pb.InferenceResponse) -> None:
        super().answer_now(response)
        iterator = self.keep or self.iterator()
        if iterator is not None:
            iterator._push(response, True, 0)  # no async reader is waiting yet

    def reading(self, stream: Any) -> None:
        """Its called decoupled stream: a response read frees its bytes there."""
        iterator = self.keep or self.iterator()
        if iterator is not None:
            iterator._written = stream.written

    def _cancel_threadsafe(self) -> None:
        try:
            self.gateway._loop.call_soon_threadsafe(self.gateway._cancelled, self)
        except RuntimeError:  # the server's loop has closed: close() ended the call
            pass

    def on_response(self, outputs: dict[str, np.ndarray] | None, final: bool, nbytes: int) -> None:
        if self.finished:
            return
        parameters, self._parameters = self._parameters, None
        response = pb.InferenceResponse() if outputs is None else self._streamed(outputs, parameters)
        if final:
            self.gateway._end(self, response)
        else:
            self.gateway._push(self, response, False, nbytes)

    def _streamed(self, outputs: dict[str, np.ndarray], parameters: dict[str, Any] | None) -> pb.InferenceResponse:
        """One streamed response: the requested outputs it carries (all without a list), shaped as
        :meth:`_Call._response`'s, with the model's parameters."""
        assert self.entry is not None
        batched = getattr(self.entry.model, "batching", True)
        wanted = self.requested or list(outputs)
        tensors = [pb.Tensor(k, outputs[k] if batched else outputs[k][0]) for k in wanted if k in outputs]
        return pb.InferenceResponse(tensors, parameters=parameters or None)


class BlsGateway:
    """Runs BLS requests on the pool's models (see the module docstring).  Made on the event loop."""

    def __init__(self, lookup: Callable[[str, str | None], ModelEntry], config: ServerConfig) -> None:
        """``lookup``: the pool's (:meth:`~wsserve.pool.ModelPool.lookup`); ``config``: the limits."""
        self._lookup = lookup
        self._config = config
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._edges: Counter[tuple[str, str]] = Counter()  # (caller, callee) -> calls in flight
        self._bytes: Counter[str] = Counter()  # caller -> input bytes of its calls in flight
        self._pending: set[_Call] = set()
        self._closed = False
        # calls handed over by the models' threads, not yet started (guarded by _lock, as _woken:
        # a _drain is scheduled, and _shut: close() has run, so later calls are answered at once)
        self._lock = threading.Lock()
        self._incoming: deque[_Call] = deque()
        self._woken = False
        self._shut = False
        # answers of async_exec calls ended this turn, per model loop (sent by _post, once per turn)
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[pb.InferenceResponse],
                                                                 pb.InferenceResponse]]] = {}

    # -- the model's thread

    def call(self, caller: Caller, request: Any) -> concurrent.futures.Future[pb.InferenceResponse]:
        """Start ``request`` (a ``pb_utils.InferenceRequest``) for ``caller``; the future of its response."""
        return self._hand_over(_Call(self, caller.model, request))

    def call_async(self, caller: Caller, request: Any) -> asyncio.Future[pb.InferenceResponse]:
        """As :meth:`call`, from a coroutine on the model's own loop (``async_exec``): a future of that
        loop.  The responses of one turn of the server's loop reach each model loop in one wake-up."""
        loop = asyncio.get_running_loop()
        call = _Call(self, caller.model, request)
        call.target = (loop, loop.create_future())
        future = self._hand_over(call)
        if future.done() and not call.target[1].done():  # answered at once, without the server's loop
            call.target[1].set_result(future.result())
        return call.target[1]

    def call_decoupled(self, caller: Caller, request: Any) -> ResponseIterator:
        """``exec(decoupled=True)``: start ``request`` for ``caller``; the iterator of its responses
        (see :class:`ResponseIterator`).  Thread-safe."""
        call = _StreamCall(self, caller.model, request)
        iterator = call.keep
        assert iterator is not None
        call.keep = None  # the caller holds it: dropping it cancels the call
        self._hand_over(call)
        return iterator

    def call_decoupled_async(self, caller: Caller, request: Any) -> asyncio.Future[ResponseIterator]:
        """``async_exec(decoupled=True)``, from a coroutine on the model's own loop: a future of that
        loop set to the call's iterator when its first response (or its end) comes, as Triton's.
        That future cancelled before (``asyncio.wait_for`` gave up) cancels the call."""
        loop = asyncio.get_running_loop()
        call = _StreamCall(self, caller.model, request)
        iterator = call.keep
        assert iterator is not None
        future: asyncio.Future[ResponseIterator] = loop.create_future()

        def gave_up(done: asyncio.Future[ResponseIterator]) -> None:
            # the awaitable cancelled (asyncio.wait_for gave up, its execute ended) before the first
            # response: the caller never gets the iterator, so the call is cancelled as a dropped one's
            if done.cancelled():
                iterator.cancel()

        future.add_done_callback(gave_up)
        with iterator._cond:
            iterator._first = (loop, future)
        self._hand_over(call)
        with iterator._cond:
            # answered at once, in this thread (answer_now's push took _first without waking it)
            if iterator._items and not future.done():
                iterator._first = None
                future.set_result(iterator)
        return future

    def _hand_over(self, call: _Call) -> concurrent.futures.Future[pb.InferenceResponse]:
        """Queue ``call`` for the loop (waking it if no :meth:`_drain` is due); its future."""
        if threading.get_ident() == self._loop_thread:
            call.answer_now(_error(_Refused(
                f"model {call.caller!r} made a BLS request on the event loop thread, where waiting for it would "
                "deadlock the server")))
            return call.future
        with self._lock:
            if self._shut:
                call.answer_now(_error(ShuttingDown("the server is shutting down")))
                return call.future
            self._incoming.append(call)
            if self._woken:  # a _drain is due and will start it
                return call.future
            self._woken = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the server has stopped
            with self._lock:
                stranded = list(self._incoming)
                self._incoming.clear()
                self._woken = False
            for each in stranded:
                each.answer_now(_error(ShuttingDown("the server is shutting down")))
        return call.future

    # -- the loop

    def _drain(self) -> None:
        """Start up to :data:`BLS_STARTS_PER_TURN` handed-over calls; the rest on the next turn."""
        with self._lock:
            calls = [self._incoming.popleft() for _ in range(min(BLS_STARTS_PER_TURN, len(self._incoming)))]
            more = bool(self._incoming)
            self._woken = more
        for call in calls:
            self._start(call)
        if more:
            self._loop.call_soon(self._drain)  # after what this turn runs, and after the next poll

    def close(self) -> None:
        """Answer every call in flight, and every later one, ``UNAVAILABLE`` (the server stops)."""
        self._closed = True
        with self._lock:
            self._shut = True
            waiting = list(self._incoming)
            self._incoming.clear()
        for call in waiting:
            self._start(call)  # refused: the gateway is closed
        for call in list(self._pending):
            if call.entry is not None and call.item is not None:
                call.entry.worker.cancel(call.item)
            self._end(call, _error(ShuttingDown("the server is shutting down")))
        self._post()  # now: the loop may not turn again

    def _start(self, call: _Call) -> None:
        if call.finished:  # its caller cancelled it before it started
            return
        self._pending.add(call)
        try:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            if call.bad is not None:
                raise call.bad
            version = call.version
            if type(version) is not int or version < -1:
                raise InvalidInput(f"model_version must be -1 (the default) or a version number, got {version!r}")
            if type(call.timeout_us) is not int or call.timeout_us < 0:
                raise InvalidInput(f"timeout must be a number of microseconds >= 0, got {call.timeout_us!r}")
            entry = self._lookup(call.model, None if version == -1 else str(version))
            if entry.kind != "predict":
                raise _Refused(f"model {call.model!r} generates text; BLS requests go to predictive models")
            if entry.decoupled and not isinstance(call, _StreamCall):  # Triton's message
                raise _Refused(f"Model {call.model} is using the decoupled. The current BLS request call doesn't support "
                               "models using the decoupled transaction policy. Please use 'decoupled=True' argument to "
                               "the 'exec' or 'async_exec' calls for decoupled models.")
            if getattr(getattr(entry.model, "config", None), "sequence", None) is not None:
                # what its sequence worker would answer is Triton's "must specify a non-zero or non-empty
                # correlation ID", as if the caller had left out something it could give
                raise BadRequest(f"model {call.model!r} is stateful (sequence_batching) and a BLS request cannot "
                                 "take part in a sequence: it carries no sequence id (a pb_utils.InferenceRequest's "
                                 "correlation_id and flags are not passed on)")
            left = None  # seconds of its timeout left (None: no timeout)
            if call.timeout_us:
                waited = monotonic() - call.handed_at
                left = call.timeout_us / 1e6 - waited
                if left <= 0:  # it waited past its timeout in the incoming queue: never started; a
                    # failed request of the called model all the same, as one timed out in its queue
                    stats = getattr(entry.worker, "stats", None)
                    if stats is not None:
                        stats.on_request(False, waited, 0.0)
                    raise DeadlineExceeded(f"BLS request to model {call.model!r} timed out after {call.timeout_us} us "
                                           "(before it started)")
            call.entry = entry
            self._guard(call, entry)
            room = self._config.max_inflight_bytes - self._bytes[call.caller]
            call.inputs, call.n, call.nbytes = _tensors(entry, call.given, self._max_rows(entry), room,
                                                        lambda: self._overloaded(call))
            _, outputs = oip.signature(entry.model)
            for name in call.requested:  # refused before it runs, as Triton refuses it
                if name not in {s.name for s in outputs}:
                    raise InvalidInput(f"model {call.model!r} has no output {name!r}; it has "
                                       f"{', '.join(repr(s.name) for s in outputs)}")
            self._admit(call)
            deadline = None
            if left is not None:  # what is left of it since its hand-over (checks and conversion included)
                left = max(call.handed_at + call.timeout_us / 1e6 - monotonic(), 0.0)
                deadline = call.deadline = monotonic() + left
                call.timer = self._loop.call_later(left, self._timed_out, call)
            call.queued_at = monotonic()
            call.item = entry.worker.submit(call, deadline=deadline)
            if isinstance(call, _StreamCall) and entry.decoupled:  # read responses free their bytes
                call.reading(call.item)
        except WsserveError as exc:
            self._end(call, _error(exc))
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave the caller waiting
            log.exception("BLS request to model %r failed", call.model)
            self._end(call, _error(exc))

    def _max_rows(self, entry: ModelEntry) -> int:
        """Rows a request to ``entry`` may hold: ``--max-rows``, and a batching model's ``max_batch_size``."""
        own = getattr(getattr(entry.model, "config", None), "max_batch_size", 0)
        return min(self._config.max_rows, own) if type(own) is int and own > 0 else self._config.max_rows

    def _admit(self, call: _Call) -> None:
        """Count the call's inputs against ``--max-inflight-bytes`` (per caller model) and its edges."""
        if self._bytes[call.caller] + call.nbytes > self._config.max_inflight_bytes:
            raise self._overloaded(call)
        self._bytes[call.caller] += call.nbytes
        for edge in call.edges:
            self._edges[edge] += 1
        call.admitted = True

    def _overloaded(self, call: _Call) -> Overloaded:
        limit = self._config.max_inflight_bytes
        return Overloaded(f"model {call.caller!r}'s BLS requests in flight would hold more than {limit} bytes "
                          "of inputs (--max-inflight-bytes)")

    def _timed_out(self, call: _Call) -> None:
        call.timer = None
        if call.finished:
            return
        if call.entry is not None and call.item is not None:
            call.entry.worker.cancel(call.item)
        self._end(call, _error(call.timed_out()))

    def _end(self, call: _Call, response: pb.InferenceResponse) -> None:
        """Answer ``call`` (once) and release what it held."""
        if call.finished:
            return
        call.finished = True
        if call in self._pending:
            self._pending.discard(call)
            if call.timer is not None:
                call.timer.cancel()
            if call.admitted:
                self._release(call)
        stats = getattr(call.entry.worker, "stats", None) if call.entry is not None else None
        if stats is not None and call.item is not None:  # a request of the called model (Triton counts it)
            stats.on_request(not response.has_error(), monotonic() - call.queued_at, max(call.queue_s, 0.0))
        call.item = None
        call.future.set_result(response)
        if isinstance(call, _StreamCall):
            self._push(call, response, True, 0)
        if call.target is not None:
            loop, future = call.target
            if not self._outbox:
                self._loop.call_soon(self._post)
            self._outbox.setdefault(loop, []).append((future, response))

    def _push(self, call: _StreamCall, response: pb.InferenceResponse, final: bool, nbytes: int) -> None:
        """Hand one response of a ``decoupled=True`` call to its iterator (dropped once its caller
        dropped it); its ``async`` readers' wake-ups go out with this turn's answers."""
        iterator = call.iterator()
        if iterator is None:
            return
        call.keep = None  # the caller has it now, or gets it with the first response (the outbox holds it)
        for loop, future, value in iterator._push(response, final, nbytes):
            if not self._outbox:
                self._loop.call_soon(self._post)
            self._outbox.setdefault(loop, []).append((future, value))

    def _cancelled(self, call: _StreamCall) -> None:
        """Its caller cancelled a ``decoupled=True`` call (``cancel()``, or dropped its iterator):
        the called request is cancelled (its model sees ``is_cancelled()``) and the call ends
        ``CANCELLED``."""
        if call.finished:
            return
        if call.entry is not None and call.item is not None:
            call.entry.worker.cancel(call.item)
        self._end(call, _error(Cancelled(f"the BLS request to model {call.model!r} was cancelled by its caller")))

    def _post(self) -> None:
        """Hand each model loop the answers of its ``async_exec`` calls that ended since the last post."""
        outbox, self._outbox = self._outbox, {}
        for loop, answers in outbox.items():
            try:
                loop.call_soon_threadsafe(_settle, answers)
            except RuntimeError:  # the model's loop has closed: no one awaits them
                pass

    def _release(self, call: _Call) -> None:
        call.admitted = False
        self._bytes[call.caller] -= call.nbytes
        if self._bytes[call.caller] <= 0:
            del self._bytes[call.caller]
        for edge in call.edges:
            self._edges[edge] -= 1
            if self._edges[edge] <= 0:
                del self._edges[edge]

    # -- deadlocks

    def _guard(self, call: _Call, entry: ModelEntry) -> None:
        """Refuse a call that would close a cycle of waits, or nest too deep (see the module
        docstring); set ``call.edges``: caller -> each model the call holds an instance of."""
        callees = self._models_of(entry)
        graph: dict[str, set[str]] = {}
        for a, b in self._edges:
            graph.setdefault(a, set()).add(b)
        for callee in sorted(callees):
            if callee == call.caller:
                raise _Refused(f"model {call.caller!r} calls itself"
                               + (f" (through ensemble {entry.name!r})" if callee != entry.name else "")
                               + ": a BLS request to the caller's own model could wait for the instance its "
                               "caller holds (a deadlock); wsserve refuses it")
            path = _path(graph, callee, call.caller)
            if path:
                raise _Refused(f"model {call.caller!r} calling {entry.name!r} would close a cycle of BLS requests in "
                               f"flight ({' -> '.join([call.caller, *path])}): a deadlock; wsserve refuses it")
        depth = _longest_into(graph, call.caller) + 1 + max((_longest_from(graph, c) for c in callees), default=0)
        if depth > MAX_BLS_DEPTH:
            raise _Refused(f"model {call.caller!r} calling {entry.name!r} would nest {depth} BLS requests; at most "
                           f"{MAX_BLS_DEPTH}")
        call.edges = [(call.caller, c) for c in sorted(callees)]

    def _models_of(self, entry: ModelEntry) -> set[str]:
        """``entry``'s model, and for an ensemble every model its steps run (ensembles unfolded)."""
        found = {entry.name}
        todo = [entry]
        while todo:
            plan = getattr(todo.pop().model, "plan", None)
            for step in getattr(plan, "steps", ()):
                if step.model in found:
                    continue
                found.add(step.model)
                try:
                    todo.append(self._lookup(step.model, None if step.version is None else str(step.version)))
                except WsserveError:
                    pass  # not served: the ensemble's request fails at that step
        return found


def _settle(answers: list[tuple[asyncio.Future[pb.InferenceResponse], pb.InferenceResponse]]) -> None:
    """On a model's loop: set each ``async_exec`` future not already set (or cancelled by its caller)."""
    for future, response in answers:
        if not future.done():
            future.set_result(response)


def _path(graph: dict[str, set[str]], start: str, goal: str) -> list[str]:
    """A path ``start`` .. ``goal`` in ``graph`` (acyclic), or ``[]``."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        if node == goal:
            return path
        if node in seen:
            continue
        seen.add(node)
        stack.extend((nxt, [*path, nxt]) for nxt in graph.get(node, ()))
    return []


def _longest_from(graph: dict[str, set[str]], node: str) -> int:
    """Edges on the longest path leaving ``node`` (``graph`` is acyclic: the guard keeps it so)."""
    return max((1 + _longest_from(graph, nxt) for nxt in graph.get(node, ())), default=0)


def _longest_into(graph: dict[str, set[str]], node: str) -> int:
    """Edges on the longest path reaching ``node``."""
    return max((1 + _longest_into(graph, a) for a, bs in graph.items() if node in bs), default=0)


def _own(array: Any, name: str) -> tuple[Any, int]:
    """An input's values as the call's own (in the caller's thread): a copy, a string tensor's
    elements as ``bytes`` (``BadRequest`` naming the input for another element), and the bytes a
    string tensor holds (:func:`~wsserve.dtypes.array_bytes`; 0 for another: counted by its type)."""
    if not isinstance(array, np.ndarray):
        return array, 0
    if array.dtype.kind in "SUO":
        own = np.array([_bytes(v, name) for v in array.flat], dtype=object).reshape(array.shape)
        return own, array_bytes(own)
    return np.array(array, copy=True), 0


def _tensors(entry: ModelEntry, given: list[tuple[str, Any, int]], max_rows: int, room: int,
             overloaded: Callable[[], WsserveError]) -> tuple[Tensors, int, int]:
    """A BLS request's tensors (``given``: arrays of the call's own, see :func:`_own`) checked
    against ``entry``'s inputs as a wire request's are, and batched as its worker takes them:
    ``(tensors, rows, bytes)``.  Raises ``InvalidInput`` (or ``BadRequest``) naming the input, and
    ``overloaded()`` when the inputs would hold more than ``room`` bytes as the model takes them,
    before any value is read or converted."""
    specs, _ = oip.signature(entry.model)
    by_name: dict[str, Any] = {}
    strings: dict[str, int] = {}
    for name, array, nbytes in given:
        if name in by_name:
            raise InvalidInput(f"input {name!r} is given twice")
        by_name[name], strings[name] = array, nbytes
    wanted = [s.name for s in specs]
    for name in by_name:
        if name not in wanted:
            raise InvalidInput(f"model {entry.name!r} has no input {name!r}; it takes {', '.join(map(repr, wanted))}")
    rows = None
    ahead = 0  # the inputs' bytes as the model takes them (its dtypes), known before any is converted
    for spec in specs:
        if spec.name not in by_name:
            if spec.optional and by_name:  # config.pbtxt's optional: true (the model gets none)
                continue
            raise InvalidInput(f"input {spec.name!r} of model {entry.name!r} is missing")
        array = by_name[spec.name]
        if not isinstance(array, np.ndarray):
            raise InvalidInput(f"input {spec.name!r} is a {type(array).__name__}, not a numpy array")
        datatype = "BYTES" if array.dtype.kind == "O" else "BF16" if is_float(array.dtype) and array.dtype.kind == "V" \
            else _OIP_OF.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
        if datatype is None:
            raise InvalidInput(f"input {spec.name!r} has dtype {array.dtype}, which no OIP datatype holds")
        shape = list(array.shape)
        oip.input_header(spec, shape, datatype, max_rows)
        n = shape[0] if spec.batched else 1
        if rows is not None and n != rows:
            raise InvalidInput(f"input {spec.name!r} has {n} rows; the other inputs have {rows}")
        rows = n
        ahead += strings[spec.name] if datatype == "BYTES" else array.size * oip.DATATYPES[spec.datatype].itemsize
    assert rows is not None
    if ahead > room:
        raise overloaded()
    arrays = {spec.name: oip.input_array(np.ascontiguousarray(by_name[spec.name]).reshape(-1),
                                         list(by_name[spec.name].shape), spec, borrowed=False)
              for spec in specs if spec.name in by_name}  # (an optional input left out: none)
    if entry.input_width:  # the float-rows fast path: [n, width] as the worker batches it
        only = arrays[specs[0].name].reshape(rows, -1)
        batch: Tensors = np.ascontiguousarray(only, dtype=None if only.dtype.kind == "f" else np.float64)
    elif len(specs) == 1:
        batch = arrays[specs[0].name]
    else:
        batch = arrays
    nbytes = sum(map(array_bytes, batch.values())) if isinstance(batch, dict) else array_bytes(batch)
    return batch, rows, nbytes


def _bytes(value: Any, name: str = "") -> bytes:
    """One element of a string input as ``bytes`` (``str``: UTF-8)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_ | np.str_):
        return _bytes(value.item(), name)
    raise BadRequest(f"input {name!r} holds a {type(value).__name__}; a string tensor holds bytes or str")
