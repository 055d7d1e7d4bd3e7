"""The batch queue of a model with a variable dimension besides the batch (``by_shape=True``):
a batch holds requests of one row shape only, and no shape starves another (Triton's dynamic
batcher batches only requests whose shapes match).  Sans-I/O, a fake clock."""

from __future__ import annotations

import pytest

from wsserve.batching import Batch, BatchQueue, WorkItem
from wsserve.errors import Overloaded


def _item(rows: int, shape: tuple[int, ...], name: str, *, priority: int = 0) -> WorkItem:
    return WorkItem(rows=rows, priority=priority, payload=name, shape=shape)


def _names(batch: Batch | None) -> list[str]:
    assert batch is not None
    return [s.item.payload for s in batch.slices]


def _shapes(batch: Batch) -> set[tuple[int, ...]]:
    return {s.item.shape for s in batch.slices}


def test_requests_of_two_shapes_are_never_batched_together() -> None:
    q = BatchQueue(max_batch_size=64, by_shape=True)
    for i, shape in enumerate([(5,), (7,), (5,), (7,), (5,)]):
        q.add(_item(1, shape, f"r{i}"), now=0.0)
    first = q.next_batch(0.0)
    assert first is not None and _names(first) == ["r0", "r2", "r4"] and first.rows == 3
    second = q.next_batch(0.0)
    assert second is not None and _names(second) == ["r1", "r3"]
    assert q.next_batch(0.0) is None and len(q) == 0
    stats = q.statistics(0.0)
    assert (stats.batches, stats.rows_scheduled, stats.rows, stats.requests) == (2, 5, 0, 0)


def test_each_batch_takes_the_oldest_requests_shape_so_none_starves() -> None:
    """A stream of shape-A requests arriving while a shape-B one waits: B goes in the next batch
    after the one it waited behind, not after every A."""
    q = BatchQueue(max_batch_size=2, by_shape=True)
    q.add(_item(1, (3,), "a0"), now=0.0)
    q.add(_item(1, (3,), "a1"), now=0.0)
    q.add(_item(1, (3,), "a2"), now=0.0)
    q.add(_item(1, (9,), "b0"), now=1.0)
    assert _names(q.next_batch(1.0)) == ["a0", "a1"]
    for i in range(3, 6):  # more A keeps arriving
        q.add(_item(1, (3,), f"a{i}"), now=2.0)
    assert _names(q.next_batch(2.0)) == ["a2", "a3"]  # a2 is now the oldest: its shape
    assert _names(q.next_batch(2.0)) == ["b0"]  # then b0, the oldest left, though A fills a batch
    assert _names(q.next_batch(2.0)) == ["a4", "a5"]


def test_a_large_request_shares_turns_with_another_shape() -> None:
    """A 10-row request of shape A streamed out over batches: a shape-B request queued behind it is
    served after A's first batch, then A's rows go on in order."""
    q = BatchQueue(max_batch_size=4, by_shape=True)
    big = _item(10, (2,), "big")
    q.add(big, now=0.0)
    q.add(_item(1, (8,), "b"), now=0.0)
    spans = []
    order = []
    while (batch := q.next_batch(0.0)) is not None:
        assert len(_shapes(batch)) == 1
        order.append(_names(batch))
        spans += [(s.start, s.stop) for s in batch.slices if s.item is big]
    assert order == [["big"], ["b"], ["big"], ["big"]]
    assert spans == [(0, 4), (4, 8), (8, 10)]


def test_high_priority_still_goes_first_and_its_shape_leads() -> None:
    q = BatchQueue(max_batch_size=8, by_shape=True)
    q.add(_item(1, (4,), "low4"), now=0.0)
    q.add(_item(1, (6,), "low6"), now=0.0)
    q.add(_item(1, (6,), "high6", priority=1), now=1.0)
    assert _names(q.next_batch(1.0)) == ["high6", "low6"]
    assert _names(q.next_batch(1.0)) == ["low4"]


def test_with_a_window_a_full_shape_goes_while_the_head_waits_for_its_window() -> None:
    q = BatchQueue(max_batch_size=2, max_delay_ms=100.0, by_shape=True)
    q.add(_item(1, (4,), "a0"), now=0.0)
    q.add(_item(1, (5,), "b0"), now=0.01)
    assert q.ready_at(0.01) == 0.1  # no shape fills a batch: the oldest's window
    q.add(_item(1, (5,), "b1"), now=0.02)
    assert q.ready_at(0.02) == 0.02  # shape (5,) fills one: now
    assert _names(q.next_batch(0.02)) == ["b0", "b1"]
    assert q.ready_at(0.02) == 0.1
    assert _names(q.next_batch(0.1)) == ["a0"]


def test_cancel_and_expiry_keep_the_counts_per_shape() -> None:
    q = BatchQueue(max_batch_size=2, max_delay_ms=100.0, by_shape=True)
    a = _item(2, (4,), "a")
    q.add(a, now=0.0)
    assert q.ready_at(0.0) == 0.0  # shape (4,) fills a batch
    q.cancel(a)
    assert q.ready_at(0.0) is None
    q.add(WorkItem(rows=1, payload="late", deadline=0.05, shape=(4,)), now=0.0)
    q.add(_item(1, (7,), "b"), now=0.0)
    batch = q.next_batch(0.1)
    assert batch is not None and [it.payload for it in batch.expired] == ["late"] and _names(batch) == ["b"]
    assert q.next_batch(0.1) is None and q.ready_at(0.1) is None


def test_without_by_shape_the_shape_is_not_read() -> None:
    """A fixed-shape model's queue batches everything together, whatever ``shape`` holds."""
    q = BatchQueue(max_batch_size=8)
    q.add(_item(1, (4,), "a"), now=0.0)
    q.add(_item(1, (5,), "b"), now=0.0)
    assert _names(q.next_batch(0.0)) == ["a", "b"]



def test_a_full_queues_retry_hint_counts_a_batch_per_shape_queued() -> None:
    """Each shape queued is a batch of its own ahead of a refused request: four shapes of one row
    are four batches (the hint counted the queue's rows as if any four made one batch)."""
    for shapes, batches in (([(1,), (2,), (3,), (4,)], 4), ([(3,)] * 4, 2)):  # one shape: as without shapes
        q = BatchQueue(max_batch_size=4, max_queue_requests=4, by_shape=True)
        q.note_batch(0.1)  # 100 ms a batch
        for i, shape in enumerate(shapes):
            q.add(_item(1, shape, f"r{i}"), now=0.0)
        with pytest.raises(Overloaded) as info:
            q.add(_item(1, (1,), "refused"), now=0.0)
        assert info.value.retry_after_ms == 100 * batches
