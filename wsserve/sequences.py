"""Triton's sequence batcher (stateful models), sans-I/O: :class:`SequenceScheduler`.

A model with config.pbtxt ``sequence_batching`` keeps state per *sequence*: requests carrying one
correlation id (OIP parameter ``sequence_id``: an unsigned 64-bit integer or a string), the first
flagged ``sequence_start``, the last ``sequence_end``.  The rules (Triton's Direct and Oldest
strategies differ only in the number of ``slots`` and the batching after :meth:`SequenceScheduler.take`,
both the caller's: Direct ``max_batch_size`` x instances, Oldest ``max_candidate_sequences`` x
instances, its requests batched oldest first up to ``max_batch_size``):

- A sequence holds a *slot* from its first request until its END request has run, or until it
  was idle (no request waiting or running) for ``max_idle_s`` (Triton's
  ``max_sequence_idle_microseconds``, default 1 s).  At most ``slots`` sequences hold one at once
  (``max_batch_size x instance count``); a new sequence finding none free waits in the backlog
  (FIFO; at most ``max_backlog`` sequences), its requests queued.
- A sequence's requests run one at a time, in arrival order: :meth:`SequenceScheduler.take`
  hands out the oldest waiting request of each sequence holding a slot whose previous request
  ended (:meth:`SequenceScheduler.done`).  Requests of different sequences handed out together
  may share a batch; two of one sequence never do.
- A request without a correlation id is refused by the caller (Triton's message:
  :func:`missing_id`); the first request of an unknown sequence (never seen, ended, or expired)
  must carry START, else :meth:`SequenceScheduler.arrive` refuses it (Triton's message).
- At most ``max_waiting`` requests wait (not yet handed out) over all sequences; past it a
  request is refused with ``overloaded``, but a request of a sequence holding a slot counts only
  those of sequences holding one (at most ``max_waiting`` more then wait), so a full backlog never
  refuses the END that frees a slot for it.  Their rows and input bytes are counted
  (:attr:`SequenceScheduler.waiting_rows`, :attr:`SequenceScheduler.waiting_bytes`) for the caller
  to bound them with the model's queue (``max_queue_rows``, ``max_queue_bytes``); a request of a
  sequence holding a slot counts only those of sequences holding one
  (:meth:`SequenceScheduler.ahead`), so a full backlog never keeps a sequence from ending.  A waiting
  request past its deadline is dropped by :meth:`SequenceScheduler.overdue`.
- A request of a sequence in the backlog *waits for a slot*
  (:meth:`SequenceScheduler.waits_for_slot`); when its sequence is given one, its waiting requests
  are listed for the caller to collect with :meth:`SequenceScheduler.granted` (a transport counts
  a request waiting for a slot apart from its connection's other requests: it waits for requests
  of other sequences, maybe sent after it on the same connection, to end theirs).
- **A dropped request aborts its sequence** (Triton's sequence batcher cancels a sequence whose
  next request is cancelled, releasing its slot and cancelling the requests queued behind it): a
  waiting request cancelled or past its deadline (:meth:`SequenceScheduler.cancel`), or one handed
  out that the model never ran (:meth:`SequenceScheduler.done` with ``why``), drops the requests of
  its sequence queued behind it up to the next START (they would reach the model as if it had run:
  the START, or a step of the state, missing), each given an ``error`` naming the sequence and why,
  for the caller to collect with :meth:`SequenceScheduler.aborted` and fail.  Unless a START
  follows, the sequence is over: it lets its slot (or backlog place) go once nothing of it runs or
  waits, and a later request of it must START (refused, the message saying why).  Requests queued
  ahead of the dropped one still run in order.

- **Implicit state** (config.pbtxt's ``sequence_batching { state [...] }``, :class:`State`): a
  sequence keeps its model state here, in its slot (:meth:`SequenceScheduler.keep_state`,
  :meth:`SequenceScheduler.state_of`), from the request that produced it to the next; it is freed
  when the sequence lets its slot go (END ran, idle expiry, drained), at once when it is
  aborted, and when a START of its id is handed out (a restart: the new sequence never sees the
  old one's state, even when its START fails and keeps none).  A :class:`StateBudget` shared by
  the schedulers of one server bounds what all keep: a state that would pass it is not kept.
  :attr:`SequenceScheduler.state_bytes` counts what is kept.

Nothing here touches a clock or a loop: every call takes ``now`` (monotonic seconds).
:func:`control_inputs` builds the control tensors config.pbtxt's ``control_input`` asks for.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BadRequest, InvalidInput, Overloaded
from .jsontypes import shown

__all__ = ["START", "END", "DEFAULT_MAX_IDLE_S", "MAX_SEQUENCE_ID_LENGTH", "Control", "State", "StateBudget", "SequenceConfig",
           "SequenceId", "Pending", "sequence_request_id", "SequenceScheduler", "control_inputs", "missing_id", "sequence_of"]

#: ``request.flags()`` bits of a Triton Python model's request (TRITONSERVER_REQUEST_FLAG_SEQUENCE_*).
START = 1
END = 2
#: Triton's default ``max_sequence_idle_microseconds`` (1,000,000).
DEFAULT_MAX_IDLE_S = 1.0
#: The longest string correlation id taken (a bound of wsserve's; Triton has none).
MAX_SEQUENCE_ID_LENGTH = 256
_UINT64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Control:
    """One ``control_input`` tensor: input ``name`` of ``kind`` (``"START"``, ``"END"``,
    ``"READY"``, ``"CORRID"``) in ``dtype``; ``false``/``true`` its values for a flag."""

    name: str
    kind: str
    dtype: np.dtype
    false: Any = 0
    true: Any = 1


@dataclass(frozen=True, slots=True)
class State:
    """One implicit state tensor (config.pbtxt's ``sequence_batching.state``): the model's input
    ``input_name`` gets, per sequence, what its output ``output_name`` gave for the sequence's
    previous request (its initial state at START); ``dtype``, per-row ``dims`` (``-1``: the size
    the model outputs).  The initial state: ``initial_dims`` (fixed) of zeros, or of the values
    in the model directory's ``initial_state/<initial_file>``; with no ``initial_state``, zeros in
    ``dims`` with every ``-1`` taken as 1 (Triton's starting request has uninitialized data so)."""

    input_name: str
    output_name: str
    dtype: np.dtype
    dims: tuple[int, ...]
    initial_dims: tuple[int, ...]
    initial_file: str | None = None


@dataclass(frozen=True, slots=True)
class SequenceConfig:
    """config.pbtxt's ``sequence_batching`` as served: ``max_idle_s``, the ``controls`` fed to
    the model, ``strategy`` (``"direct"`` or ``"oldest"``), ``as_json`` (the section as Triton's
    model configuration lists it) and Oldest's ``max_candidate_sequences`` (slots per instance;
    0: ``max_batch_size``) and ``max_queue_delay_us`` (its batching window); ``states``: the
    implicit state tensors the server keeps per sequence (an ONNX model's)."""

    max_idle_s: float = DEFAULT_MAX_IDLE_S
    controls: tuple[Control, ...] = ()
    strategy: str = "direct"
    as_json: dict[str, Any] = field(default_factory=dict)
    max_candidate_sequences: int = 0
    max_queue_delay_us: int = 0
    states: tuple[State, ...] = ()


class StateBudget:
    """The implicit state all the stateful model versions of one server (its pool) may keep at
    once (``limit`` bytes; ``max_sequence_state_total_bytes``): each
    :class:`SequenceScheduler` sharing it counts what its sequences keep in ``used``, so many
    sequences (slots x models) cannot keep ``max_sequence_state_bytes`` each past it."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.used = 0


class SequenceId(str):
    """A request id (``str``, what :func:`wsserve.worker.request_id_of` returns) that also carries
    the request's sequence: ``correlation_id`` (int or str) and ``flags`` (:data:`START` |
    :data:`END`), read by a Triton Python model's ``request.correlation_id()`` / ``flags()``."""

    __slots__ = ("correlation_id", "flags")
    correlation_id: int | str
    flags: int

    def __new__(cls, rid: str, correlation_id: int | str, flags: int) -> SequenceId:
        self = super().__new__(cls, rid)
        self.correlation_id = correlation_id
        self.flags = flags
        return self


def sequence_request_id(rid: str, sequence: tuple[int | str, bool, bool]) -> SequenceId:
    """Request id ``rid`` carrying ``sequence`` (``(id, start, end)``, :func:`sequence_of`'s)."""
    cid, start, end = sequence
    return SequenceId(rid, cid, (START if start else 0) | (END if end else 0))


def missing_id(model: str) -> BadRequest:
    """Triton's refusal of a request without a correlation id to a sequence model."""
    return BadRequest(f"inference request to model '{model}' must specify a non-zero or non-empty correlation ID")


def sequence_of(params: Any) -> tuple[int | str, bool, bool] | None:
    """A request's OIP ``parameters`` ``sequence_id`` / ``sequence_start`` / ``sequence_end``
    checked: ``(id, start, end)``, or None when it names no sequence (no ``sequence_id``, or 0 /
    ``""``: Triton's "no correlation id").  Raises :class:`BadRequest` naming the parameter: an id
    not an integer in [0, 2^64) or a string of at most :data:`MAX_SEQUENCE_ID_LENGTH` characters,
    a flag not a boolean."""
    sid = params.get("sequence_id")
    start = params.get("sequence_start", False)
    end = params.get("sequence_end", False)
    if type(start) is not bool:
        raise BadRequest(f"parameter 'sequence_start' must be a boolean, got {shown(start)}")
    if type(end) is not bool:
        raise BadRequest(f"parameter 'sequence_end' must be a boolean, got {shown(end)}")
    if sid is None:
        return None
    if type(sid) is int:
        if not 0 <= sid <= _UINT64_MAX:
            raise BadRequest(f"parameter 'sequence_id' must be an unsigned 64-bit integer or a string, got {sid}"[:300])
    elif type(sid) is str:
        if len(sid) > MAX_SEQUENCE_ID_LENGTH:
            raise BadRequest(f"parameter 'sequence_id' is a string of {len(sid)} characters; at most "
                             f"{MAX_SEQUENCE_ID_LENGTH}")
    else:
        raise BadRequest(f"parameter 'sequence_id' must be an unsigned 64-bit integer or a string, got {shown(sid)}")
    if sid == 0 or sid == "":
        return None
    return sid, start, end


def control_inputs(controls: tuple[Control, ...], corrid: int | str, flags: int, rows: int,
                   batched: bool = True) -> dict[str, np.ndarray]:
    """The control tensors of one request of ``rows`` rows: each ``[rows, 1]`` (``[1]`` rows of
    a model without a batch dimension: ``batched`` false, ``rows`` 1).  READY is always true (a
    request is sent only when it is ready).  Raises :class:`InvalidInput` for a string
    correlation id to a model whose CORRID tensor is numeric."""
    out: dict[str, np.ndarray] = {}
    shape = (rows, 1) if batched else (1, 1)
    for c in controls:
        if c.kind == "CORRID":
            if c.dtype == np.object_:
                value: Any = str(corrid).encode()
            elif isinstance(corrid, str):
                raise InvalidInput(f"sequence_id {corrid!r} is a string; the model's CORRID control input "
                                   f"{c.name!r} takes an integer ({c.dtype})")
            else:
                info = np.iinfo(c.dtype)
                if not info.min <= corrid <= info.max:
                    raise InvalidInput(f"sequence_id {corrid} does not fit the model's CORRID control input "
                                       f"{c.name!r} ({c.dtype})")
                value = corrid
        elif c.kind == "START":
            value = c.true if flags & START else c.false
        elif c.kind == "END":
            value = c.true if flags & END else c.false
        else:  # READY
            value = c.true
        out[c.name] = np.full(shape, value, dtype=c.dtype)
    return out


class Pending:
    """One request of a sequence, from :meth:`SequenceScheduler.arrive` until :meth:`SequenceScheduler.done`
    (or cancelled while waiting): its ``correlation_id``, ``flags`` and the caller's ``payload``;
    ``handle`` is the caller's to use as it likes."""

    __slots__ = ("correlation_id", "flags", "payload", "arrived", "deadline", "nbytes", "rows", "taken", "cancelled",
                 "ended", "handle", "error")

    def __init__(self, correlation_id: int | str, flags: int, payload: Any, arrived: float,
                 deadline: float | None = None, nbytes: int = 0, rows: int = 1) -> None:
        self.nbytes = nbytes  # its input bytes, counted in waiting_bytes while it waits
        self.rows = rows  # its rows, counted in waiting_rows while it waits
        self.correlation_id = correlation_id
        self.flags = flags
        self.payload = payload
        self.arrived = arrived
        self.deadline = deadline  # while it waits (same clock as ``now``), None: none
        self.taken = False
        self.cancelled = False  # dropped while waiting (cancelled, overdue, aborted or drained)
        self.ended = False  # handed out and ended (done()): a later cancel() leaves it alone
        self.handle: Any = None
        #: Why it was dropped when its sequence was aborted (:meth:`SequenceScheduler.aborted`), else None.
        self.error: BadRequest | None = None


class _Sequence:
    __slots__ = ("queue", "slot", "busy", "last", "ended", "started", "aborted", "state", "state_bytes")

    def __init__(self, now: float) -> None:
        self.queue: deque[Pending] = deque()
        self.slot = False  # holds one of the slots
        self.busy = False  # a request of it was handed out and has not ended
        self.last = now  # when it last had a request arrive or end
        self.ended = False  # its latest request carries END: the next must START
        self.started = False  # a request of it was handed out (the model saw the sequence)
        self.aborted: str | None = None  # why it was aborted (a request dropped, no START behind it)
        self.state: Any = None  # its implicit state (keep_state), None: none yet
        self.state_bytes = 0

    def live(self) -> bool:
        """A request of it runs or waits (cancelled ones skipped)."""
        return self.busy or any(not p.cancelled for p in self.queue)


class SequenceScheduler:
    """The sequences of one model version (see the module docstring)."""

    def __init__(self, name: str, *, slots: int, max_idle_s: float = DEFAULT_MAX_IDLE_S,
                 max_backlog: int = 1024, max_waiting: int = 1024, budget: StateBudget | None = None) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.name = name
        self.slots = slots
        self.max_idle_s = max_idle_s
        self.max_backlog = max_backlog
        self.max_waiting = max_waiting
        self.waiting_bytes = 0  # input bytes of the requests not handed out
        self.waiting_rows = 0  # their rows
        self._slot_rows = 0  # rows and bytes of those waiting in sequences holding a slot
        self._slot_bytes = 0
        self._slot_waiting = 0  # and how many they are (a full backlog never refuses them: arrive())
        self._sequences: dict[int | str, _Sequence] = {}
        self._backlog: OrderedDict[int | str, None] = OrderedDict()  # sequences waiting for a slot, FIFO
        self._held = 0  # sequences holding a slot
        self.waiting = 0  # requests not handed out (cancelled ones excluded)
        self._aborted: list[Pending] = []  # dropped with their sequence, not yet collected (aborted())
        self._granted: list[Pending] = []  # waited for a slot, their sequence was given one (granted())
        #: Bytes of the implicit state kept for the sequences (:meth:`keep_state`).
        self.state_bytes = 0
        #: Shared with the server's other stateful models: what all may keep (None: unbounded).
        self.budget = budget

    def __len__(self) -> int:
        """Sequences known (holding a slot or in the backlog)."""
        return len(self._sequences)

    @property
    def held(self) -> int:
        return self._held

    def state_of(self, correlation_id: int | str) -> Any:
        """The implicit state kept for sequence ``correlation_id`` (:meth:`keep_state`), or None."""
        seq = self._sequences.get(correlation_id)
        return None if seq is None else seq.state

    def keep_state(self, correlation_id: int | str, state: Any, nbytes: int) -> bool:
        """Keep ``state`` (``nbytes`` bytes; replacing the one kept) for sequence ``correlation_id``,
        until its next request or until it lets its slot go or is aborted.  A sequence no longer
        known, or aborted, keeps nothing.  False (nothing changed: the sequence keeps the state
        it had) when the growth would take the shared :attr:`budget` past its limit."""
        seq = self._sequences.get(correlation_id)
        if seq is None or seq.aborted:
            return True
        grow = nbytes - seq.state_bytes
        if self.budget is not None:
            if grow > 0 and self.budget.used + grow > self.budget.limit:
                return False
            self.budget.used += grow
        self.state_bytes += grow
        seq.state, seq.state_bytes = state, nbytes
        return True

    def _forget_state(self, seq: _Sequence) -> None:
        self.state_bytes -= seq.state_bytes
        if self.budget is not None:
            self.budget.used -= seq.state_bytes
        seq.state, seq.state_bytes = None, 0

    def ahead(self, correlation_id: int | str) -> tuple[int, int]:
        """The waiting rows and input bytes a new request of sequence ``correlation_id`` counts
        against the model's queue bounds: all that wait, but for a sequence holding a slot only
        those of sequences holding one (requests waiting for a slot never keep a sequence holding
        one from going on and letting it go)."""
        seq = self._sequences.get(correlation_id)
        if seq is not None and seq.slot:
            return self._slot_rows, self._slot_bytes
        return self.waiting_rows, self.waiting_bytes

    def arrive(self, correlation_id: int | str, start: bool, end: bool, payload: Any, now: float,
               deadline: float | None = None, nbytes: int = 0, rows: int = 1) -> Pending:
        """Queue a request of sequence ``correlation_id`` (of ``rows`` rows, ``nbytes`` input
        bytes); one still waiting at ``deadline`` is dropped by :meth:`overdue`.  Raises
        :class:`BadRequest` (Triton's message) for a sequence not started (unknown, ended, expired
        or aborted: the message then says why) without ``start``, and :class:`Overloaded` when
        ``max_waiting`` requests wait or a new sequence finds the backlog full.  The caller bounds
        what waits (:meth:`ahead`) with the model's queue before calling."""
        seq = self._sequences.get(correlation_id)
        if not start and (seq is None or seq.ended or seq.aborted):
            why = f" ({seq.aborted})" if seq is not None and seq.aborted else ""
            raise BadRequest(f"inference request for sequence {correlation_id} to model '{self.name}' must specify "
                             f"the START flag on the first request of the sequence{why}")
        # a sequence holding a slot counts only those of sequences holding one (as ahead()): its
        # END, behind a full backlog, frees the slot the backlog waits for
        held = seq is not None and seq.slot
        waiting = self._slot_waiting if held else self.waiting
        if waiting >= self.max_waiting:
            raise Overloaded(f"model {self.name!r}: {waiting} requests of sequences wait"
                             f"{' in sequences holding a slot' if held else ''} "
                             f"(max_queue_requests={self.max_waiting})", retry_after_ms=100)
        if seq is None:
            if self._held >= self.slots and len(self._backlog) >= self.max_backlog:
                raise Overloaded(f"model {self.name!r}: {self._held} sequences hold its {self.slots} slots and "
                                 f"{len(self._backlog)} wait for one (at most {self.max_backlog})", retry_after_ms=100)
            seq = self._sequences[correlation_id] = _Sequence(now)
            if self._held < self.slots:
                seq.slot = True
                self._held += 1
            else:
                self._backlog[correlation_id] = None
        pending = Pending(correlation_id, (START if start else 0) | (END if end else 0), payload, now, deadline,
                          nbytes, rows)
        seq.queue.append(pending)
        seq.ended = end
        if start:
            seq.aborted = None  # a new sequence of the same id (after what of the old one still runs or waits)
        seq.last = now
        self.waiting += 1
        self.waiting_bytes += nbytes
        self.waiting_rows += rows
        if seq.slot:
            self._slot_rows += rows
            self._slot_bytes += nbytes
            self._slot_waiting += 1
        return pending

    def take(self, now: float) -> list[Pending]:
        """The requests that may run now: the oldest waiting request of each sequence holding a slot
        with none running, oldest first (Oldest's batches take the oldest); each is marked running
        until :meth:`done`."""
        out: list[Pending] = []
        for seq in self._sequences.values():
            if not seq.slot or seq.busy:
                continue
            while seq.queue and seq.queue[0].cancelled:
                seq.queue.popleft()
            if seq.queue:
                p = seq.queue.popleft()
                p.taken = True
                seq.busy = True
                seq.started = True
                if p.flags & START:  # a new sequence of the id begins: nothing of the one before it carries over
                    self._forget_state(seq)
                self.waiting -= 1
                self.waiting_bytes -= p.nbytes
                self.waiting_rows -= p.rows
                self._slot_rows -= p.rows
                self._slot_bytes -= p.nbytes
                self._slot_waiting -= 1
                out.append(p)
        out.sort(key=lambda p: p.arrived)  # stable: equal times keep sequence order
        return out

    def done(self, pending: Pending, now: float, why: str | None = None, *, ran: bool = False) -> None:
        """``pending`` (handed out by :meth:`take`) ended: its sequence may run its next request;
        after an END with nothing queued behind it the sequence lets its slot go (the oldest
        backlogged sequence takes it).  ``why``: the model never ran it (``"was cancelled"``,
        ``"passed its deadline"``, ...): its sequence is aborted behind it (see the module
        docstring; :meth:`aborted`); with ``ran`` the model ran it but its sequence cannot go on
        (``why`` says why, e.g. its state outgrew the bound).  Idempotent."""
        if not pending.taken:
            return
        pending.taken = False
        pending.ended = True
        seq = self._sequences.get(pending.correlation_id)
        if seq is None:
            return
        seq.busy = False
        seq.last = now
        if why is not None:
            self._abort(seq, pending, why, ran=ran)
        if (pending.flags & END or seq.ended or seq.aborted) and not seq.live():
            self._release(pending.correlation_id, seq)

    def cancel(self, pending: Pending, now: float, why: str = "was cancelled") -> bool:
        """Drop ``pending`` if it still waits (True); False once handed out (then :meth:`done`), ended
        or dropped already.  Its sequence is aborted behind it (the module docstring; ``why`` says
        what happened to it, for the others' errors: :meth:`aborted`).  A sequence left with
        nothing running or waiting lets its slot (or backlog place) go at once when it is over for
        the model: its END arrived, it was aborted, or none of it was ever handed out."""
        if pending.taken or pending.cancelled or pending.ended:
            return False
        cid = pending.correlation_id
        seq = self._sequences.get(cid)
        self._drop(pending, seq)
        if seq is not None:
            seq.last = now
            self._abort(seq, pending, why)
            self._let_go_if_over(cid, seq)
        return True

    def waits_for_slot(self, pending: Pending) -> bool:
        """``pending`` waits (not handed out, ended or dropped) and its sequence is in the backlog."""
        if pending.taken or pending.cancelled or pending.ended:
            return False
        seq = self._sequences.get(pending.correlation_id)
        return seq is not None and not seq.slot

    def granted(self) -> list[Pending]:
        """The requests that waited for a slot (:meth:`waits_for_slot`) and whose sequence was given
        one since the last call (those not dropped since), for the caller to count them again."""
        out, self._granted = [p for p in self._granted if not p.cancelled], []
        return out

    def aborted(self) -> list[Pending]:
        """The requests dropped because their sequence was aborted since the last call, each with
        its ``error`` (:class:`BadRequest` naming the sequence and why), for the caller to fail."""
        out, self._aborted = self._aborted, []
        return out

    def expire(self, now: float) -> list[int | str]:
        """Let go every sequence holding a slot that was idle (nothing waiting or running) for
        ``max_idle_s``; returns their ids (a later request of one must START again)."""
        gone = []
        for cid, seq in list(self._sequences.items()):
            if seq.slot and not seq.busy and not any(not p.cancelled for p in seq.queue) \
                    and now - seq.last >= self.max_idle_s:
                self._release(cid, seq)
                gone.append(cid)
        return gone

    def overdue(self, now: float) -> list[Pending]:
        """Drop (as :meth:`cancel`) and return every waiting request whose deadline passed, for
        the caller to fail: a request waiting for its sequence's turn or for a slot times out there.
        The requests of its sequence behind it are aborted (:meth:`aborted`), not returned here."""
        out = []
        for p in [p for seq in self._sequences.values() for p in seq.queue
                  if not p.cancelled and p.deadline is not None and p.deadline <= now]:
            if self.cancel(p, now, "passed its deadline"):  # not when aborted by an earlier one
                out.append(p)
        return out

    def next_expiry(self) -> float | None:
        """When the next idle sequence expires or the next waiting request's deadline passes
        (None: neither)."""
        times = [seq.last + self.max_idle_s for seq in self._sequences.values()
                 if seq.slot and not seq.busy and not any(not p.cancelled for p in seq.queue)]
        times += [p.deadline for seq in self._sequences.values() for p in seq.queue
                  if not p.cancelled and p.deadline is not None]
        return min(times) if times else None

    def drain(self) -> list[Pending]:
        """Every request still waiting (for the caller to fail), all sequences forgotten; the
        aborted ones not collected yet are left to :meth:`aborted`."""
        out = [p for seq in self._sequences.values() for p in seq.queue if not p.cancelled and not p.taken]
        for p in out:
            p.cancelled = True  # a later cancel() of one is a no-op
        self._sequences.clear()
        self._backlog.clear()
        self._granted.clear()
        self._held = 0
        self.waiting = 0
        self.waiting_bytes = 0
        self.waiting_rows = 0
        self._slot_rows = self._slot_bytes = self._slot_waiting = 0
        if self.budget is not None:
            self.budget.used -= self.state_bytes
        self.state_bytes = 0
        return out

    def _drop(self, pending: Pending, seq: _Sequence | None) -> None:
        pending.cancelled = True
        self.waiting -= 1
        self.waiting_bytes -= pending.nbytes
        self.waiting_rows -= pending.rows
        if seq is not None and seq.slot:
            self._slot_rows -= pending.rows
            self._slot_bytes -= pending.nbytes
            self._slot_waiting -= 1

    def _abort(self, seq: _Sequence, dropped: Pending, why: str, *, ran: bool = False) -> None:
        """``dropped`` (of ``seq``) never reaches the model (``ran``: its sequence cannot go on
        after it): drop the requests of ``seq`` waiting behind it up to the next START, forget
        its state, and unless a START follows, mark ``seq`` aborted."""
        cid = dropped.correlation_id
        what = "its START" if dropped.flags & START else "a request of it"
        reason = f"sequence {cid} was aborted: {what} {why}" + ("" if ran else " before the model ran it")
        self._forget_state(seq)
        behind = not any(p is dropped for p in seq.queue)  # handed out: all that waits is behind it
        for p in seq.queue:
            if not behind:
                behind = p is dropped
                continue
            if p.cancelled:
                continue
            if p.flags & START:
                return  # a new sequence of the id starts there: it and what follows run
            self._drop(p, seq)
            p.error = BadRequest(f"inference request for sequence {cid} to model '{self.name}' was not run: "
                                 f"{reason}; start the sequence again (sequence_start)")
            self._aborted.append(p)
        seq.aborted = reason

    def _let_go_if_over(self, cid: int | str, seq: _Sequence) -> None:
        if not seq.live() and (seq.ended or not seq.started or seq.aborted):
            if seq.slot:
                self._release(cid, seq)
            else:
                del self._sequences[cid]
                self._backlog.pop(cid, None)
                self._forget_state(seq)

    def _release(self, cid: int | str, seq: _Sequence) -> None:
        del self._sequences[cid]
        self._forget_state(seq)
        seq.slot = False
        self._held -= 1
        while self._backlog and self._held < self.slots:
            nxt, _ = self._backlog.popitem(last=False)
            waiting = self._sequences.get(nxt)
            if waiting is not None:
                waiting.slot = True
                self._held += 1
                live = [p for p in waiting.queue if not p.cancelled]
                self._slot_rows += sum(p.rows for p in live)
                self._slot_bytes += sum(p.nbytes for p in live)
                self._slot_waiting += len(live)
                self._granted.extend(live)
