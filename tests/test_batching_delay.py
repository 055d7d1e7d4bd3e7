"""Triton's ``timeout_action: DELAY`` in the batch queue (:mod:`wsserve.batching`): a request of a
delaying level whose queue timeout (:attr:`WorkItem.delay_at`) passes before it was scheduled is not
refused but moves behind every request of its level whose own has not passed (Triton core's
``PolicyQueue::delayed_queue_``), ahead of the lower levels, and is still counted by the bounds.
Sans-I/O: ``now`` is a plain float, the fake clock."""

from __future__ import annotations

import pytest

from wsserve.batching import Batch, BatchQueue, QueuePolicy, WorkItem
from wsserve.errors import Overloaded


def _item(name: str, *, priority: int = 1, rows: int = 1, delay_at: float | None = None,
          deadline: float | None = None, shape: object = None) -> WorkItem:
    return WorkItem(rows=rows, priority=priority, payload=name, delay_at=delay_at, deadline=deadline, shape=shape)


def _names(batch: Batch | None) -> list[str]:
    assert batch is not None
    return [s.item.payload for s in batch.slices]


def _one_level(**kwargs: object) -> BatchQueue:
    return BatchQueue(max_batch_size=1, priority_levels=1, default_priority_level=1, delayed_levels=(1,), **kwargs)


def test_a_request_past_its_queue_timeout_is_served_after_the_fresh_ones_not_refused() -> None:
    q = _one_level()
    q.add(_item("old", delay_at=1.0), 0.0)
    q.add(_item("older-still-fresh", delay_at=9.0), 0.5)
    q.add(_item("fresh", delay_at=9.0), 2.0)
    batch = q.next_batch(2.0)  # "old" passed its queue timeout at 1.0: behind the two fresh ones
    assert _names(batch) == ["older-still-fresh"] and batch.expired == ()
    assert _names(q.next_batch(2.1)) == ["fresh"]
    assert _names(q.next_batch(2.2)) == ["old"]
    assert q.next_batch(2.3) is None and len(q) == 0


def test_delayed_requests_keep_the_order_their_timeouts_passed_in_and_fresh_arrivals_go_first() -> None:
    q = _one_level()
    q.add(_item("b", delay_at=2.0), 0.0)
    q.add(_item("a", delay_at=1.0), 0.1)
    q.add(_item("c", delay_at=3.0), 0.2)
    assert _names(q.next_batch(2.5)) == ["c"]  # a and b passed theirs (a first): c is the only fresh one
    q.add(_item("late-arrival", delay_at=9.0), 2.6)
    assert _names(q.next_batch(2.7)) == ["late-arrival"]
    assert [_names(q.next_batch(2.8)), _names(q.next_batch(2.9))] == [["a"], ["b"]]


def test_a_started_request_is_not_delayed_and_a_delayed_one_still_meets_its_own_deadline() -> None:
    q = BatchQueue(max_batch_size=2, priority_levels=1, default_priority_level=1, delayed_levels=(1,))
    q.add(_item("big", rows=3, delay_at=1.0), 0.0)
    q.add(_item("doomed", delay_at=1.0, deadline=5.0), 0.1)
    assert _names(q.next_batch(0.5)) == ["big", "doomed"]  # round robin: one row each; both started
    q2 = _one_level()
    q2.add(_item("doomed", delay_at=1.0, deadline=5.0), 0.0)
    q2.add(_item("fresh", rows=1, delay_at=9.0), 0.1)
    assert _names(q2.next_batch(2.0)) == ["fresh"]  # doomed is delayed, not refused
    batch = q2.next_batch(5.0)  # its own deadline passed while delayed: it ends
    assert batch is not None and batch.slices == () and [it.payload for it in batch.expired] == ["doomed"]
    assert len(q2) == 0
    # the started one finishes whatever its queue timeout
    assert _names(q.next_batch(3.0)) == ["big"] and q.next_batch(3.0) is None


def test_only_delaying_levels_delay_and_a_delayed_request_stays_ahead_of_lower_levels() -> None:
    q = BatchQueue(max_batch_size=1, priority_levels=3, default_priority_level=3, delayed_levels=(1, 3))
    q.add(_item("l3-old", priority=3, delay_at=1.0), 0.0)
    q.add(_item("l1-old", priority=1, delay_at=1.0), 0.0)
    q.add(_item("l2-old", priority=2, delay_at=1.0), 0.0)  # level 2 does not delay: delay_at is not read
    q.add(_item("l3-fresh", priority=0, delay_at=9.0), 0.5)  # priority 0: the default level, 3
    q.add(_item("l1-fresh", priority=1, delay_at=9.0), 0.5)
    order = [_names(q.next_batch(2.0 + i / 10))[0] for i in range(5)]
    assert order == ["l1-fresh", "l1-old", "l2-old", "l3-fresh", "l3-old"]


def test_a_delayed_request_counts_against_its_levels_bound_as_tritons_max_queue_size() -> None:
    q = BatchQueue(max_batch_size=4, priority_levels=2, default_priority_level=2, max_queue_requests=2,
                   max_queue_requests_per_level=True, delayed_levels=(2,))
    q.add(_item("old", priority=2, delay_at=1.0), 0.0)
    q.add(_item("high", priority=1), 0.0)
    q.add(_item("high2", priority=1), 0.0)
    q._delay(2.0)  # what forming a batch does first: "old" is delayed
    q.add(_item("fresh", priority=2, delay_at=9.0), 2.0)
    with pytest.raises(Overloaded, match="2 requests queued at priority level 2, limit 2"):
        q.add(_item("third", priority=2), 2.0)
    assert q.cancel(q._classes[-1][0])  # a delayed request can be cancelled: its room is free again
    q.add(_item("third", priority=2), 2.1)
    assert sorted(_names(q.next_batch(2.2))) == ["fresh", "high", "high2", "third"]


def test_delayed_requests_count_in_the_row_bound_and_statistics_and_are_drained() -> None:
    q = BatchQueue(max_batch_size=1, max_queue_rows=3, priority_levels=1, default_priority_level=1,
                   delayed_levels=(1,))
    q.add(_item("old", rows=2, delay_at=1.0), 0.0)
    q.add(_item("fresh", rows=1, delay_at=9.0), 1.5)
    assert _names(q.next_batch(2.0)) == ["fresh"]
    with pytest.raises(Overloaded, match="max_queue_rows"):
        q.add(_item("too-many", rows=2), 2.0)
    assert q.statistics(2.0).requests == 1 and q.statistics(2.0).rows == 2
    assert [it.payload for it in q.drain()] == ["old"] and len(q) == 0


def test_by_shape_a_delayed_head_does_not_choose_the_shape() -> None:
    q = BatchQueue(max_batch_size=4, priority_levels=1, default_priority_level=1, delayed_levels=(1,), by_shape=True)
    q.add(_item("old-a", delay_at=1.0, shape="a"), 0.0)
    q.add(_item("fresh-b", delay_at=9.0, shape="b"), 0.5)
    q.add(_item("fresh-a", delay_at=9.0, shape="a"), 0.6)
    assert _names(q.next_batch(2.0)) == ["fresh-b"]  # the level's head that has not timed out
    assert _names(q.next_batch(2.0)) == ["fresh-a", "old-a"]


def test_whole_requests_take_the_delayed_ones_after_the_fresh_ones() -> None:
    q = BatchQueue(max_batch_size=3, priority_levels=1, default_priority_level=1, delayed_levels=(1,),
                   whole_requests=True)
    q.add(_item("old", rows=2, delay_at=1.0), 0.0)
    q.add(_item("fresh", rows=2, delay_at=9.0), 0.5)
    q.add(_item("small", rows=1, delay_at=9.0), 0.6)
    assert _names(q.next_batch(2.0)) == ["fresh", "small"]
    assert _names(q.next_batch(2.0)) == ["old"]


def test_a_queue_without_delaying_levels_ignores_delay_at() -> None:
    q = BatchQueue(max_batch_size=1, priority_levels=1, default_priority_level=1)
    q.add(_item("first", delay_at=1.0), 0.0)
    q.add(_item("second", delay_at=9.0), 0.5)
    assert [_names(q.next_batch(2.0)), _names(q.next_batch(2.0))] == [["first"], ["second"]]


def test_queue_policy_timeout_action() -> None:
    assert QueuePolicy(None, 5.0, timeout_action="DELAY").delays
    assert not QueuePolicy(None, 5.0).delays
    with pytest.raises(ValueError, match="timeout_action must be one of REJECT, DELAY"):
        QueuePolicy(timeout_action="drop")
    with pytest.raises(ValueError, match="delayed_levels"):
        BatchQueue(priority_levels=2, delayed_levels=(3,))


class _Inputs:
    """A request's payload, weakly referenced to see whether the queue still holds it."""


def test_a_request_that_left_or_started_is_not_kept_alive_until_its_queue_timeout() -> None:
    """As the deadline heap: a request cancelled, expired, started or finished before its queue
    timeout (which may be days away) is not kept alive by the queue (nor its inputs)."""
    import gc
    import weakref

    q = BatchQueue(max_batch_size=1, priority_levels=1, default_priority_level=1, delayed_levels=(1,))
    refs = []
    for deadline in (None, 0.5):
        payload = _Inputs()
        refs.append(weakref.ref(payload))
        item = WorkItem(rows=1, priority=1, payload=payload, delay_at=1e6, deadline=deadline)
        q.add(item, 0.0)
        if deadline is None:
            assert q.cancel(item)
    q.add(WorkItem(rows=2, priority=1, payload=_Inputs(), delay_at=1e6), 0.0)
    refs.append(weakref.ref(q._classes[0][-1].payload))
    batch = q.next_batch(1.0)  # the second expired; the third started
    assert batch is not None and len(batch.expired) == 1 and len(batch.slices) == 1
    del item, payload, batch
    gc.collect()
    assert refs[0]() is None and refs[1]() is None  # cancelled, expired
    assert q.next_batch(1.0) is not None and len(q) == 0  # the third finished
    gc.collect()
    assert refs[2]() is None
