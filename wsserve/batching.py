"""Sans-I/O batch scheduler for one model's ``predict`` queue.

The driver (:mod:`wsserve.pool`) calls, with ``now`` from a monotonic clock:

* :meth:`BatchQueue.add` when a request arrives (raises ``Overloaded`` when
  the queue's request, row or byte bound would be exceeded: nothing is queued then);
* :func:`queue_deadline` for the deadline a request is queued with (the model's
  default timeout, Triton's queue policy);
* :meth:`BatchQueue.ready_at` to learn when a batch should be formed
  (``None``: nothing queued; ``<= now``: form one now);
* :meth:`BatchQueue.next_batch` when the model is free;
* :meth:`BatchQueue.cancel` to drop a request's unscheduled rows;
* :meth:`BatchQueue.requeue` to put back, first in its level, a request whose model rescheduled it.

Policy:

* **Greedy** by default (``max_delay_ms=None``): a batch is formed as soon as
  the model is free, taking everything queued up to ``max_batch_size`` rows.
  With a window (``max_delay_ms > 0``) a batch waits until it is full or the
  oldest queued request has waited ``max_delay_ms``.
* **Priority** (Triton's ``dynamic_batching { priority_levels, default_priority_level }``): a queue has
  ``priority_levels`` classes, level 1 the highest; a request's :attr:`WorkItem.priority` is its level,
  0 or a value above the levels meaning the queue's ``default_priority_level`` (Triton's rule, core
  ``InferenceRequest::SetPriority``; the default queue: 2 levels, default 2, so priority 1 is "high"
  and any other "normal", wsserve's own two classes).  Higher classes fill a batch
  first: a lower class gets only what they leave, so a steady stream of higher-level rows that fills
  every batch starves the lower levels (Triton's batcher does the same; there is no ageing).  At most
  :data:`MAX_PRIORITY_LEVELS` levels.  Each level has a queue policy (Triton's
  ``priority_queue_policy``, else the model's ``default_queue_policy``: :class:`QueuePolicy`): the
  requests that may wait at that level, and the default timeout those requests are queued with.
* **Fairness**: inside a priority class, rows are shared round-robin between
  requests, so one 60,000-row request advances by its fair share of each batch
  while single-row requests from other sockets still ride along.  A request
  partly served goes to the back of its class.
* **Deadlines and cancellation**: a request past its deadline, or cancelled,
  never has further rows scheduled; ``next_batch`` reports expired ones.
* **Delay** (Triton's ``timeout_action: DELAY``, a level listed in ``delayed_levels``): a request of
  that level whose :attr:`WorkItem.delay_at` passes before any of its rows were scheduled is not
  refused: it moves behind every request of its level whose own has not passed (Triton's
  ``PolicyQueue::delayed_queue_``), in the order they passed, still ahead of the lower levels, and
  is still counted by the queue bounds (Triton's ``max_queue_size`` counts the delayed requests of
  its level too); its :attr:`WorkItem.deadline`, if any, still ends it.  The move is made when a
  batch is formed (Triton's ``ApplyPolicy``), so a queue without such levels does no extra work.
* **Shapes** (``by_shape=True``, for a model with a variable dimension besides the
  batch, Triton's dynamic batcher): a batch holds only requests of one row shape
  (:attr:`WorkItem.shape`, any hashable key).  Each batch takes the shape of the
  request at the head of the highest non-empty priority class (the one waiting longest
  since it was queued or last served), so no shape starves another; with a window, a
  shape that already fills a batch goes first while the head's window is still open.
  Requests of the chosen shape are then shared round-robin as above; a request partly
  served goes to the back of its class, the others keep their places.  Without ``by_shape`` (fixed row
  shapes) ``shape`` is never read and nothing is grouped.
* **Costly rows**: a request's rows may each count ``cost`` units (default 1;
  the pool counts a row to explain as :data:`wsserve.worker.EXPLAIN_ROW_COST`).
  ``max_batch_size`` and ``max_queue_rows`` bound *units*, so a batch holds at
  most ``max_batch_size // cost`` such rows (at least one: a batch that starts
  with a row costlier than the whole budget still takes it).  ``Batch.rows``,
  the statistics' ``rows`` and the round-robin shares stay in rows and units
  as documented on each.

* **Whole requests** (``whole_requests=True``, for a model taking a batch as its requests, a
  Triton Python model: Triton's batcher never splits a request): requests are taken whole, in
  queue order, while they fit; one that does not fit what is left of the batch keeps its place for
  a later batch.  Only a request larger than a whole batch is split: a batch it starts takes its
  first ``max_batch_size`` units, and it goes to the back.

Rows of one request are always scheduled in order (``start`` increases), so
streamed chunks come out in order.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import Overloaded

__all__ = ["WorkItem", "Slice", "Batch", "QueueStats", "BatchQueue", "PriorityLevels", "QueuePolicy", "queue_deadline",
           "MAX_RETRY_AFTER_MS", "MIN_RETRY_AFTER_MS", "MAX_PRIORITY_LEVELS", "TIMEOUT_ACTIONS"]

#: An ``Overloaded`` refusal's ``retry_after_ms`` is at least this, and at most the next.
MIN_RETRY_AFTER_MS = 5
MAX_RETRY_AFTER_MS = 5000

#: A queue's priority levels at most (config.pbtxt's ``dynamic_batching.priority_levels``).  Triton
#: takes any uint64; models use a handful (its docs and tests use 2 to 5).  Each level is a deque
#: that every batch looks at, so the bound keeps forming a batch O(levels) cheap.
MAX_PRIORITY_LEVELS = 16

#: A queue policy's ``timeout_action`` values (Triton's ``ModelQueuePolicy.TimeoutAction`` names).
TIMEOUT_ACTIONS = ("REJECT", "DELAY")


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """One priority level's queue policy (Triton's ``ModelQueuePolicy``): ``max_queue_requests``
    requests may wait at the level (None: no bound of its own); a request queued there is given
    ``default_timeout_ms`` (None: none) as its queue timeout, shortened by its own only if
    ``allow_timeout_override`` (:func:`queue_deadline`).  ``timeout_action``: what passing it does,
    ``"REJECT"`` (the request ends, ``deadline_exceeded``) or ``"DELAY"`` (it waits on behind the
    level's other requests: :attr:`WorkItem.delay_at`)."""

    max_queue_requests: int | None = None
    default_timeout_ms: float | None = None
    allow_timeout_override: bool = False
    timeout_action: str = "REJECT"

    def __post_init__(self) -> None:
        if self.max_queue_requests is not None and self.max_queue_requests < 1:
            raise ValueError(f"max_queue_requests must be >= 1 or None, got {self.max_queue_requests}")
        if self.default_timeout_ms is not None and not self.default_timeout_ms > 0:
            raise ValueError(f"default_timeout_ms must be > 0 or None, got {self.default_timeout_ms}")
        if self.timeout_action not in TIMEOUT_ACTIONS:
            raise ValueError(f"timeout_action must be one of {', '.join(TIMEOUT_ACTIONS)}, got {self.timeout_action!r}")

    @property
    def delays(self) -> bool:
        """A request whose queue timeout passed waits on, delayed (``timeout_action: DELAY``)."""
        return self.timeout_action == "DELAY"

    @property
    def default_timeout_s(self) -> float | None:
        """:attr:`default_timeout_ms` in seconds (None: none)."""
        return None if self.default_timeout_ms is None else self.default_timeout_ms / 1000.0

    def deadline(self, requested: float | None, now: float) -> float | None:
        """The queue deadline of a request queued at ``now`` asking for ``requested`` (absolute, None:
        none) under this policy: :func:`queue_deadline`."""
        return queue_deadline(requested, now, self.default_timeout_s, self.allow_timeout_override)


@dataclass(frozen=True, slots=True)
class PriorityLevels:
    """A model's priority levels and how a request's ``priority`` maps onto them.

    ``levels`` / ``default``: config.pbtxt's ``dynamic_batching.priority_levels`` and
    ``default_priority_level`` as written (``levels`` 0, Triton's "no priorities": one class,
    ``default`` then unused); ``configured`` False: a model without config.pbtxt, wsserve's own two
    classes (``priority`` 1 high, 0 normal), which Triton's configuration calls levels 2, default 2.
    The model's :class:`BatchQueue` has :attr:`classes` levels and :attr:`default_class` as its
    default, and maps a request's priority onto them (Triton's rule: see its module docstring).
    ``policies``: config.pbtxt's ``priority_queue_policy``, ``(level, policy)`` pairs in increasing
    level order, each level in 1..``levels`` (a level not listed has the model's default queue policy).
    """

    levels: int = 2
    default: int = 2
    configured: bool = False
    policies: tuple[tuple[int, QueuePolicy], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.levels <= MAX_PRIORITY_LEVELS:
            raise ValueError(f"priority levels must be in [0, {MAX_PRIORITY_LEVELS}], got {self.levels}")
        if self.levels and not 1 <= self.default <= self.levels:
            raise ValueError(f"default priority level must be in [1, {self.levels}], got {self.default}")
        keys = [level for level, _ in self.policies]
        if keys != sorted(set(keys)) or any(not 1 <= k <= self.levels for k in keys):
            raise ValueError(f"priority queue policy levels must be distinct, increasing and in [1, {self.levels}], "
                             f"got {keys}")

    def level(self, priority: int) -> int:
        """The level (1..:attr:`classes`) a request of ``priority`` (>= 0) is queued at: its own when
        in 1..``levels``, else (0, above the levels, or a model without levels) the default."""
        return priority if 1 <= priority <= self.levels else self.default_class

    def policy(self, priority: int, default: QueuePolicy) -> QueuePolicy:
        """The queue policy of the level a request of ``priority`` is queued at: that level's
        ``priority_queue_policy``, else ``default`` (the model's ``default_queue_policy``)."""
        if self.policies:
            level = self.level(priority)
            for key, policy in self.policies:
                if key == level:
                    return policy
        return default

    @property
    def classes(self) -> int:
        """The queue's classes (levels 0: one)."""
        return self.levels or 1

    @property
    def default_class(self) -> int:
        """The level a request of priority 0 (or one out of range) is queued at."""
        return self.default if self.levels else 1

    @property
    def wire_max(self) -> int:
        """The highest ``priority`` wsserve's own requests (WebSocket, ``POST /predict``) may ask for
        (Triton's transports may send any: it is then the default level):
        1 for the two default classes (0 normal, 1 high) and for a model with no levels (one class:
        0 and 1 are both accepted and queued alike, as Triton ignores a priority there), else ``levels``."""
        return self.levels if self.configured and self.levels > 1 else 1

    def refusal(self, priority: int, model: str) -> str | None:
        """Why a wsserve request's ``priority`` is refused for ``model`` (None: it is not): above
        :attr:`wire_max` (Triton's transports take any value: :meth:`level`)."""
        if 0 <= priority <= self.wire_max:
            return None
        if not self.configured:
            return f"field 'priority' must be 0 (normal) or 1 (high), got {priority}"
        if not self.levels:
            return (f"field 'priority' must be 0 or 1 for model {model!r}, got {priority} (its config.pbtxt sets "
                    "no dynamic_batching.priority_levels: one level)")
        return (f"field 'priority' must be in [0, {self.levels}] for model {model!r}, got {priority} (its "
                f"config.pbtxt dynamic_batching.priority_levels is {self.levels}, 1 the highest; 0 is "
                f"default_priority_level {self.default})")


def queue_deadline(requested: float | None, now: float, default_timeout_s: float | None,
                   allow_override: bool = True) -> float | None:
    """The deadline (same clock as ``now``) a request is queued with: its own (``requested``,
    absolute, None: none) under a model's default timeout (Triton's ``default_queue_policy``):
    without a default, the request's; with one, ``now + default_timeout_s`` unless the request
    asks for less and ``allow_override`` lets it (a request may shorten the default, never
    lengthen it: Triton's ``allow_timeout_override``)."""
    if default_timeout_s is None:
        return requested
    default = now + default_timeout_s
    if allow_override and requested is not None and requested < default:
        return requested
    return default


@dataclass(eq=False, slots=True)
class WorkItem:
    """One request's rows waiting in a queue.  ``payload`` is the caller's (the
    :class:`~wsserve.worker.PredictWorker` sets it to None once it has delivered the last rows)."""

    rows: int
    #: The request's priority (>= 0): its level in the queue, 1 the highest; 0, or a value above the
    #: queue's ``priority_levels``, the default level.  The default queue (2 levels, default 2): 1 high,
    #: anything else normal.
    priority: int = 0
    deadline: float | None = None  # absolute, same clock as ``now``
    row_bytes: int = 0  # input bytes of one row (for ``max_queue_bytes``)
    payload: Any = None
    enqueued_at: float = 0.0
    next_row: int = 0  # rows already handed out in batches
    cancelled: bool = False
    deadline_entry: list[Any] | None = None  # its entry in the queue's deadline heap
    cost: int = 1  # units one row counts against max_batch_size and max_queue_rows (>= 1)
    delivered: int = 0  # rows whose results went back to ``payload`` (the caller's count; never read here)
    #: ``deadline`` bounds only the wait before the first rows are scheduled (a model's default queue
    #: timeout, :func:`queue_deadline`): once some rows are in a batch the request has started, and its
    #: later rows no longer expire (a request's own deadline, False here, holds until its last row).
    deadline_until_started: bool = False
    #: The request's response-cache key while its outputs are to be stored (the worker's; never read here).
    cache_key: bytes | None = None
    #: Its row shape (a hashable key; read only by a queue made with ``by_shape=True``, which batches
    #: together only requests whose keys are equal).
    shape: Any = None
    #: Its queue timeout under ``timeout_action: DELAY`` (absolute, same clock; None: none): read only
    #: at a level of the queue's ``delayed_levels``, where passing it before any row was scheduled
    #: moves the request behind its level's others instead of ending it (``deadline`` still does).
    delay_at: float | None = None
    #: Its entry in the queue's heap of ``delay_at``\ s (blanked when it starts or leaves the queue).
    delay_entry: list[Any] | None = None
    #: The worker's state of a request its model may reschedule (:class:`wsserve.worker.Held`; never read
    #: here), from its first execute until it is answered or ends.
    held: Any = None

    @property
    def remaining(self) -> int:
        return self.rows - self.next_row


class Slice(NamedTuple):
    """Rows ``[start, stop)`` of ``item`` in a batch (a tuple: made per request per batch)."""

    item: WorkItem
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


#: ``_slice(Slice, (item, start, stop))`` makes a :class:`Slice` without the named tuple's
#: Python-level ``__new__`` (a lambda): ~140 ns instead of ~390 ns, once per request per batch.
_slice = tuple.__new__


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows to compute together.  ``rows``: how many; ``units``: their cost (``rows`` when every row costs 1)."""

    slices: tuple[Slice, ...]
    rows: int
    expired: tuple[WorkItem, ...] = ()
    units: int = -1  # -1: same as rows

    @property
    def cost(self) -> int:
        return self.rows if self.units < 0 else self.units


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot of a queue (feeds ``/metrics`` and tests)."""

    requests: int
    rows: int
    bytes: int
    oldest_age_s: float
    batches: int
    rows_scheduled: int


class BatchQueue:
    """Queue of :class:`WorkItem` for one model.  Not thread-safe; never awaits."""

    def __init__(
        self,
        *,
        max_batch_size: int = 256,
        max_delay_ms: float | None = None,
        max_queue_rows: int | None = None,
        max_queue_bytes: int | None = None,
        max_queue_requests: int | None = None,
        by_shape: bool = False,
        whole_requests: bool = False,
        priority_levels: int = 2,
        default_priority_level: int = 2,
        max_queue_requests_per_level: bool = False,
        level_max_queue_requests: dict[int, int | None] | None = None,
        delayed_levels: tuple[int, ...] = (),
    ) -> None:
        """``by_shape``: batch together only requests of equal :attr:`WorkItem.shape` (see the
        module docstring, "Shapes"); ``whole_requests``: never split a request that fits a batch
        ("Whole requests"); ``priority_levels`` (1..:data:`MAX_PRIORITY_LEVELS`) classes, level 1
        first, and the level of an item of priority 0 or above them ("Priority");
        ``max_queue_requests_per_level``: ``max_queue_requests`` bounds each level's requests (Triton's
        ``max_queue_size``: a queue per level, each with the ``default_queue_policy``), else all of them;
        ``level_max_queue_requests``: the bound of a level (key: 1..``priority_levels``) whose own queue
        policy sets one (Triton's ``priority_queue_policy``; None: that level has no bound), in place of
        ``max_queue_requests`` (per level only); ``delayed_levels``: the levels whose queue policy has
        ``timeout_action: DELAY`` (module docstring, "Delay")."""
        if not 1 <= priority_levels <= MAX_PRIORITY_LEVELS:
            raise ValueError(f"priority_levels must be in [1, {MAX_PRIORITY_LEVELS}], got {priority_levels}")
        if not 1 <= default_priority_level <= priority_levels:
            raise ValueError(f"default_priority_level must be in [1, {priority_levels}], got {default_priority_level}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_delay_ms is not None and not max_delay_ms > 0:
            raise ValueError(f"max_delay_ms must be > 0 or None (greedy), got {max_delay_ms}")
        self.max_batch_size = max_batch_size
        self.max_delay_s = 0.0 if max_delay_ms is None else max_delay_ms / 1000.0
        self.max_queue_rows = max_queue_rows
        self.max_queue_bytes = max_queue_bytes
        #: Requests with rows waiting, at most (Triton's ``max_queue_size``; None: no bound): at each
        #: level if :attr:`max_queue_requests_per_level`, else in all.
        self.max_queue_requests = max_queue_requests
        self.max_queue_requests_per_level = max_queue_requests_per_level
        levels_most = level_max_queue_requests or {}
        if any(not 1 <= k <= priority_levels for k in levels_most):
            raise ValueError(f"level_max_queue_requests: levels must be in [1, {priority_levels}], got "
                             f"{sorted(levels_most)}")
        if levels_most and not max_queue_requests_per_level:
            raise ValueError("level_max_queue_requests needs max_queue_requests_per_level")
        #: Each level's request bound, level 1 first (None: none): its own policy's, else ``max_queue_requests``.
        self._level_most = tuple(levels_most.get(n, max_queue_requests) for n in range(1, priority_levels + 1))
        self._bytes = 0  # unscheduled input bytes of live items
        self.priority_levels = priority_levels
        if any(not 1 <= k <= priority_levels for k in delayed_levels):
            raise ValueError(f"delayed_levels: levels must be in [1, {priority_levels}], got {sorted(delayed_levels)}")
        levels = tuple(deque[WorkItem]() for _ in range(priority_levels))
        #: Each level's deque of delayed requests (None: the level does not delay), level 1 first.
        delayed = tuple(deque[WorkItem]() if n in delayed_levels else None for n in range(1, priority_levels + 1))
        #: The deques in the order batches are filled in: each level's (level 1 first), followed by
        #: its delayed requests' when it has them.
        self._classes = tuple(q for level, late in zip(levels, delayed) for q in (level, late) if q is not None)
        #: ``_by_priority[p]``: the deque of an item of priority ``p`` (0: the default level's; a ``p``
        #: past its end, too).
        self._by_priority = (levels[default_priority_level - 1], *levels)
        #: Likewise its level's delayed deque (None: the level has none); None when no level delays.
        self._delayed_by_priority = (delayed[default_priority_level - 1], *delayed) if delayed_levels else None
        #: Min-heap of ``[delay_at, tiebreak, item | None]`` of the items queued at a delaying level with
        #: a ``delay_at``; an item that starts or leaves the queue blanks its entry (as ``_deadlines``).
        self._delays: list[list[Any]] = []
        #: Likewise: the level, and its request bound (None: none), of an item of priority ``p``.
        self._level_by_priority = (default_priority_level, *range(1, priority_levels + 1))
        self._most_by_priority = (self._level_most[default_priority_level - 1], *self._level_most)
        self._rows = 0  # unscheduled rows of live items
        self._units = 0  # their cost units (== _rows while every row costs 1)
        self._requests = 0  # live items with unscheduled rows
        self._batches = 0
        self._rows_scheduled = 0
        # Min-heap of [deadline, tiebreak, item | None]; an item that leaves the
        # queue blanks its entry, so the heap never keeps a finished request alive.
        self._deadlines: list[list[Any]] = []
        self._stale = 0  # heap entries of items that left the queue
        self._tiebreak = itertools.count()
        self._batch_s: float | None = None  # recent batch compute time (note_batch); None: none yet
        #: Unscheduled cost units per queued shape (``by_shape`` only; None: shapes are not read).
        self._shape_units: dict[Any, int] | None = {} if by_shape else None
        self._whole_requests = whole_requests

    # -- admission

    def add(self, item: WorkItem, now: float, *, admitted: bool = False) -> None:
        """Queue ``item`` at its priority's level.  Raises ``Overloaded`` (with ``retry_after_ms``) if
        ``max_queue_requests`` requests are waiting already, or if its rows' cost units
        would take a non-empty queue past ``max_queue_rows`` (or its bytes past
        ``max_queue_bytes``); an empty queue accepts any item (else a request bigger than
        the bound could never be served).  ``admitted``: the item was bounded already (with
        :meth:`check_room` when it arrived, counted in front of the queue: a stateful model's
        request handed over in its sequence's turn), so none of these bounds refuse it."""
        rows = item.rows - item.next_row
        if rows < 1:
            raise ValueError("a work item needs at least one row")
        priority = item.priority
        if priority < 0:
            raise ValueError(f"a work item's priority must be >= 0, got {priority}")
        try:
            queue = self._by_priority[priority]
        except IndexError:  # above the levels: the default level (Triton's rule)
            priority = 0
            queue = self._by_priority[0]
        if item.cost < 1:
            raise ValueError(f"a row costs at least 1 unit, got {item.cost}")
        nbytes = rows * item.row_bytes
        units = rows * item.cost
        if not admitted:
            if not self.max_queue_requests_per_level:
                most = self.max_queue_requests
                if most is not None and self._requests >= most:
                    raise Overloaded(
                        f"queue full: {self._requests} requests queued, limit {most} (max_queue_requests)",
                        retry_after_ms=self._retry_after_ms(),
                    )
            elif (most := self._most_by_priority[priority]) is not None and len(queue) >= most - (
                    0 if self._delayed_by_priority is None else self._delayed_len(priority)):
                # a level's queue holds its items with rows waiting (and its delayed ones: Triton's Size())
                raise Overloaded(
                    f"queue full: {len(queue) + self._delayed_len(priority)} requests queued at priority level "
                    f"{self._level_by_priority[priority]}, limit {most} (max_queue_requests)",
                    retry_after_ms=self._retry_after_ms(),
                )
        if not admitted and self._rows:  # (check_room, inlined: every request passes here)
            limit = self.max_queue_rows
            byte_limit = self.max_queue_bytes
            if (limit is not None and self._units + units > limit) or \
                    (byte_limit is not None and self._bytes + nbytes > byte_limit):
                self.check_room(units, nbytes)  # raises, naming the bound
        item.enqueued_at = now
        queue.append(item)
        self._rows += rows
        self._units += units
        self._bytes += nbytes
        self._requests += 1
        if self._shape_units is not None:
            self._count_shape(item.shape, units)
        if item.deadline is not None:
            item.deadline_entry = [item.deadline, next(self._tiebreak), item]
            heapq.heappush(self._deadlines, item.deadline_entry)
        if self._delayed_by_priority is not None and item.delay_at is not None and \
                self._delayed_by_priority[priority] is not None:
            heap = self._delays
            item.delay_entry = [item.delay_at, next(self._tiebreak), item]
            heapq.heappush(heap, item.delay_entry)
            if len(heap) > 64 and len(heap) > 2 * self._requests:  # mostly started or gone: drop those
                heap[:] = [e for e in heap if e[2] is not None]
                heapq.heapify(heap)

    def requeue(self, item: WorkItem) -> bool:
        """Put back ``item``, every row of which was scheduled (a request its model rescheduled:
        :mod:`wsserve.reschedule`), first in its priority level, ahead of the requests that have not
        run yet (Triton's sequence batcher keeps its in-flight iterative sequences ahead).  It was
        admitted when it came: no bound refuses it now (``max_queue_requests``, ``max_queue_rows``,
        ``max_queue_bytes``), and its rows, units and bytes count as queued again while it waits
        (they stopped counting when its rows were scheduled, so nothing is counted twice).  Its
        queue timeout (``deadline_until_started``, ``delay_at``) was met when it started and no
        longer applies; its own ``deadline`` still ends it.  Its ``enqueued_at`` is kept.  Several
        requests requeued from one batch keep their order when requeued last first.  Returns False
        (nothing done) for a cancelled item, or one with rows still queued."""
        if item.cancelled or item.remaining > 0:
            return False
        item.next_row = 0
        try:
            queue = self._by_priority[item.priority]
        except IndexError:  # above the levels: the default level (Triton's rule)
            queue = self._by_priority[0]
        rows = item.rows
        queue.appendleft(item)
        self._rows += rows
        self._units += rows * item.cost
        self._bytes += rows * item.row_bytes
        self._requests += 1
        if self._shape_units is not None:
            self._count_shape(item.shape, rows * item.cost)
        item.delay_at = None
        if item.deadline_until_started:
            item.deadline = None  # (a queue deadline, met when it started)
        if item.deadline is not None:
            item.deadline_entry = [item.deadline, next(self._tiebreak), item]
            heapq.heappush(self._deadlines, item.deadline_entry)
        return True

    def _delayed_len(self, priority: int) -> int:
        """The delayed requests of the level of an item of ``priority`` (0 when it has none)."""
        late = None if self._delayed_by_priority is None else self._delayed_by_priority[priority]
        return 0 if late is None else len(late)

    def check_room(self, units: int, nbytes: int, *, ahead_rows: int = 0, ahead_bytes: int = 0) -> None:
        """Raise ``Overloaded`` (with ``retry_after_ms``) if a request of ``units`` cost units and
        ``nbytes`` input bytes would take the queue past ``max_queue_rows`` or ``max_queue_bytes``;
        a queue with nothing queued takes any (else a request bigger than the bound could never be
        served).  ``ahead_rows`` / ``ahead_bytes``: rows (of cost 1) and bytes of this model held
        in front of the queue and counted with it (a stateful model's requests waiting for their
        sequence's turn: :class:`~wsserve.sequence_worker.SequenceWorker`)."""
        queued_rows = self._rows + ahead_rows
        queued_units = self._units + ahead_rows
        if not queued_rows:
            return
        limit = self.max_queue_rows
        if limit is not None and queued_units + units > limit:
            what = f"{queued_rows} rows" if queued_units == queued_rows else f"{queued_rows} rows ({queued_units} units)"
            waiting = f" ({ahead_rows} waiting for their sequence's turn or a slot)" if ahead_rows else ""
            raise Overloaded(
                f"queue full: {what} queued{waiting}, limit {limit} (max_queue_rows)",
                retry_after_ms=self._retry_after_ms(ahead_rows),
            )
        byte_limit = self.max_queue_bytes
        queued_bytes = self._bytes + ahead_bytes
        if byte_limit is not None and queued_bytes + nbytes > byte_limit:
            waiting = f" ({ahead_bytes} waiting for their sequence's turn or a slot)" if ahead_bytes else ""
            raise Overloaded(
                f"queue full: {queued_bytes} input bytes queued{waiting}, limit {byte_limit} (max_queue_bytes)",
                retry_after_ms=self._retry_after_ms(ahead_rows),
            )

    def note_batch(self, seconds: float) -> None:
        """A batch of this queue took ``seconds`` to compute: its moving average (the last few
        batches weigh most) prices the batches ahead in an ``Overloaded``'s ``retry_after_ms``."""
        if seconds >= 0.0:
            self._batch_s = seconds if self._batch_s is None else 0.8 * self._batch_s + 0.2 * seconds

    def _retry_after_ms(self, ahead_units: int = 0) -> int:
        """The refused request's hint: the batches queued ahead of it (full ones: their cost units,
        plus ``ahead_units`` held in front of the queue, ÷ ``max_batch_size``, at least one;
        ``by_shape``: so for each shape queued, a batch holding one shape only) times the recent
        batch time (:meth:`note_batch`; 2 ms before any batch ran), in
        [:data:`MIN_RETRY_AFTER_MS`, :data:`MAX_RETRY_AFTER_MS`]."""
        cap = self.max_batch_size
        if self._shape_units:
            batches_ahead = sum(units // cap + 1 for units in self._shape_units.values()) + ahead_units // cap
        else:
            batches_ahead = (self._units + ahead_units) // cap + 1
        batch_ms = 2.0 if self._batch_s is None else self._batch_s * 1000.0
        return int(min(MAX_RETRY_AFTER_MS, max(MIN_RETRY_AFTER_MS, batches_ahead * batch_ms)))

    def cancel(self, item: WorkItem) -> bool:
        """Drop ``item``'s unscheduled rows.  Returns whether it was queued
        (False for an item never added, refused, finished or cancelled)."""
        if item.cancelled:
            return False
        item.cancelled = True
        if item.remaining <= 0:
            return False
        try:
            queue = self._by_priority[item.priority]
        except IndexError:  # above the levels: queued at the default level
            queue = self._by_priority[0]
        try:
            queue.remove(item)
        except ValueError:  # never queued (e.g. refused with Overloaded, or a negative priority), or delayed
            late = None if self._delayed_by_priority is None else \
                self._delayed_by_priority[item.priority if item.priority < len(self._by_priority) else 0]
            if late is None or item not in late:
                return False
            late.remove(item)
        self._rows -= item.remaining
        self._units -= item.remaining * item.cost
        self._bytes -= item.remaining * item.row_bytes
        self._requests -= 1
        if self._shape_units is not None:
            self._count_shape(item.shape, -item.remaining * item.cost)
        self._forget_deadline(item)
        if item.delay_entry is not None:
            self._forget_delay(item)
        return True

    def _count_shape(self, shape: Any, units: int) -> None:
        """Add ``units`` (negative: remove) to ``shape``'s unscheduled units; a shape at 0 is forgotten."""
        counts = self._shape_units
        assert counts is not None
        left = counts.get(shape, 0) + units
        if left > 0:
            counts[shape] = left
        else:
            del counts[shape]

    def _forget_deadline(self, item: WorkItem) -> None:
        """``item`` left the queue: its deadline entry is now stale.  Rebuild the
        heap when stale entries dominate, so finished items are not retained."""
        entry = item.deadline_entry
        if entry is None:
            return
        entry[2] = None
        item.deadline_entry = None
        self._stale += 1
        heap = self._deadlines
        if self._stale > 64 and 2 * self._stale > len(heap):
            heap[:] = [e for e in heap if e[2] is not None]
            heapq.heapify(heap)
            self._stale = 0

    @staticmethod
    def _forget_delay(item: WorkItem) -> None:
        """``item`` started or left the queue: its ``delay_at`` no longer applies, and its entry in
        the delay heap no longer holds it (nor its payload) until that time."""
        entry = item.delay_entry
        if entry is not None:
            entry[2] = None
            item.delay_entry = None

    # -- scheduling

    def __len__(self) -> int:
        return self._requests

    def ready_at(self, now: float) -> float | None:
        """When the next batch should be formed, or ``None`` if nothing is queued."""
        if self._requests == 0:
            return None
        if self.max_delay_s <= 0:
            return now
        if self._shape_units is not None:
            if max(self._shape_units.values()) >= self.max_batch_size:  # a shape fills a batch
                return now
        elif self._units >= self.max_batch_size:
            return now
        # Window mode only: O(queued requests), which is bounded by the batch size.
        oldest = min(it.enqueued_at for q in self._classes for it in q)
        return oldest + self.max_delay_s

    def next_batch(self, now: float) -> Batch | None:
        """Form a batch of at most ``max_batch_size`` cost units, or ``None``.

        Items whose deadline is ``<= now`` are removed first and returned in
        ``Batch.expired`` (a batch with no slices may carry only those).
        Round-robin shares are in units: a request whose rows cost more gets
        fewer rows of a batch.
        """
        expired = self._expire(now) if self._deadlines else []
        if self._delays and self._delays[0][0] <= now:
            self._delay(now)
        if self._shape_units is not None:
            return self._next_of_one_shape(now, expired)
        cap = self.max_batch_size
        if 0 < self._units <= cap:  # everything queued fits: take it all, highest level first
            out = []
            for queue in self._classes:
                for item in queue:
                    out.append(_slice(Slice, (item, item.next_row, item.rows)))
                    item.next_row = item.rows
                    if item.deadline_entry is not None:
                        self._forget_deadline(item)
                    if item.delay_entry is not None:
                        self._forget_delay(item)
                queue.clear()
            rows, units = self._rows, self._units
            self._rows = self._units = self._requests = self._bytes = 0
            self._batches += 1
            self._rows_scheduled += rows
            return Batch(slices=tuple(out), rows=rows, expired=tuple(expired), units=units)
        slices, rows, units = self._round_robin(self._classes, cap)
        return self._batch(slices, rows, units, expired)

    def _batch(self, slices: dict[WorkItem, list[int]], rows: int, units: int,
               expired: list[WorkItem]) -> Batch | None:
        """The batch of ``slices`` (``{item: [start, stop]}``, already taken from the queue), counted."""
        if not slices and not expired:
            return None
        self._rows -= rows
        if slices:
            self._batches += 1
            self._rows_scheduled += rows
        return Batch(
            slices=tuple(_slice(Slice, (item, a, b)) for item, (a, b) in slices.items()),
            rows=rows,
            expired=tuple(expired),
            units=units,
        )

    def _round_robin(self, queues: tuple[deque[WorkItem], ...], cap: int) -> tuple[dict[WorkItem, list[int]], int, int]:
        """Take up to ``cap`` units from ``queues`` (in order), shared round-robin inside each; a
        request partly served goes to the back of its queue, a finished one leaves it.  Returns
        ``({item: [start, stop]}, rows, units)``; ``self._rows`` is left to the caller.
        ``whole_requests``: :meth:`_whole` instead."""
        if self._whole_requests:
            return self._whole(queues, cap)
        slices: dict[WorkItem, list[int]] = {}
        rows = units = 0
        for queue in queues:
            while cap > 0 and queue:
                share = max(1, cap // len(queue))
                progressed = False
                for _ in range(len(queue)):
                    if cap <= 0:
                        break
                    item = queue.popleft()
                    cost = item.cost
                    take = min(item.remaining, max(1, share // cost), cap // cost)
                    if take == 0 and not slices:  # costlier than the whole budget: alone, one row
                        take = 1
                    if take == 0:  # does not fit what is left of this batch
                        queue.append(item)
                        continue
                    progressed = True
                    span = slices.get(item)
                    if span is None:
                        slices[item] = [item.next_row, item.next_row + take]
                    else:
                        span[1] += take
                    rows += take
                    units += take * cost
                    cap -= take * cost
                    if self._took(item, take, cost):
                        queue.append(item)
                if not progressed:
                    break
        return slices, rows, units

    def _took(self, item: WorkItem, take: int, cost: int) -> bool:
        """``take`` rows of ``item`` (``cost`` units each) leave the queue; True when rows remain (it
        started: a queue deadline that ends then is met), False when it is done (it leaves the queue)."""
        item.next_row += take
        if item.delay_entry is not None:  # started: its queue timeout is met
            self._forget_delay(item)
        self._bytes -= take * item.row_bytes
        self._units -= take * cost
        if item.remaining:
            if item.deadline_until_started and item.deadline_entry is not None:
                self._forget_deadline(item)  # started: its queue deadline is met
            return True
        self._requests -= 1
        self._forget_deadline(item)
        return False

    def _whole(self, queues: tuple[deque[WorkItem], ...], cap: int) -> tuple[dict[WorkItem, list[int]], int, int]:
        """:meth:`_round_robin` for ``whole_requests``: requests taken whole, in order, while they fit
        in ``cap`` units; one that does not keeps its place, unless nothing is taken yet (larger than
        a batch: its first ``cap`` units, then it goes to the back of its queue)."""
        slices: dict[WorkItem, list[int]] = {}
        rows = units = 0
        for queue in queues:
            kept: list[WorkItem] = []
            partly: WorkItem | None = None
            while queue and cap > 0:
                item = queue.popleft()
                cost = item.cost
                take = item.remaining if item.remaining * cost <= cap else 0 if slices else max(1, cap // cost)
                if take == 0:
                    kept.append(item)
                    continue
                slices[item] = [item.next_row, item.next_row + take]
                rows += take
                units += take * cost
                cap -= take * cost
                if self._took(item, take, cost):
                    partly = item
            queue.extendleft(reversed(kept))  # ahead of those not looked at (the batch is full)
            if partly is not None:
                queue.append(partly)
        return slices, rows, units

    def _next_of_one_shape(self, now: float, expired: list[WorkItem]) -> Batch | None:
        """``by_shape``: the next batch, of one shape's requests (see the module docstring)."""
        counts = self._shape_units
        assert counts is not None
        if not counts:
            return self._batch({}, 0, 0, expired)
        cap = self.max_batch_size
        classes = self._classes
        head = next(q for q in classes if q)[0]
        shape = head.shape
        if counts[shape] < cap and 0 < self.max_delay_s and now < head.enqueued_at + self.max_delay_s:
            shape = next((s for s, u in counts.items() if u >= cap), shape)  # a full batch, while the head may wait
        mines = tuple(deque(it for it in q if it.shape == shape) for q in classes)
        slices, rows, units = self._round_robin(mines, cap)
        for queue, mine in zip(classes, mines):  # unserved ones keep their places
            waiting = [it for it in queue if it not in slices]
            queue.clear()
            queue.extend(waiting)
            queue.extend(it for it in mine if it in slices)  # partly served: to the back
        self._count_shape(shape, -units)
        return self._batch(slices, rows, units, expired)

    def _delay(self, now: float) -> None:
        """Move the requests whose ``delay_at`` is ``<= now`` and none of whose rows were scheduled
        behind their level's others (earliest first: the order they passed it)."""
        heap = self._delays
        by_priority = self._by_priority
        late_by_priority = self._delayed_by_priority
        assert late_by_priority is not None
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)[2]
            if item is None:
                continue  # left the queue, or started (its queue timeout met) before it passed
            item.delay_entry = None
            p = item.priority if item.priority < len(by_priority) else 0
            try:
                by_priority[p].remove(item)
            except ValueError:  # not queued here (never added)
                continue
            late = late_by_priority[p]
            assert late is not None
            late.append(item)

    def _expire(self, now: float) -> list[WorkItem]:
        expired: list[WorkItem] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)[2]
            if item is None:
                self._stale -= 1
                continue  # left the queue before its deadline
            item.deadline_entry = None
            expired.append(item)
            self.cancel(item)
        return expired

    def drain(self) -> list[WorkItem]:
        """Remove and return every queued item (at shutdown); the queue is then empty."""
        items = [it for q in self._classes for it in q]
        for q in self._classes:
            q.clear()
        for it in items:
            it.cancelled = True
            self._forget_deadline(it)
            it.delay_entry = None
        self._delays.clear()
        self._rows = self._units = self._requests = self._bytes = 0
        if self._shape_units is not None:
            self._shape_units.clear()
        return items

    def statistics(self, now: float) -> QueueStats:
        oldest = min((it.enqueued_at for q in self._classes for it in q), default=now)
        return QueueStats(
            requests=self._requests,
            rows=self._rows,
            bytes=self._bytes,
            oldest_age_s=max(0.0, now - oldest),
            batches=self._batches,
            rows_scheduled=self._rows_scheduled,
        )
