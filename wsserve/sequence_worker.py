"""The worker of a stateful model (config.pbtxt ``sequence_batching``): :class:`SequenceWorker`.

It puts a :class:`~wsserve.sequences.SequenceScheduler` (sans-I/O: slots, order, idle expiry) in
front of an ordinary :class:`~wsserve.worker.PredictWorker` (batching, instances, failure
isolation unchanged): a request that may run (its sequence holds a slot and its previous request
ended) is submitted to the inner worker at once, wrapped in a :class:`_Step` sink that adds the
model's control inputs to its inputs and carries its correlation id and flags in its request id
(:class:`~wsserve.sequences.SequenceId`: a Triton Python model's ``request.correlation_id()`` and
``request.flags()``).  Requests of different sequences handed out in one loop iteration share the
inner worker's batch; the next request of a sequence is handed out when its step ends.  A request
its client cancelled (or left, or whose deadline passed) once handed out runs on, its answer
dropped, but its step's ``client_ended`` tells the model (a Triton Python model's
``request.is_cancelled()``, :func:`~wsserve.worker.ended_check`).  Ordinary
models never go through here (the pool makes this worker only for a model with a sequence config).

Implicit state (``config.states``, an ONNX model's): each handed-out request also gets its state
inputs, one row: its sequence's kept state (:meth:`~wsserve.sequences.SequenceScheduler.state_of`),
or the model's ``initial_states`` at START; when its row comes back, the state outputs are taken
out of the answer (those the model lists in ``state_outputs``) and kept for the sequence
(:meth:`~wsserve.sequences.SequenceScheduler.keep_state`, a copy), at most ``max_state_bytes`` a
sequence: a state over it (or not fitting its dims) ends the request with ``invalid_input`` and
aborts its sequence (its requests queued behind it end as for a dropped request).

A transport gives a request's sequence as its sink's ``sequence`` attribute: ``(id, start, end)``
(:func:`~wsserve.sequences.sequence_of`), or None; a request without one is refused with Triton's
message (an ensemble step, a BLS request: none carries one).  A sink with an ``on_slot_wait``
method is told ``on_slot_wait(True)`` when its request is queued in a sequence waiting for a slot
(:meth:`~wsserve.sequences.SequenceScheduler.waits_for_slot`, from :meth:`SequenceWorker.submit`)
and ``on_slot_wait(False)`` when that sequence is given one (not after the request ended): its
transport does not count it against the connection's ``max_inflight`` meanwhile, since it waits
for other sequences' requests, maybe sent after it on the same connection, to end theirs.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any

import numpy as np

from .batching import queue_deadline
from .errors import (
    BadRequest,
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    ShuttingDown,
    WsserveError,
)
from .sequences import (
    END,
    START,
    Pending,
    SequenceConfig,
    SequenceId,
    SequenceScheduler,
    StateBudget,
    control_inputs,
    missing_id,
)
from .stats import WorkerStatistics
from .worker import PredictWorker, request_id_of

__all__ = ["SequenceWorker", "DEFAULT_MAX_QUEUE_REQUESTS", "DEFAULT_MAX_SEQUENCE_STATE_BYTES"]

log = logging.getLogger("wsserve.sequences")

#: Requests that may wait over all sequences (and sequences that may wait for a slot) when
#: config.pbtxt sets no ``max_queue_size``.
DEFAULT_MAX_QUEUE_REQUESTS = 1024
#: The implicit state one sequence may keep (bytes, all its state tensors), the server option
#: ``max_sequence_state_bytes``'s default.
DEFAULT_MAX_SEQUENCE_STATE_BYTES = 16 << 20


class _StateRefused(InvalidInput):
    """A request whose state output cannot be kept (:meth:`SequenceWorker._keep_state`); ``why``:
    what the sequence's abort says of it."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


class _Step:
    """The inner worker's sink of one handed-out request: the transport's sink with the control
    inputs added; tells the worker once the request ended (all rows, or an error)."""

    __slots__ = ("sink", "inputs", "n", "nbytes", "request_id", "_worker", "_pending", "_delivered", "_over")

    def __init__(self, worker: SequenceWorker, pending: Pending, inputs: Any) -> None:
        sink = pending.payload
        self.sink = sink
        self._worker = worker
        self._pending = pending
        self.inputs = inputs
        self.n = sink.n
        self.nbytes = sink.nbytes
        self.request_id = SequenceId(str(request_id_of(sink)), pending.correlation_id, pending.flags)
        self._delivered = 0
        self._over = False

    @property
    def finished(self) -> bool:
        """Only once the step ended: a request its client cancelled still runs (its answer dropped),
        so the sequence's state moves on in order and its next request waits for it."""
        return self._over

    @property
    def client_ended(self) -> bool:
        """Its client's request ended (cancelled, gone, past its deadline) though the step runs on:
        the model's ``is_cancelled()`` (:func:`~wsserve.worker.ended_check`)."""
        return bool(self.sink.finished)

    def on_rows(self, start: int, outputs: Any, batch_rows: int, queue_s: float, compute_s: float) -> None:
        rows = len(next(iter(outputs.values()))) if isinstance(outputs, dict) else len(outputs)
        why: str | None = None
        try:
            if self._worker.config.states:  # implicit state: kept for the sequence's next request, not answered
                outputs, refused = self._worker._keep_state(self._pending, outputs)
                if refused is not None:
                    # its sequence cannot go on (aborted), or (the server's budget) keeps its old state
                    why = refused.why if isinstance(refused, _StateRefused) else None
                    if not self.sink.finished:
                        self.sink.on_error(refused)
                    return
            if not self.sink.finished:
                self.sink.on_rows(start, outputs, batch_rows, queue_s, compute_s)
        finally:
            self._delivered = start + rows
            if self._delivered >= self.n:
                self._end(why, ran=True)

    def on_error(self, exc: WsserveError) -> None:
        try:
            if not self.sink.finished:
                self.sink.on_error(exc)
        finally:
            item = self._pending.handle  # its WorkItem in the batch queue
            if item is not None and getattr(item, "next_row", 1) == 0:  # never in a batch: the model never ran it
                self._end("passed its deadline" if isinstance(exc, DeadlineExceeded) else f"failed ({exc.code})")
            else:
                self._end()

    def _end(self, why: str | None = None, *, ran: bool = False) -> None:
        if not self._over:
            self._over = True
            self._worker._step_ended(self._pending, why, ran=ran)


class SequenceWorker:
    """A stateful model version's worker (see the module docstring); the interface of
    :class:`~wsserve.worker.PredictWorker` for the pool and the transports."""

    decoupled = False

    def __init__(self, inner: PredictWorker, config: SequenceConfig, *, slots: int,
                 max_queue_requests: int = DEFAULT_MAX_QUEUE_REQUESTS,
                 max_state_bytes: int = DEFAULT_MAX_SEQUENCE_STATE_BYTES,
                 state_budget: StateBudget | None = None) -> None:
        self.inner = inner
        inner.isolate_failures = False  # a request computed twice would change its sequence's state twice
        self.config = config
        self.model = inner.model
        self.name = inner.name
        self.explainer = None
        self.explain_refusal = f"model {self.name!r} is stateful (sequence_batching): its requests cannot be explained"
        self.scheduler = SequenceScheduler(self.name, slots=slots, max_idle_s=config.max_idle_s,
                                           max_backlog=max_queue_requests, max_waiting=max_queue_requests,
                                           budget=state_budget if config.states else None)
        self._batched = getattr(self.model, "batching", True)
        #: implicit state (config.states): at most this many bytes kept per sequence
        self.max_state_bytes = max_state_bytes
        self._initial: dict[str, np.ndarray] = getattr(self.model, "initial_states", {})
        #: the state outputs taken out of each answer (those no config.pbtxt ``output`` lists)
        self.state_outputs: tuple[str, ...] = tuple(getattr(self.model, "state_outputs", ())) if config.states else ()
        self._state_names = frozenset(self.state_outputs)
        self._single = len(getattr(self.model, "outputs", ())) == 1  # the model answers one array
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self._draining = False  # wait_idle was called: idle sequences let their slots go at once
        self._idle: asyncio.Event | None = None  # set whenever no request waits (wait_idle)

    # what the pool and the transports read of a PredictWorker
    @property
    def queue(self) -> Any:
        return self.inner.queue

    @property
    def priorities(self) -> Any:
        return self.inner.priorities

    @property
    def default_timeout_s(self) -> float | None:
        return self.inner.default_timeout_s

    @property
    def allow_timeout_override(self) -> bool:
        return self.inner.allow_timeout_override

    @property
    def stats(self) -> Any:
        return self.inner.stats

    @stats.setter
    def stats(self, value: Any) -> None:
        self.inner.stats = value

    # -- lifecycle

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self.inner.start()

    async def wait_idle(self) -> None:
        """Return once no request of a sequence waits or runs.  Called when the version is retired
        (it gets no new requests): from then on a sequence holding a slot with nothing running or
        waiting lets it go at once (it could never go on here), so the backlogged sequences run
        instead of waiting ``max_idle_s`` for each holder."""
        assert self._idle is not None, "start() first"
        self._draining = True
        self._pump(monotonic())
        while self.scheduler.waiting and not self._closed:
            self._idle.clear()
            await self._idle.wait()
        await self.inner.wait_idle()

    async def close(self) -> None:
        """End every waiting request with ``shutting_down``, then close the inner worker.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._idle is not None:
            self._idle.set()
        self._fail_aborted()
        for p in self.scheduler.drain():
            if not p.payload.finished:
                p.payload.on_error(ShuttingDown(f"model {self.name!r} is unloaded or the server is shutting down"))
        await self.inner.close()

    # -- requests

    def submit(self, sink: Any, *, priority: int = 0, deadline: float | None = None) -> Pending:
        """Queue ``sink``'s request in its sequence (``sink.sequence``).  Raises ``BadRequest``
        (Triton's messages: more than one row, no correlation id, a sequence not started; explanations),
        ``InvalidInput`` (an id the model's CORRID control cannot hold),
        ``Overloaded`` (too many requests or sequences wait, or the rows and bytes waiting here and
        in the batch queue would pass the model's ``max_queue_rows`` / ``max_queue_bytes``),
        ``ShuttingDown`` after :meth:`close`; the sink is then never called."""
        if self._closed:
            raise ShuttingDown("model worker is shutting down")
        if getattr(sink, "explain", False):
            raise BadRequest(self.explain_refusal)
        if self._batched and sink.n > 1:  # Triton's: one row per slot
            raise BadRequest(f"inference request to model '{self.name}' must specify batch-size 1 due to "
                             "requirements of sequence batcher")
        sequence = getattr(sink, "sequence", None)
        if sequence is None:
            raise missing_id(self.name)
        cid, start, end = sequence
        if self.config.controls:  # an id its CORRID control cannot hold: InvalidInput before it takes a slot
            control_inputs(self.config.controls, cid, 0, 1, self._batched)
        now = monotonic()
        waits_until = queue_deadline(deadline, now, self.inner.default_timeout_s, self.inner.allow_timeout_override)
        scheduler = self.scheduler
        # its rows wait here, then in the batch queue: bounded with the queue's (the usual retry hint)
        ahead_rows, ahead_bytes = scheduler.ahead(cid)
        self.inner.queue.check_room(sink.n, sink.nbytes, ahead_rows=ahead_rows, ahead_bytes=ahead_bytes)
        pending = scheduler.arrive(cid, start, end, sink, now, waits_until, sink.nbytes, sink.n)
        pending.handle = (priority, deadline)  # until it is handed out: then its inner WorkItem
        if scheduler.waits_for_slot(pending):
            _slot_wait(sink, True)
        self._pump(now)
        return pending

    def cancel(self, item: Pending) -> None:
        """The client cancelled or left: drop the request if it waits for its turn, aborting its
        sequence behind it (the requests queued behind it up to a START end with ``bad_request``
        naming the sequence and why: :class:`~wsserve.sequences.SequenceScheduler`); one handed to
        the batch queue runs anyway (its answer dropped: the transport's sink is finished), as the
        model's state for the sequence may depend on it and the sequence's next request waits for it."""
        now = monotonic()
        # a transport ends a request past its deadline itself, then cancels it here (1 ms: timer slack)
        overdue = item.deadline is not None and item.deadline <= now + 0.001
        if self.scheduler.cancel(item, now, "passed its deadline" if overdue else "was cancelled"):
            self._pump(now)

    def statistics(self) -> WorkerStatistics:
        s = self.inner.statistics()
        return WorkerStatistics(
            kind=s.kind, queued=s.queued + self.scheduler.waiting, queued_rows=s.queued_rows,
            queued_bytes=s.queued_bytes, running=s.running, oldest_age_s=s.oldest_age_s, batches=s.batches,
            computed=s.computed, executor_batches=s.executor_batches, last_batch_size=s.last_batch_size,
            isolated_batches=s.isolated_batches)

    # -- internals (loop thread)

    def _fail_aborted(self) -> None:
        """End the requests dropped with their aborted sequence (their ``error``)."""
        for p in self.scheduler.aborted():
            if not p.payload.finished:
                p.payload.on_error(p.error)

    def _tell_granted(self) -> None:
        """Tell the sinks of the requests whose sequence was given a slot (``on_slot_wait(False)``)."""
        for p in self.scheduler.granted():
            if not p.payload.finished:
                _slot_wait(p.payload, False)

    def _pump(self, now: float) -> None:
        """Fail the requests of aborted sequences, hand out every request that may run now; then
        arm the idle-expiry timer."""
        self._fail_aborted()
        if self._draining:
            self.scheduler.expire(float("inf"))
        while True:
            self._tell_granted()
            taken = self.scheduler.take(now)
            if not taken:
                break
            self._hand_out(taken, now)  # one dropped there may free a slot for the backlog: take again
        self._fail_aborted()
        self._tell_granted()
        if self._idle is not None and not self.scheduler.waiting:
            self._idle.set()
        self._arm()

    def _hand_out(self, taken: list[Pending], now: float) -> None:
        """Submit each request ``take`` gave to the batch queue (with its control inputs); one
        that cannot go (its client left, or refused) ends its step at once (its sequence aborted)."""
        for p in taken:
            sink = p.payload
            priority, deadline = p.handle
            p.handle = None
            if sink.finished:  # its client left before it was handed out: the model never sees it
                self.scheduler.done(p, now, "was cancelled")
                continue
            try:
                inputs = sink.inputs
                controls = control_inputs(self.config.controls, p.correlation_id, p.flags, sink.n, self._batched)
                if self.config.states:
                    controls.update(self._states_in(p))
                if controls:
                    if type(inputs) is list:  # checked JSON rows (a one-float-vector model): as _gather makes them
                        inputs = np.array(inputs, dtype=np.float64)
                    if not isinstance(inputs, dict):
                        inputs = {self.model.inputs[0].name: inputs}
                    inputs = {**inputs, **controls}
                step = _Step(self, p, inputs)
                # bounded with the queue when it arrived (SequenceWorker.submit): a slot freed for a
                # backlogged sequence must not refuse (and abort) what was admitted
                p.handle = self.inner.submit(step, priority=priority, deadline=deadline, admitted=True)
            except WsserveError as exc:
                if not sink.finished:  # its transport may cancel it (still handed out: a no-op)
                    sink.on_error(exc)
                self.scheduler.done(p, now, f"was refused ({exc.code})")

    def _step_ended(self, p: Pending, why: str | None, *, ran: bool = False) -> None:
        """``p``'s step ended; ``why``: the model never ran it (the batch queue dropped it), or with
        ``ran``, its sequence cannot go on after it (its state outgrew the bound)."""
        now = monotonic()
        self.scheduler.done(p, now, why, ran=ran)
        if self._loop is not None and not self._closed:
            self._loop.call_soon(self._pump, monotonic())

    def _states_in(self, p: Pending) -> dict[str, np.ndarray]:
        """The state inputs of ``p``'s run (one row): its sequence's kept state, or at START (or
        before its sequence kept one: its START failed) the initial state."""
        kept = None if p.flags & START else self.scheduler.state_of(p.correlation_id)
        if kept is None:
            kept = self._initial
        return {name: value[None] for name, value in kept.items()}

    def _keep_state(self, p: Pending, outputs: Any) -> tuple[Any, InvalidInput | Overloaded | None]:
        """Take the state outputs out of ``p``'s ``outputs`` (one row) and keep them for its
        sequence (copied: the batch's arrays are not held); returns what is answered (as the model
        packs it: one array when one output is left) and None, or ``(None, error)``, nothing kept:
        a :class:`_StateRefused` when the state does not fit its ``dims`` or takes more than
        ``max_sequence_state_bytes`` (the sequence is aborted), :class:`Overloaded` when the server's
        stateful models together would keep more than ``max_sequence_state_total_bytes`` (the
        sequence keeps the state it had: the request may be sent again)."""
        if not isinstance(outputs, dict):  # one output answered, which is the state's too
            outputs = {self.model.outputs[0].name: outputs}
        answered = {k: v for k, v in outputs.items() if k not in self._state_names}
        state: dict[str, np.ndarray] = {}
        nbytes = 0
        cid = p.correlation_id
        for st in self.config.states:
            value = outputs[st.output_name][0]
            shape = value.shape
            if len(shape) != len(st.dims) or any(d != -1 and d != n for d, n in zip(st.dims, shape, strict=False)):
                return None, _StateRefused(
                    f"model {self.name!r} gave state output {st.output_name!r} of shape {list(shape)} for sequence "
                    f"{cid}; its state dims are {list(st.dims)}", "gave a state of the wrong shape")
            nbytes += value.nbytes
            if nbytes > self.max_state_bytes:
                return None, _StateRefused(
                    f"the state of sequence {cid} of model {self.name!r} would take more than "
                    f"{self.max_state_bytes} bytes (max_sequence_state_bytes; state output {st.output_name!r} "
                    f"of shape {list(shape)} {value.dtype.name} takes {value.nbytes}): the sequence is aborted, "
                    "start it again (sequence_start)", "made its state outgrow max_sequence_state_bytes")
            state[st.input_name] = value.copy()
        # (after an END nothing reads the state: a request behind it STARTs; not counted against the budget)
        if not p.flags & END and not self.scheduler.keep_state(cid, state, nbytes):
            budget = self.scheduler.budget
            limit = budget.limit if budget is not None else 0
            return None, Overloaded(
                f"the state of sequence {cid} of model {self.name!r} ({nbytes} bytes) is not kept: the stateful "
                f"models' sequences keep {budget.used if budget is not None else 0} bytes of state, at most {limit} "
                "(max_sequence_state_total_bytes); the sequence keeps its previous state, send the request again "
                "later", retry_after_ms=1000)
        if len(answered) == 1 and self._single:
            return next(iter(answered.values())), None
        return answered, None

    def _arm(self) -> None:
        at = self.scheduler.next_expiry()
        if at is None or self._loop is None or self._closed:
            return
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(self._loop.time() + max(0.0, at - monotonic()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._timer_at = None
        now = monotonic()
        for p in self.scheduler.overdue(now):
            if not p.payload.finished:
                p.payload.on_error(DeadlineExceeded("deadline passed while waiting for its sequence's turn"))
        gone = self.scheduler.expire(now)
        if gone:
            log.info("model %s: %d sequences idle for %.3f s let go of their slots", self.name, len(gone),
                     self.scheduler.max_idle_s)
        self._pump(now)


def _slot_wait(sink: Any, waiting: bool) -> None:
    """``sink.on_slot_wait(waiting)``, when the sink has it (see the module docstring)."""
    hook = getattr(sink, "on_slot_wait", None)
    if hook is not None:
        hook(waiting)
