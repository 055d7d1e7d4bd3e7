"""The sequence batcher's sans-I/O core (:mod:`wsserve.sequences`), with an explicit ``now``:
order within a sequence, slots, the backlog, idle expiry, Triton's START/END rules, bounds, the
OIP parameters and the control tensors."""

from __future__ import annotations

import numpy as np
import pytest

from wsserve.errors import BadRequest, InvalidInput, Overloaded
from wsserve.sequences import (
    END,
    START,
    Control,
    SequenceId,
    SequenceScheduler,
    StateBudget,
    control_inputs,
    missing_id,
    sequence_of,
)


def _ids(pending: list) -> list:
    return [p.payload for p in pending]


def test_one_request_of_a_sequence_at_a_time_in_arrival_order_and_sequences_share() -> None:
    s = SequenceScheduler("acc", slots=4)
    a1 = s.arrive(1, True, False, "a1", 0.0)
    s.arrive(1, False, False, "a2", 0.0)
    s.arrive(1, False, True, "a3", 0.0)
    s.arrive(2, True, False, "b1", 0.0)
    first = s.take(0.0)
    assert _ids(first) == ["a1", "b1"]  # one of each sequence; two sequences may share a batch
    assert s.take(0.0) == []  # a2 waits for a1
    s.done(a1, 0.1)
    (a2,) = s.take(0.1)
    assert a2.payload == "a2" and a2.flags == 0 and a1.flags == START
    s.done(a2, 0.2)
    (a3,) = s.take(0.2)
    assert a3.payload == "a3" and a3.flags == END
    s.done(a3, 0.3)
    assert s.held == 1  # 1 let its slot go at its END; 2 holds one


def test_start_is_required_for_an_unknown_or_ended_sequence() -> None:
    s = SequenceScheduler("acc", slots=2)
    with pytest.raises(BadRequest, match="inference request for sequence 7 to model 'acc' must specify the START "
                                         "flag on the first request of the sequence"):
        s.arrive(7, False, False, "x", 0.0)
    p = s.arrive(7, True, True, "only", 0.0)
    assert p.flags == START | END
    with pytest.raises(BadRequest, match="START"):  # after END the next request must START again
        s.arrive(7, False, False, "late", 0.0)
    (taken,) = s.take(0.0)
    s.done(taken, 0.0)
    assert len(s) == 0 and s.held == 0
    s.arrive(7, True, False, "again", 1.0)  # a new sequence of the same id
    assert missing_id("acc").message == ("inference request to model 'acc' must specify a non-zero or non-empty "
                                         "correlation ID")


def test_slots_bound_the_sequences_at_once_and_the_backlog_gets_them_in_order() -> None:
    s = SequenceScheduler("acc", slots=2, max_backlog=1)
    a = s.arrive("a", True, False, "a", 0.0)
    b = s.arrive("b", True, False, "b", 0.0)
    s.arrive("c", True, False, "c", 0.0)
    with pytest.raises(Overloaded, match="2 sequences hold its 2 slots and 1 wait"):
        s.arrive("d", True, False, "d", 0.0)
    assert _ids(s.take(0.0)) == ["a", "b"]  # c waits for a slot
    s.arrive("c", False, False, "c2", 0.0)  # a backlogged sequence's requests queue
    s.done(a, 1.0)
    s.done(b, 1.0)
    assert s.take(1.0) == []  # a and b still hold their slots (no END)
    a_end = s.arrive("a", False, True, "a-end", 1.0)
    assert _ids(s.take(1.0)) == ["a-end"]
    s.done(a_end, 2.0)  # a ends: c takes its slot, its requests in order
    assert _ids(s.take(2.0)) == ["c"]


def test_idle_sequences_expire_after_max_idle_and_a_later_request_must_start() -> None:
    s = SequenceScheduler("acc", slots=1, max_idle_s=1.0)
    p = s.arrive(5, True, False, "p", 0.0)
    s.arrive(6, True, False, "q", 0.0)  # backlogged
    (taken,) = s.take(0.0)
    assert s.next_expiry() is None  # running: not idle
    s.done(taken, 10.0)
    assert s.next_expiry() == 11.0
    assert s.expire(10.999) == []
    assert s.expire(11.0) == [5]
    with pytest.raises(BadRequest, match="must specify the START flag"):
        s.arrive(5, False, False, "late", 11.0)
    assert _ids(s.take(11.0)) == ["q"]  # the backlogged sequence took the freed slot
    assert p.payload == "p"


def test_a_request_arriving_resets_the_idle_clock() -> None:
    s = SequenceScheduler("acc", slots=1, max_idle_s=1.0)
    first = s.arrive(1, True, False, "1", 0.0)
    s.take(0.0)
    s.done(first, 0.0)
    s.arrive(1, False, False, "2", 0.9)
    assert s.expire(1.5) == []
    (two,) = s.take(1.5)
    s.done(two, 1.5)
    assert s.take(1.5) == [] and s.waiting == 0
    assert s.expire(2.49) == [] and s.expire(2.5) == [1]


def test_waiting_requests_are_bounded() -> None:
    s = SequenceScheduler("acc", slots=1, max_waiting=2)
    s.arrive(1, True, False, "1", 0.0)
    s.arrive(1, False, False, "2", 0.0)
    with pytest.raises(Overloaded, match="2 requests of sequences wait"):
        s.arrive(1, False, False, "3", 0.0)
    s.take(0.0)
    s.arrive(1, False, False, "3", 0.0)  # one was handed out: room again


def test_sequence_parameters_are_checked_and_bounded() -> None:
    assert sequence_of({}) is None
    assert sequence_of({"sequence_id": 0, "sequence_start": True}) is None  # 0: no correlation id (Triton's)
    assert sequence_of({"sequence_id": ""}) is None
    assert sequence_of({"sequence_id": (1 << 64) - 1, "sequence_end": True}) == ((1 << 64) - 1, False, True)
    assert sequence_of({"sequence_id": "abc", "sequence_start": True}) == ("abc", True, False)
    for bad, what in (({"sequence_id": 1 << 64}, "unsigned 64-bit"), ({"sequence_id": -1}, "unsigned 64-bit"),
                      ({"sequence_id": 1.5}, "unsigned 64-bit"), ({"sequence_id": "x" * 257}, "257 characters"),
                      ({"sequence_id": 1, "sequence_start": 1}, "'sequence_start' must be a boolean"),
                      ({"sequence_id": 1, "sequence_end": "yes"}, "'sequence_end' must be a boolean")):
        with pytest.raises(BadRequest, match=what):
            sequence_of(bad)


def test_control_tensors_one_row_per_request_row_in_their_types() -> None:
    controls = (Control("S", "START", np.dtype(np.float32), 0.0, 1.0), Control("E", "END", np.dtype(np.int32), 0, 1),
                Control("R", "READY", np.dtype(np.bool_), False, True), Control("C", "CORRID", np.dtype(np.uint64)),
                Control("CS", "CORRID", np.dtype(object)))
    out = control_inputs(controls, 42, START, 2)
    assert out["S"].tolist() == [[1.0], [1.0]] and out["S"].dtype == np.float32
    assert out["E"].tolist() == [[0], [0]] and out["E"].dtype == np.int32
    assert out["R"].tolist() == [[True], [True]]
    assert out["C"].tolist() == [[42], [42]] and out["C"].dtype == np.uint64
    assert out["CS"].tolist() == [[b"42"], [b"42"]]
    assert control_inputs(controls[:2], 3, END, 1, batched=False)["E"].tolist() == [[1]]
    with pytest.raises(InvalidInput, match="sequence_id 'abc' is a string; the model's CORRID control input 'C'"):
        control_inputs(controls, "abc", 0, 1)
    with pytest.raises(InvalidInput, match="does not fit"):
        control_inputs((Control("C", "CORRID", np.dtype(np.int32)),), 1 << 40, 0, 1)


def test_a_sequence_id_is_a_request_id_carrying_the_sequence() -> None:
    rid = SequenceId("r1", 9, START | END)
    assert rid == "r1" and isinstance(rid, str) and rid.correlation_id == 9 and rid.flags == 3


def test_a_cancelled_start_frees_its_slot_or_backlog_place_at_once() -> None:
    s = SequenceScheduler("acc", slots=1, max_backlog=1)
    a1 = s.arrive(1, True, False, "a1", 0.0)
    b1 = s.arrive(2, True, False, "b1", 0.0)  # backlogged behind 1
    assert s.cancel(b1, 0.1)  # the client left before its sequence ever reached the model
    assert len(s) == 1  # 2 is forgotten: its backlog place is free
    s.arrive(3, True, False, "c1", 0.1)  # would be refused (backlog full) if 2 still held the place
    assert s.cancel(s._sequences[3].queue[0], 0.1) and len(s) == 1
    (got,) = s.take(0.2)
    assert got is a1
    s2 = SequenceScheduler("acc", slots=1)
    only = s2.arrive(7, True, False, "x", 0.0)
    assert s2.cancel(only, 0.0)
    assert s2.held == 0 and len(s2) == 0  # the slot is free now, not after max_idle_s
    s2.arrive(8, True, False, "y", 0.0)
    assert _ids(s2.take(0.0)) == ["y"]


def test_a_cancelled_waiting_end_lets_the_slot_go_once_the_running_request_ends() -> None:
    s = SequenceScheduler("acc", slots=1)
    s.arrive(1, True, False, "a1", 0.0)
    (got,) = s.take(0.0)
    a2 = s.arrive(1, False, True, "a2", 0.0)  # END, waits for a1
    s.arrive(2, True, True, "b1", 0.0)  # backlogged
    assert s.cancel(a2, 0.1)
    s.done(got, 0.2)  # the sequence ended (its END arrived) and nothing of it is left
    assert _ids(s.take(0.2)) == ["b1"]  # 2 got the slot at once, not after 1's idle expiry


def test_a_cancelled_start_aborts_the_requests_of_its_sequence_waiting_behind_it() -> None:
    """Triton's sequence batcher cancels a sequence whose next request is cancelled: no request
    may reach the model as if the sequence had started when its START never ran.  Each request
    ends once: the cancelled one by its caller, the others through aborted() with their error."""
    s = SequenceScheduler("acc", slots=1)
    (a1,) = [s.arrive(1, True, False, "a1", 0.0)]
    assert s.take(0.0) == [a1]  # 1 holds the only slot
    b1 = s.arrive(2, True, False, "b1", 0.0, nbytes=4)  # backlogged, with two more requests behind its START
    s.arrive(2, False, False, "b2", 0.0, nbytes=4)
    s.arrive(2, False, True, "b3", 0.0, nbytes=4)
    assert s.cancel(b1, 0.1)
    aborted = s.aborted()
    assert _ids(aborted) == ["b2", "b3"] and s.aborted() == []  # collected once
    assert all(p.error.message == "inference request for sequence 2 to model 'acc' was not run: sequence 2 was "
               "aborted: its START was cancelled before the model ran it; start the sequence again "
               "(sequence_start)" for p in aborted)
    assert (s.waiting, s.waiting_rows, s.waiting_bytes, len(s)) == (0, 0, 0, 1)  # 2 is forgotten
    assert all(not s.cancel(p, 0.2) for p in aborted)  # their clients leaving later changes nothing
    with pytest.raises(BadRequest, match="sequence 2 to model 'acc' must specify the START flag"):
        s.arrive(2, False, False, "late", 0.2)
    s.done(a1, 0.3)
    assert s.take(0.3) == [] and s.held == 1  # 1 keeps its slot; nothing of 2 ever runs


def test_a_start_that_restarts_a_running_sequence_is_aborted_with_what_follows_it() -> None:
    s = SequenceScheduler("acc", slots=1)
    s.arrive(1, True, False, "x1", 0.0)
    (x1,) = s.take(0.0)
    restart = s.arrive(1, True, False, "y1", 0.0)  # a new sequence of id 1, queued behind x1
    s.arrive(1, False, False, "y2", 0.0)
    s.arrive(2, True, True, "b1", 0.0)  # backlogged
    assert s.cancel(restart, 0.1)
    assert _ids(s.aborted()) == ["y2"]
    with pytest.raises(BadRequest, match=r"must specify the START flag on the first request of the sequence "
                                         r"\(sequence 1 was aborted: its START was cancelled before the model ran it\)"):
        s.arrive(1, False, False, "late", 0.1)  # while x1 still runs: refused, saying why
    s.done(x1, 0.2)  # nothing of 1 is left: its slot goes at once (not after max_idle_s)
    assert _ids(s.take(0.2)) == ["b1"]


def test_a_dropped_request_mid_sequence_aborts_those_behind_it_and_the_ones_ahead_still_run() -> None:
    s = SequenceScheduler("acc", slots=1)
    s.arrive(1, True, False, "a1", 0.0)
    (a1,) = s.take(0.0)
    s.arrive(1, False, False, "a2", 0.0)
    a3 = s.arrive(1, False, False, "a3", 0.0)
    s.arrive(1, False, False, "a4", 0.0)
    s.arrive(1, True, False, "n1", 0.0)  # a START behind: a new sequence of the id, not aborted
    s.arrive(1, False, False, "n2", 0.0)
    assert s.cancel(a3, 0.1)
    assert _ids(s.aborted()) == ["a4"]
    s.arrive(1, False, True, "n3", 0.1)  # the new sequence goes on: not refused
    order = []
    for t in (0.2, 0.3, 0.4, 0.5):
        s.done(a1, t)
        (a1,) = s.take(t)
        order.append(a1.payload)
    assert order == ["a2", "n1", "n2", "n3"]


def test_a_request_handed_out_that_the_model_never_ran_aborts_its_sequence() -> None:
    """``done(..., why)``: the batch queue dropped it (its deadline) before the model ran it."""
    s = SequenceScheduler("acc", slots=1)
    s.arrive(1, True, False, "a1", 0.0)
    (a1,) = s.take(0.0)
    s.arrive(1, False, True, "a2", 0.0)
    s.arrive(2, True, True, "b1", 0.0)
    s.done(a1, 0.1, "passed its deadline")
    (a2,) = s.aborted()
    assert a2.payload == "a2" and "sequence 1 was aborted: its START passed its deadline before the model ran it" \
        in a2.error.message
    assert _ids(s.take(0.1)) == ["b1"]  # 1's slot went at once


def test_an_overdue_start_fails_with_its_deadline_and_the_rest_of_its_sequence_is_aborted() -> None:
    s = SequenceScheduler("acc", slots=1)
    s.arrive(1, True, False, "a1", 0.0)
    s.take(0.0)
    s.arrive(2, True, False, "b1", 0.0, deadline=1.0)
    s.arrive(2, False, True, "b2", 0.0, deadline=1.0)  # overdue too, but aborted by b1 first: one answer
    assert s.next_expiry() == 1.0
    assert _ids(s.overdue(1.0)) == ["b1"]
    assert _ids(s.aborted()) == ["b2"] and len(s) == 1


def test_the_rows_and_bytes_of_waiting_requests_are_counted_for_the_model_queue_bound() -> None:
    """The scheduler counts what waits (``waiting_rows``, ``waiting_bytes``); the model's batch
    queue bounds them with its own (:meth:`BatchQueue.check_room`: ``max_queue_rows``,
    ``max_queue_bytes``, the usual retry hint; an empty queue with nothing waiting takes any)."""
    s = SequenceScheduler("acc", slots=1)
    big = s.arrive(1, True, False, "a1", 0.0, nbytes=60, rows=1)
    s.arrive(2, True, False, "b1", 0.0, nbytes=40, rows=1)
    assert (s.waiting_rows, s.waiting_bytes) == (2, 100)
    s.take(0.0)
    assert (s.waiting_rows, s.waiting_bytes) == (1, 40)
    assert s.cancel(s._sequences[2].queue[0], 0.1) and (s.waiting_rows, s.waiting_bytes) == (0, 0)
    assert big.taken


def test_a_sequence_holding_a_slot_counts_only_the_rows_waiting_in_sequences_holding_one() -> None:
    """:meth:`SequenceScheduler.ahead`: rows waiting for a slot never keep a sequence that holds
    one from going on and ending (it would wait for their own slot: stuck until idle expiry)."""
    s = SequenceScheduler("acc", slots=1)
    s.arrive(1, True, False, "a1", 0.0, nbytes=4)
    (a1,) = s.take(0.0)
    s.arrive(1, False, False, "a2", 0.0, nbytes=4)
    s.arrive(2, True, False, "b1", 0.0, nbytes=8)  # backlogged
    s.arrive(2, False, True, "b2", 0.0, nbytes=8)
    assert s.ahead(1) == (1, 4) and s.ahead(2) == (3, 20) and s.ahead(99) == (3, 20)
    s.done(a1, 0.1)
    (a2,) = s.take(0.1)
    assert s.ahead(1) == (0, 0)
    s.arrive(1, False, True, "a3", 0.1, nbytes=4)
    s.done(a2, 0.2)
    (a3,) = s.take(0.2)
    s.done(a3, 0.3)  # 1 ends: 2 takes the slot, its waiting rows now count for sequences holding one
    assert s.ahead(2) == (2, 16) == (s.waiting_rows, s.waiting_bytes)
    assert s.cancel(s._sequences[2].queue[1], 0.3) and s.ahead(2) == (1, 8)
    (b1,) = s.take(0.3)
    assert s.ahead(2) == (0, 0) == (s.waiting_rows, s.waiting_bytes)


def test_check_room_bounds_the_queue_with_what_waits_in_front_of_it() -> None:
    from wsserve.batching import BatchQueue, WorkItem

    q = BatchQueue(max_batch_size=2, max_queue_rows=3, max_queue_bytes=100)
    q.check_room(500, 10_000)  # nothing queued or waiting: any request
    q.note_batch(0.010)
    with pytest.raises(Overloaded, match=r"queue full: 3 rows queued \(3 waiting for their sequence's turn or a slot\), "
                                         r"limit 3 \(max_queue_rows\)") as err:
        q.check_room(1, 4, ahead_rows=3, ahead_bytes=12)
    assert err.value.retry_after_ms == 20  # 3 rows ahead: 2 batches of 10 ms
    q.add(WorkItem(2, row_bytes=4), 0.0)
    q.check_room(1, 4)  # 2 queued + 1 fits
    with pytest.raises(Overloaded, match="max_queue_rows"):
        q.check_room(1, 4, ahead_rows=1, ahead_bytes=4)
    with pytest.raises(Overloaded, match=r"queue full: 98 input bytes queued \(90 waiting for their sequence's turn or a slot\)"):
        q.check_room(0, 4, ahead_bytes=90)


def test_a_drained_request_cancelled_later_leaves_the_counts_alone() -> None:
    s = SequenceScheduler("acc", slots=1)
    p = s.arrive(1, True, False, "a1", 0.0, nbytes=8)
    assert s.drain() == [p]
    assert not s.cancel(p, 0.1)  # its client leaves after the close answered it
    assert (s.waiting, s.waiting_rows, s.waiting_bytes) == (0, 0, 0)


def test_a_websocket_predicts_sequence_flags_are_checked_even_without_an_id() -> None:
    """As the OIP parameters are: a bad ``sequence_start`` is a clear error, not silently dropped."""
    from wsserve.errors import WsserveError
    from wsserve.protocol import decode

    with pytest.raises(WsserveError, match="sequence_start"):
        decode('{"type": "predict", "id": "p", "model": "acc", "inputs": [[1.0]], "sequence_start": "yes"}')
    ok = decode('{"type": "predict", "id": "p", "model": "acc", "inputs": [[1.0]], "sequence_start": true}')
    assert ok.sequence is None


def test_a_request_cancelled_after_it_ended_is_left_alone() -> None:
    """A transport cancels a request it fails (``_stop_work``), which can come after ``done``
    (the worker refused it when handing it out): nothing waits to drop, so the counts, the slot
    and the sequence (a new one of the id here) are left alone (before: counted out twice, going
    negative, and the new sequence aborted)."""
    s = SequenceScheduler("acc", slots=1)
    s.arrive(1, True, True, "a1", 0.0, nbytes=4)
    (a1,) = s.take(0.0)
    s.done(a1, 0.1, "was refused (overloaded)")
    s.arrive(1, True, False, "again", 0.2, nbytes=4)
    assert not s.cancel(a1, 0.3)
    assert (s.waiting, s.waiting_rows, s.waiting_bytes, s.ahead(1)) == (1, 1, 4, (1, 4))
    assert s.aborted() == [] and _ids(s.take(0.3)) == ["again"]


def test_a_sequences_state_is_kept_in_its_slot_until_it_ends_expires_or_is_aborted() -> None:
    s = SequenceScheduler("acc", slots=4, max_idle_s=1.0)
    a1 = s.arrive(1, True, False, "a1", 0.0)
    b1 = s.arrive(2, True, False, "b1", 0.0)
    s.take(0.0)
    s.keep_state(1, {"S": np.array([1.0])}, 8)
    s.keep_state(2, {"S": np.array([2.0])}, 8)
    s.done(a1, 0.0)
    s.done(b1, 0.0)
    assert s.state_of(1)["S"].tolist() == [1.0] and s.state_bytes == 16
    s.keep_state(1, {"S": np.zeros(3)}, 24)  # replaces the kept one
    assert s.state_bytes == 32
    a2 = s.arrive(1, False, True, "a2", 0.1)
    s.take(0.1)
    s.done(a2, 0.1)  # its END ran: the slot and the state go
    assert s.state_of(1) is None and s.state_bytes == 8
    assert s.expire(5.0) == [2]  # idle: the state goes with the slot
    assert s.state_of(2) is None and s.state_bytes == 0
    c1 = s.arrive(3, True, False, "c1", 6.0)
    s.arrive(3, False, False, "c2", 6.0)
    s.take(6.0)
    s.keep_state(3, {"S": np.array([3.0])}, 8)
    # the model ran c1 but its sequence cannot go on (its state outgrew the bound): c2 is not run
    s.done(c1, 6.0, "made its state outgrow max_sequence_state_bytes", ran=True)
    (c2,) = s.aborted()
    assert c2.error.message.endswith("sequence 3 was aborted: its START made its state outgrow "
                                     "max_sequence_state_bytes; start the sequence again (sequence_start)")
    assert s.state_of(3) is None and s.state_bytes == 0 and len(s) == 0
    s.keep_state(3, {"S": np.array([3.0])}, 8)  # a sequence no longer known keeps nothing
    assert s.state_bytes == 0


def test_a_restart_forgets_the_state_of_the_sequence_before_it() -> None:
    """A START on a running sequence (or queued behind its END) begins a new sequence: once it is
    handed out the old sequence's state is gone, so a START that fails (keeping nothing) leaves
    the next request the initial state, not the previous sequence's."""
    s = SequenceScheduler("acc", slots=1, max_idle_s=1.0)
    a1 = s.arrive(1, True, False, "a1", 0.0)
    s.take(0.0)
    s.keep_state(1, {"S": np.array([5.0])}, 8)
    s.done(a1, 0.0)
    b1 = s.arrive(1, True, False, "b1", 0.1)  # restart
    s.arrive(1, False, True, "b2", 0.1)
    assert s.state_of(1)["S"].tolist() == [5.0]  # the old one's, until the START is handed out
    assert s.take(0.1) == [b1]
    assert s.state_of(1) is None and s.state_bytes == 0
    s.done(b1, 0.1)  # it ran and failed (kept no state): the sequence goes on from the initial state
    assert s.state_of(1) is None
    # END ran, a START queued behind it: the ended sequence's state does not reach the new one
    c1 = s.arrive(2, True, True, "c1", 0.2)
    c2 = s.arrive(2, True, False, "c2", 0.2)
    (b2,) = s.take(0.2)
    s.done(b2, 0.2)
    assert s.take(0.2) == [c1]
    s.keep_state(2, {"S": np.array([7.0])}, 8)
    s.done(c1, 0.2)
    assert s.take(0.2) == [c2] and s.state_of(2) is None and s.state_bytes == 0


def test_a_state_budget_shared_by_schedulers_bounds_what_all_their_sequences_keep() -> None:
    """Two models' schedulers share one budget: a state that would take it past its limit is not
    kept (the sequence keeps the one it had); what a sequence lets go (END, abort, drain) is
    given back."""
    budget = StateBudget(16)
    a = SequenceScheduler("a", slots=4, budget=budget)
    b = SequenceScheduler("b", slots=4, budget=budget)
    a1 = a.arrive(1, True, False, "a1", 0.0)
    b1 = b.arrive(1, True, False, "b1", 0.0)
    a.take(0.0)
    b.take(0.0)
    assert a.keep_state(1, {"S": np.zeros(1)}, 8) and b.keep_state(1, {"S": np.ones(1)}, 8)
    assert budget.used == 16
    assert not b.keep_state(1, {"S": np.ones(2)}, 16)  # would take 24
    assert b.state_of(1)["S"].tolist() == [1.0] and b.state_bytes == 8 and budget.used == 16
    assert b.keep_state(1, {"S": np.ones(1, np.float32)}, 4)  # shrinking always fits
    assert budget.used == 12
    a.done(a1, 0.0)
    a2 = a.arrive(1, False, True, "a2", 0.1)
    a.take(0.1)
    a.done(a2, 0.1)  # its END ran: its 8 bytes given back
    assert budget.used == 4
    b.done(b1, 0.1)
    b.drain()
    assert budget.used == 0


def test_requests_waiting_for_a_slot_are_told_and_listed_once_their_sequence_gets_one() -> None:
    s = SequenceScheduler("acc", slots=1)
    a1 = s.arrive(1, True, False, "a1", 0.0)
    b1 = s.arrive(2, True, False, "b1", 0.0)
    b2 = s.arrive(2, False, True, "b2", 0.0)
    c1 = s.arrive(3, True, True, "c1", 0.0)
    assert [s.waits_for_slot(p) for p in (a1, b1, b2, c1)] == [False, True, True, True]
    (taken,) = s.take(0.0)
    assert taken is a1 and not s.waits_for_slot(a1)
    a2 = s.arrive(1, False, True, "a2", 0.1)  # A holds the slot: its END does not wait for one
    assert not s.waits_for_slot(a2) and s.granted() == []
    s.done(a1, 0.1)
    (taken,) = s.take(0.1)
    s.done(taken, 0.2)  # A's END ran: B (first in the backlog) gets the slot, C still waits
    assert _ids(s.granted()) == ["b1", "b2"] and s.granted() == []
    assert not s.waits_for_slot(b1) and s.waits_for_slot(c1)
    s.cancel(c1, 0.2)
    assert not s.waits_for_slot(c1)


def test_a_full_backlog_never_keeps_a_sequence_holding_a_slot_from_ending() -> None:
    """``max_waiting`` requests waiting for a slot do not refuse the requests of a sequence that
    holds one (its END frees the slot they wait for): those are counted apart, up to
    ``max_waiting`` of their own; a new sequence, or one in the backlog, is still refused."""
    s = SequenceScheduler("acc", slots=1, max_backlog=4, max_waiting=2)
    a1 = s.arrive(1, True, False, "a1", 0.0)
    assert s.take(0.0) == [a1]
    s.arrive(2, True, False, "b1", 0.0)
    s.arrive(3, True, True, "c1", 0.0)  # two wait for the slot: the model's max_waiting
    with pytest.raises(Overloaded, match="2 requests of sequences wait"):
        s.arrive(4, True, True, "d1", 0.0)
    with pytest.raises(Overloaded, match="2 requests of sequences wait"):
        s.arrive(2, False, True, "b2", 0.0)
    a2 = s.arrive(1, False, False, "a2", 0.0)  # A holds the slot: its requests are taken
    a3 = s.arrive(1, False, False, "a3", 0.0)
    with pytest.raises(Overloaded, match="2 requests of sequences wait in sequences holding a slot"):
        s.arrive(1, False, True, "a4", 0.0)
    s.done(a1, 0.1)
    assert s.take(0.1) == [a2]
    a4 = s.arrive(1, False, True, "a4", 0.1)  # one was handed out: room for A's END
    for p, now in ((a2, 0.2), (a3, 0.3)):
        s.done(p, now)
        assert s.take(now) == [a3 if p is a2 else a4]
    s.done(a4, 0.4)  # A's END ran: B gets the slot
    assert _ids(s.granted()) == ["b1"]
    assert s.waiting == 2
