"""Continuous (iteration-level) batching of generations - sans-I/O.

The shape of vLLM's scheduler interface: a driver calls, once per model step::

    batch = scheduler.schedule(now)            # expire, admit, build the batch
    tokens = step(model, batch)                # anywhere (e.g. a worker thread)
    scheduler.update_from_output(batch, tokens, now)
    events = scheduler.take_events()            # deliver them, in order

and, at any time between those calls, :meth:`Scheduler.add_request` and
:meth:`Scheduler.finish_requests` (cancel).  Nothing here awaits, sleeps or reads
a clock: every call takes ``now`` (``time.monotonic()`` seconds), so tests drive
it with a fake clock.  Not thread-safe: call it from one thread (the event loop).

Semantics:

- At most ``max_generate_batch`` sequences run; each :meth:`schedule` admits waiting
  ones into free slots, high priority first, and within a priority round-robin
  between groups (a group is a client connection), FIFO within a group.
  ``add_request`` raises :class:`~wsserve.errors.Overloaded` when ``max_generate_queue``
  requests already wait beyond the free slots (``None``: unbounded).
- Fair share: when sequences wait and no slot is free, a group that has waiting
  sequences and runs fewer than ``ceil(max_generate_batch / G)`` (G = groups with
  running or waiting sequences) takes a slot from the group running the most, if
  that one runs more than the share: its most recently admitted sequence is
  *preempted* - it goes back to the front of its group's queue with its context
  and sampling state, and later resumes exactly where it stopped (its output is
  the same as if it had never paused).  So one connection cannot hold every slot
  for long generations while others wait.
- Every running sequence gets exactly one token per step.  A sequence leaves the
  batch the moment it finishes: ``length`` (``max_tokens`` generated), ``stop``
  (a stop string completed), ``cancelled`` (:meth:`finish_requests`), or an
  error: :class:`~wsserve.errors.DeadlineExceeded` (checked in every
  :meth:`schedule` and :meth:`update_from_output`, so a token computed past
  the deadline is not delivered), or whatever :meth:`fail_batch` /
  :meth:`abort_all` pass.
- Events are ``(seq, n, text)`` tuples in one ordered list: a token event per
  streamed character with ``n`` = 0, 1, 2, ..., then exactly one terminal event
  with ``n == FINISHED`` (-1) and ``text == ""`` (``seq.finish_reason`` or
  ``seq.error`` says how it ended).  Text that may begin a stop string is held
  back (:mod:`.stops`); on a ``length`` finish it is released first; on cancel
  or error it is dropped.  ``seq.streamed`` (the number of token events) is the
  ``tokens`` of ``done``.
- A sequence finished while its batch was computing (cancel, deadline) simply
  ignores its row in :meth:`update_from_output`: nothing follows its finish.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import DeadlineExceeded, Internal, Overloaded, WsserveError
from .params import GenerationParams
from .sampling import NOISE_BLOCK, gumbel_block, new_generator
from .stops import StopMatcher

__all__ = ["FINISHED", "Batch", "Event", "Scheduler", "SchedulerStatistics", "SeqState", "Sequence", "TokenModel"]

#: ``n`` of a sequence's terminal event.
FINISHED = -1


class TokenModel(Protocol):
    """What the scheduler and the engine need from a generative model (e.g. ``CharLM``)."""

    context_len: int
    vocab_size: int
    id_to_text: tuple[str, ...]

    def initial_context(self, prompt: str) -> np.ndarray:
        """``[k]`` int ids for the prompt."""

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        """``[B, k]`` int -> ``[B, V]`` float64, row-pure and batching-invariant."""


class SeqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """One generation; also the handle the engine hands out.  Read-only outside this module.

    ``finish_reason`` is ``"length" | "stop" | "cancelled"`` for a normal end, or
    ``None`` with ``error`` set.  ``owner`` is the caller's (the engine keeps the sink there).
    """

    __slots__ = (
        "_context",
        "_noise",
        "_rng",
        "_stops",
        "admitted_at",
        "arrival",
        "error",
        "finish_reason",
        "finished_at",
        "first_token_at",
        "generated",
        "group",
        "id",
        "owner",
        "params",
        "slot",
        "state",
        "streamed",
    )

    def __init__(self, seq_id: int, params: GenerationParams, owner: Any, now: float, group: Any = None) -> None:
        self.id = seq_id
        self.params = params
        self.owner = owner
        self.group = group  # fairness key (the connection); None: a group of its own
        self.state = SeqState.WAITING
        self.slot = -1
        self.generated = 0  # tokens produced by the model (incl. held back / stop text)
        self.streamed = 0  # token events emitted
        self.arrival = now
        self.admitted_at: float | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.finish_reason: str | None = None
        self.error: WsserveError | None = None
        self._stops = StopMatcher(params.stop) if params.stop else None
        self._rng: np.random.Generator | None = None
        self._context: np.ndarray | None = None  # [k] while not running (set on arrival and on preemption)
        self._noise: tuple[np.ndarray, int] | None = None  # (noise block, position) saved on preemption

    @property
    def finished(self) -> bool:
        return self.state is SeqState.FINISHED

    def timing(self) -> dict[str, float | None]:
        """``queue_ms`` (arrival -> slot), ``ttft_ms`` (arrival -> first generated token,
        None if none), ``total_ms`` (arrival -> finish, or so far)."""
        end = self.finished_at if self.finished_at is not None else self.arrival
        admitted = self.admitted_at if self.admitted_at is not None else end
        first = self.first_token_at
        return {
            "queue_ms": round((admitted - self.arrival) * 1e3, 3),
            "ttft_ms": None if first is None else round((first - self.arrival) * 1e3, 3),
            "total_ms": round((end - self.arrival) * 1e3, 3),
        }

    def __repr__(self) -> str:
        return f"<Sequence {self.id} {self.state.value} generated={self.generated}>"


#: ``(seq, n, text)``: token ``n`` of ``seq``, or its terminal event when ``n == FINISHED``.
Event = tuple[Sequence, int, str]


@dataclass(frozen=True, slots=True)
class Batch:
    """Inputs of one model step; row i belongs to ``seqs[i]``.

    ``contexts [B, k]`` int64, ``temperature [B]``, ``top_k [B]``, ``noise [B, V]``
    or ``None`` (all greedy).  Arrays are private copies: safe to read from another thread.
    """

    seqs: tuple[Sequence, ...]
    slots: np.ndarray
    contexts: np.ndarray
    temperature: np.ndarray
    top_k: np.ndarray
    noise: np.ndarray | None
    scheduled_at: float

    @property
    def size(self) -> int:
        return len(self.seqs)


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    running: int
    waiting: int
    max_generate_batch: int
    max_generate_queue: int | None
    steps: int
    tokens: int  # token events emitted (streamed), all time
    generated: int  # tokens the model produced, all time
    finished: int
    last_batch_size: int
    step_ms: float  # moving average of schedule -> update_from_output
    preempted: int = 0  # sequences paused to give another group its fair share, all time
    oldest_wait_s: float = 0.0  # how long the oldest waiting sequence has waited (at the last step)


class _WaitQueue:
    """Waiting sequences of one priority: FIFO within a group, round-robin between groups."""

    __slots__ = ("_groups", "_order", "n")

    def __init__(self) -> None:
        self._groups: dict[Any, deque[Sequence]] = {}
        self._order: deque[Any] = deque()  # groups with waiting sequences, next to serve first
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def push(self, seq: Sequence, *, front: bool = False) -> None:
        """Queue ``seq`` at the back of its group (``front``: at the front, group served next)."""
        key = seq.group if seq.group is not None else seq
        q = self._groups.get(key)
        if q is None:
            q = self._groups[key] = deque()
            if front:
                self._order.appendleft(key)
            else:
                self._order.append(key)
        if front:
            q.appendleft(seq)
        else:
            q.append(seq)
        self.n += 1

    def pop(self) -> Sequence:
        """The first sequence of the next group; that group moves to the back."""
        key = self._order.popleft()
        q = self._groups[key]
        seq = q.popleft()
        if q:
            self._order.append(key)
        else:
            del self._groups[key]
        self.n -= 1
        return seq

    def pop_group(self, key: Any) -> Sequence:
        """The first sequence of group ``key`` (which must be waiting)."""
        q = self._groups[key]
        seq = q.popleft()
        if not q:
            del self._groups[key]
            self._order.remove(key)
        self.n -= 1
        return seq

    def remove(self, seq: Sequence) -> None:
        key = seq.group if seq.group is not None else seq
        q = self._groups[key]
        q.remove(seq)
        if not q:
            del self._groups[key]
            self._order.remove(key)
        self.n -= 1

    def groups(self) -> list[Any]:
        return list(self._order)

    def __iter__(self) -> Any:
        for q in list(self._groups.values()):
            yield from list(q)


class Scheduler:
    """See the module docstring.  ``model`` is a :class:`TokenModel`."""

    def __init__(self, model: TokenModel, *, max_generate_batch: int = 256, max_generate_queue: int | None = 4096) -> None:
        if max_generate_batch < 1:
            raise ValueError(f"max_generate_batch must be >= 1, got {max_generate_batch}")
        if max_generate_queue is not None and max_generate_queue < 0:
            raise ValueError(f"max_generate_queue must be >= 0 or None, got {max_generate_queue}")
        self.model = model
        self.max_generate_batch = max_generate_batch
        self.max_generate_queue = max_generate_queue
        k, v = model.context_len, model.vocab_size
        self._itos = model.id_to_text
        self._ids = itertools.count()
        self._waiting: tuple[_WaitQueue, _WaitQueue] = (_WaitQueue(), _WaitQueue())  # by priority
        self._running: list[Sequence] = []
        self._group_running: dict[Any, int] = {}  # running sequences per group (fair share)
        self._preempted = 0
        self._free = list(range(max_generate_batch - 1, -1, -1))  # stack of free slots
        self._deadlines: list[tuple[float, int, Sequence]] = []
        # Per-slot state (row = slot), so the batch is gathered with a few numpy calls.
        self._ctx = np.zeros((max_generate_batch, k), np.int64)
        self._temp = np.zeros(max_generate_batch)
        self._topk = np.zeros(max_generate_batch, np.int64)
        self._noise = np.zeros((max_generate_batch, NOISE_BLOCK, v))
        self._npos = np.zeros(max_generate_batch, np.int64)
        self._n_running = 0
        self._dirty = True  # running set changed: rebuild the cached batch layout
        self._layout: tuple[Any, ...] = ()
        self._out: list[Event] = []
        self._steps = self._tokens = self._generated = self._finished = self._last_batch = 0
        self._step_s = 0.0
        self._last_now = 0.0  # the latest ``now`` seen (statistics take no clock)

    # -- requests ------------------------------------------------------------------
    def add_request(
        self, params: GenerationParams, now: float, *, owner: Any = None, group: Any = None,
        deadline: float | None = None,
    ) -> Sequence:
        """Queue a generation; it joins the batch at the next :meth:`schedule`.

        ``group`` is the fairness key (the client connection): while others wait,
        a group holds at most a fair share of the running slots (module docstring).
        ``deadline`` (same clock as ``now``): past it the sequence ends with
        ``deadline_exceeded``, waiting or running.
        Raises :class:`~wsserve.errors.Overloaded` (with ``retry_after_ms``) when
        the queue is full; nothing is queued then.
        """
        waiting = len(self._waiting[0]) + len(self._waiting[1])
        if self.max_generate_queue is not None and waiting - len(self._free) >= self.max_generate_queue:
            raise Overloaded(
                f"generation queue is full ({waiting} waiting for {self.max_generate_batch} slots, "
                f"max_generate_queue={self.max_generate_queue})",
                retry_after_ms=self._retry_after_ms(),
            )
        context = self.model.initial_context(params.prompt)  # may raise: nothing is queued then
        if params.prompt:  # only the context is used from here on: do not hold the whole prompt
            params = dataclasses.replace(params, prompt="")
        seq = Sequence(next(self._ids), params, owner, now, group)
        seq._context = context
        self._waiting[params.priority].push(seq)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, seq.id, seq))
            if len(self._deadlines) > 64 + 2 * (waiting + self._n_running):
                self._deadlines = [e for e in self._deadlines if e[2].state is not SeqState.FINISHED]
                heapq.heapify(self._deadlines)
        return seq

    def finish_requests(self, seqs: Any, now: float, *, reason: str = "cancelled") -> None:
        """End unfinished ``seqs`` now with ``reason`` (finished ones are ignored)."""
        for seq in seqs:
            if seq.state is not SeqState.FINISHED:
                self._finish(seq, now, reason=reason)

    def fail_batch(self, batch: Batch, error: WsserveError, now: float) -> None:
        """End every unfinished sequence of ``batch`` with ``error`` (a failed model step)."""
        for seq in batch.seqs:
            if seq.state is not SeqState.FINISHED:
                self._finish(seq, now, error=error)

    def abort_all(self, error: WsserveError, now: float) -> None:
        """End every running and waiting sequence with ``error`` (shutdown)."""
        for seq in [*self._running, *self._waiting[1], *self._waiting[0]]:
            if seq.state is not SeqState.FINISHED:
                self._finish(seq, now, error=error)

    def has_unfinished(self) -> bool:
        return self._n_running > 0 or self._waiting[0].n > 0 or self._waiting[1].n > 0

    def take_events(self) -> list[Event]:
        """The events since the last call, in order (see the module docstring)."""
        out, self._out = self._out, []
        return out

    # -- the step --------------------------------------------------------------------
    def schedule(self, now: float) -> Batch | None:
        """Expire deadlines, admit waiting sequences, and return the next batch (or None)."""
        self._last_now = now
        self._expire(now)
        for queue in (self._waiting[1], self._waiting[0]):
            while queue.n and self._free:
                self._admit(queue.pop(), now)
        if not self._free and (self._waiting[0].n or self._waiting[1].n):
            self._rebalance(now)
        if self._dirty:
            self._running = [s for s in self._running if s.state is SeqState.RUNNING]
            self._relayout()
        if not self._running:
            return None
        seqs, slots, temp, topk, s_rows, s_slots = self._layout
        noise = None
        if len(s_rows):
            pos = self._npos[s_slots]
            for i in np.flatnonzero(pos >= NOISE_BLOCK).tolist():
                seq = seqs[s_rows[i]]
                self._noise[seq.slot] = gumbel_block(seq._rng, self.model.vocab_size)
                pos[i] = 0
            noise = np.zeros((len(seqs), self.model.vocab_size))
            noise[s_rows] = self._noise[s_slots, pos]
            self._npos[s_slots] = pos + 1
        return Batch(seqs, slots, self._ctx[slots], temp, topk, noise, now)

    def update_from_output(self, batch: Batch, tokens: np.ndarray, now: float) -> None:
        """Apply one token per row of ``batch`` (``tokens [B]`` int ids); finish what ends.

        Deadlines are checked first: a sequence whose deadline passed during the
        step gets its error, not the token.
        """
        self._expire(now)
        self._steps += 1
        self._last_batch = batch.size
        elapsed = now - batch.scheduled_at
        self._step_s = elapsed if self._steps == 1 else self._step_s + 0.2 * (elapsed - self._step_s)
        ctx = batch.contexts
        rolled = np.empty_like(ctx)  # [B, k]
        rolled[:, :-1] = ctx[:, 1:]
        rolled[:, -1] = tokens
        self._ctx[batch.slots] = rolled
        itos, out = self._itos, self._out
        running, emitted = SeqState.RUNNING, 0
        for seq, tok in zip(batch.seqs, tokens.tolist()):
            if seq.state is not running:
                continue
            text = itos[tok]
            seq.generated += 1
            if seq.first_token_at is None:
                seq.first_token_at = now
            matcher = seq._stops
            if matcher is None:
                out.append((seq, seq.streamed, text))
                seq.streamed += 1
                emitted += 1
                if seq.generated >= seq.params.max_tokens:
                    self._finish(seq, now, reason="length")
                continue
            released, stopped = matcher.feed(text)
            if not stopped and seq.generated >= seq.params.max_tokens:
                released += matcher.flush()
            for ch in released:
                out.append((seq, seq.streamed, ch))
                seq.streamed += 1
                emitted += 1
            if stopped:
                self._finish(seq, now, reason="stop")
            elif seq.generated >= seq.params.max_tokens:
                self._finish(seq, now, reason="length")
        self._generated += batch.size
        self._tokens += emitted

    # -- introspection ---------------------------------------------------------------
    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            running=self._n_running,
            waiting=len(self._waiting[0]) + len(self._waiting[1]),
            max_generate_batch=self.max_generate_batch,
            max_generate_queue=self.max_generate_queue,
            steps=self._steps,
            tokens=self._tokens,
            generated=self._generated,
            finished=self._finished,
            last_batch_size=self._last_batch,
            step_ms=round(self._step_s * 1e3, 4),
            preempted=self._preempted,
            oldest_wait_s=max(0.0, self._last_now - min(
                (s.arrival for q in self._waiting for s in q), default=self._last_now)),
        )

    # -- internals -------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, seq = heapq.heappop(heap)
            if seq.state is not SeqState.FINISHED:
                waited = (now - seq.arrival) * 1e3
                self._finish(seq, now, error=DeadlineExceeded(
                    f"deadline exceeded after {waited:.1f} ms "
                    f"({seq.streamed} tokens streamed, {seq.state.value})"))

    def _admit(self, seq: Sequence, now: float) -> None:
        """Give ``seq`` a free slot.  Whatever can fail runs before any state changes;
        a failure ends this sequence only (``Internal``), never the scheduler."""
        p = seq.params
        try:
            context = seq._context
            if context is None or context.shape != (self.model.context_len,):
                raise ValueError(f"context of shape {getattr(context, 'shape', None)}")
            rng = seq._rng
            if p.temperature > 0 and rng is None:
                rng = new_generator(p.seed)
            top_k = p.top_k if 0 < p.top_k < self.model.vocab_size else 0  # >= V: every token
        except Exception as exc:  # noqa: BLE001 - one sequence's failure stays in it
            # Already out of its wait queue: end it without touching the queues.
            self._ended(seq, now, None, Internal(f"could not start the generation: {type(exc).__name__}: {exc}"))
            return
        slot = self._free.pop()
        seq.state, seq.slot = SeqState.RUNNING, slot
        if seq.admitted_at is None:
            seq.admitted_at = now
        self._ctx[slot] = context
        self._temp[slot] = p.temperature
        self._topk[slot] = top_k
        if p.temperature > 0:
            seq._rng = rng
            if seq._noise is not None:  # resuming after preemption: the same noise, in order
                self._noise[slot], self._npos[slot] = seq._noise
            else:
                self._npos[slot] = NOISE_BLOCK  # refill before first use
        seq._context = seq._noise = None
        self._running.append(seq)
        self._n_running += 1
        key = seq.group if seq.group is not None else seq
        self._group_running[key] = self._group_running.get(key, 0) + 1
        self._dirty = True

    def _rebalance(self, now: float) -> None:
        """Fair share: while a waiting group runs fewer than ``ceil(max_generate_batch /
        groups)`` sequences and another runs more, pause the latter's most recently
        admitted sequence (it keeps its state and resumes first) and admit the former's."""
        running = self._group_running
        groups = set(running)
        for queue in self._waiting:
            groups.update(queue.groups())
        share = -(-self.max_generate_batch // len(groups))
        while True:
            found = None
            for priority in (1, 0):
                queue = self._waiting[priority]
                found = next((g for g in queue.groups() if running.get(g, 0) < share), None)
                if found is not None:
                    break
            if found is None:
                return
            victim_group = max(running, key=running.__getitem__)
            if running[victim_group] <= share:
                return
            victim = next(s for s in reversed(self._running)
                          if s.state is SeqState.RUNNING and (s.group if s.group is not None else s) == victim_group)
            self._preempt(victim)
            self._admit(self._waiting[priority].pop_group(found), now)

    def _preempt(self, seq: Sequence) -> None:
        """Move running ``seq`` back to the front of its group's wait queue, with its state."""
        slot = seq.slot
        seq._context = self._ctx[slot].copy()
        if seq.params.temperature > 0:
            seq._noise = (self._noise[slot].copy(), int(self._npos[slot]))
        self._release(seq)
        seq.state, seq.slot = SeqState.WAITING, -1
        self._waiting[seq.params.priority].push(seq, front=True)
        self._preempted += 1

    def _release(self, seq: Sequence) -> None:
        """Free a running sequence's slot and count."""
        self._free.append(seq.slot)
        self._n_running -= 1
        key = seq.group if seq.group is not None else seq
        left = self._group_running[key] - 1
        if left > 0:
            self._group_running[key] = left
        else:
            del self._group_running[key]
        self._dirty = True

    def _relayout(self) -> None:
        seqs = tuple(self._running)
        slots = np.array([s.slot for s in seqs], dtype=np.int64)
        temp, topk = self._temp[slots], self._topk[slots]
        s_rows = np.flatnonzero(temp > 0)
        self._layout = (seqs, slots, temp, topk, s_rows, slots[s_rows])
        self._dirty = False

    def _finish(self, seq: Sequence, now: float, *, reason: str | None = None,
                error: WsserveError | None = None) -> None:
        if seq.state is SeqState.WAITING:
            self._waiting[seq.params.priority].remove(seq)
        elif seq.state is SeqState.RUNNING:
            self._release(seq)
        self._ended(seq, now, reason, error)

    def _ended(self, seq: Sequence, now: float, reason: str | None, error: WsserveError | None) -> None:
        """Mark ``seq`` finished (it holds no slot and no queue place) and emit its terminal event."""
        seq.state = SeqState.FINISHED
        seq.finish_reason, seq.error, seq.finished_at = reason, error, now
        seq._rng = seq._context = seq._noise = None
        self._finished += 1
        self._out.append((seq, FINISHED, ""))

    def _retry_after_ms(self) -> int:
        running = [s for s in self._running if s.state is SeqState.RUNNING]
        if not running:
            return 100
        soonest = min(s.params.max_tokens - s.generated for s in running)
        return int(min(10_000, max(1, soonest * max(self._step_s, 1e-4) * 1e3)))
