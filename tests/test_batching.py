"""Sans-I/O tests of the batch scheduler (:mod:`wsserve.batching`).

The clock is a plain float passed as ``now``: no loop, no sleeps.  A property
test drives random sequences of add / cancel / next_batch / clock advances and
checks the scheduler's invariants after every step.
"""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsserve.batching import (
    MAX_RETRY_AFTER_MS,
    MIN_RETRY_AFTER_MS,
    Batch,
    BatchQueue,
    QueueStats,
    Slice,
    WorkItem,
    queue_deadline,
)
from wsserve.errors import Overloaded


def _item(rows: int, *, priority: int = 0, deadline: float | None = None, name: str = "") -> WorkItem:
    return WorkItem(rows=rows, priority=priority, deadline=deadline, payload=name)


def _served(batch: Batch) -> dict[str, tuple[int, int]]:
    """``{payload: (start, stop)}`` of a batch (one slice per item)."""
    out: dict[str, tuple[int, int]] = {}
    for s in batch.slices:
        assert s.item.payload not in out, "an item appears twice in one batch"
        out[s.item.payload] = (s.start, s.stop)
    return out


def _check_batch_shape(batch: Batch, max_batch_size: int) -> None:
    assert batch.rows == sum(s.rows for s in batch.slices)
    assert batch.rows <= max_batch_size
    for s in batch.slices:
        assert 0 <= s.start < s.stop <= s.item.rows


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "kwargs", [{"max_batch_size": 0}, {"max_batch_size": -1}, {"max_delay_ms": -0.5}, {"max_delay_ms": 0.0}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        BatchQueue(**kwargs)  # type: ignore[arg-type]


def test_item_needs_rows() -> None:
    q = BatchQueue()
    with pytest.raises(ValueError):
        q.add(_item(0), 0.0)
    assert len(q) == 0


def test_slice_rows() -> None:
    it = _item(10)
    assert Slice(it, 3, 7).rows == 4


# --------------------------------------------------------------------------- greedy


def test_empty_queue() -> None:
    q = BatchQueue()
    assert q.ready_at(5.0) is None
    assert q.next_batch(5.0) is None
    assert len(q) == 0


def test_idle_queue_forms_a_batch_immediately() -> None:
    q = BatchQueue(max_batch_size=8)
    q.add(_item(1, name="a"), 10.0)
    assert q.ready_at(10.0) == 10.0  # greedy: no waiting at all
    batch = q.next_batch(10.0)
    assert batch is not None
    assert _served(batch) == {"a": (0, 1)}
    assert batch.rows == 1 and batch.expired == ()
    assert q.ready_at(10.0) is None and q.next_batch(10.0) is None


def test_greedy_takes_everything_up_to_max_batch_size() -> None:
    q = BatchQueue(max_batch_size=10)
    for i, rows in enumerate([3, 1, 4, 1]):
        q.add(_item(rows, name=f"r{i}"), 0.0)
    batch = q.next_batch(0.0)
    assert batch is not None
    assert batch.rows == 9
    assert _served(batch) == {"r0": (0, 3), "r1": (0, 1), "r2": (0, 4), "r3": (0, 1)}
    assert len(q) == 0


def test_greedy_caps_at_max_batch_size_and_keeps_the_rest() -> None:
    q = BatchQueue(max_batch_size=4)
    q.add(_item(3, name="a"), 0.0)
    q.add(_item(3, name="b"), 0.0)
    first = q.next_batch(0.0)
    assert first is not None and first.rows == 4
    second = q.next_batch(0.0)
    assert second is not None and second.rows == 2
    # every row exactly once, in order, per request
    spans: dict[str, list[tuple[int, int]]] = {}
    for batch in (first, second):
        for name, span in _served(batch).items():
            spans.setdefault(name, []).append(span)
    for name in ("a", "b"):
        flat = [r for a, b in spans[name] for r in range(a, b)]
        assert flat == [0, 1, 2]
    assert q.next_batch(0.0) is None


def test_slices_keep_arrival_order() -> None:
    q = BatchQueue(max_batch_size=100)
    names = [f"r{i}" for i in range(20)]
    for n in names:
        q.add(_item(2, name=n), 0.0)
    batch = q.next_batch(0.0)
    assert batch is not None
    assert [s.item.payload for s in batch.slices] == names


# --------------------------------------------------------------------------- window


def test_window_waits_for_the_oldest_request() -> None:
    q = BatchQueue(max_batch_size=8, max_delay_ms=5.0)
    q.add(_item(1, name="a"), 1.000)
    assert q.ready_at(1.000) == pytest.approx(1.005)
    q.add(_item(2, name="b"), 1.003)
    # the window is measured from the oldest request, not the newest
    assert q.ready_at(1.004) == pytest.approx(1.005)
    assert q.ready_at(1.004) > 1.004  # not ready yet
    assert q.ready_at(1.005) <= 1.005  # ready at the end of the window
    batch = q.next_batch(1.005)
    assert batch is not None and _served(batch) == {"a": (0, 1), "b": (0, 2)}


def test_window_is_skipped_when_the_batch_is_full() -> None:
    q = BatchQueue(max_batch_size=4, max_delay_ms=1000.0)
    q.add(_item(3), 0.0)
    assert q.ready_at(0.0) == pytest.approx(1.0)
    q.add(_item(1), 0.1)
    assert q.ready_at(0.1) == 0.1  # full: go now
    batch = q.next_batch(0.1)
    assert batch is not None and batch.rows == 4


def test_window_restarts_after_the_queue_empties() -> None:
    q = BatchQueue(max_batch_size=4, max_delay_ms=10.0)
    q.add(_item(1), 0.0)
    assert q.next_batch(0.010) is not None
    q.add(_item(1), 5.0)
    assert q.ready_at(5.0) == pytest.approx(5.010)


def test_no_window_is_greedy() -> None:
    q = BatchQueue(max_batch_size=4, max_delay_ms=None)
    q.add(_item(1), 3.0)
    assert q.ready_at(3.0) == 3.0


# --------------------------------------------------------------------------- fairness


def test_big_request_does_not_starve_single_rows() -> None:
    cap = 256
    q = BatchQueue(max_batch_size=cap)
    q.add(_item(60_000, name="big"), 0.0)
    first = q.next_batch(0.0)
    assert first is not None and _served(first) == {"big": (0, cap)}

    big_next = cap
    now = 0.0
    for step in range(40):
        now += 0.001
        singles = [f"s{step}.{i}" for i in range(1 + step % 17)]
        for name in singles:
            q.add(_item(1, name=name), now)
        batch = q.next_batch(now)
        assert batch is not None
        _check_batch_shape(batch, cap)
        served = _served(batch)
        # every single-row request added before this batch is in it
        for name in singles:
            assert served[name] == (0, 1)
        # the big one continues where it stopped and gets the rest of the batch
        start, stop = served["big"]
        assert start == big_next
        assert stop - start == cap - len(singles)
        assert batch.rows == cap
        big_next = stop
    stats = q.statistics(now)
    assert stats.requests == 1 and stats.rows == 60_000 - big_next


def test_many_single_rows_are_served_within_two_batches() -> None:
    cap = 256
    q = BatchQueue(max_batch_size=cap)
    q.add(_item(60_000, name="big"), 0.0)
    q.next_batch(0.0)
    singles = [f"s{i}" for i in range(300)]  # more requests than rows in a batch
    for name in singles:
        q.add(_item(1, name=name), 0.1)
    served: dict[str, tuple[int, int]] = {}
    for _ in range(2):
        batch = q.next_batch(0.1)
        assert batch is not None
        _check_batch_shape(batch, cap)
        for name, span in _served(batch).items():
            if name != "big":
                assert name not in served
                served[name] = span
    assert set(served) == set(singles)
    # and the big one still advanced in those batches
    assert q.statistics(0.1).rows < 60_000 - cap


def test_big_request_rows_in_order_exactly_once_and_all_served() -> None:
    cap = 256
    q = BatchQueue(max_batch_size=cap)
    q.add(_item(60_000, name="big"), 0.0)
    seen_big: list[tuple[int, int]] = []
    singles_done: set[str] = set()
    singles_added: list[str] = []
    now = 0.0
    batches = 0
    while True:
        now += 0.001
        if batches < 100:  # other sockets keep sending single rows for a while
            for i in range(3):
                name = f"s{batches}.{i}"
                singles_added.append(name)
                q.add(_item(1, name=name), now)
        batch = q.next_batch(now)
        if batch is None:
            break
        batches += 1
        _check_batch_shape(batch, cap)
        for name, span in _served(batch).items():
            if name == "big":
                seen_big.append(span)
            else:
                assert name not in singles_done
                singles_done.add(name)
    assert singles_done == set(singles_added)
    flat_starts = [a for a, _ in seen_big]
    assert flat_starts == sorted(flat_starts)
    covered = 0
    for a, b in seen_big:
        assert a == covered  # contiguous, no gaps, no repeats
        covered = b
    assert covered == 60_000
    assert batches == -(-(60_000 + len(singles_added)) // cap)  # every batch full but the last
    assert q.statistics(now).rows == 0


def test_two_big_requests_share_batches_round_robin() -> None:
    q = BatchQueue(max_batch_size=100)
    q.add(_item(1000, name="a"), 0.0)
    q.add(_item(1000, name="b"), 0.0)
    batch = q.next_batch(0.0)
    assert batch is not None
    served = _served(batch)
    assert served == {"a": (0, 50), "b": (0, 50)}


# --------------------------------------------------------------------------- priority


def test_high_priority_goes_first_even_when_added_later() -> None:
    q = BatchQueue(max_batch_size=4)
    q.add(_item(10, name="normal"), 0.0)
    q.add(_item(3, priority=1, name="high"), 1.0)
    batch = q.next_batch(1.0)
    assert batch is not None
    assert [s.item.payload for s in batch.slices] == ["high", "normal"]
    assert _served(batch) == {"high": (0, 3), "normal": (0, 1)}


def test_high_priority_fills_the_whole_batch_before_normal() -> None:
    q = BatchQueue(max_batch_size=4)
    q.add(_item(1, name="n"), 0.0)
    q.add(_item(6, priority=1, name="h"), 0.5)
    first = q.next_batch(0.5)
    assert first is not None and _served(first) == {"h": (0, 4)}
    second = q.next_batch(0.5)
    assert second is not None and _served(second) == {"h": (4, 6), "n": (0, 1)}


# --------------------------------------------------------------------------- cancellation


def test_cancelled_rows_are_never_scheduled() -> None:
    q = BatchQueue(max_batch_size=10)
    a, b, c = _item(2, name="a"), _item(3, name="b"), _item(4, name="c")
    for it in (a, b, c):
        q.add(it, 0.0)
    assert q.cancel(b) is True
    assert b.cancelled
    stats = q.statistics(0.0)
    assert (stats.requests, stats.rows, len(q)) == (2, 6, 2)
    batch = q.next_batch(0.0)
    assert batch is not None and _served(batch) == {"a": (0, 2), "c": (0, 4)}
    assert q.cancel(b) is False  # twice is harmless
    assert q.statistics(0.0).rows == 0


def test_cancel_a_partly_served_request() -> None:
    q = BatchQueue(max_batch_size=100)
    big = _item(1000, name="big")
    q.add(big, 0.0)
    q.add(_item(5, name="small"), 0.0)
    q.next_batch(0.0)
    remaining_small = q.statistics(0.0).rows - big.remaining
    assert q.cancel(big) is True
    stats = q.statistics(0.0)
    assert stats.requests == (1 if remaining_small else 0)
    assert stats.rows == remaining_small
    while (batch := q.next_batch(0.0)) is not None:
        assert "big" not in _served(batch)
    assert q.ready_at(0.0) is None and len(q) == 0


def test_cancel_after_everything_was_scheduled_changes_nothing() -> None:
    q = BatchQueue(max_batch_size=10)
    a = _item(3)
    q.add(a, 0.0)
    q.next_batch(0.0)
    before = q.statistics(0.0)
    assert q.cancel(a) is False
    assert q.statistics(0.0) == before


def test_cancel_every_request_empties_the_queue() -> None:
    q = BatchQueue(max_batch_size=10)
    items = [_item(3, priority=i % 2) for i in range(7)]
    for it in items:
        q.add(it, 0.0)
    for it in items:
        assert q.cancel(it) is True
    assert q.statistics(0.0) == QueueStats(requests=0, rows=0, bytes=0, oldest_age_s=0.0, batches=0, rows_scheduled=0)
    assert q.ready_at(0.0) is None and q.next_batch(0.0) is None


def test_cancel_of_an_item_never_queued_changes_nothing() -> None:
    q = BatchQueue(max_batch_size=10, max_queue_rows=4)
    q.add(_item(4), 0.0)
    refused = _item(2)
    with pytest.raises(Overloaded):
        q.add(refused, 0.0)
    before = q.statistics(0.0)
    assert q.cancel(refused) is False
    assert q.statistics(0.0) == before
    assert len(q) == 1


# --------------------------------------------------------------------------- deadlines


def test_expired_requests_are_reported_and_never_scheduled() -> None:
    q = BatchQueue(max_batch_size=10)
    late = _item(2, deadline=1.0, name="late")
    q.add(late, 0.5)
    q.add(_item(1, deadline=5.0, name="fine"), 0.5)
    batch = q.next_batch(1.0)  # deadline <= now counts as expired
    assert batch is not None
    assert batch.expired == (late,)
    assert _served(batch) == {"fine": (0, 1)}
    assert late.cancelled
    assert q.next_batch(2.0) is None


def test_not_expired_just_before_the_deadline() -> None:
    q = BatchQueue()
    q.add(_item(1, deadline=1.0, name="a"), 0.0)
    batch = q.next_batch(0.999)
    assert batch is not None and batch.expired == () and _served(batch) == {"a": (0, 1)}


def test_a_batch_of_only_expired_items() -> None:
    q = BatchQueue()
    a, b = _item(1, deadline=1.0), _item(3, deadline=0.5)
    q.add(a, 0.0)
    q.add(b, 0.0)
    batch = q.next_batch(2.0)
    assert batch is not None
    assert batch.slices == () and batch.rows == 0
    assert set(batch.expired) == {a, b}
    stats = q.statistics(2.0)
    assert (stats.requests, stats.rows, stats.batches, stats.rows_scheduled) == (0, 0, 0, 0)


def test_partly_served_request_expires() -> None:
    q = BatchQueue(max_batch_size=10)
    it = _item(25, deadline=2.0, name="x")
    q.add(it, 0.0)
    first = q.next_batch(1.0)
    assert first is not None and _served(first) == {"x": (0, 10)}
    second = q.next_batch(2.0)
    assert second is not None and second.expired == (it,) and second.slices == ()
    assert q.statistics(2.0).rows == 0


def test_finished_or_cancelled_items_are_not_reported_expired() -> None:
    q = BatchQueue()
    done, gone = _item(1, deadline=1.0), _item(1, deadline=1.0)
    q.add(done, 0.0)
    q.next_batch(0.0)
    q.add(gone, 0.0)
    q.cancel(gone)
    assert q.next_batch(5.0) is None


def test_finished_items_are_not_retained() -> None:
    class Payload:
        pass

    q = BatchQueue(max_batch_size=8)
    refs = []
    for i in range(20):
        payload = Payload()
        refs.append(weakref.ref(payload))
        item = WorkItem(rows=1, deadline=1e9, payload=payload)
        q.add(item, float(i))
        if i % 2:
            q.cancel(item)
        del item, payload
        q.next_batch(float(i))
    gc.collect()
    assert [r() for r in refs] == [None] * 20


# --------------------------------------------------------------------------- queue bound


def test_queue_bound_refuses_with_retry_after_and_queues_nothing() -> None:
    q = BatchQueue(max_batch_size=4, max_queue_rows=10)
    q.add(_item(6, name="a"), 0.0)
    before = q.statistics(0.0)
    refused = _item(5, name="b")
    with pytest.raises(Overloaded) as info:
        q.add(refused, 0.0)
    exc = info.value
    assert exc.code == "overloaded"
    assert isinstance(exc.retry_after_ms, int) and exc.retry_after_ms > 0
    assert "10" in exc.message
    assert q.statistics(0.0) == before
    assert len(q) == 1
    q.add(_item(4, name="c"), 0.0)  # exactly up to the bound is fine
    assert q.statistics(0.0).rows == 10
    served: set[str] = set()
    while (batch := q.next_batch(0.0)) is not None:
        served |= set(_served(batch))
    assert served == {"a", "c"}


def test_queue_bound_frees_up_as_batches_are_formed() -> None:
    q = BatchQueue(max_batch_size=4, max_queue_rows=8)
    q.add(_item(8), 0.0)
    with pytest.raises(Overloaded):
        q.add(_item(1), 0.0)
    q.next_batch(0.0)
    q.add(_item(4), 0.0)
    assert q.statistics(0.0).rows == 8


def test_empty_queue_admits_a_request_larger_than_the_bound() -> None:
    # Otherwise a request bigger than max_queue_rows could never be served,
    # and retry_after_ms would be a lie.
    q = BatchQueue(max_batch_size=4, max_queue_rows=3)
    q.add(_item(5), 0.0)
    assert q.statistics(0.0).rows == 5


def test_no_bound_by_default() -> None:
    q = BatchQueue(max_batch_size=4)
    for _ in range(100):
        q.add(_item(10_000), 0.0)
    assert q.statistics(0.0).rows == 1_000_000


def test_retry_after_grows_with_the_backlog_and_is_bounded() -> None:
    small = BatchQueue(max_batch_size=10, max_queue_rows=10)
    small.add(_item(10), 0.0)
    big = BatchQueue(max_batch_size=10, max_queue_rows=100_000)
    big.add(_item(100_000), 0.0)
    hints = []
    for q in (small, big):
        with pytest.raises(Overloaded) as info:
            q.add(_item(1), 0.0)
        hints.append(info.value.retry_after_ms)
    assert 0 < hints[0] <= hints[1] <= 60_000


def test_retry_after_prices_the_batches_ahead_at_the_recent_batch_time() -> None:
    """A full queue's hint is the batches ahead of the refused request times what a batch took
    lately (not a fixed 2 ms a batch): a slow model asks clients to wait longer."""
    slow = BatchQueue(max_batch_size=10, max_queue_rows=30)
    slow.add(_item(30), 0.0)  # 3 full batches ahead, then the refused one's
    for seconds in (0.1, 0.1, 0.1):
        slow.note_batch(seconds)
    with pytest.raises(Overloaded) as info:
        slow.add(_item(1), 0.0)
    assert info.value.retry_after_ms == 400  # 4 batches of 100 ms
    slow.note_batch(0.6)  # a recent batch weighs more than the older ones: 0.8 * 100 + 0.2 * 600 ms
    with pytest.raises(Overloaded) as info:
        slow.add(_item(1), 0.0)
    assert info.value.retry_after_ms == 800
    slow.note_batch(100.0)
    with pytest.raises(Overloaded) as info:
        slow.add(_item(1), 0.0)
    assert info.value.retry_after_ms == MAX_RETRY_AFTER_MS  # bounded
    fast = BatchQueue(max_batch_size=10, max_queue_requests=1)
    fast.add(_item(1), 0.0)
    fast.note_batch(0.0001)
    with pytest.raises(Overloaded, match="max_queue_requests") as info:
        fast.add(_item(1), 0.0)
    assert info.value.retry_after_ms == MIN_RETRY_AFTER_MS


# --------------------------------------------------------------------------- statistics


def test_statistics() -> None:
    q = BatchQueue(max_batch_size=4)
    assert q.statistics(7.0) == QueueStats(requests=0, rows=0, bytes=0, oldest_age_s=0.0, batches=0, rows_scheduled=0)
    q.add(_item(3, name="a"), 0.0)
    q.add(_item(2, name="b"), 1.0)
    s = q.statistics(1.5)
    assert (s.requests, s.rows, s.batches, s.rows_scheduled) == (2, 5, 0, 0)
    assert s.oldest_age_s == pytest.approx(1.5)
    batch = q.next_batch(2.0)
    assert batch is not None and batch.rows == 4
    s = q.statistics(2.0)
    assert (s.requests, s.rows, s.batches, s.rows_scheduled) == (1, 1, 1, 4)
    # the request left over is 'a' (round-robin gave each 2 rows), queued at 0.0
    assert _served(batch) == {"a": (0, 2), "b": (0, 2)}
    assert s.oldest_age_s == pytest.approx(2.0)
    q.next_batch(2.0)
    s = q.statistics(3.0)
    assert (s.requests, s.rows, s.batches, s.rows_scheduled, s.oldest_age_s) == (0, 0, 2, 5, 0.0)
    assert len(q) == 0


def test_statistics_is_a_frozen_snapshot() -> None:
    q = BatchQueue()
    snap = q.statistics(0.0)
    q.add(_item(1), 0.0)
    assert snap.rows == 0
    with pytest.raises(AttributeError):
        snap.rows = 5  # type: ignore[misc]


# --------------------------------------------------------------------------- property test


@dataclass
class _Tracked:
    item: WorkItem
    added_at: float
    next_row: int = 0  # rows seen in batches so far
    cancelled: bool = False
    expired: bool = False
    spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return not self.cancelled and not self.expired and self.next_row < self.item.rows


_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.integers(1, 40),  # rows
            st.integers(0, 1),  # priority
            st.one_of(st.none(), st.floats(0.0, 0.05)),  # timeout in s
        ),
        st.tuples(st.just("cancel"), st.integers(0, 1000)),
        st.tuples(st.just("batch")),
        st.tuples(st.just("advance"), st.floats(0.0, 0.02)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=_ops,
    max_batch_size=st.integers(1, 32),
    max_delay_ms=st.sampled_from([None, 5.0]),
    max_queue_rows=st.one_of(st.none(), st.integers(1, 120)),
)
def test_scheduler_invariants(
    ops: list[tuple], max_batch_size: int, max_delay_ms: float | None, max_queue_rows: int | None
) -> None:
    q = BatchQueue(max_batch_size=max_batch_size, max_delay_ms=max_delay_ms, max_queue_rows=max_queue_rows)
    tracked: list[_Tracked] = []
    by_id: dict[int, _Tracked] = {}
    now = 100.0
    batches = 0
    rows_scheduled = 0

    def step_batch() -> Batch | None:
        nonlocal batches, rows_scheduled
        live_before = [t for t in tracked if t.live]
        batch = q.next_batch(now)
        if batch is None:
            assert not live_before
            return None
        _check_batch_shape(batch, max_batch_size)
        for it in batch.expired:
            t = by_id[id(it)]
            assert t.live, "only live items expire"
            assert it.deadline is not None and it.deadline <= now
            t.expired = True
        seen = set()
        for s in batch.slices:
            t = by_id[id(s.item)]
            assert id(s.item) not in seen
            seen.add(id(s.item))
            assert t.live, "a cancelled, expired or finished item was scheduled"
            assert s.start == t.next_row, "rows out of order, repeated or skipped"
            t.next_row = s.stop
            t.spans.append((s.start, s.stop))
        if batch.slices:
            batches += 1
            rows_scheduled += batch.rows
        # greedy: a batch that is not full leaves nothing behind
        if batch.rows < max_batch_size:
            assert not any(t.live for t in tracked)
        # priority: normal rows only when no high-priority rows are left waiting
        if any(s.item.priority == 0 for s in batch.slices):
            assert not any(t.live and t.item.priority == 1 for t in tracked)
        # every item past its deadline was expired before any row was scheduled
        for t in live_before:
            if t.item.deadline is not None and t.item.deadline <= now:
                assert t.expired
        return batch

    def check_stats() -> None:
        live = [t for t in tracked if t.live]
        s = q.statistics(now)
        assert s.requests == len(live) == len(q)
        assert s.rows == sum(t.item.rows - t.next_row for t in live)
        assert s.batches == batches
        assert s.rows_scheduled == rows_scheduled
        if live:
            assert s.oldest_age_s == pytest.approx(now - min(t.added_at for t in live))
        else:
            assert s.oldest_age_s == 0.0
        ready = q.ready_at(now)
        if not live:
            assert ready is None
        elif max_delay_ms is None or s.rows >= max_batch_size:
            assert ready == now
        else:
            assert ready == pytest.approx(min(t.added_at for t in live) + max_delay_ms / 1000)

    for op in ops:
        kind = op[0]
        if kind == "add":
            _, rows, priority, timeout = op
            item = WorkItem(rows=rows, priority=priority, deadline=None if timeout is None else now + timeout)
            queued_rows = q.statistics(now).rows
            before = q.statistics(now)
            try:
                q.add(item, now)
            except Overloaded as exc:
                assert max_queue_rows is not None
                assert queued_rows > 0 and queued_rows + rows > max_queue_rows
                assert exc.retry_after_ms is not None and exc.retry_after_ms > 0
                assert q.statistics(now) == before
            else:
                assert max_queue_rows is None or queued_rows == 0 or queued_rows + rows <= max_queue_rows
                t = _Tracked(item, now)
                tracked.append(t)
                by_id[id(item)] = t
        elif kind == "cancel":
            if tracked:
                t = tracked[op[1] % len(tracked)]
                was_live = t.live
                assert q.cancel(t.item) is was_live
                if was_live:
                    t.cancelled = True
        elif kind == "batch":
            step_batch()
        else:
            now += op[1]
        check_stats()

    # Drain: every row of every item neither cancelled nor expired is scheduled
    # exactly once, in order.
    for _ in range(10_000):
        if q.ready_at(now) is None:
            break
        now = max(now, q.ready_at(now))  # type: ignore[type-var]
        step_batch()
        check_stats()
    assert q.ready_at(now) is None
    for t in tracked:
        flat = [r for a, b in t.spans for r in range(a, b)]
        assert flat == list(range(len(flat)))
        if not t.cancelled and not t.expired:
            assert len(flat) == t.item.rows
        else:
            assert len(flat) < t.item.rows


def test_max_queue_requests_counts_waiting_requests_not_rows() -> None:
    q = BatchQueue(max_batch_size=4, max_queue_requests=2)
    q.add(WorkItem(rows=100), 0.0)  # one request of many rows counts once
    q.add(WorkItem(rows=1), 0.0)
    with pytest.raises(Overloaded, match=r"^queue full: 2 requests queued, limit 2 \(max_queue_requests\)$"):
        q.add(WorkItem(rows=1), 0.0)
    batch = q.next_batch(0.0)  # the one-row request is served whole, the big one stays: one waits
    assert batch is not None and len(q) == 1
    q.add(WorkItem(rows=1), 0.0)


@pytest.mark.parametrize(("requested", "default", "override", "expected"), [
    (None, None, True, None),       # no policy: the request's own (none)
    (5.0, None, False, 5.0),        # no policy: the request's own
    (None, 2.0, True, 12.0),        # none asked for: now + the default
    (11.0, 2.0, True, 11.0),        # shorter than the default: kept when it may override
    (11.0, 2.0, False, 12.0),       # ... and not when it may not
    (50.0, 2.0, True, 12.0),        # longer than the default: never
])
def test_queue_deadline(requested: float | None, default: float | None, override: bool, expected: float | None) -> None:
    assert queue_deadline(requested, 10.0, default, override) == expected



def test_whole_requests_are_never_split_unless_larger_than_a_batch() -> None:
    """``whole_requests`` (a Triton Python model: one InferenceRequest per request): a request that
    does not fit what is left of a batch keeps its place for the next; only one larger than a batch
    is split.  (Round-robin shares split ``b`` 2 + 2 across two executes.)"""
    q = BatchQueue(max_batch_size=4, whole_requests=True)
    for it in (_item(3, name="a"), _item(4, name="b"), _item(1, name="c"), _item(6, name="d")):
        q.add(it, 0.0)
    assert [_served(q.next_batch(0.0)) for _ in range(4)] == [
        {"a": (0, 3), "c": (0, 1)}, {"b": (0, 4)}, {"d": (0, 4)}, {"d": (4, 6)}]
    assert len(q) == 0


# --------------------------------------------------------------------------- requeue (request rescheduling)


def test_requeue_puts_a_scheduled_request_first_in_its_level_without_admission() -> None:
    """A request whose rows were all scheduled goes back ahead of its level's waiting requests (not
    ahead of a higher level), its rows and bytes counted as queued again, no bound refusing it."""
    q = BatchQueue(max_batch_size=4, max_queue_requests=2, max_queue_rows=4, max_queue_bytes=64, whole_requests=True)
    a = WorkItem(rows=2, row_bytes=8, payload="a")
    q.add(a, 0.0)
    assert _served(q.next_batch(0.0)) == {"a": (0, 2)}
    q.add(WorkItem(rows=2, row_bytes=8, payload="b"), 1.0)
    q.add(WorkItem(rows=2, row_bytes=8, priority=1, payload="hi"), 1.0)
    with pytest.raises(Overloaded):  # full: a new request is refused...
        q.add(WorkItem(rows=1, row_bytes=8, payload="c"), 1.0)
    assert q.requeue(a)  # ... the rescheduled one is not
    stats = q.statistics(2.0)
    assert (stats.requests, stats.rows, stats.bytes) == (3, 6, 48)
    first = q.next_batch(2.0)
    assert [s.item.payload for s in first.slices] == ["hi", "a"]  # level 1 first, then a ahead of b
    assert _served(first)["a"] == (0, 2)
    assert q.requeue(a)  # rescheduled again: ahead of b once more
    assert [s.item.payload for s in q.next_batch(3.0).slices] == ["a", "b"]
    assert q.statistics(3.0).rows == 0


def test_requeue_refuses_a_cancelled_or_waiting_item_and_keeps_its_own_deadline() -> None:
    q = BatchQueue(max_batch_size=4)
    a, b = WorkItem(rows=1, deadline=10.0, payload="a"), WorkItem(rows=1, payload="b")
    q.add(a, 0.0)
    q.add(b, 0.0)
    assert not q.requeue(a)  # its rows still wait
    q.next_batch(0.0)
    b.cancelled = True
    assert not q.requeue(b) and q.requeue(a)
    expired = q.next_batch(11.0)
    assert expired is not None and expired.expired == (a,) and not expired.slices and len(q) == 0
