"""The model pool: per-model batching workers driven by asyncio.

:class:`PredictWorker` owns one :class:`~wsserve.batching.BatchQueue` and
forms batches from loop callbacks (no task per request or per model), greedily
or after ``max_delay_ms``, across every connection; it runs the model (off the
event loop in a one-thread executor when the batch is costly enough, inline
when it is cheaper than the thread hop) and hands each request its rows
through its :class:`PredictSink`.

:class:`ModelPool` maps ``(name, version)`` to a worker: a
:class:`PredictWorker` for predictive models, a
:class:`~wsserve.generation.engine.GenerationEngine` for generative ones.

Call order: ``pool = ModelPool(...)``; ``await pool.start()``; ``submit`` /
``cancel`` from the loop thread; ``await pool.close()`` (idempotent).
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import orjson

from .batching import Batch, BatchQueue, WorkItem
from .errors import DeadlineExceeded, Internal, InvalidInput, ShuttingDown, UnknownModel, WsserveError
from .models.base import ModelInfo, PredictiveModel
from .stats import WorkerStatistics

__all__ = ["PredictSink", "PredictWorker", "ModelEntry", "ModelPool", "BatchObserver"]

log = logging.getLogger("wsserve.pool")


class PredictSink(Protocol):
    """Receives one request's results, on the event-loop thread, in row order.

    Contract: ``on_rows`` is called for consecutive row ranges starting at 0
    until all rows are delivered, unless ``on_error`` is called first; after
    ``on_error`` nothing more is called.  Neither may block.
    """

    rows: np.ndarray  # [n, d] float64
    finished: bool  # True once the request has its terminal frame

    def on_rows(self, start: int, outputs: np.ndarray, batch_rows: int, queue_s: float, compute_s: float) -> None: ...

    def on_error(self, exc: WsserveError) -> None: ...


class BatchObserver(Protocol):
    """Optional hook for metrics: called once per computed batch."""

    def on_batch(self, model: str, rows: int, compute_s: float) -> None: ...


class PredictWorker:
    """Batches and runs ``predict`` for one model version.

    Driven by loop callbacks, not a task: ``submit`` schedules a tick with
    ``call_soon`` when the model is idle; a tick forms one batch and either
    computes it inline (cheap batches) or hands it to a one-thread executor and
    ticks again when it is done.  Requests that arrive in the same loop
    iteration therefore share a batch, and an idle server adds no wait.
    """

    def __init__(
        self,
        model: PredictiveModel,
        *,
        max_batch_size: int = 256,
        max_delay_ms: float | None = None,
        max_queue_rows: int | None = None,
        max_queue_bytes: int | None = None,
        inline_max_flops: int = 200_000,
        observer: BatchObserver | None = None,
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        """``after_batch`` runs after each batch's results were handed out (the
        server uses it to write the replies at once rather than a loop iteration later)."""
        self.model = model
        self._after_batch = after_batch
        self.name = model.info.name
        self.queue = BatchQueue(
            max_batch_size=max_batch_size, max_delay_ms=max_delay_ms, max_queue_rows=max_queue_rows,
            max_queue_bytes=max_queue_bytes,
        )
        self._inline_max_rows = max(0, inline_max_flops // model.flops_per_row())
        self._observer = observer
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False  # a batch is computing in the executor
        self._tick_handle: asyncio.Handle | None = None
        self._tick_at: float | None = None  # monotonic time of a scheduled window tick
        self._closed = False
        self._computing: tuple[WorkItem, ...] = ()  # items of the batch in the executor
        self._executor_batches = 0
        self._last_batch = 0

    # -- lifecycle

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"wsserve-{self.name}")

    async def close(self) -> None:
        """Stop forming batches and end every request still queued or computing with
        ``ShuttingDown`` (as the generation engine does).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        for item in self.queue.drain():
            self._end(item, ShuttingDown("the server is shutting down"))
        for item in self._computing:
            self._end(item, ShuttingDown("the server is shutting down"))
        self._computing = ()

    # -- requests

    def submit(self, sink: PredictSink, *, priority: int = 0, deadline: float | None = None) -> WorkItem:
        """Queue ``sink.rows``.  Raises ``Overloaded`` when the queue is full and
        ``ShuttingDown`` after :meth:`close`; the sink is then never called."""
        if self._closed:
            raise ShuttingDown("model worker is shutting down")
        rows = sink.rows
        n = rows.shape[0]
        item = WorkItem(n, priority, deadline, rows.nbytes // n if n else 0, sink)
        now = monotonic()
        self.queue.add(item, now)
        if not self._busy:
            if self._tick_handle is None:
                self._schedule(now, now)
            elif self._tick_at is not None and self.queue.ready_at(now) == now:
                self._tick_handle.cancel()  # the window filled up: go now
                self._schedule(now, now)
        return item

    def cancel(self, item: WorkItem) -> None:
        """Drop ``item``'s rows that are not computed yet.  Never calls its sink."""
        self.queue.cancel(item)

    def statistics(self) -> WorkerStatistics:
        q = self.queue.statistics(monotonic())
        return WorkerStatistics(
            kind="predict", queued=q.requests, queued_rows=q.rows, queued_bytes=q.bytes,
            running=len(self._computing), oldest_age_s=q.oldest_age_s, batches=q.batches,
            computed=q.rows_scheduled, executor_batches=self._executor_batches,
            last_batch_size=self._last_batch,
        )

    # -- the batching loop

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
        if self._busy or self._closed:
            return
        queue = self.queue
        now = monotonic()
        ready = queue.ready_at(now)
        if ready is None:
            return
        if ready > now:
            self._schedule(ready, now)
            return
        batch = queue.next_batch(now)
        if batch is None:
            return
        for item in batch.expired:
            try:
                item.payload.on_error(DeadlineExceeded("deadline passed while queued"))
            except Exception as exc:  # noqa: BLE001
                self._sink_failed(item, exc)
        if batch.slices:
            self._compute(batch)
        if not self._busy and self._tick_handle is None and len(queue):
            # Next batch on the next loop iteration, after pending socket I/O.
            self._schedule(now, now)

    def _compute(self, batch: Batch) -> None:
        slices = batch.slices
        if len(slices) == 1:
            s = slices[0]
            rows = s.item.payload.rows
            x = rows if s.start == 0 and s.stop == rows.shape[0] else rows[s.start : s.stop]
        else:
            x = np.concatenate([s.item.payload.rows[s.start : s.stop] for s in slices])
        started = monotonic()
        self._last_batch = batch.rows
        try:
            if batch.rows <= self._inline_max_rows:
                y = self.model.predict(x)
            else:
                assert self._executor is not None and self._loop is not None
                self._busy = True
                self._executor_batches += 1
                self._computing = tuple(s.item for s in slices)
                future = self._loop.run_in_executor(self._executor, self.model.predict, x)
                future.add_done_callback(lambda f: self._computed(batch, f, started))
                return
        except Exception as exc:
            self._failed(batch, exc)
            return
        self._deliver(batch, y, started)

    def _computed(self, batch: Batch, future: asyncio.Future[np.ndarray], started: float) -> None:
        self._busy = False
        self._computing = ()
        if self._closed:  # close() has ended its requests
            return
        if future.cancelled():
            self._failed(batch, RuntimeError("computation cancelled"))
        elif future.exception() is not None:
            self._failed(batch, future.exception())  # type: ignore[arg-type]
        else:
            self._deliver(batch, future.result(), started)
        if self._tick_handle is None and len(self.queue):
            now = monotonic()
            self._schedule(now, now)

    def _failed(self, batch: Batch, exc: BaseException) -> None:
        """A model failure fails only the requests of this batch, with ``internal``."""
        log.error("model %s failed on a batch of %d rows", self.name, batch.rows, exc_info=exc)
        err = f"model {self.name!r} failed: {type(exc).__name__}: {exc}"
        for s in batch.slices:
            if not s.item.payload.finished:
                self.queue.cancel(s.item)
                try:
                    s.item.payload.on_error(Internal(err))
                except Exception as sink_exc:  # noqa: BLE001
                    self._sink_failed(s.item, sink_exc)

    def _end(self, item: WorkItem, exc: WsserveError) -> None:
        try:
            if not item.payload.finished:
                item.payload.on_error(exc)
        except Exception as sink_exc:  # noqa: BLE001
            log.error("result sink of a %s request failed in on_error", self.name, exc_info=sink_exc)

    def _sink_failed(self, item: WorkItem, exc: BaseException) -> None:
        """A sink raised: log it, stop its rows, and end it with ``internal`` (best effort)."""
        log.error("result sink of a %s request failed", self.name, exc_info=exc)
        self.queue.cancel(item)
        try:
            if not item.payload.finished:
                item.payload.on_error(Internal(f"internal error delivering results: {type(exc).__name__}: {exc}"))
        except Exception:  # noqa: BLE001
            log.exception("result sink failed again in on_error")

    def _deliver(self, batch: Batch, y: np.ndarray, started: float) -> None:
        compute_s = monotonic() - started
        try:  # a model may return anything: never let it escape this callback
            if not isinstance(y, np.ndarray) or y.dtype.kind not in "fiu":
                raise TypeError(f"model returned {type(y).__name__} of {getattr(y, 'dtype', '?')}, not a numeric array")
            y = np.ascontiguousarray(y, dtype=np.float64)
            if y.ndim != 2 or y.shape[0] != batch.rows:
                raise ValueError(f"model returned shape {y.shape} for {batch.rows} rows")
            finite = np.isfinite(y)
        except Exception as exc:
            self._failed(batch, exc)
            return
        if self._observer is not None:
            self._observer.on_batch(self.name, batch.rows, compute_s)
        finite_rows = None if finite.all() else finite.all(axis=1)
        offset = 0
        for s in batch.slices:
            item = s.item
            end = offset + s.rows
            out = y[offset:end]
            if item.payload.finished:  # cancelled or timed out while computing
                offset = end
                continue
            sink = item.payload
            try:  # one sink's failure must not keep the rest of the batch from their frames
                if finite_rows is not None and not finite_rows[offset:end].all():
                    bad = s.start + int(np.argmin(finite_rows[offset:end]))
                    self.queue.cancel(item)
                    sink.on_error(InvalidInput(f"output row {bad} is not finite"))
                else:
                    sink.on_rows(s.start, out, batch.rows, started - item.enqueued_at, compute_s)
            except Exception as exc:  # noqa: BLE001 - a bug in one request's sink
                self._sink_failed(item, exc)
            offset = end
        if self._after_batch is not None:
            self._after_batch()


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One servable model version.  ``kind`` is ``"predict"`` or ``"generate"``."""

    name: str
    version: str
    kind: str
    model: Any
    worker: Any  # PredictWorker | GenerationEngine
    input_width: int = 0  # flattened input width (predict models)

    @property
    def info(self) -> ModelInfo:
        return self.model.info


class ModelPool:
    """Every served model version and its worker."""

    def __init__(self, entries: list[ModelEntry]) -> None:
        self._by_name: dict[str, dict[str, ModelEntry]] = {}
        for entry in entries:
            self._by_name.setdefault(entry.name, {})[entry.version] = entry
        self._latest = {name: versions[max(versions, key=_version_key)] for name, versions in self._by_name.items()}
        self._names_text = ", ".join(self._by_name)
        self._started = False
        self._models_json = orjson.dumps(self.describe(), option=orjson.OPT_SERIALIZE_NUMPY, default=_json_default)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def entries(self) -> list[ModelEntry]:
        return [e for versions in self._by_name.values() for e in versions.values()]

    def knows(self, name: str) -> bool:
        """True for a served model name."""
        return name in self._by_name

    @property
    def models_json(self) -> bytes:
        """The ``models`` list as JSON (``GET /v1/models`` and the ``models`` reply)."""
        return self._models_json

    def lookup(self, name: str, version: str | None = None) -> ModelEntry:
        """The entry for ``name`` (newest version unless given); raises ``UnknownModel``."""
        if version is None:
            entry = self._latest.get(name)
            if entry is not None:
                return entry
            raise UnknownModel(f"no model named {name!r}; known: {self._names_text}")
        versions = self._by_name.get(name)
        if versions is None:
            raise UnknownModel(f"no model named {name!r}; known: {self._names_text}")
        entry = versions.get(version)
        if entry is None:
            raise UnknownModel(f"model {name!r} has no version {version!r}; available: {', '.join(versions)}")
        return entry

    def describe(self) -> list[dict[str, Any]]:
        """The ``models`` list: one JSON-ready dict per model version."""
        return [e.info.to_json() for e in self.entries()]

    async def start(self) -> None:
        for entry in self.entries():
            entry.worker.start()
        self._started = True

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        await asyncio.gather(*(e.worker.close() for e in self.entries()), return_exceptions=True)


def _json_default(value: Any) -> Any:
    """numpy scalars (and anything else with ``.item()``) in model metadata."""
    item = getattr(value, "item", None)
    if item is None:
        raise TypeError(f"cannot serialise {type(value).__name__} in model metadata")
    return item()


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
