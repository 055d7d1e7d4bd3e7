"""Decoupled models: any number of responses per request, streamed as the model sends them.

A Triton Python model with ``model_transaction_policy { decoupled: true }``
(:class:`~wsserve.repository.triton_backend.TritonPythonModel` with ``decoupled`` true) answers
each request through its ``pb_utils.ResponseSender``, from any thread, until the send flagged
``TRITONSERVER_RESPONSE_COMPLETE_FINAL``.  Its requests do not go through the row-batching queue
(:mod:`wsserve.worker`): :class:`DecoupledWorker` runs one ``execute`` per request, at most
``instances`` (config.pbtxt's ``instance_group`` count) at once, the others waiting by priority
level (config.pbtxt's ``priority_levels``, as Triton's dynamic batcher holds them), each level in
the order it came, under its queue policy (``max_queue_size``, the queue timeout).

A request's sink (the transport's call) has, besides the :class:`~wsserve.worker.PredictSink`
fields (``inputs``, ``n``, ``nbytes``, ``finished``, ``on_error``):

- ``on_response(outputs, final, nbytes)``: one response (``outputs``: ``{name: [rows, ...]}``,
  a model without a batch dimension's with a leading 1: the outputs the response carries, any
  subset of the model's, ``{}`` for none; ``None``: a FINAL flag sent without a response);
  ``final`` true ends the request.  When the transport has written that response to
  its client it calls :meth:`DecoupledStream.written` with ``nbytes``.
- ``on_error(exc)``: the request ended with ``exc`` (no response after it).
- ``on_started(queue_s)`` (optional; a sink without it is not told): its first ``execute`` starts,
  ``queue_s`` seconds (monotonic) after :meth:`DecoupledWorker.submit` took it (its queue time, as
  Triton measures a request's from its arrival at the scheduler to its execute's start): called
  once, before any response, on the loop's thread; a later execute of a rescheduled request is not
  reported.  A request that ends before its execute starts is never reported.  An exception it
  raises is logged (the request goes on).

Contracts (one :class:`DecoupledStream` per request, loop thread unless said):

- Every request ends exactly once: its FINAL (``on_response(..., True)``), an error
  (``on_error``: a response with ``error=``, ``execute`` raising or returning something other
  than None, a wrong response, a deadline, a slow consumer, the model unloaded, the server
  shutting down), or :meth:`DecoupledStream.cancel` (the client cancelled or left: nothing more
  reaches the sink).  From then on ``pb_utils`` reports the request cancelled
  (``is_cancelled()``), and what the model still sends is dropped.
- A request whose model never sends FINAL stays open (counted in flight by its transport) until
  the client cancels or leaves, its deadline passes, or the version is unloaded
  (:meth:`DecoupledWorker.wait_idle` waits for the requests waiting, running and open at most
  ``drain_timeout_s``, then :meth:`DecoupledWorker.close` ends them with ``shutting_down``: an
  ``execute`` that runs until its request is cancelled then sees it cancelled).
- Slow consumers: the responses handed to a sink and not yet written to its client are bounded
  (``max_pending_bytes``, ``--max-write-buffer-bytes``; each response counts its tensors' bytes,
  a string tensor's strings too (:func:`~wsserve.dtypes.array_bytes`), plus
  :data:`RESPONSE_OVERHEAD_BYTES`; a response is always taken when none is pending).  Past
  it the request fails with ``overloaded`` naming the bound; the model's sending thread is never
  blocked (a client that stops reading cannot hold a model instance or thread).  A model that
  bursts more than the bound faster than any client reads fails too: raise the bound for it.
- At most ``max_queue_requests`` requests wait for an instance (at each level for a config.pbtxt
  model, a level's own policy's bound first; one that ended while waiting no longer counts); more
  are refused ``overloaded``.
- One request's failure touches no other.
- Request rescheduling (config.pbtxt ``sequence_batching { iterative_sequence: true }``, the model's
  ``iterative_sequence`` true): an execute that returns with its request's release flags at
  ``TRITONSERVER_REQUEST_RELEASE_RESCHEDULE`` (``set_release_flags``) has that request given to a
  later execute, the same stream (its responses, its deadline, its model-side object
  :attr:`DecoupledStream.model_request`): it goes first in its level's queue, ahead of the
  requests that have not run yet.  :func:`wsserve.reschedule.after_execute` (sans-I/O) decides:
  a request that ended meanwhile (cancel, deadline, unload) or whose FINAL was sent (also from a
  thread, not yet delivered: that FINAL ends it) is released; one rescheduled ``max_reschedules``
  times already ends with ``internal`` naming why, any other of a model without
  ``iterative_sequence`` with ``invalid_input`` (Triton's message and code).  Each reschedule costs an execute in an
  instance's thread: the loop never spins, and other models' workers are not touched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from time import monotonic
from typing import Any

import numpy as np

from .batching import PriorityLevels, QueuePolicy
from .dtypes import array_bytes
from .errors import (
    BadRequest,
    DeadlineExceeded,
    Internal,
    InvalidInput,
    Overloaded,
    ShuttingDown,
    WsserveError,
)
from .reschedule import MAX_RESCHEDULES, RELEASE_ALL, after_execute
from .stats import WorkerStatistics
from .worker import BatchObserver, request_id_of

__all__ = ["DecoupledWorker", "DecoupledStream", "RESPONSE_OVERHEAD_BYTES", "DEFAULT_MAX_QUEUE_REQUESTS", "refusal",
           "decoupled_refusal"]

log = logging.getLogger("wsserve.decoupled")

#: What one response counts against a stream's pending bound besides its tensors' bytes (so a
#: model sending empty responses is bounded too).
RESPONSE_OVERHEAD_BYTES = 64


#: Requests that may wait for an instance when config.pbtxt sets no ``max_queue_size``.
DEFAULT_MAX_QUEUE_REQUESTS = 1024


def refusal(name: str) -> str:
    """Why a transport that answers each request once does not serve decoupled model ``name``."""
    return (f"model {name!r} is decoupled (model_transaction_policy): it streams any number of responses per "
            "request; use gRPC ModelStreamInfer, a WebSocket predict, or HTTP POST .../generate_stream")


def decoupled_refusal(message: str) -> WsserveError:
    """Triton's UNSUPPORTED error for a decoupled model on a route that answers each request once
    (``bad_request``; HTTP 501, gRPC ``UNIMPLEMENTED``, as Triton's frontends answer that code)."""
    error = BadRequest(message)
    error.http_status = 501  # type: ignore[attr-defined]
    error.grpc_status = "UNIMPLEMENTED"  # type: ignore[attr-defined]
    return error


class DecoupledStream:
    """One request of a decoupled model: the sink's side (loop thread) and the model's side
    (:meth:`respond`, :meth:`fail`, :meth:`cancelled`: any thread)."""

    __slots__ = ("_worker", "sink", "inputs", "request_id", "responses", "pending_bytes", "ended", "started",
                 "level", "queue", "_stop", "_timer", "_queue_timer", "_lock", "_sent", "final_sent", "reschedules",
                 "model_request", "queued_at", "queue_s", "__weakref__")

    def __init__(self, worker: DecoupledWorker, sink: Any) -> None:
        self._worker = worker
        self.sink = sink
        self.inputs = sink.inputs
        self.request_id = request_id_of(sink)
        #: responses handed to the sink (loop side)
        self.responses = 0
        #: bytes of the responses the model sent and the transport has not written yet (:meth:`written`),
        #: counted when sent (in the model's thread), so what waits for the loop is bounded too
        self.pending_bytes = 0
        self._sent = 0  # responses the model sent (any thread, under _lock)
        self._lock = threading.Lock()
        self.ended = False  # loop side: ended (the sink told, or cancelled)
        self.started = False  # its execute began
        self.level = 1  # its priority level (1 the highest): it waits behind the levels above it
        self.queue = 0  # the index of the worker's queue it waits in (its level's, or its level's delayed one)
        self._stop = threading.Event()  # any thread: ended, what the model sends is dropped
        self._timer: asyncio.TimerHandle | None = None  # its deadline (waiting or streaming)
        self._queue_timer: asyncio.TimerHandle | None = None  # its level's queue timeout (waiting only)
        self.final_sent = False  # any thread (under _lock): the model sent its FINAL flag
        self.reschedules = 0  # loop side: times its execute asked to run it again (wsserve.reschedule)
        #: the model's own object for the request, kept across its executes when it is rescheduled
        #: (a Triton model's pb_utils.InferenceRequest: the same one each time); the worker never reads it
        self.model_request: Any = None
        self.queued_at = 0.0  # monotonic: when submit() took it
        self.queue_s = -1.0  # loop side: its wait before its first execute started (-1: not started yet)

    # -- the model's side (any thread)

    def cancelled(self) -> bool:
        """True once the request ended on wsserve's side (``pb_utils``' ``is_cancelled()``)."""
        return self._stop.is_set()

    def respond(self, outputs: dict[str, np.ndarray] | None, final: bool,
                parameters: dict[str, Any] | None = None) -> None:
        """A checked response (None: FINAL without one) to hand to the sink, with its
        ``parameters`` (the model's, bounded there; given to a sink that has ``on_parameters``
        before each of its responses, None when a response has none); dropped once ended.
        One that would put more than ``max_pending_bytes`` unwritten (none is: it is taken) ends
        the request with ``overloaded`` instead: a slow consumer."""
        if self._stop.is_set():
            return
        nbytes = RESPONSE_OVERHEAD_BYTES + (sum(map(array_bytes, outputs.values())) if outputs else 0)
        limit = self._worker.max_pending_bytes
        with self._lock:
            unwritten = self.pending_bytes + nbytes
            over = outputs is not None and self.pending_bytes > 0 and unwritten > limit
            if not over:
                self.pending_bytes = unwritten
                self._sent += outputs is not None
                self.final_sent = self.final_sent or final
            sent = self._sent
        if over:
            self._stop.set()  # what the model sends from now on is dropped
            self._worker._call(self._finish, Overloaded(
                f"slow consumer: {sent} responses of model {self._worker.name!r} were sent and {unwritten} bytes "
                f"of them are unread by {getattr(self.sink, 'consumer', 'the client')} (max_write_buffer_bytes={limit}); "
                "the request is cancelled"))
            return
        self._worker._call(self._on_response, outputs, final, nbytes, parameters)

    def fail(self, exc: WsserveError) -> None:
        """End the request with ``exc`` (a no-op once it ended)."""
        if not self._stop.is_set():
            self._worker._call(self._finish, exc)

    # -- the transport's side (loop thread)

    def written(self, nbytes: int) -> None:
        """The transport wrote a response of ``nbytes`` (as :meth:`on_response` counted it) to its client
        (a BLS caller read it: any thread)."""
        with self._lock:
            self.pending_bytes = max(0, self.pending_bytes - nbytes)

    def cancel(self) -> None:
        """The client cancelled or left: end the request without telling its sink.  Idempotent."""
        self._end()

    # -- internals (loop thread)

    def _end(self) -> bool:
        if self.ended:
            return False
        self.ended = True
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._started()
        self._worker._ended(self)
        return True

    def _started(self) -> None:
        """It left the queue (its execute starts, or it ended): its queue timeout no longer applies."""
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None

    def _queue_timeout(self, delay: bool) -> None:
        self._queue_timer = None
        if self.started or self.ended:
            return
        if delay:  # timeout_action DELAY: behind the requests of its level that have not passed theirs
            self._worker._delay(self)
        else:
            self._finish(DeadlineExceeded(f"the request to model {self._worker.name!r} waited past its queue "
                                          "timeout (default_timeout_microseconds)"))

    def _finish(self, exc: WsserveError) -> None:
        if self._end():
            try:
                self.sink.on_error(exc)
            except Exception:  # noqa: BLE001 - a bug in one sink touches no other request
                log.exception("the sink of a %s request failed in on_error", self._worker.name)

    def _on_response(self, outputs: dict[str, np.ndarray] | None, final: bool, nbytes: int,
                     parameters: dict[str, Any] | None = None) -> None:
        if self.ended:
            return
        if outputs is not None:
            self.responses += 1
        try:
            take = getattr(self.sink, "on_parameters", None)
            if take is not None and outputs is not None:
                take(parameters)
            self.sink.on_response(outputs, final, nbytes)
        except WsserveError as exc:
            self._finish(exc)
            return
        except Exception as exc:  # noqa: BLE001 - one request's answer that cannot be made fails it only
            log.exception("answering a response of model %r failed", self._worker.name)
            self._finish(Internal(f"a response could not be made: {type(exc).__name__}: {exc}"[:512]))
            return
        if final:
            self._end()


class DecoupledWorker:
    """Runs a decoupled model's requests (see the module docstring).  The pool makes one per
    version of such a model (its ``decoupled`` true); ``submit`` takes a sink with
    ``on_response``, and refuses any other with ``bad_request`` (:func:`refusal`)."""

    decoupled = True

    def __init__(self, model: Any, *, name: str, instances: int = 1, max_queue_requests: int = DEFAULT_MAX_QUEUE_REQUESTS,
                 max_pending_bytes: int = 8 << 20, drain_timeout_s: float = 10.0,
                 priorities: PriorityLevels | None = None, queue_policy: QueuePolicy | None = None,
                 max_reschedules: int = MAX_RESCHEDULES, max_batch_rows: int = 1,
                 observer: BatchObserver | None = None) -> None:
        """``priorities``: the model's levels (config.pbtxt's ``priority_levels``,
        ``default_priority_level``, ``priority_queue_policy``; default wsserve's two, ``priority`` 1
        first), each level waiting in the order it came, the levels in order (1 first);
        ``max_queue_requests`` bounds each level's waiting requests for a config.pbtxt model (Triton's
        ``max_queue_size``) but a level with its own policy, bounded by that policy's (by
        :data:`DEFAULT_MAX_QUEUE_REQUESTS` when it sets none, as ``max_queue_size: 0`` is no bound in
        Triton), the whole queue otherwise.
        ``queue_policy``: the default queue policy (Triton's ``default_queue_policy``; a level's own
        replaces it): its ``default_timeout_ms`` ends a request still *waiting* that long
        (``deadline_exceeded``), shortened by the request's own deadline only with
        ``allow_timeout_override``; once its execute started, only the request's own deadline applies.
        ``max_reschedules``: the times one request may be rescheduled (:mod:`wsserve.reschedule`; the
        model's ``iterative_sequence`` attribute true: config.pbtxt's ``iterative_sequence: true``);
        such a model's executes get several requests, ``max_batch_rows`` rows at most (config.pbtxt's
        ``max_batch_size``), through its ``execute_decoupled_batch``; a request of more rows than
        ``max_batch_rows`` is refused (any decoupled model's, as Triton refuses it).
        ``observer`` (metrics, the :class:`~wsserve.worker.PredictWorker`'s interface):
        ``on_batch(name, rows, compute_s)`` once per execute that ran (one that raised included, as
        Triton counts it; not one :meth:`close` cancelled before it began), on the loop's thread, ``rows``
        its requests' rows, ``compute_s`` the time ``execute`` took (not the responses its threads send
        after); an observer's exception is logged, never raised."""
        if instances < 1:
            raise ValueError(f"instances must be >= 1, got {instances}")
        if type(max_reschedules) is not int or max_reschedules < 0:
            raise ValueError(f"max_reschedules must be an integer >= 0, got {max_reschedules!r}")
        self.max_reschedules = max_reschedules
        #: config.pbtxt's ``sequence_batching { iterative_sequence: true }``: requests may be rescheduled
        self.iterative = getattr(model, "iterative_sequence", False) is True
        self.max_batch_rows = max(1, max_batch_rows)
        self.last_batch = 0  # rows of the last execute started (its requests' rows: Triton's batch size)
        self.model = model
        self.name = name
        self.explainer = None
        self.explain_refusal = f"model {name!r} is decoupled: its responses cannot be explained"
        #: The model's priority levels (what a request may ask for; wsserve's two by default).
        self.priorities = priorities or PriorityLevels()
        self.queue_policy = queue_policy or QueuePolicy()
        self.max_queue_requests = max_queue_requests
        self.max_pending_bytes = max_pending_bytes
        self.drain_timeout_s = drain_timeout_s
        self.stats: Any = None
        self._observer = observer
        self._instances = instances
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        #: two FIFOs per level, level 1 (the highest) first: its requests, then those delayed past their
        #: queue timeout (``timeout_action: DELAY``, in the order their timeouts passed): the order executes start in
        self._levels = tuple(deque[DecoupledStream]() for _ in range(2 * self.priorities.classes))
        self._waiting = 0  # streams in the level queues (some may have ended: removed on their end)
        self._running = 0  # executes in progress
        self._open: set[DecoupledStream] = set()  # requests not ended
        self._idle: asyncio.Event | None = None
        self._closed = False
        self.executed = 0
        self.rows_executed = 0  # rows of all executes (a rescheduled request's at each of its executes)

    # -- lifecycle

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=self._instances, thread_name_prefix=f"wsserve-{self.name}")
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no execute waits or runs and no request is open, or ``drain_timeout_s`` after
        the call (a request whose model never sends FINAL; an execute that runs until its request
        is cancelled, which only :meth:`close` then does); :meth:`close` ends the rest."""
        assert self._idle is not None, "start() first"
        loop = asyncio.get_running_loop()
        until = loop.time() + self.drain_timeout_s
        while (self._waiting or self._running or self._open) and not self._closed:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, until - loop.time()))
            except TimeoutError:
                return

    async def close(self) -> None:
        """End every request still waiting or open with ``shutting_down``; no execute starts after.
        Idempotent (the executes running are left to return)."""
        if self._closed:
            return
        self._closed = True
        for stream in [*(s for level in self._levels for s in level), *self._open]:
            stream._finish(ShuttingDown(f"model {self.name!r} is unloaded or the server is shutting down"))
        for level in self._levels:
            level.clear()
        self._waiting = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._idle is not None:
            self._idle.set()

    # -- requests

    def submit(self, sink: Any, *, priority: int = 0, deadline: float | None = None) -> DecoupledStream:
        """Start ``sink``'s request: its execute runs when an instance is free, after the requests
        waiting at higher levels and those that came before it at its own (``priority``'s level:
        :meth:`PriorityLevels.level <wsserve.batching.PriorityLevels.level>`).  ``deadline``
        (monotonic seconds): past it the request ends with ``deadline_exceeded``, whether waiting or
        streaming; its level's queue timeout too, while it waits (see :meth:`__init__`).  Raises
        ``BadRequest`` for a sink that takes one answer (:func:`refusal`), ``InvalidInput`` for
        several rows to a model without a batch dimension or more than ``max_batch_rows`` rows
        (Triton's message), ``Overloaded`` when ``max_queue_requests``
        wait (at its level, for a config.pbtxt model), ``ShuttingDown`` after :meth:`close`; the sink
        is then never called."""
        if self._closed:
            raise ShuttingDown("model worker is shutting down")
        if not callable(getattr(sink, "on_response", None)):
            raise BadRequest(refusal(self.name))
        if getattr(sink, "explain", False):
            raise BadRequest(self.explain_refusal)
        if not getattr(self.model, "batching", True) and sink.n != 1:
            raise InvalidInput(f"model {self.name!r} has no batch dimension (max_batch_size 0): a request to it is "
                               f"one set of tensors, got {sink.n} rows")
        if sink.n > self.max_batch_rows:  # Triton's (core's InferenceRequest::Normalize): never split, never run
            raise InvalidInput(f"inference request batch-size must be <= {self.max_batch_rows} for {self.name!r} "
                               f"(config.pbtxt's max_batch_size), got {sink.n} rows")
        priorities = self.priorities
        level = priorities.level(priority)
        queue = self._levels[2 * (level - 1)]
        policy = priorities.policy(priority, self.queue_policy)
        if priorities.configured:  # Triton's max_queue_size: per level (a level's own policy's first), delayed ones too
            # a level's own policy without max_queue_size has no bound (Triton's), wsserve's cap for "none" then
            most = self.max_queue_requests if policy is self.queue_policy else \
                policy.max_queue_requests or DEFAULT_MAX_QUEUE_REQUESTS
            if (waiting := len(queue) + len(self._levels[2 * level - 1])) >= most:
                raise Overloaded(f"model {self.name!r}: {waiting} requests wait for an instance at priority "
                                 f"level {level} (max_queue_requests={most})", retry_after_ms=100)
        elif self._waiting >= self.max_queue_requests:
            raise Overloaded(f"model {self.name!r}: {self._waiting} requests wait for an instance "
                             f"(max_queue_requests={self.max_queue_requests})", retry_after_ms=100)
        assert self._loop is not None, "start() first"
        stream = DecoupledStream(self, sink)
        stream.level, stream.queue = level, 2 * (level - 1)
        self._open.add(stream)
        queue.append(stream)
        self._waiting += 1
        now = monotonic()
        stream.queued_at = now
        if deadline is not None:
            stream._timer = self._loop.call_at(
                self._loop.time() + max(0.0, deadline - now), stream._finish,
                DeadlineExceeded(f"the request to model {self.name!r} passed its deadline"))
        if policy.default_timeout_ms is not None:
            until = policy.deadline(deadline, now)
            if until is not None and until != deadline:  # the level's timeout: while it waits only
                stream._queue_timer = self._loop.call_at(self._loop.time() + max(0.0, until - now),
                                                         stream._queue_timeout, policy.delays)
        self._next()
        return stream

    def cancel(self, stream: DecoupledStream) -> None:
        """The client cancelled or left (the transports' ``worker.cancel(item)``)."""
        stream.cancel()

    def statistics(self) -> WorkerStatistics:
        waiting = [s for level in self._levels for s in level]
        oldest = max(0.0, monotonic() - min(s.queued_at for s in waiting)) if waiting else 0.0
        return WorkerStatistics(
            kind="predict", queued=len(waiting), queued_rows=sum(s.sink.n for s in waiting),
            queued_bytes=sum(s.sink.nbytes for s in waiting), running=len(self._open) - len(waiting),
            oldest_age_s=oldest, batches=self.executed, computed=self.rows_executed, executor_batches=self.executed,
            last_batch_size=self.last_batch, isolated_batches=0)

    # -- internals

    def _call(self, fn: Any, *args: Any) -> None:
        """``fn(*args)`` on the loop, from any thread (dropped once the loop is closed)."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the server stopped
            pass

    def _ended(self, stream: DecoupledStream) -> None:
        self._open.discard(stream)
        if not stream.started:  # it left while waiting (cancel, deadline): its place is free
            try:
                self._levels[stream.queue].remove(stream)
                self._waiting -= 1
            except ValueError:
                pass
        self._note_idle()

    def _delay(self, stream: DecoupledStream) -> None:
        """``stream``'s queue timeout passed under ``timeout_action: DELAY``: it waits on, behind its
        level's requests that have not passed theirs (Triton's delayed queue)."""
        self._levels[stream.queue].remove(stream)
        stream.queue += 1
        self._levels[stream.queue].append(stream)

    def _note_idle(self) -> None:
        """Wake :meth:`wait_idle` (it checks what it waits for)."""
        if self._idle is not None:
            self._idle.set()

    def _next(self) -> None:
        """Start waiting executes while an instance is free (requests that ended meanwhile skipped).
        Each execute gets one request; a model with ``iterative_sequence`` gets the requests at the
        head of the queue up to ``max_batch_rows`` rows (at least one request), as Triton's sequence
        batcher batches its iterative sequences."""
        while self._waiting and self._running < self._instances and self._executor is not None:
            batch: list[DecoupledStream] = []
            rows = 0
            while self._waiting:
                level = next(level for level in self._levels if level)
                stream = level[0]
                if not stream.ended and batch and (not self.iterative or rows + stream.sink.n > self.max_batch_rows):
                    break
                level.popleft()
                self._waiting -= 1
                if not stream.ended:
                    batch.append(stream)
                    rows += stream.sink.n
            if not batch:
                continue
            started = monotonic()
            for stream in batch:
                stream.started = True
                stream._started()
                if stream.queue_s < 0:  # its first execute: its queue time, told to its sink once
                    stream.queue_s = started - stream.queued_at
                    self._tell_started(stream)
            self._running += 1
            self.executed += 1
            self.last_batch = rows
            self.rows_executed += rows
            future = self._loop.run_in_executor(self._executor, self._execute, batch)  # type: ignore[union-attr]
            future.add_done_callback(functools.partial(self._executed, batch=batch, started=started, rows=rows))

    def _tell_started(self, stream: DecoupledStream) -> None:
        """``stream``'s sink's ``on_started(queue_s)``, when it has one (a failure logged only)."""
        on_started = getattr(stream.sink, "on_started", None)
        if on_started is not None:
            try:
                on_started(stream.queue_s)
            except Exception:  # noqa: BLE001 - a sink's bug (its metrics) never stalls the requests
                log.exception("the sink of a %s request failed in on_started", self.name)

    def _execute(self, batch: list[DecoupledStream]) -> list[int]:
        """In an instance's thread: the model's execute for ``batch``'s requests (a failure ends
        them); each request's release flags (:mod:`wsserve.reschedule`)."""
        try:
            if len(batch) == 1:
                flags = [self.model.execute_decoupled(batch[0].inputs, batch[0].request_id, batch[0])]
            else:
                flags = self.model.execute_decoupled_batch([(s.inputs, s.request_id, s) for s in batch])
        except WsserveError as exc:
            for stream in batch:
                stream.fail(exc)
            return [RELEASE_ALL] * len(batch)
        except Exception as exc:  # noqa: BLE001 - the model's failure fails its requests only
            log.error("model %s failed", self.name, exc_info=exc)
            for stream in batch:
                stream.fail(Internal(f"model {self.name!r} failed: {type(exc).__name__}: {exc}"))
            return [RELEASE_ALL] * len(batch)
        return [f if isinstance(f, int) else RELEASE_ALL for f in flags]

    def _released(self, stream: DecoupledStream, flags: int) -> None:
        """``stream``'s execute returned with ``flags``: :func:`~wsserve.reschedule.after_execute`
        decides; a request to run again goes back first in its level's queue (ahead of the requests
        that have not run: Triton's in-flight iterative sequences), its deadline still running."""
        with stream._lock:
            final_sent = stream.final_sent
        decision, message = after_execute(self.name, flags, iterative=self.iterative, ended=stream.ended or
                                          stream._stop.is_set(), final_sent=final_sent,
                                          reschedules=stream.reschedules, max_reschedules=self.max_reschedules)
        if decision in ("fail", "refuse"):
            assert message is not None
            stream._finish(Internal(message) if decision == "fail" else InvalidInput(message))
        elif decision == "requeue":
            stream.reschedules += 1
            stream.started = False
            stream.queue = 2 * (stream.level - 1)
            self._levels[stream.queue].appendleft(stream)
            self._waiting += 1

    def _executed(self, future: asyncio.Future[list[int]], batch: list[DecoupledStream] | None = None,
                  started: float = 0.0, rows: int = 0) -> None:
        """An execute returned: counted in :attr:`stats` (Triton's execution count and compute time:
        ``execute``'s own, not the responses its threads send later) and by the observer (its rows and
        that time: ``wsserve_batch_size``, ``wsserve_batch_compute_seconds``), its requests released or
        rescheduled (:meth:`_released`, in the batch's order), the next one started.  An execute
        :meth:`close` cancelled before its thread took it never ran: not counted.  An observer that
        raises is logged: its requests are released and the next execute starts all the same."""
        self._running -= 1
        if batch and not future.cancelled():
            ended = monotonic()
            if self._observer is not None:
                try:
                    self._observer.on_batch(self.name, rows, ended - started)
                except Exception:  # noqa: BLE001 - metrics never stall the requests
                    log.exception("model %s: the batch observer failed", self.name)
            if self.stats is not None:
                self.stats.on_batch(rows, len(batch), ended - started, ended)
        if not future.cancelled() and future.exception() is not None:  # (not expected: _execute catches)
            log.error("model %s: execute failed", self.name, exc_info=future.exception())
        elif not future.cancelled() and batch:
            for stream, flags in reversed(list(zip(batch, future.result(), strict=True))):  # (appendleft: order kept)
                self._released(stream, flags)
        self._next()
        self._note_idle()
