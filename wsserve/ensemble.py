"""Serving a Triton ensemble: :class:`EnsembleModel` (what the pool lists) and :class:`EnsembleWorker`.

An ensemble is served as a predictive model version: the pool gives it a
:class:`~wsserve.pool.ModelEntry` whose worker is an :class:`EnsembleWorker`
(the :class:`~wsserve.worker.PredictWorker` interface: ``submit``/``cancel``/
``start``/``close``/``wait_idle``/``statistics``), so every transport (WebSocket
``predict``, HTTP ``/predict`` and ``/v2/.../infer``, gRPC) queues a request to
it as to any model.  A request runs the plan's steps as a DAG
(:mod:`wsserve.repository.ensemble_plan`, sans-I/O): a step starts as soon as
the ensemble tensors it needs exist, so independent steps run side by side;
each is submitted to its step model's own worker (``pool.lookup`` at the time,
the same path as any request to that model), so it is batched with that
model's other traffic, with the request's priority and deadline.  Only the steps
the outputs its sink wants need run (``wanted_outputs()``: OIP ``outputs``;
:func:`~wsserve.repository.ensemble_plan.needed_steps`).  A step whose model is
an ensemble is submitted to that ensemble's worker like any other (wanting the
outputs the step maps).  When every wanted output exists the request gets them
in one delivery.  A request with more rows than the ensemble's
``max_batch_size`` (above 0) is refused at ``submit``.

A step that fails (its model raised, an output row not finite, its queue full,
its model not served any more) fails that request only, with the step's error
code and a message naming the ensemble and the step; the other steps it has in
flight are cancelled.  Cancelling the request (``cancel``, a client that went
away, its ``timeout_ms``: the deadline is also each step's) cancels its steps.

An ensemble with a decoupled step (:attr:`EnsembleWorker.decoupled`, from the plan, as
Triton sets it) is served as a decoupled model: its sink is a decoupled model's
(``on_response(outputs, final, nbytes)``, ``on_error``; :mod:`wsserve.decoupled`), so the
transports stream it as they stream one, and refuse it where they refuse one.  Each response
of a decoupled step gives its outputs' values a key of their own (:data:`Key`); a step runs
once per key at which its inputs exist (each through its model's worker, as above), and the
ensemble answers once per key at which its outputs exist, in the order the outputs' decoupled
step sent them; a response without an output a later step takes fails the request (an
``optional`` input is left out).  Once no step is in flight the request ends: its last
response carries the final flag, or a final flag alone follows.  Every request ends exactly
once: that end, an error (any step's, naming it: the responses sent before stay sent), or a
cancel, which cancels the steps in flight (a decoupled step's model sees ``is_cancelled()``).
Bound: what one request holds inside the ensemble (the steps' output values kept for the
steps after them, the inputs of steps run for a decoupled step's response, its responses not
yet written to the client; its own inputs not counted) is at most ``max_pending_bytes``
(``--max-write-buffer-bytes``): a decoupled step's response that would pass it (one is always
taken) ends the request with ``overloaded`` and cancels its steps, so a fast decoupled step
ahead of a slow one (or of a slow client) cannot queue unbounded tensors; so do the outputs of
a step run for such a response that would pass it (a later step's outputs larger than its
inputs, ahead of a client that does not read).  The model's
sending thread is never blocked.

``ensemble_scheduling { max_inflight_requests: N }`` (:class:`StepLimits`, Triton's "Managing Memory
Usage in Ensemble Models"): at most N step requests in flight at each step across the ensemble's
requests; a step ready while its step is full waits (its inputs held by its request, within the bound
above), and is queued in arrival order as places free, without a cancel of its own (the request's
deadline holds while it waits: past it the request ends ``deadline_exceeded``).  One that has waited
:data:`PLACE_WAIT_TIMEOUT_S` (Triton's bound) goes anyway, over the limit, logged as an error, as
Triton's does; the worker's loop timer drives that (:meth:`StepLimits.due`, :meth:`StepLimits.expire`).
The steps waiting are the worker's ``statistics().queued``.  A request that ends gives back the places its
steps held and drops its waiting steps.

Event-loop thread only, like the pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from time import monotonic
from typing import Any

import numpy as np

from .batching import PriorityLevels
from .decoupled import RESPONSE_OVERHEAD_BYTES, refusal
from .dtypes import array_bytes
from .errors import (
    BadRequest,
    DeadlineExceeded,
    Internal,
    InvalidInput,
    Overloaded,
    ShuttingDown,
    UnknownModel,
    WsserveError,
)
from .models.base import ModelInfo
from .repository.config import ModelConfig
from .repository.ensemble_config import EnsembleConfig
from .repository.ensemble_plan import (
    EnsembleError,
    EnsemblePlan,
    PlannedStep,
    StepSignature,
    needed_steps,
    plan_ensemble,
    step_key,
)
from .repository.errors import ModelLoadError
from .repository.tensors import TensorSpec
from .stats import WorkerStatistics
from .worker import Tensors, concat_rows, request_id_of

__all__ = ["EnsembleModel", "EnsembleWorker", "PLACE_WAIT_TIMEOUT_S", "StepLimits", "step_signatures",
           "build_ensemble", "depends_on"]

log = logging.getLogger("wsserve.ensemble")

#: How long a step request waits for a place under ``max_inflight_requests`` before it goes anyway,
#: over the limit: Triton's ``kMutexTimeoutSeconds`` (core ``src/constants.h``), the bound of
#: ``StepInflightRequestLimiter::Acquire`` (``src/ensemble_scheduler/ensemble_scheduler.cc``), which
#: then logs an error ("... Proceeding to avoid deadlock.") and counts the step in flight, over the limit.
PLACE_WAIT_TIMEOUT_S = 300.0

#: ``lookup(model, version or None) -> ModelEntry``: the pool's, raising ``UnknownModel``.
Lookup = Callable[[str, str | None], Any]


class EnsembleModel:
    """A planned ensemble version: ``name``, ``version`` (int), ``config``, ``plan``,
    ``inputs``/``outputs`` (:class:`~wsserve.repository.TensorSpec`, shapes resolved) and
    ``info`` (backend ``ensemble``, its steps).  Holds no model of its own: ``close()`` does nothing."""

    backend = "ensemble"

    def __init__(self, name: str, version: int, config: ModelConfig, plan: EnsemblePlan) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.plan = plan
        self.path = config.path if config.path is not None else Path(name)
        self.inputs = plan.inputs
        self.outputs = plan.outputs
        steps = [{"model": s.model, "version": s.version if s.version is not None else -1} for s in
                 sorted(plan.steps, key=lambda s: s.index)]
        self.info = ModelInfo(
            name=name, version=str(version), task="other",
            input_shape=plan.inputs[0].shape, output_shape=plan.outputs[0].shape, parameters=0,
            extra={"backend": "ensemble", "inputs": [s.to_json() for s in plan.inputs],
                   "outputs": [s.to_json() for s in plan.outputs], "steps": steps},
        )

    @property
    def batching(self) -> bool:
        """False when the ensemble's config.pbtxt says ``max_batch_size: 0`` (Triton's meaning: no batch
        dimension): its OIP tensors are then its dims exactly, a request one row, as for any model
        without one (:func:`wsserve.rest.oip.signature`)."""
        return self.config.max_batch_size > 0

    def flops_per_row(self) -> int:
        return 1

    def triton_steps(self) -> list[dict[str, Any]]:
        """Its steps as Triton's ``ensemble_scheduling.step`` (JSON), in the config's order."""
        assert self.config.ensemble is not None
        return [{"model_name": s.model, "model_version": s.version if s.version is not None else -1,
                 "input_map": dict(s.input_map), "output_map": dict(s.output_map)} for s in self.config.ensemble.steps]

    def version_figures(self) -> dict[str, Any]:
        return {"parameters": 0, "metrics": {}}

    def close(self) -> None:
        """Nothing to release (the step models are served, and closed, on their own)."""


class _QueueFigures:
    """What the Triton config route reads of a worker's queue (an ensemble has none of its own)."""

    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.max_delay_s = 0.0


def _as_arrays(inputs: Any, plan: EnsemblePlan) -> dict[str, np.ndarray]:
    """A request's prepared inputs (an array, JSON rows kept as lists, or ``{name: array}``) as
    ``{ensemble input: array}`` in the inputs' dtypes."""
    if not isinstance(inputs, dict):
        inputs = {plan.inputs[0].name: inputs}
    return {s.name: np.asarray(inputs[s.name]).astype(s.np_dtype, copy=False) for s in plan.inputs}


def _shared_tensors(plan: EnsemblePlan) -> frozenset[str]:
    """The ensemble tensors of ``plan`` read more than once (step inputs and ensemble outputs)."""
    reads = Counter(tensor for step in plan.steps for _, tensor in step.feeds)
    reads.update(o.name for o in plan.outputs)
    return frozenset(t for t, n in reads.items() if n > 1)


#: What a step's error may carry besides its code (the HTTP and gRPC statuses of a Triton Python
#: model's ``TritonError``): the request's error keeps them, as Triton's ensemble answers a step's status.
_STATUSES = ("http_status", "grpc_status")


#: Which responses of the decoupled steps an ensemble tensor's value flows from: ``()`` for none
#: (the request's inputs and what the steps before any decoupled one write), ``key + (i,)`` for the
#: ``i``-th response of a decoupled step run at ``key``.
Key = tuple[int, ...]


class _StepSink:
    """The :class:`~wsserve.worker.PredictSink` of one step of one request, run at ``key``."""

    __slots__ = ("run", "step", "key", "inputs", "n", "nbytes", "finished", "worker", "item", "slot", "_parts",
                 "_rows", "_queued_at", "_queue_s")

    explain = False

    def __init__(self, run: _Run, step: PlannedStep, key: Key, inputs: Tensors, n: int) -> None:
        self.run = run
        self.step = step
        self.key = key
        self.inputs = inputs
        self.n = n
        self.nbytes = sum(map(array_bytes, inputs.values())) if isinstance(inputs, dict) else array_bytes(inputs)
        self.finished = False
        self.worker: Any = None
        self.item: Any = None
        #: it holds one of its step's ``max_inflight_requests`` places (:class:`StepLimits`)
        self.slot = False
        self._parts: list[Tensors] = []
        self._rows = 0
        self._queued_at = monotonic()
        self._queue_s = 0.0

    def _ended(self, ok: bool) -> None:
        """Count this step's request in its model version's statistics, once it ended (Triton counts
        an ensemble's step requests as the step model's: success, fail, queue)."""
        stats = getattr(self.worker, "stats", None)
        if stats is not None and self.item is not None:
            stats.on_request(ok, monotonic() - self._queued_at, self._queue_s)

    @property
    def request_id(self) -> str:
        """The ensemble request's client id: Triton gives each step's request the ensemble request's id
        (a Triton Python step model reads it as ``request_id()``)."""
        return request_id_of(self.run.sink)

    def wanted_outputs(self) -> frozenset[str]:
        """The step model's outputs this step maps (a step that is an ensemble runs only what they need,
        as Triton requests a step's mapped outputs)."""
        return frozenset(model_output for model_output, _ in self.step.yields)

    def on_rows(self, start: int, outputs: Tensors, batch_rows: int, queue_s: float, compute_s: float) -> None:
        if self.finished:
            return
        if not self._parts:
            self._queue_s = max(queue_s, 0.0)
        self._parts.append(outputs)
        self._rows += len(next(iter(outputs.values()))) if isinstance(outputs, dict) else len(outputs)
        if self._rows >= self.n:
            self.finished = True
            parts, self._parts = self._parts, []
            try:
                out = parts[0] if len(parts) == 1 else concat_rows(parts)
            except WsserveError as exc:  # rows of different shapes (InvalidInput): its request fails
                self._ended(False)
                self.run.step_failed(self, exc)
                return
            self._ended(True)
            self.run.step_done(self, out)

    def on_started(self, queue_s: float) -> None:
        """A decoupled step model's worker's: its execute starts after ``queue_s`` in its queue (the
        step model's statistics' queue time; a step that is not decoupled gives it with its rows)."""
        self._queue_s = max(queue_s, 0.0)

    def on_error(self, exc: WsserveError) -> None:
        if not self.finished:
            self.finished = True
            self._ended(False)
            self.run.step_failed(self, exc)

    def stop(self) -> None:
        """Cancel this step's work not done yet (the request ended another way): a decoupled step's
        model then sees its request cancelled."""
        if not self.finished:
            self.finished = True
            if self.item is not None:
                self._ended(False)  # a cancellation, as a client's cancelled request counts
                self.worker.cancel(self.item)


class _StreamStepSink(_StepSink):
    """A decoupled step's sink (:class:`~wsserve.decoupled.DecoupledWorker`'s, or a decoupled inner
    ensemble's): each response goes on through the steps after it."""

    __slots__ = ("responses",)

    def __init__(self, run: _Run, step: PlannedStep, key: Key, inputs: Tensors, n: int) -> None:
        super().__init__(run, step, key, inputs, n)
        self.responses = 0

    def on_response(self, outputs: dict[str, np.ndarray] | None, final: bool, nbytes: int) -> None:
        if self.finished:
            return
        if final:
            self.finished = True
            self._ended(True)
        self.run.step_response(self, outputs, final)
        written = getattr(self.item, "written", None)
        if callable(written):  # the ensemble took it: its own bound (the request's) counts it from here
            written(nbytes)


class _Run:
    """One request through the ensemble: the tensors it holds (by :data:`Key`) and its steps in flight.

    Each response of a decoupled step makes its outputs' values at a new key; a step runs once per key
    at which every tensor it reads exists (the plan keeps each step's inputs in one lineage), and the
    ensemble answers once per key at which its outputs exist, in the order the outputs' decoupled step
    sent them.  A value is dropped once every step and output reading it took it."""

    def __init__(self, worker: EnsembleWorker, sink: Any, priority: int, deadline: float | None,
                 wanted: frozenset[str] | None) -> None:
        self.worker = worker
        self.sink = sink
        wanted = wanted or None  # none named (OIP ``"outputs": []``): every step runs, as for a request naming none
        #: the plan's steps this request runs (those its wanted outputs need) and the outputs it answers
        self.steps = needed_steps(worker.plan, wanted)
        self.outputs = tuple(o.name for o in worker.plan.outputs if wanted is None or o.name in wanted)
        #: wanted names that are not outputs of this plan (an outer ensemble planned against an older one)
        self.unknown = sorted(wanted - {o.name for o in worker.plan.outputs}) if wanted is not None else []
        self.priority = priority
        self.deadline = deadline
        self.started_at = monotonic()
        #: ensemble tensor -> the steps of this request reading it; how many take each of its values
        self.readers: dict[str, list[PlannedStep]] = {}
        for step in self.steps:
            for tensor in step.needs:
                self.readers.setdefault(tensor, []).append(step)
        self.reads = {tensor: len(steps) for tensor, steps in self.readers.items()}
        for name in self.outputs:
            self.reads[name] = self.reads.get(name, 0) + 1
        #: ensemble tensor -> key -> value (None: a decoupled step's response did not carry it)
        self.tensors: dict[str, dict[Key, np.ndarray | None]] = {}
        self.left: dict[tuple[str, Key], int] = {}  # readers still to take each value
        #: key -> the values held at it (their count) and the steps launched at it; both dropped once
        #: no value is left at the key (no step can launch there again), so a request streaming any
        #: number of responses keeps only what its responses in flight need
        self.live: dict[Key, int] = {}
        self.launched: dict[Key, set[int]] = {}
        self.flying: dict[tuple[int, Key], _StepSink] = {}
        #: the keys the ensemble answers at, in order (those the outputs' decoupled step made)
        self.answers: deque[Key] = deque()
        #: bytes held inside the ensemble for this request: the steps' outputs kept, the inputs of steps
        #: run for a decoupled step's response, the ensemble's responses not yet written to the client
        self.held = 0
        self.responses = 0
        self.done = False
        #: its steps waiting for a place under the ensemble's ``max_inflight_requests`` (:class:`StepLimits`)
        self.parked = 0
        #: armed at its deadline once a step of it waits for a place (:meth:`on_parked`)
        self._deadline_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.done:  # cancelled before its first steps went
            return
        if self.unknown:
            names = ", ".join(o.name for o in self.worker.plan.outputs)
            self.fail(Internal(f"ensemble {self.worker.name!r} has no output {self.unknown[0]!r} (its outputs: {names})"))
            return
        try:
            arrays = _as_arrays(self.sink.inputs, self.worker.plan)
        except Exception as exc:  # noqa: BLE001 - e.g. MemoryError: this request ends, answered
            log.exception("ensemble %r: a request's inputs could not be taken", self.worker.name)
            self.fail(Internal(f"ensemble {self.worker.name!r}: its inputs could not be taken: {type(exc).__name__}: {exc}"))
            return
        if self.worker.plan.outputs_from is None:
            self.answers.append(())
        for name, a in arrays.items():
            self._keep(name, (), a, count=False)
        self._advance(arrays.keys(), ())

    def _label(self, step: PlannedStep) -> str:
        return f"ensemble {self.worker.name!r} step {step.index} (model {step.model!r})"

    # -- tensors

    def _keep(self, tensor: str, key: Key, value: np.ndarray | None, *, count: bool = True) -> None:
        """Hold ``tensor``'s value at ``key`` for its readers (none: dropped at once)."""
        reads = self.reads.get(tensor, 0)
        if reads:
            self.tensors.setdefault(tensor, {})[key] = value
            self.left[(tensor, key)] = reads
            self.live[key] = self.live.get(key, 0) + 1
            if count and value is not None:
                self.held += array_bytes(value)

    def _take(self, tensor: str, key: Key) -> np.ndarray | None:
        """One reader's take of ``tensor`` at ``key``; the last one drops it."""
        values = self.tensors[tensor]
        value = values[key]
        left = self.left[(tensor, key)] - 1
        if left:
            self.left[(tensor, key)] = left
        else:
            del self.left[(tensor, key)], values[key]
            live = self.live[key] - 1
            if live:
                self.live[key] = live
            else:  # nothing left at the key: no step launches there again (its inputs are gone)
                del self.live[key]
                self.launched.pop(key, None)
            if value is not None and tensor not in self.worker.plan_inputs:  # (the request's own: not counted)
                self.held -= array_bytes(value)
        return value

    def _has(self, tensor: str, key: Key) -> bool:
        return key in self.tensors.get(tensor, ())

    # -- steps

    def _advance(self, tensors: Iterable[str], key: Key) -> None:
        """Start each step reading one of ``tensors`` whose inputs all exist at ``key``; then answer
        what is ready, and end the request once nothing is left to run."""
        for step in {s.index: s for t in tensors for s in self.readers.get(t, ())}.values():
            if self.done:
                return
            if step.index not in self.launched.get(key, ()) and all(self._has(t, key) for t in step.needs):
                self.launched.setdefault(key, set()).add(step.index)
                limits = self.worker.limits
                if limits.take(step.index):
                    self._launch(step, key, slot=limits.limit > 0)
                else:  # its inputs stay held (counted) until a place frees (StepLimits.release launches
                    # it) or it has waited PLACE_WAIT_TIMEOUT_S (StepLimits.expire, from the worker's timer)
                    limits.park(self, step, key, now=asyncio.get_running_loop().time())
                    self.worker.arm_place_timer()
        self._answer()

    def on_parked(self) -> None:
        """A step of it now waits for a place: its deadline, if any, holds there too (its steps queued
        on their models carry it themselves), so it ends ``deadline_exceeded`` then, still waiting."""
        if self.deadline is None or self._deadline_timer is not None or self.done:
            return
        loop = asyncio.get_running_loop()
        self._deadline_timer = loop.call_at(loop.time() + max(0.0, self.deadline - monotonic()), self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        if self.done or not self.parked:  # (none waits: the steps in flight have the deadline)
            return
        self.fail(DeadlineExceeded(f"ensemble {self.worker.name!r}: the request passed its deadline while a step "
                                   "of it waited for a place (ensemble_scheduling.max_inflight_requests="
                                   f"{self.worker.limits.limit})"))

    def disarm(self) -> None:
        """It ended: drop its deadline timer (not to hold it until then)."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def _busy(self) -> bool:
        """A step of this request is in flight or waiting for a place (``max_inflight_requests``)."""
        return bool(self.flying) or self.parked > 0

    def _launch(self, step: PlannedStep, key: Key, *, slot: bool = False) -> None:
        """Submit ``step`` at ``key`` to its model's worker; ``slot``: it holds a place of the step's
        (:class:`StepLimits`), which its sink then holds, or which is given back when it cannot be queued."""
        try:
            entry = self.worker.lookup(step.model, str(step.version) if step.version is not None else None)
            if entry.kind != "predict":
                raise Internal(f"model {step.model!r} serves generate, not predict")
            if bool(getattr(entry, "decoupled", False)) != step.decoupled:  # changed since planned (re-planning)
                raise Internal(f"model {step.model!r} is {'' if step.decoupled else 'now '}"
                               f"{'not ' if step.decoupled else ''}decoupled, unlike when the ensemble was planned")
            specs = {s.name: s for s in entry.input_specs}
            arrays = {}
            for model_input, tensor in step.feeds:
                a = self._take(tensor, key)
                spec = specs.get(model_input)
                if a is None:  # a decoupled step's response without it
                    if spec is not None and getattr(spec, "optional", False):
                        continue  # an optional input left out, as Triton's placeholder leaves it
                    raise Internal(f"ensemble tensor {tensor!r}, which input {model_input!r} of model {step.model!r} "
                                   "takes, is missing: the decoupled step writing it sent a response without it")
                dtype = spec.np_dtype if spec is not None else a.dtype
                # a tensor with another reader is copied: a model may change its input in place
                arrays[model_input] = np.array(a, dtype) if tensor in self.worker.shared else a.astype(dtype, copy=False)
            if not arrays:
                raise Internal("every input it takes is missing from the decoupled step's response")
            batch: Tensors = next(iter(arrays.values())) if step.single_input and len(arrays) == 1 else arrays
            kind = _StreamStepSink if step.decoupled else _StepSink
            sink = kind(self, step, key, batch, len(next(iter(arrays.values()))))
            sink.slot, slot = slot, False  # the sink holds it now (_landed / _stop_steps give it back)
            self.flying[(step.index, key)] = sink
            if key:  # run for a decoupled step's response: held, as that response was, plus its overhead
                self.held += sink.nbytes + RESPONSE_OVERHEAD_BYTES
            sink.worker = entry.worker
            sink.item = entry.worker.submit(sink, priority=self.priority, deadline=self.deadline)
        except WsserveError as exc:
            self._landed(step, key)
            if slot:
                self.worker.limits.release(step.index)
            self._step_error(step, exc)
        except Exception as exc:  # noqa: BLE001 - e.g. MemoryError copying a tensor: this request ends, answered
            log.exception("ensemble %r step %d (model %r) could not be queued", self.worker.name, step.index, step.model)
            self._landed(step, key)
            if slot:
                self.worker.limits.release(step.index)
            self._step_error(step, Internal(f"could not queue the step: {type(exc).__name__}: {exc}"))

    def _landed(self, step: PlannedStep, key: Key) -> None:
        """The step run at ``key`` is no longer in flight (its inputs no longer held for it)."""
        sink = self.flying.pop((step.index, key), None)
        if sink is not None and key:
            self.held -= sink.nbytes + RESPONSE_OVERHEAD_BYTES
        if sink is not None and sink.slot:  # its place frees: a parked step (any request's) may go
            sink.slot = False
            self.worker.limits.release(step.index)

    def step_done(self, sink: _StepSink, outputs: Tensors) -> None:
        """A step answering once: its outputs at its key."""
        step = sink.step
        self._landed(step, sink.key)
        if self.done:
            return
        if not isinstance(outputs, dict):
            outputs = {step.output_names[0]: outputs}
        missing = [o for o, _ in step.yields if o not in outputs]
        if missing:
            self.fail(Internal(f"{self._label(step)}: its model returned no output {missing[0]!r}"))
            return
        if sink.key:  # run for a decoupled step's response: what it adds is bounded as that response was
            kept = sum(array_bytes(outputs[o]) for o, tensor in step.yields if self.reads.get(tensor, 0))
            if self._over(kept, step, "its outputs for a response of a decoupled step"):
                return
        for model_output, tensor in step.yields:
            self._keep(tensor, sink.key, outputs[model_output])
        self._advance([t for _, t in step.yields], sink.key)

    def _over(self, nbytes: int, step: PlannedStep, what: str) -> bool:
        """True, the request ended ``overloaded``, when ``nbytes`` more would put what it holds inside
        the ensemble past ``max_pending_bytes`` (nothing held: always taken)."""
        limit = self.worker.max_pending_bytes
        if self.held <= 0 or self.held + nbytes <= limit:
            return False
        self.fail(Overloaded(
            f"{self._label(step)}: with {what}, {self.held + nbytes} bytes would be held inside the ensemble (its "
            "steps' tensors not yet through the steps after it, or responses unread by the client; "
            f"max_write_buffer_bytes={limit}); the request is cancelled"))
        return True

    def step_response(self, sink: _StreamStepSink, outputs: dict[str, np.ndarray] | None, final: bool) -> None:
        """A decoupled step's response (None: its FINAL alone): its outputs at a key of their own
        (an output it lacks is missing there), past the bound the request ends ``overloaded``."""
        step = sink.step
        if final:
            self._landed(step, sink.key)
        if self.done:
            return
        if outputs is None:
            self._advance((), sink.key)
            return
        nbytes = RESPONSE_OVERHEAD_BYTES + sum(map(array_bytes, outputs.values()))
        limit = self.worker.max_pending_bytes
        if self.held > 0 and self.held + nbytes > limit:
            self.fail(Overloaded(
                f"{self._label(step)}: {sink.responses + 1} responses of model {step.model!r} were sent and "
                f"{self.held + nbytes} bytes of them are held inside the ensemble (its steps' tensors not yet "
                f"through the steps after it, or responses unread by the client; max_write_buffer_bytes={limit}); "
                "the request is cancelled"))
            return
        key = sink.key + (sink.responses,)
        sink.responses += 1
        if self.worker.plan.outputs_from == step.index:
            self.answers.append(key)
        for model_output, tensor in step.yields:
            self._keep(tensor, key, outputs.get(model_output))
        self._advance([t for _, t in step.yields], key)

    def step_failed(self, sink: _StepSink, exc: WsserveError) -> None:
        self._landed(sink.step, sink.key)
        self._step_error(sink.step, exc)

    def _step_error(self, step: PlannedStep, exc: WsserveError) -> None:
        if self.done:
            return
        if isinstance(exc, UnknownModel):
            self.fail(Internal(f"{self._label(step)}: {exc.message}", retry_after_ms=exc.retry_after_ms))
            return
        error = type(exc)(f"{self._label(step)}: {exc.message}", retry_after_ms=exc.retry_after_ms)
        for status in _STATUSES:  # a status the step's error names (a Triton Python model's code) goes with it
            if hasattr(exc, status):
                setattr(error, status, getattr(exc, status))
        self.fail(error)

    # -- answers

    def _answer(self) -> None:
        """Answer each key whose outputs all exist, in order; once no step is in flight, end."""
        decoupled = self.worker.decoupled
        while not self.done and self.answers and all(self._has(o, self.answers[0]) for o in self.outputs):
            if not decoupled:  # one answer, once every step ran (as before: steps writing nothing read run too)
                if self._busy():
                    return
                self._finish()
                return
            key = self.answers.popleft()
            out = {name: value for name in self.outputs if (value := self._take(name, key)) is not None}
            nbytes = RESPONSE_OVERHEAD_BYTES + sum(map(array_bytes, out.values()))
            self.held += nbytes
            self._respond(out, not self._busy() and not self.answers, nbytes)
        if not self.done and not self._busy():
            if self.answers:
                self.fail(Internal(f"ensemble {self.worker.name!r}: no step is left to run but its outputs are not "
                                   "all written"))
            elif decoupled:
                self._respond(None, True, 0)

    def _respond(self, outputs: dict[str, np.ndarray] | None, final: bool, nbytes: int) -> None:
        """One response to the request's sink (``final``: the last; the request then ended)."""
        if final:
            self.done = True
            self.worker.ended(self)
        if outputs is not None:
            self.responses += 1
        try:
            if not self.sink.finished:
                self.sink.on_response(outputs, final, nbytes)
        except WsserveError as exc:
            self.fail(exc)
        except Exception as exc:  # noqa: BLE001 - a bug in the request's sink ends only it
            log.exception("result sink of an ensemble %r request failed", self.worker.name)
            self.fail(Internal(f"internal error delivering a response: {type(exc).__name__}: {exc}"[:512]))

    def written(self, nbytes: int) -> None:
        """The transport wrote a response of ``nbytes`` (as ``on_response`` counted it) to its client."""
        self.held = max(0, self.held - nbytes)

    def _stop_steps(self) -> None:
        """Stop its steps in flight (giving back the places they hold) and forget those parked (they
        hold none)."""
        flying, self.flying = self.flying, {}
        limits = self.worker.limits
        limits.forget(self)
        for sink in flying.values():
            sink.stop()
            if sink.slot:
                sink.slot = False
                limits.release(sink.step.index)
        self.tensors, self.left, self.live, self.launched = {}, {}, {}, {}

    def fail(self, exc: WsserveError) -> None:
        was_done = self.done
        self.done = True
        self._stop_steps()
        if was_done:  # (a final response's sink failing: the request was ended already)
            try:
                if not self.sink.finished:
                    self.sink.on_error(exc)
            except Exception:  # noqa: BLE001
                log.exception("result sink of an ensemble %r request failed in on_error", self.worker.name)
            return
        self.worker.ended(self)
        try:
            if not self.sink.finished:
                self.sink.on_error(exc)
        except Exception:  # noqa: BLE001 - a bug in the request's sink ends only it
            log.exception("result sink of an ensemble %r request failed in on_error", self.worker.name)

    def cancel(self) -> None:
        """The request ended elsewhere (cancel, deadline, client gone): stop its steps; its sink is not called."""
        if not self.done:
            self.done = True
            self._stop_steps()
            self.worker.ended(self)

    def _finish(self) -> None:
        self.done = True
        self.worker.ended(self)
        # the outputs asked for (a pruned request has only those): one array for a one-output ensemble
        values = {o: self.tensors[o][()] for o in self.outputs}
        out: Tensors = values[self.outputs[0]] if len(self.worker.plan.outputs) == 1 else values
        self.tensors, self.left, self.live, self.launched = {}, {}, {}, {}
        if self.sink.finished:
            return
        n = self.sink.n
        try:
            self.sink.on_rows(0, out, n, 0.0, monotonic() - self.started_at)
        except Exception as exc:  # noqa: BLE001 - a bug in the request's sink ends only it
            log.exception("result sink of an ensemble %r request failed", self.worker.name)
            try:
                if not self.sink.finished:
                    self.sink.on_error(Internal(f"internal error delivering results: {type(exc).__name__}: {exc}"))
            except Exception:  # noqa: BLE001
                log.exception("result sink failed again in on_error")


class StepLimits:
    """An ensemble's ``ensemble_scheduling.max_inflight_requests`` (Triton's "Managing Memory Usage in
    Ensemble Models"): at most ``limit`` requests in flight at each step, counted across all the
    ensemble version's requests (0: no limit, nothing counted); one per :class:`EnsembleWorker`, so a
    re-planned version's new worker counts anew while the old one finishes its requests, as Triton's
    new ``EnsembleScheduler`` does on a reload.  A step request holds a place from
    when it is submitted to its step model until it ends (a decoupled step's: its final response);
    one that finds its step full is parked, its inputs still held by its request, and launched in
    arrival order as places free (no cancel of its own; the request's deadline holds while it
    waits: :meth:`_Run.on_parked`), or once it has waited ``wait_timeout_s`` (Triton's
    :data:`PLACE_WAIT_TIMEOUT_S`): then :meth:`expire` launches it anyway, taking a place over the
    limit, as Triton's limiter does.  Sans-I/O as to time: :meth:`park` and :meth:`expire` take
    ``now`` (the loop's clock); the worker arms a loop timer at :meth:`due`.  A request that ends
    (cancel, error, close) gives back the places its steps hold and drops its parked ones, which
    hold none.  Event-loop thread only."""

    def __init__(self, limit: int, *, wait_timeout_s: float = PLACE_WAIT_TIMEOUT_S) -> None:
        self.limit = limit
        self.wait_timeout_s = wait_timeout_s
        #: step index -> places held
        self.inflight: Counter[int] = Counter()
        #: step index -> parked launches in arrival order, ``(run, key) -> (step, parked at)``
        self.waiting: dict[int, dict[tuple[_Run, Key], tuple[PlannedStep, float]]] = {}
        #: the worker is closing: places freed launch nothing
        self.closed = False
        self._draining = False

    @property
    def parked(self) -> int:
        """Step requests waiting for a place."""
        return sum(map(len, self.waiting.values()))

    def take(self, step: int) -> bool:
        """Take a place at ``step`` (always, without a limit); False: full (or others wait before it)."""
        if not self.limit:
            return True
        if self.inflight[step] >= self.limit or self.waiting.get(step):
            return False
        self.inflight[step] += 1
        return True

    def park(self, run: _Run, step: PlannedStep, key: Key, *, now: float) -> None:
        """Park ``run``'s launch of ``step`` at ``key`` (its step is full), waiting since ``now``."""
        self.waiting.setdefault(step.index, {})[(run, key)] = (step, now)
        run.parked += 1
        run.on_parked()

    def oldest_since(self) -> float | None:
        """When the longest-waiting parked launch was parked (the loop's clock; None: none is parked)."""
        firsts = [next(iter(parked.values()))[1] for parked in self.waiting.values() if parked]
        return min(firsts) if firsts else None

    def due(self) -> float | None:
        """When the longest-waiting parked launch has waited ``wait_timeout_s`` (None: none is parked)."""
        since = self.oldest_since()
        return None if since is None else since + self.wait_timeout_s

    def expire(self, now: float) -> int:
        """Launch every parked step request that has waited ``wait_timeout_s`` by ``now``, oldest first,
        each taking a place over the limit (Triton's limiter proceeds so, "to avoid deadlock"); logged
        as an error.  Returns how many went."""
        went = 0
        while not self.closed:
            oldest: tuple[float, int] | None = None
            for index, parked in self.waiting.items():
                if parked:
                    since = next(iter(parked.values()))[1]
                    if since + self.wait_timeout_s <= now and (oldest is None or since < oldest[0]):
                        oldest = (since, index)
            if oldest is None:
                break
            since, index = oldest
            parked = self.waiting[index]
            (run, key), (planned, _) = next(iter(parked.items()))
            del parked[(run, key)]
            if not parked:
                del self.waiting[index]
            run.parked -= 1
            log.error("ensemble %r step %d (model %r): no place for %.0f s (in flight: %d >= "
                      "max_inflight_requests: %d); it goes anyway, over the limit, as Triton's does",
                      run.worker.name, index, planned.model, now - since, self.inflight[index], self.limit)
            self.inflight[index] += 1
            went += 1
            run._launch(planned, key, slot=True)
        return went

    def forget(self, run: _Run) -> None:
        """Drop ``run``'s parked launches (it ended); they held no place."""
        if not run.parked:
            return
        for index, parked in list(self.waiting.items()):
            for entry in [e for e in parked if e[0] is run]:
                del parked[entry]
            if not parked:
                del self.waiting[index]
        run.parked = 0

    def release(self, step: int) -> None:
        """A place at ``step`` frees: launch the parked steps that now fit, in arrival order."""
        self.inflight[step] -= 1
        assert self.inflight[step] >= 0
        if not self.inflight[step]:
            del self.inflight[step]
        if self._draining or self.closed:  # (a launch below that fails at once frees places: the loop takes them)
            return
        self._draining = True
        try:
            moved = True
            while moved and not self.closed:
                moved = False
                for index in list(self.waiting):
                    parked = self.waiting.get(index)
                    while parked and self.inflight[index] < self.limit and not self.closed:
                        (run, key), (planned, _) = next(iter(parked.items()))
                        del parked[(run, key)]
                        run.parked -= 1
                        self.inflight[index] += 1
                        moved = True
                        run._launch(planned, key, slot=True)
                    if not self.waiting.get(index, True):
                        del self.waiting[index]
        finally:
            self._draining = False


class EnsembleWorker:
    """Runs an ensemble's requests through its steps' workers (see the module docstring).

    Call order as :class:`~wsserve.worker.PredictWorker`: ``start()`` on the loop; ``submit`` /
    ``cancel`` from the loop thread; ``await close()`` (idempotent)."""

    explainer = None

    def __init__(self, model: EnsembleModel, lookup: Lookup, *, max_pending_bytes: int = 8 << 20,
                 drain_timeout_s: float = 10.0, place_wait_timeout_s: float = PLACE_WAIT_TIMEOUT_S) -> None:
        """``lookup``: the pool's (a step's model version at the time its step starts).
        ``max_pending_bytes`` (``--max-write-buffer-bytes``): what one request of a decoupled ensemble
        may hold inside it (see the module docstring); ``drain_timeout_s``: how long :meth:`wait_idle`
        waits for a decoupled ensemble's requests (one whose decoupled step never ends);
        ``place_wait_timeout_s``: how long a step request waits for a place under
        ``max_inflight_requests`` before it goes anyway (:class:`StepLimits`; Triton's fixed bound)."""
        self.model = model
        self.plan = model.plan
        self.name = model.name
        self.lookup = lookup
        #: a step is decoupled: each request streams any number of responses (the transports stream it
        #: as a decoupled model's: :attr:`wsserve.pool.ModelEntry.decoupled`)
        self.decoupled = model.plan.decoupled
        self.max_pending_bytes = max_pending_bytes
        self.drain_timeout_s = drain_timeout_s
        #: the ensemble's input tensors (a request's own, not counted against ``max_pending_bytes``)
        self.plan_inputs = frozenset(s.name for s in model.plan.inputs)
        #: Ensemble tensors read more than once (by two steps, twice by one, or by a step and as an
        #: output): each step gets its own copy, as in Triton, since a model may change its input in place.
        self.shared = _shared_tensors(model.plan)
        self.explain_refusal = f"model {model.name!r} is an ensemble: explanations are for single models"
        self.queue = _QueueFigures(model.config.max_batch_size or 0)
        #: Triton's bound on a request's rows (its batch size); 0: no batch dimension, one row
        self.max_batch_size = model.config.max_batch_size
        #: The pool sets this version's statistics; an ensemble computes no batch of its own.
        self.stats: Any = None
        self._runs: set[_Run] = set()
        self._closed = False
        self._idle: asyncio.Event | None = None
        self._requests = 0
        #: The priorities wsserve's own requests may give an ensemble: 0 or 1, as a model without
        #: config.pbtxt (an OIP request's passes as it is, as in Triton); each step's model maps it
        #: onto its own levels (Triton's rule: :mod:`wsserve.batching`, "Priority").
        self.priorities = PriorityLevels()
        #: ``ensemble_scheduling.max_inflight_requests``, per step across this version's requests
        self.limits = StepLimits(model.config.ensemble.max_inflight_requests if model.config.ensemble else 0,
                                 wait_timeout_s=place_wait_timeout_s)
        #: the loop timer at :meth:`StepLimits.due` (armed while a step request waits for a place)
        self._place_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()

    async def close(self) -> None:
        """End every request in flight with ``shutting_down`` (their steps are cancelled).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.limits.closed = True  # the requests' ends below free places: none of the others' steps starts
        self._disarm_place_timer()
        for run in list(self._runs):
            run.fail(ShuttingDown(f"ensemble {self.name!r} is unloaded or the server is shutting down"))
        if self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is in flight; for a decoupled ensemble, at most ``drain_timeout_s``
        after the call (a decoupled step that never sends FINAL): :meth:`close` ends the rest."""
        assert self._idle is not None, "start() first"
        loop = asyncio.get_running_loop()
        until = loop.time() + self.drain_timeout_s if self.decoupled else None
        while self._runs:
            self._idle.clear()
            if until is None:
                await self._idle.wait()
                continue
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, until - loop.time()))
            except TimeoutError:
                return

    def submit(self, sink: Any, *, priority: int = 0, deadline: float | None = None) -> _Run:
        """Start ``sink``'s request: its first steps are queued at once.  Only the steps needed for
        the outputs the sink wants run (its ``wanted_outputs()``, if it has one: names of the
        ensemble's outputs, or None for all; a name it lacks - an outer ensemble's step planned
        against an inner ensemble since re-planned - fails the request through its sink with
        ``internal``).  Raises ``ShuttingDown`` after :meth:`close`,
        ``BadRequest`` for a sink that wants explanations and ``InvalidInput`` for more rows than
        the ensemble's ``max_batch_size`` (Triton's rule); then the sink is never called.  A step
        that cannot be queued fails the request through its sink."""
        if self._closed:
            raise ShuttingDown("model worker is shutting down")
        if self.decoupled and not callable(getattr(sink, "on_response", None)):
            raise BadRequest(refusal(self.name))
        if getattr(sink, "explain", False):
            raise BadRequest(self.explain_refusal)
        if self.max_batch_size > 0 and sink.n > self.max_batch_size:
            raise InvalidInput(f"the request has {sink.n} rows but ensemble {self.name!r} allows at most "
                               f"{self.max_batch_size} (its max_batch_size)")
        wanted = getattr(sink, "wanted_outputs", None)
        run = _Run(self, sink, priority, deadline, wanted() if callable(wanted) else None)
        self._runs.add(run)
        self._requests += 1
        if self._idle is not None:
            self._idle.clear()
        # its first steps go on the next loop iteration: a step refused at once (its queue full) then
        # fails the request through its sink after the caller holds the returned item, as a worker's would
        asyncio.get_running_loop().call_soon(run.start)
        return run

    def cancel(self, item: _Run) -> None:
        """Stop ``item``'s steps; never calls its sink."""
        item.cancel()

    def arm_place_timer(self) -> None:
        """Arm the loop timer at :meth:`StepLimits.due` (a step request now waits for a place), unless
        one is armed as early; it launches what waited too long (:meth:`StepLimits.expire`)."""
        due = self.limits.due()
        if due is None or self._closed:
            return
        if self._place_timer is not None:
            if self._place_timer.when() <= due:
                return
            self._place_timer.cancel()
        self._place_timer = asyncio.get_running_loop().call_at(due, self._places_due)

    def _places_due(self) -> None:
        timer, self._place_timer = self._place_timer, None
        assert timer is not None
        # the loop runs a timer up to its clock's resolution early: it fires as at its time
        self.limits.expire(max(asyncio.get_running_loop().time(), timer.when()))
        self.arm_place_timer()  # (the next parked launch's, if any)

    def _disarm_place_timer(self) -> None:
        if self._place_timer is not None:
            self._place_timer.cancel()
            self._place_timer = None

    def ended(self, run: _Run) -> None:
        run.disarm()
        self._runs.discard(run)
        if not self.limits.waiting:  # no step request waits for a place: the timer has nothing to do
            self._disarm_place_timer()
        if not self._runs and self._idle is not None:
            self._idle.set()

    def statistics(self) -> WorkerStatistics:
        """queued: step requests waiting for a place under ``max_inflight_requests`` (it queues nothing
        else), ``oldest_age_s`` the longest such wait so far (event-loop thread: the loop's clock)."""
        since = self.limits.oldest_since()
        oldest = 0.0 if since is None else max(0.0, asyncio.get_running_loop().time() - since)
        return WorkerStatistics(kind="predict", queued=self.limits.parked, queued_rows=0, queued_bytes=0,
                                running=len(self._runs),
                                oldest_age_s=oldest, batches=0, computed=self._requests, executor_batches=0,
                                last_batch_size=0)


def _signature(entry: Any) -> StepSignature:
    """What an ensemble step sees of a served version (a built-in model: one float64 ``input``/``output``)."""
    outputs = getattr(entry.model, "outputs", None)
    if not outputs and entry.kind == "predict":
        outputs = (TensorSpec("output", tuple(int(d) for d in entry.info.output_shape), "float64"),)
    return StepSignature(entry.name, entry.version, tuple(entry.input_specs), tuple(outputs or ()), entry.kind,
                         decoupled=entry.decoupled, ensemble=isinstance(entry.model, EnsembleModel),
                         max_batch_size=_max_batch_size(entry))


def _max_batch_size(entry: Any) -> int:
    """Triton's ``max_batch_size`` of a served version: 0 without a batch dimension, an ensemble's own,
    else the most rows its worker computes at once."""
    if not getattr(entry.model, "batching", True):
        return 0
    if isinstance(entry.model, EnsembleModel):
        return entry.model.config.max_batch_size
    return int(getattr(getattr(entry.worker, "queue", None), "max_batch_size", 0) or 0)


def step_signatures(config: EnsembleConfig, pool: Any) -> dict[tuple[str, int | None], StepSignature | str]:
    """The signatures :func:`~wsserve.repository.ensemble_plan.plan_ensemble` needs, from ``pool``:
    a step model the pool does not know is left out; one without a ready version is the reason."""
    out: dict[tuple[str, int | None], StepSignature | str] = {}
    for step in config.steps:
        if not pool.knows(step.model):
            continue
        try:
            entry = pool.lookup(step.model, str(step.version) if step.version is not None else None)
        except UnknownModel as exc:
            out[step_key(step.model, step.version)] = exc.message
            continue
        out[step_key(step.model, step.version)] = _signature(entry)
    return out


def build_ensemble(name: str, version: int, config: ModelConfig, pool: Any,
                   ensembles: Mapping[str, Iterable[str]] | None = None) -> EnsembleModel:
    """Plan ensemble ``name`` ``version`` against what ``pool`` serves now; ``ensembles``: every
    ensemble's step models, from their configs (for the cycle check).  Raises
    :class:`~wsserve.repository.ModelLoadError` naming its config file, the ensemble, the step and
    the tensor (:class:`~wsserve.repository.ensemble_plan.EnsembleError`)."""
    assert config.ensemble is not None
    try:
        plan = plan_ensemble(config.ensemble, step_signatures(config.ensemble, pool), ensembles)
    except EnsembleError as exc:
        raise ModelLoadError(config.path or Path(name), str(exc)) from None
    return EnsembleModel(name, version, config, plan)


def depends_on(config: ModelConfig | None, model: str) -> bool:
    """True when ``config`` is an ensemble's with a step running ``model``."""
    return config is not None and config.ensemble is not None and model in config.ensemble.step_models
