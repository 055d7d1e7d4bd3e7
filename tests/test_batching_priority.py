"""Priority levels of the batch queue (:mod:`wsserve.batching`), Triton's ``dynamic_batching {
priority_levels, default_priority_level }``: any number of classes up to ``MAX_PRIORITY_LEVELS``,
level 1 first, priority 0 the default level; and :class:`PriorityLevels`, the mapping of a request's
``priority`` onto a model's levels.  Sans-I/O: ``now`` is a plain float."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsserve.batching import (
    MAX_PRIORITY_LEVELS,
    Batch,
    BatchQueue,
    PriorityLevels,
    QueuePolicy,
    WorkItem,
)
from wsserve.errors import Overloaded


def _item(rows: int, priority: int, name: str, *, shape: object = None) -> WorkItem:
    return WorkItem(rows=rows, priority=priority, payload=name, shape=shape)


def _served(batch: Batch | None) -> list[tuple[str, int, int]]:
    assert batch is not None
    return [(s.item.payload, s.start, s.stop) for s in batch.slices]


def test_four_levels_fill_a_batch_highest_level_first_whatever_the_arrival_order() -> None:
    q = BatchQueue(max_batch_size=64, priority_levels=4, default_priority_level=3)
    for now, (priority, name) in enumerate([(4, "l4"), (0, "default"), (3, "l3"), (2, "l2"), (1, "l1")]):
        q.add(_item(1, priority, name), float(now))
    # priority 0 is level 3, queued in arrival order with the other level-3 request
    assert _served(q.next_batch(5.0)) == [("l1", 0, 1), ("l2", 0, 1), ("default", 0, 1), ("l3", 0, 1), ("l4", 0, 1)]
    assert q.next_batch(5.0) is None and len(q) == 0


def test_a_level_gets_only_what_the_higher_levels_leave_of_a_batch() -> None:
    q = BatchQueue(max_batch_size=4, priority_levels=3, default_priority_level=2)
    q.add(_item(3, 3, "low"), 0.0)
    q.add(_item(3, 2, "mid"), 1.0)
    q.add(_item(2, 1, "top"), 2.0)
    assert _served(q.next_batch(2.0)) == [("top", 0, 2), ("mid", 0, 2)]
    assert _served(q.next_batch(2.0)) == [("mid", 2, 3), ("low", 0, 3)]
    assert len(q) == 0


def test_inside_a_level_rows_are_shared_round_robin_and_arrival_order_is_kept() -> None:
    q = BatchQueue(max_batch_size=4, priority_levels=3, default_priority_level=3)
    q.add(_item(8, 2, "big"), 0.0)
    q.add(_item(1, 2, "a"), 1.0)
    q.add(_item(1, 2, "b"), 2.0)
    q.add(_item(5, 3, "low"), 3.0)
    # three requests at level 2 share a batch of 4 (4 // 3 = 1 row each, in order; the row left: big's)
    assert _served(q.next_batch(3.0)) == [("big", 0, 2), ("a", 0, 1), ("b", 0, 1)]
    assert _served(q.next_batch(3.0)) == [("big", 2, 6)]
    assert _served(q.next_batch(3.0)) == [("big", 6, 8), ("low", 0, 2)]


def test_a_steady_stream_of_higher_levels_starves_a_lower_one_until_it_stops() -> None:
    """Documented: no ageing.  A level-3 request waits while level-1 and level-2 rows fill every batch."""
    q = BatchQueue(max_batch_size=2, priority_levels=3, default_priority_level=3)
    q.add(_item(1, 0, "low"), 0.0)
    for t in range(1, 6):
        q.add(_item(1, 1 + t % 2, f"hi{t}a"), float(t))
        q.add(_item(1, 1 + t % 2, f"hi{t}b"), float(t))
        assert [name for name, _, _ in _served(q.next_batch(float(t)))] == [f"hi{t}a", f"hi{t}b"]
    assert _served(q.next_batch(6.0)) == [("low", 0, 1)]


def test_cancel_and_drain_reach_every_level() -> None:
    q = BatchQueue(max_batch_size=8, priority_levels=5, default_priority_level=1)
    items = [_item(2, p, f"p{p}") for p in range(6)]
    for it in items:
        q.add(it, 0.0)
    assert q.cancel(items[5]) and q.cancel(items[3]) and len(q) == 4
    assert q.statistics(0.0).rows == 8
    assert _served(q.next_batch(0.0)) == [("p0", 0, 2), ("p1", 0, 2), ("p2", 0, 2), ("p4", 0, 2)]
    q.add(_item(1, 4, "late"), 1.0)
    assert [it.payload for it in q.drain()] == ["late"] and len(q) == 0


def _level_of(levels: int, default: int, priority: int) -> int:
    """The level an item of ``priority`` is queued at, read from a batch: one item at each level
    first, then the probe, which comes out last of its level."""
    q = BatchQueue(max_batch_size=64, priority_levels=levels, default_priority_level=default)
    for level in range(1, levels + 1):
        q.add(_item(1, level, f"l{level}"), 0.0)
    probe = _item(1, priority, "probe")
    q.add(probe, 1.0)
    names = [name for name, _, _ in _served(q.next_batch(1.0))]
    return int(names[names.index("probe") - 1][1:])


@pytest.mark.parametrize("levels, default, priority, level", [
    (3, 2, 0, 2), (3, 2, 1, 1), (3, 2, 3, 3), (3, 2, 4, 2), (3, 2, 2**64 - 1, 2),  # Triton: 0 or > N -> default
    (1, 1, 0, 1), (1, 1, 5, 1),  # one level (a config.pbtxt without priority_levels)
    (2, 2, 1, 1), (2, 2, 0, 2), (2, 2, 7, 2),  # wsserve's two classes: 1 high, anything else normal
])
def test_a_priority_is_its_level_and_0_or_one_above_the_levels_the_default(
        levels: int, default: int, priority: int, level: int) -> None:
    """Triton's rule (core ``InferenceRequest::SetPriority``)."""
    assert _level_of(levels, default, priority) == level


def test_a_negative_priority_is_refused_and_an_item_above_the_levels_can_be_cancelled() -> None:
    q = BatchQueue(max_batch_size=8, priority_levels=3, default_priority_level=2)
    with pytest.raises(ValueError, match=r"priority must be >= 0, got -1"):
        q.add(_item(1, -1, "neg"), 0.0)
    assert len(q) == 0 and q.statistics(0.0).rows == 0
    high = _item(2, 99, "x")
    q.add(high, 0.0)
    assert q.cancel(high) and len(q) == 0 and q.next_batch(0.0) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"priority_levels": 0}, r"priority_levels must be in \[1, 16\], got 0"),
    ({"priority_levels": MAX_PRIORITY_LEVELS + 1}, r"priority_levels must be in \[1, 16\], got 17"),
    ({"priority_levels": 3, "default_priority_level": 4}, r"default_priority_level must be in \[1, 3\], got 4"),
    ({"priority_levels": 3, "default_priority_level": 0}, r"default_priority_level must be in \[1, 3\], got 0"),
])
def test_bad_levels_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchQueue(**kwargs)


def test_shapes_the_head_of_the_highest_level_picks_the_batchs_shape() -> None:
    q = BatchQueue(max_batch_size=8, by_shape=True, priority_levels=3, default_priority_level=3)
    q.add(_item(1, 3, "low-a", shape=(5,)), 0.0)
    q.add(_item(1, 3, "low-b", shape=(7,)), 1.0)
    q.add(_item(1, 2, "mid-b", shape=(7,)), 2.0)
    q.add(_item(1, 1, "top-a", shape=(5,)), 3.0)
    assert _served(q.next_batch(3.0)) == [("top-a", 0, 1), ("low-a", 0, 1)]
    assert _served(q.next_batch(3.0)) == [("mid-b", 0, 1), ("low-b", 0, 1)]
    assert len(q) == 0


def test_whole_requests_fill_level_by_level() -> None:
    q = BatchQueue(max_batch_size=4, whole_requests=True, priority_levels=3, default_priority_level=3)
    q.add(_item(2, 3, "low"), 0.0)
    q.add(_item(3, 2, "mid"), 1.0)
    q.add(_item(1, 1, "top"), 2.0)
    assert _served(q.next_batch(2.0)) == [("top", 0, 1), ("mid", 0, 3)]
    assert _served(q.next_batch(2.0)) == [("low", 0, 2)]


def test_window_mode_waits_for_the_oldest_request_of_any_level() -> None:
    q = BatchQueue(max_batch_size=8, max_delay_ms=10.0, priority_levels=4, default_priority_level=2)
    q.add(_item(1, 4, "old"), 1.0)
    q.add(_item(1, 1, "new"), 1.005)
    assert q.ready_at(1.005) == pytest.approx(1.010)
    assert q.statistics(1.006).oldest_age_s == pytest.approx(0.006)


def test_max_queue_requests_bounds_each_level_as_tritons_max_queue_size() -> None:
    """Triton keeps one queue per priority level, each with the ``default_queue_policy``'s
    ``max_queue_size`` (core ``PriorityQueue::PolicyQueue::Enqueue``): a lower level full of
    requests does not refuse a higher level's (it did: the bound counted every level)."""
    q = BatchQueue(max_batch_size=4, priority_levels=3, default_priority_level=2, max_queue_requests=2,
                   max_queue_requests_per_level=True)
    q.add(_item(1, 3, "low-a"), 0.0)
    q.add(_item(5, 3, "low-b"), 0.0)
    with pytest.raises(Overloaded, match=r"queue full: 2 requests queued at priority level 3, limit 2 \(max_queue_requests\)"):
        q.add(_item(1, 3, "low-c"), 0.0)
    q.add(_item(1, 1, "top"), 0.0)
    q.add(_item(1, 0, "default"), 0.0)  # level 2
    q.add(_item(1, 99, "above"), 0.0)  # level 2 too (Triton's rule)
    with pytest.raises(Overloaded, match=r"2 requests queued at priority level 2"):
        q.add(_item(1, 2, "mid"), 0.0)
    assert len(q) == 5
    # top, default, above and low-a served, low-b's first row: low-b still waits (partly served) at level 3
    assert [name for name, _, _ in _served(q.next_batch(0.0))] == ["top", "default", "above", "low-a"]
    q.add(_item(1, 3, "low-c"), 1.0)
    with pytest.raises(Overloaded, match=r"level 3"):
        q.add(_item(1, 3, "low-d"), 1.0)
    assert q.cancel(q._classes[2][0]) and len(q) == 1  # low-b cancelled: one left at level 3
    q.add(_item(1, 3, "low-d"), 1.0)


def test_a_levels_own_queue_policy_bound_replaces_the_default_at_that_level_only() -> None:
    """Triton's ``priority_queue_policy``: level 1 holds 2 requests, level 3 has no bound of its own
    (protobuf's ``max_queue_size`` 0), level 2 keeps the default policy's 1."""
    q = BatchQueue(max_batch_size=8, priority_levels=3, default_priority_level=2, max_queue_requests=1,
                   max_queue_requests_per_level=True, level_max_queue_requests={1: 2, 3: None})
    for now, (priority, name) in enumerate([(1, "a1"), (1, "b1"), (0, "a2"), (3, "a3"), (3, "b3"), (3, "c3")]):
        q.add(_item(1, priority, name), float(now))
    with pytest.raises(Overloaded, match=r"queue full: 2 requests queued at priority level 1, limit 2"):
        q.add(_item(1, 1, "c1"), 9.0)
    with pytest.raises(Overloaded, match=r"queue full: 1 requests queued at priority level 2, limit 1"):
        q.add(_item(1, 7, "b2"), 9.0)  # above the levels: the default level's bound
    assert _served(q.next_batch(9.0)) == [("a1", 0, 1), ("b1", 0, 1), ("a2", 0, 1), ("a3", 0, 1), ("b3", 0, 1),
                                          ("c3", 0, 1)]
    with pytest.raises(ValueError, match=r"levels must be in \[1, 3\], got \[0, 4\]"):
        BatchQueue(priority_levels=3, max_queue_requests_per_level=True, level_max_queue_requests={0: 1, 4: 1})


def test_a_requests_queue_policy_is_its_levels_own_else_the_default() -> None:
    default = QueuePolicy(None, 100.0, True)
    top, low = QueuePolicy(4, 20.0, False), QueuePolicy(None, None, False)
    levels = PriorityLevels(3, 2, configured=True, policies=((1, top), (3, low)))
    assert [levels.policy(p, default) for p in (1, 2, 3, 0, 4)] == [top, default, low, default, default]
    assert [levels.level(p) for p in (0, 1, 2, 3, 4)] == [2, 1, 2, 3, 2]
    # deadlines at now = 10.0 (seconds): level 1 cuts a longer request's, the default lets it shorten
    assert (top.deadline(60.0, 10.0), top.deadline(None, 10.0)) == (10.02, 10.02)
    assert (default.deadline(10.05, 10.0), default.deadline(60.0, 10.0)) == (10.05, 10.1)
    assert (low.deadline(60.0, 10.0), low.deadline(None, 10.0)) == (60.0, None)
    for bad in (((4, top),), ((2, top), (1, low)), ((1, top), (1, low))):
        with pytest.raises(ValueError, match="priority queue policy levels"):
            PriorityLevels(3, 2, configured=True, policies=bad)


def test_max_queue_requests_bounds_the_whole_queue_by_default() -> None:
    """wsserve's own two classes (a model without config.pbtxt): the bound counts both, as before levels."""
    q = BatchQueue(max_batch_size=4, max_queue_requests=2)
    q.add(_item(1, 0, "a"), 0.0)
    q.add(_item(1, 0, "b"), 0.0)
    with pytest.raises(Overloaded, match=r"queue full: 2 requests queued, limit 2 \(max_queue_requests\)"):
        q.add(_item(1, 1, "high"), 0.0)


# --------------------------------------------------------------------------- PriorityLevels


def test_a_models_levels_give_its_queue_classes() -> None:
    assert (PriorityLevels().classes, PriorityLevels().default_class) == (2, 2)
    assert (PriorityLevels(0, 0, configured=True).classes, PriorityLevels(0, 0, configured=True).default_class) == (1, 1)
    assert (PriorityLevels(0, 3, configured=True).classes, PriorityLevels(0, 3, configured=True).default_class) == (1, 1)
    assert (PriorityLevels(5, 3, configured=True).classes, PriorityLevels(5, 3, configured=True).default_class) == (5, 3)


def test_wire_refusals_name_the_model_and_its_levels() -> None:
    two = PriorityLevels()  # no config.pbtxt: today's message, exactly
    assert two.refusal(1, "m") is None and two.refusal(0, "m") is None
    assert two.refusal(2, "m") == "field 'priority' must be 0 (normal) or 1 (high), got 2"
    three = PriorityLevels(3, 2, configured=True)
    assert three.refusal(3, "m") is None
    assert three.refusal(4, "m") == (
        "field 'priority' must be in [0, 3] for model 'm', got 4 (its config.pbtxt "
        "dynamic_batching.priority_levels is 3, 1 the highest; 0 is default_priority_level 2)")
    none = PriorityLevels(0, 0, configured=True)
    assert none.refusal(1, "m") is None and "sets no dynamic_batching.priority_levels" in str(none.refusal(2, "m"))


@pytest.mark.parametrize("levels, default", [(17, 1), (3, 0), (3, 4), (-1, 0)])
def test_priority_levels_are_bounded(levels: int, default: int) -> None:
    with pytest.raises(ValueError, match="priority level"):
        PriorityLevels(levels, default, configured=True)


# --------------------------------------------------------------------------- property


_ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 12), st.integers(0, 7)),
    st.tuples(st.just("cancel"), st.integers(0, 1000)),
    st.tuples(st.just("batch")),
), max_size=50)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, levels=st.integers(1, 5), default=st.integers(1, 5), cap=st.integers(1, 16),
       whole=st.booleans())
def test_no_row_of_a_level_is_scheduled_while_a_higher_level_has_rows_left(
        ops: list[tuple], levels: int, default: int, cap: int, whole: bool) -> None:
    """After every batch: a level that got rows has no higher level with rows still waiting (except
    ``whole_requests``, where a higher request too large for what is left keeps its place); every row
    is scheduled once, in order."""
    default = min(default, levels)
    q = BatchQueue(max_batch_size=cap, priority_levels=levels, default_priority_level=default, whole_requests=whole)
    items: list[WorkItem] = []
    seen: dict[int, int] = {}

    def level(it: WorkItem) -> int:
        return it.priority if 0 < it.priority <= levels else default

    def batch() -> None:
        b = q.next_batch(0.0)
        if b is None:
            return
        for s in b.slices:
            assert s.start == seen.get(id(s.item), 0)
            seen[id(s.item)] = s.stop
        if not whole:
            lowest = max(level(s.item) for s in b.slices)
            waiting = [it for it in items if not it.cancelled and it.remaining > 0]
            assert all(level(it) >= lowest for it in waiting)

    for op in ops:
        if op[0] == "add":
            item = WorkItem(rows=op[1], priority=op[2])  # above the levels: the default one
            q.add(item, 0.0)
            items.append(item)
        elif op[0] == "cancel" and items:
            q.cancel(items[op[1] % len(items)])
        elif op[0] == "batch":
            batch()
    while len(q):
        batch()
    for it in items:
        assert it.cancelled or seen.get(id(it)) == it.rows
