"""An ensemble's ``ensemble_scheduling { max_inflight_requests }`` through :class:`wsserve.ensemble.EnsembleWorker`
with fake step workers (the sans-I/O side; tests/test_ensemble_inflight_wire.py: over a real server): at most
N requests in flight at each step across the ensemble's requests, the others parked in arrival order and
launched as places free, a cancelled or failed request giving back only the places it holds."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")

from tests.test_ensemble_plan import ensemble_pbtxt, sig  # noqa: E402
from tests.test_ensemble_run import (  # noqa: E402
    CHAIN3,
    FAN,
    SIGS,
    FakeEntry,
    FakeWorker,
    Sink,
    StreamSink,
    _x,
)
from wsserve.ensemble import (  # noqa: E402
    PLACE_WAIT_TIMEOUT_S,
    EnsembleModel,
    EnsembleWorker,
    StepLimits,
)
from wsserve.errors import UnknownModel  # noqa: E402
from wsserve.repository.ensemble_plan import plan_ensemble  # noqa: E402
from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402


def _with_limit(text: str, limit: int) -> str:
    return text.replace("ensemble_scheduling {", f"ensemble_scheduling {{ max_inflight_requests: {limit}")


def _streaming(limit: int, **options: Any) -> tuple[EnsembleWorker, dict[str, FakeEntry]]:
    """``gen`` (decoupled) -> ``post``, with ``max_inflight_requests: limit``; ``options``: the worker's."""
    sigs = {("gen", None): sig("gen", {"x": (3,)}, {"y": (3,)}, decoupled=True),
            ("post", None): sig("post", {"x": (3,)}, {"y": (2,)})}
    config = parse_pbtxt(_with_limit(ensemble_pbtxt(CHAIN3), limit), "pipe/config.pbtxt", model_name="pipe")
    assert config.ensemble is not None and config.ensemble.max_inflight_requests == limit
    model = EnsembleModel("pipe", 1, config, plan_ensemble(config.ensemble, sigs))
    entries = {name: FakeEntry(name, FakeWorker(), sigs[(name, None)].inputs, decoupled=name == "gen")
               for name in ("gen", "post")}

    def lookup(name: str, version: str | None) -> FakeEntry:
        if name not in entries:
            raise UnknownModel(f"no model named {name!r}")
        return entries[name]

    worker = EnsembleWorker(model, lookup, **options)
    worker.start()
    return worker, entries


def _posts(entries: dict[str, FakeEntry]) -> list[Any]:
    return [s for s, _, _ in entries["post"].worker.submitted]


def _open(entries: dict[str, FakeEntry]) -> list[Any]:
    """``post``'s step requests not answered yet (not finished, not cancelled)."""
    cancelled = {id(item[1]) for item in entries["post"].worker.cancelled}
    return [s for s in _posts(entries) if not s.finished and id(s) not in cancelled]


def test_a_decoupled_step_s_responses_wait_for_a_place_at_the_next_step_and_all_arrive_in_order() -> None:
    async def go() -> None:
        worker, e = _streaming(2)
        sink = StreamSink(_x(), 2)
        worker.submit(sink)
        await asyncio.sleep(0)
        (gen, _, _), = e["gen"].worker.submitted
        for i in range(6):
            gen.on_response({"y": np.full((2, 3), i, np.float32)}, False, 100)
        gen.on_response(None, True, 0)  # gen is done; four of its responses still wait for post
        assert [int(p.inputs[0, 0]) for p in _posts(e)] == [0, 1]
        assert worker.statistics().queued == 4 and sink.responses == []
        # the longest wait for a place: since the first response parked, on the loop's clock
        loop, since = asyncio.get_running_loop(), worker.limits.oldest_since()
        assert since is not None
        loop.time = lambda: since + 7.5  # type: ignore[method-assign]  # the clock, 7.5 s on
        try:
            assert worker.statistics().oldest_age_s == 7.5
        finally:
            del loop.time  # (the class's again)
        most = 0
        while _open(e):
            most = max(most, len(_open(e)))
            post = _open(e)[0]
            post.on_rows(0, np.full((2, 2), int(post.inputs[0, 0]), np.float32), 2, 0.0, 0.0)
        assert most == 2 and [int(p.inputs[0, 0]) for p in _posts(e)] == list(range(6))  # in gen's order
        # (the last carries the final flag: no step is in flight nor waiting then)
        assert [(int(o["OUT"][0, 0]), f) for o, f in sink.responses] == [(i, i == 5) for i in range(6)]
        assert worker.statistics().queued == 0 and not worker.limits.inflight
        assert worker.statistics().oldest_age_s == 0.0 and worker.limits.oldest_since() is None
        await asyncio.wait_for(worker.wait_idle(), 10)

    asyncio.run(go())


def test_the_limit_is_per_step_across_requests_in_arrival_order() -> None:
    """Two requests share ``post``'s places; the first step (``gen``) has its own (both run)."""
    async def go() -> None:
        worker, e = _streaming(1)
        first, second = StreamSink(_x(), 2), StreamSink(_x() + 100, 2)
        worker.submit(first)
        worker.submit(second)
        await asyncio.sleep(0)
        assert len(e["gen"].worker.submitted) == 1  # gen's place is taken by the first request
        gen1 = e["gen"].worker.submitted[0][0]
        gen1.on_response({"y": np.full((2, 3), 1, np.float32)}, False, 100)
        gen1.on_response({"y": np.full((2, 3), 2, np.float32)}, True, 100)  # its end frees gen's place
        (gen2, _, _) = e["gen"].worker.submitted[1]
        gen2.on_response({"y": np.full((2, 3), 3, np.float32)}, True, 100)
        assert [int(p.inputs[0, 0]) for p in _posts(e)] == [1] and worker.statistics().queued == 2
        while _open(e):
            assert len(_open(e)) == 1
            post = _open(e)[0]
            post.on_rows(0, np.full((2, 2), int(post.inputs[0, 0]), np.float32), 2, 0.0, 0.0)
        assert [int(p.inputs[0, 0]) for p in _posts(e)] == [1, 2, 3]
        assert [int(o["OUT"][0, 0]) for o, _ in first.responses] == [1, 2] and first.responses[-1][1]
        assert [int(o["OUT"][0, 0]) for o, _ in second.responses] == [3] and second.responses[-1][1]
        await asyncio.wait_for(worker.wait_idle(), 10)

    asyncio.run(go())


def test_cancelling_a_request_that_waits_frees_nothing_it_did_not_take() -> None:
    """The second request's step is parked behind the first's; cancelling it drops the parked step
    (the sink is not called: the transport answers the cancel) and gives back no place, so a third
    request still waits for the first's step; cancelling the first gives back its place."""
    async def go() -> None:
        worker, e = _streaming(1)
        runs, sinks = [], [StreamSink(_x() + 10 * i, 2) for i in range(3)]
        runs.append(worker.submit(sinks[0]))
        await asyncio.sleep(0)
        gen1 = e["gen"].worker.submitted[0][0]
        gen1.on_response({"y": np.full((2, 3), 1, np.float32)}, False, 100)  # post busy with it
        gen1.on_response({"y": np.full((2, 3), 2, np.float32)}, False, 100)  # parked
        runs.append(worker.submit(sinks[1]))
        await asyncio.sleep(0)
        assert len(e["gen"].worker.submitted) == 1 and worker.statistics().queued == 2  # gen's place is held
        worker.cancel(runs[1])
        assert worker.statistics().queued == 1 and sinks[1].responses == [] and not sinks[1].errors
        assert worker.limits.inflight == {0: 1, 1: 1}
        runs.append(worker.submit(sinks[2]))
        await asyncio.sleep(0)
        assert len(e["gen"].worker.submitted) == 1 and len(_posts(e)) == 1  # still waiting: nothing was freed
        worker.cancel(runs[0])  # its gen and post places free: the third request's gen goes
        assert len(e["gen"].worker.submitted) == 2 and e["gen"].worker.submitted[1][0].inputs[0, 0] == 20
        assert worker.limits.inflight == {0: 1} and worker.statistics().queued == 0
        e["gen"].worker.submitted[1][0].on_response({"y": np.full((2, 3), 7, np.float32)}, True, 100)
        _posts(e)[-1].on_rows(0, np.full((2, 2), 7, np.float32), 2, 0.0, 0.0)
        assert [(int(o["OUT"][0, 0]), f) for o, f in sinks[2].responses] == [(7, True)]
        assert not worker.limits.inflight
        await asyncio.wait_for(worker.wait_idle(), 10)

    asyncio.run(go())


def test_a_parked_step_that_cannot_be_queued_fails_its_request_and_gives_its_place_to_the_next() -> None:
    async def go() -> None:
        worker, e = _streaming(1)
        sink = StreamSink(_x(), 2)
        worker.submit(sink)
        await asyncio.sleep(0)
        gen = e["gen"].worker.submitted[0][0]
        for i in range(3):
            gen.on_response({"y": np.full((2, 3), i, np.float32)}, False, 100)
        other = StreamSink(_x(), 2)
        worker.submit(other)
        await asyncio.sleep(0)
        post = e.pop("post")
        _posts({"post": post})[0].on_rows(0, np.zeros((2, 2), np.float32), 2, 0.0, 0.0)  # its place frees...
        (error,) = sink.errors  # ...its next step cannot be queued: the request fails, naming the step
        assert error.code == "internal" and "step 1 (model 'post')" in error.message
        assert ("item", gen) in e["gen"].worker.cancelled
        assert worker.limits.inflight == {0: 1} and worker.statistics().queued == 0  # the other request's gen runs
        assert len(e["gen"].worker.submitted) == 2

    asyncio.run(go())


def test_the_first_steps_are_limited_too_and_zero_is_no_limit() -> None:
    async def go(limit: int) -> int:
        config = parse_pbtxt(_with_limit(ensemble_pbtxt(FAN), limit).replace('name: "pipe"', 'name: "fan"'),
                             "fan/config.pbtxt", model_name="fan")
        model = EnsembleModel("fan", 1, config, plan_ensemble(config.ensemble, SIGS))
        entries = {name: FakeEntry(name, FakeWorker(), SIGS[(name, None)].inputs) for name in ("a", "b", "join")}
        worker = EnsembleWorker(model, lambda name, version: entries[name])
        worker.start()
        for _ in range(3):
            worker.submit(Sink(_x(), 2))
        await asyncio.sleep(0)
        return len(entries["a"].worker.submitted)

    assert asyncio.run(go(1)) == 1
    assert asyncio.run(go(0)) == 3


class _Waiter:
    """What :class:`StepLimits` sees of a request: its parked count and its launches."""

    def __init__(self) -> None:
        self.parked = 0
        self.worker = SimpleNamespace(name="pipe")
        self.launched: list[tuple[int, Any, bool]] = []

    def on_parked(self) -> None:
        pass

    def _launch(self, step: Any, key: Any, *, slot: bool = False) -> None:
        self.launched.append((step.index, key, slot))


def test_a_step_that_waited_triton_s_bound_for_a_place_goes_anyway_over_the_limit(caplog: Any) -> None:
    """Triton's ``StepInflightRequestLimiter::Acquire`` waits ``kMutexTimeoutSeconds`` (300 s), then
    proceeds, counting the step in flight over the limit; the clock is the caller's ``now``."""
    assert PLACE_WAIT_TIMEOUT_S == 300.0
    limits = StepLimits(1)
    post = SimpleNamespace(index=1, model="post")
    first, second = _Waiter(), _Waiter()
    assert limits.take(1) and limits.due() is None and limits.oldest_since() is None
    limits.park(first, post, (0,), now=1000.0)
    limits.park(second, post, (0,), now=1010.0)
    assert limits.due() == 1300.0 and limits.parked == 2 and limits.oldest_since() == 1000.0
    assert limits.expire(1299.5) == 0 and first.launched == [] and limits.inflight[1] == 1
    with caplog.at_level(logging.ERROR, logger="wsserve.ensemble"):
        assert limits.expire(1300.0) == 1
    assert first.launched == [(1, (0,), True)] and first.parked == 0 and second.launched == []
    assert limits.inflight[1] == 2 and limits.due() == 1310.0  # over the limit, as Triton's
    assert limits.oldest_since() == 1010.0
    assert "step 1 (model 'post'): no place for 300 s (in flight: 1 >= max_inflight_requests: 1)" in caplog.text
    limits.release(1)  # 1 in flight, the limit: the second still waits its turn...
    assert second.launched == [] and limits.parked == 1
    assert limits.expire(1400.0) == 1 and second.launched == [(1, (0,), True)]  # ...until its own bound
    assert limits.inflight[1] == 2 and limits.due() is None and not limits.waiting


def test_a_parked_step_released_in_time_is_not_launched_again_by_the_bound() -> None:
    limits = StepLimits(1, wait_timeout_s=5.0)
    post = SimpleNamespace(index=1, model="post")
    run = _Waiter()
    assert limits.take(1)
    limits.park(run, post, (), now=0.0)
    limits.release(1)
    assert run.launched == [(1, (), True)] and limits.due() is None
    assert limits.expire(100.0) == 0 and run.launched == [(1, (), True)] and limits.inflight[1] == 1


def test_the_worker_s_timer_launches_a_step_that_waited_its_bound() -> None:
    """The adapter side: the worker arms a loop timer at the bound (here 0 s: the next loop turns)."""
    async def go() -> None:
        worker, e = _streaming(1, place_wait_timeout_s=0.0)
        sink = StreamSink(_x(), 2)
        worker.submit(sink)
        await asyncio.sleep(0)
        (gen, _, _), = e["gen"].worker.submitted
        gen.on_response({"y": np.full((2, 3), 1, np.float32)}, False, 100)
        gen.on_response({"y": np.full((2, 3), 2, np.float32)}, True, 100)
        assert len(_posts(e)) == 1 and worker.statistics().queued == 1
        for _ in range(100):  # predicate wait: the timer fires on a later loop turn
            if len(_posts(e)) == 2:
                break
            await asyncio.sleep(0)
        assert [int(p.inputs[0, 0]) for p in _posts(e)] == [1, 2] and worker.limits.inflight[1] == 2
        assert worker.statistics().queued == 0 and worker._place_timer is None
        for post in _posts(e):
            post.on_rows(0, np.full((2, 2), int(post.inputs[0, 0]), np.float32), 2, 0.0, 0.0)
        assert [(int(o["OUT"][0, 0]), f) for o, f in sink.responses] == [(1, False), (2, True)]
        assert not worker.limits.inflight
        await asyncio.wait_for(worker.wait_idle(), 10)

    asyncio.run(go())


def test_a_request_ended_while_its_step_waits_leaves_no_place_timer_and_launches_nothing() -> None:
    """Cancelled, or its worker closed, while a step of it waits for a place: the worker's place timer
    (here due at once) is disarmed with it and never launches the forgotten step; one terminal frame."""
    async def go(end: str) -> None:
        worker, e = _streaming(1, place_wait_timeout_s=0.0)
        sink = StreamSink(_x(), 2)
        run = worker.submit(sink)
        await asyncio.sleep(0)
        (gen, _, _), = e["gen"].worker.submitted
        gen.on_response({"y": np.full((2, 3), 1, np.float32)}, False, 100)
        gen.on_response({"y": np.full((2, 3), 2, np.float32)}, False, 100)
        assert worker.statistics().queued == 1 and worker._place_timer is not None
        if end == "cancel":
            worker.cancel(run)
        else:
            await worker.close()
        assert worker._place_timer is None and not worker.limits.waiting
        for _ in range(10):  # loop turns past the (0 s) bound: nothing goes
            await asyncio.sleep(0)
        assert len(_posts(e)) == 1 and worker._place_timer is None
        assert sink.responses == [] and len(sink.errors) == (0 if end == "cancel" else 1)
        await asyncio.wait_for(worker.wait_idle(), 10)

    for end in ("cancel", "close"):
        asyncio.run(go(end))
