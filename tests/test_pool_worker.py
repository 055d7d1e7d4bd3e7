"""Tests of :class:`wsserve.pool.PredictWorker` on a real asyncio loop, no sockets.

The model is a tiny fake :class:`~wsserve.models.base.PredictiveModel` (the
boundary the worker calls): it doubles its input, raises when it sees
``RAISE``, returns ``inf`` where it sees ``INF``, and records what it was asked
and on which thread.  Results are collected by a recording sink that checks
the :class:`~wsserve.pool.PredictSink` contract.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from functools import partial
from time import monotonic
from typing import Any

import numpy as np
import pytest

from tests.support import wait_until_async
from wsserve.errors import (
    DeadlineExceeded,
    Internal,
    InvalidInput,
    Overloaded,
    WsserveError,
)
from wsserve.models.base import ModelInfo, PredictiveModel
from wsserve.worker import PredictWorker, RequestErrors, RequestOutputs

RAISE = 666.0  # the model raises when a batch holds this value
INF = 777.0  # the model outputs inf for this value
WAIT_S = 5.0  # upper bound for anything to arrive; tests normally take milliseconds
#: Poll an in-process condition every millisecond until it holds (AssertionError after WAIT_S).
until = partial(wait_until_async, timeout_s=WAIT_S, interval_s=0.001)

INLINE = pytest.param(10**9, id="inline")
EXECUTOR = pytest.param(0, id="executor")  # inline_max_flops=0 forces the executor


class Doubler(PredictiveModel):
    """``[n, d] -> [n, d]``: ``2x``; raises on ``RAISE``; ``inf`` for ``INF``.

    With a ``gate``, each call first waits for it (so a test can hold the
    model busy); ``started`` is set when a call begins.
    """

    def __init__(self, *, width: int = 1, gate: threading.Event | None = None) -> None:
        self.info = ModelInfo(
            name="double", version="1", task="regression",
            input_shape=(width,), output_shape=(width,), parameters=1,
        )
        self.calls: list[tuple[np.ndarray, str]] = []
        self.gate = gate
        self.started = threading.Event()

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.float64 and x.ndim == 2
        self.calls.append((x.copy(), threading.current_thread().name))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT_S)
        if (x == RAISE).any():
            raise RuntimeError("boom on a marker")
        y = 2.0 * x
        y[x == INF] = np.inf
        return y

    def seen(self) -> list[float]:
        return [float(v) for x, _ in self.calls for v in x.ravel()]


class BadOutput(Doubler):
    """Returns something that is not a float ``[n, k]`` array."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    def predict(self, x: np.ndarray) -> Any:
        y = super().predict(x)
        if (x == 13.0).any():
            return self.make(y)
        return y


class Sink:
    """A recording :class:`~wsserve.pool.PredictSink`.

    ``finished`` becomes true on the terminal call (all rows, or an error), or
    when the test cancels the request (as a connection's job would).
    """

    order: list[str] = []  # completion order across sinks of one test

    def __init__(self, name: str, rows: list[list[float]]) -> None:
        self.name = name
        self.inputs = np.array(rows, dtype=np.float64)  # as the connection hands them over (validate_inputs)
        self.rows = self.inputs
        self.n = len(rows)
        self.nbytes = self.inputs.nbytes
        self.finished = False
        self.events: list[tuple[Any, ...]] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.first_rows: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._delivered = 0
        self._loop_thread = threading.current_thread()

    def on_rows(self, start: int, outputs: np.ndarray, batch_rows: int, queue_s: float, compute_s: float) -> None:
        assert threading.current_thread() is self._loop_thread
        self.events.append(("rows", start, np.array(outputs, copy=True), batch_rows, queue_s, compute_s))
        if not self.first_rows.done():
            self.first_rows.set_result(None)
        if self.finished:
            return
        self._delivered += outputs.shape[0]
        if self._delivered >= len(self.rows):
            self._finish()

    def on_error(self, exc: WsserveError) -> None:
        assert threading.current_thread() is self._loop_thread
        self.events.append(("error", exc))
        if not self.finished:
            self._finish()

    def mark_cancelled(self) -> None:
        self.finished = True
        self.events.append(("cancelled",))

    def _finish(self) -> None:
        self.finished = True
        Sink.order.append(self.name)
        self.done.set_result(None)

    # -- checks

    def check_contract(self) -> None:
        """Row ranges consecutive from 0, at most one terminal call, nothing after it."""
        expect = 0
        for i, ev in enumerate(self.events):
            if ev[0] == "rows":
                assert ev[1] == expect, f"{self.name}: rows out of order"
                expect += ev[2].shape[0]
                assert expect <= len(self.rows)
                if expect == len(self.rows):
                    assert i == len(self.events) - 1, f"{self.name}: called after its last rows"
            else:
                assert i == len(self.events) - 1, f"{self.name}: called after {ev[0]}"

    def outputs(self) -> np.ndarray:
        self.check_contract()
        assert self.error is None, f"{self.name} failed: {self.error!r}"
        return np.concatenate([ev[2] for ev in self.events if ev[0] == "rows"])

    @property
    def error(self) -> WsserveError | None:
        errors = [ev[1] for ev in self.events if ev[0] == "error"]
        assert len(errors) <= 1
        return errors[0] if errors else None

    @property
    def batch_sizes(self) -> list[int]:
        return [ev[3] for ev in self.events if ev[0] == "rows"]


def _col(*values: float) -> list[list[float]]:
    return [[v] for v in values]


async def _wait(*sinks: Sink) -> None:
    await asyncio.wait_for(asyncio.gather(*(s.done for s in sinks)), WAIT_S)
    for s in sinks:
        s.check_contract()




@pytest.fixture
async def make_worker():
    workers: list[PredictWorker] = []
    Sink.order = []

    def make(model: PredictiveModel, **kwargs: Any) -> PredictWorker:
        worker = PredictWorker(model, **kwargs)
        worker.start()
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        if isinstance(worker.model, Doubler) and worker.model.gate is not None:
            worker.model.gate.set()
        await worker.close()


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_results_arrive_in_row_order(make_worker, inline_max_flops: int) -> None:
    model = Doubler()
    worker = make_worker(model, max_batch_size=64, inline_max_flops=inline_max_flops)
    rows = _col(*(i * 0.5 for i in range(1000)))  # no marker values
    sink = Sink("big", rows)
    worker.submit(sink)
    await _wait(sink)
    np.testing.assert_array_equal(sink.outputs(), 2.0 * np.array(rows))
    starts = [ev[1] for ev in sink.events]
    assert starts == list(range(0, 1000, 64))
    assert all(size == 64 for size in sink.batch_sizes[:-1])
    for ev in sink.events:
        assert ev[4] >= 0.0 and ev[5] >= 0.0  # queue_s, compute_s
    threads = {thread for _, thread in model.calls}
    if inline_max_flops:
        assert threads == {threading.current_thread().name}
    else:
        assert len(threads) == 1 and next(iter(threads)).startswith("wsserve-double")


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_requests_submitted_together_share_one_batch(make_worker, inline_max_flops: int) -> None:
    model = Doubler(width=2)
    worker = make_worker(model, max_batch_size=256, inline_max_flops=inline_max_flops)
    # one request per "connection", all in the same loop iteration
    sinks = [Sink(f"c{i}", [[float(i), -float(i)]]) for i in range(10)]
    sinks.append(Sink("c-three", [[1.5, 2.5], [3.5, 4.5], [5.5, 6.5]]))
    for s in sinks:
        worker.submit(s)
    await _wait(*sinks)
    assert len(model.calls) == 1 and model.calls[0][0].shape == (13, 2)
    for s in sinks:
        assert s.batch_sizes == [13]
        np.testing.assert_array_equal(s.outputs(), 2.0 * np.array(s.rows))


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_checked_json_rows_and_arrays_share_a_batch_in_order(make_worker, inline_max_flops: int) -> None:
    """Small requests hand the worker their checked JSON rows (lists), others arrays
    (wsserve.pool.LIST_ROWS_MAX_VALUES): one batch mixes both, a list request split
    across batches keeps its row order, and every row reaches the model as float64."""
    model = Doubler(width=2)
    worker = make_worker(model, max_batch_size=5, inline_max_flops=inline_max_flops)
    as_list = Sink("list", [[1, 2.5], [3, 4.5]])
    as_list.inputs = [[1, 2.5], [3, 4.5]]  # ints and floats, as the JSON decoder gives them
    array = Sink("array", [[5.0, 6.0]])
    split = Sink("split", [[float(i), -float(i)] for i in range(7)])
    split.inputs = [[float(i), -float(i)] for i in range(7)]
    for sink in (as_list, array, split):
        worker.submit(sink)
    await _wait(as_list, array, split)
    for sink in (as_list, array, split):
        np.testing.assert_array_equal(sink.outputs(), 2.0 * np.array(sink.rows))
    assert all(x.dtype == np.float64 for x, _ in model.calls)
    assert [x.shape[0] for x, _ in model.calls] == [5, 5]  # 2 + 1 + 2 of "split", then its last 5
    assert model.calls[0][0].tolist() == [[1.0, 2.5], [3.0, 4.5], [5.0, 6.0], [0.0, -0.0], [1.0, -1.0]]


async def test_integer_inputs_are_computed_as_floats(make_worker) -> None:
    model = Doubler()
    worker = make_worker(model)
    sink = Sink("ints", [[1], [2], [3]])
    worker.submit(sink)
    await _wait(sink)
    assert sink.outputs().tolist() == [[2.0], [4.0], [6.0]]


async def test_observer_sees_each_batch(make_worker) -> None:
    seen: list[tuple[str, int, float]] = []

    class Observer:
        def on_batch(self, model: str, rows: int, compute_s: float) -> None:
            seen.append((model, rows, compute_s))

    worker = make_worker(Doubler(), max_batch_size=4, observer=Observer())
    sink = Sink("s", _col(*range(10)))
    worker.submit(sink)
    await _wait(sink)
    assert [(m, r) for m, r, _ in seen] == [("double", 4), ("double", 4), ("double", 2)]
    assert all(c >= 0 for _, _, c in seen)


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_an_observer_that_raises_loses_no_answer_and_stalls_no_queue(make_worker, inline_max_flops: int) -> None:
    """The observer (the server's metrics) raising on a batch is logged: that batch's request and
    the one queued behind it are answered all the same."""
    calls: list[int] = []

    class Broken:
        def on_batch(self, model: str, rows: int, compute_s: float) -> None:
            calls.append(rows)
            if len(calls) == 1:
                raise RuntimeError("metrics bug")

    worker = make_worker(Doubler(), max_batch_size=1, observer=Broken(), inline_max_flops=inline_max_flops)
    first, second = Sink("first", _col(1.0)), Sink("second", _col(2.0))
    worker.submit(first)
    worker.submit(second)
    await _wait(first, second)
    assert first.outputs().tolist() == [[2.0]] and second.outputs().tolist() == [[4.0]]
    assert calls == [1, 1]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_model_failure_fails_only_the_request_whose_rows_fail(make_worker, inline_max_flops: int) -> None:
    """A batch of two requests fails: each is computed again alone, where the batch ran, so only
    the request holding the marker ends with ``internal``; its neighbour gets its result."""
    model = Doubler()
    worker = make_worker(model, max_batch_size=2, inline_max_flops=inline_max_flops)
    bad, neighbour, later = Sink("bad", _col(RAISE)), Sink("neighbour", _col(1.0)), Sink("later", _col(2.0))
    for s in (bad, neighbour, later):
        worker.submit(s)
    await _wait(bad, neighbour, later)
    assert isinstance(bad.error, Internal) and bad.error.code == "internal"
    assert "double" in bad.error.message and "boom on a marker" in bad.error.message
    assert [ev[0] for ev in bad.events] == ["error"]
    assert neighbour.outputs().tolist() == [[2.0]] and neighbour.batch_sizes == [1]  # computed alone
    assert later.outputs().tolist() == [[4.0]]  # the second batch is fine
    assert [x.ravel().tolist() for x, _ in model.calls] == [[RAISE, 1.0], [RAISE], [1.0], [2.0]]
    threads = {thread for _, thread in model.calls}
    if inline_max_flops:
        assert threads == {threading.current_thread().name}
    else:  # recomputed in the executor, as the batch was
        assert all(t.startswith("wsserve-double") for t in threads), threads
    assert worker.isolated_batches == worker.statistics().isolated_batches == 1
    # and the worker keeps serving
    again = Sink("again", _col(5.0))
    worker.submit(again)
    await _wait(again)
    assert again.outputs().tolist() == [[10.0]]


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_a_batch_of_one_request_is_not_recomputed(make_worker, inline_max_flops: int) -> None:
    model = Doubler()
    worker = make_worker(model, inline_max_flops=inline_max_flops)
    bad = Sink("bad", _col(1.0, RAISE))
    worker.submit(bad)
    await _wait(bad)
    assert isinstance(bad.error, Internal) and [ev[0] for ev in bad.events] == ["error"]
    assert len(model.calls) == 1 and worker.isolated_batches == 0


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_a_model_failing_on_every_row_ends_each_request_once(make_worker, inline_max_flops: int) -> None:
    model = Doubler()
    worker = make_worker(model, inline_max_flops=inline_max_flops)
    sinks = [Sink(f"s{i}", _col(RAISE, float(i))) for i in range(4)]
    for s in sinks:
        worker.submit(s)
    await _wait(*sinks)
    for s in sinks:
        assert isinstance(s.error, Internal) and [ev[0] for ev in s.events] == ["error"]
    assert [len(x) for x, _ in model.calls] == [8, 2, 2, 2, 2]  # the batch, then each request once


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
@pytest.mark.parametrize(
    "make",
    [pytest.param(lambda y: y[:-1], id="shape"), pytest.param(lambda y: y.tolist(), id="list")],
)
async def test_bad_outputs_of_a_batch_fail_only_the_request_that_causes_them(
        make_worker, inline_max_flops: int, make: Any) -> None:
    worker = make_worker(BadOutput(make), inline_max_flops=inline_max_flops)
    good, bad, other = Sink("good", _col(1.0, 2.0)), Sink("bad", _col(13.0)), Sink("other", _col(3.0))
    for s in (good, bad, other):
        worker.submit(s)
    await _wait(good, bad, other)
    assert isinstance(bad.error, Internal) and "double" in bad.error.message
    assert good.outputs().tolist() == [[2.0], [4.0]] and other.outputs().tolist() == [[6.0]]


async def test_observer_and_stats_count_an_isolated_batch_once(make_worker) -> None:
    from wsserve.metrics import VersionStats

    seen: list[tuple[str, int, float]] = []
    isolated: list[str] = []

    class Observer:
        def on_batch(self, model: str, rows: int, compute_s: float) -> None:
            seen.append((model, rows, compute_s))

        def on_isolated(self, model: str) -> None:
            isolated.append(model)

    worker = make_worker(Doubler(), observer=Observer(), inline_max_flops=0)
    worker.stats = stats = VersionStats()
    sinks = [Sink("a", _col(1.0)), Sink("bad", _col(RAISE)), Sink("b", _col(2.0, 3.0))]
    for s in sinks:
        worker.submit(s)
    await _wait(*sinks)
    assert [(m, r) for m, r, _ in seen] == [("double", 4)] and isolated == ["double"]
    assert (stats.executions, stats.rows, stats.pair_count) == (1, 4, 3)
    assert stats.compute_s == seen[0][2] > 0


class GateAlone(Doubler):
    """A :class:`Doubler` whose call on the row ``[HOLD]`` alone waits for ``gate`` (``started`` is set then)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] == 1 and x[0, 0] == HOLD:
            self.started.set()
            assert self.gate is not None and self.gate.wait(WAIT_S)
        self.calls.append((x.copy(), threading.current_thread().name))
        if (x == RAISE).any():
            raise RuntimeError("boom on a marker")
        return 2.0 * x


HOLD = 55.0


async def test_a_request_cancelled_while_its_batch_is_recomputed_is_skipped(make_worker) -> None:
    gate = threading.Event()
    model = GateAlone(gate=gate)
    worker = make_worker(model, inline_max_flops=0)
    bad, held, gone = Sink("bad", _col(RAISE)), Sink("held", _col(HOLD)), Sink("gone", _col(9.0))
    items = {s.name: worker.submit(s) for s in (bad, held, gone)}
    await until(model.started.is_set)  # "held" is being recomputed alone
    gone.mark_cancelled()
    worker.cancel(items["gone"])
    assert worker.statistics().running == 2  # "held" and "gone" still count until the isolation moves on
    gate.set()
    await _wait(bad, held)
    await until(lambda: worker.statistics().running == 0)
    assert isinstance(bad.error, Internal) and held.outputs().tolist() == [[2 * HOLD]]
    assert gone.events == [("cancelled",)]
    assert 9.0 not in [v for x, _ in model.calls[1:] for v in x.ravel()]  # never recomputed


async def test_close_while_a_batch_is_recomputed_ends_each_request_once(make_worker) -> None:
    gate = threading.Event()
    model = GateAlone(gate=gate)
    worker = make_worker(model, inline_max_flops=0)
    first, bad, held, last = (Sink("first", _col(1.0)), Sink("bad", _col(RAISE)), Sink("held", _col(HOLD)),
                              Sink("last", _col(2.0)))
    for s in (first, bad, held, last):
        worker.submit(s)
    await until(model.started.is_set)
    await worker.close()
    idle = asyncio.ensure_future(worker.wait_idle())  # waits for the recomputation still running
    await asyncio.sleep(0)
    gate.set()
    await _wait(first, bad, held, last)
    assert first.outputs().tolist() == [[2.0]] and isinstance(bad.error, Internal)
    for s in (held, last):
        assert s.error is not None and s.error.code == "shutting_down", s.events
    await until(lambda: [HOLD] in [x.ravel().tolist() for x, _ in model.calls])  # the held call returned
    await asyncio.wait_for(idle, WAIT_S)  # idle once the recomputation closed mid-way returned
    await asyncio.sleep(0.05)  # absence over a window is the behaviour: nothing more arrives or runs
    for s in (first, bad, held, last):
        s.check_contract()
    assert [2.0] not in [x.ravel().tolist() for x, _ in model.calls]  # "last" was never computed alone
    assert worker.statistics().running == 0


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_failure_in_a_later_batch_of_a_split_request(make_worker, inline_max_flops: int) -> None:
    model = Doubler()
    worker = make_worker(model, max_batch_size=2, inline_max_flops=inline_max_flops)
    sink = Sink("split", _col(1.0, 2.0, RAISE, 4.0, 5.0, 6.0))
    worker.submit(sink)
    await _wait(sink)
    assert [ev[0] for ev in sink.events] == ["rows", "error"]
    assert sink.events[0][2].tolist() == [[2.0], [4.0]]
    assert isinstance(sink.error, Internal)
    await asyncio.sleep(0.01)  # absence over a window is the behaviour: the rest is never computed
    assert 5.0 not in model.seen()  # the rest was dropped, not computed


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_wrong_output_shape_is_internal(make_worker, inline_max_flops: int) -> None:
    worker = make_worker(BadOutput(lambda y: y[:-1]), inline_max_flops=inline_max_flops)
    bad = Sink("bad", _col(13.0, 1.0))
    worker.submit(bad)
    await _wait(bad)
    assert isinstance(bad.error, Internal) and "shape" in bad.error.message
    ok = Sink("ok", _col(1.0))
    worker.submit(ok)
    await _wait(ok)
    assert ok.outputs().tolist() == [[2.0]]


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
@pytest.mark.parametrize(
    "make",
    [pytest.param(lambda y: y.tolist(), id="list"), pytest.param(lambda y: y.astype(str), id="strings")],
)
async def test_malformed_model_output_is_internal(make_worker, inline_max_flops: int, make: Any) -> None:
    worker = make_worker(BadOutput(make), inline_max_flops=inline_max_flops)
    bad = Sink("bad", _col(13.0))
    worker.submit(bad)
    await asyncio.wait_for(bad.done, WAIT_S)
    assert isinstance(bad.error, Internal)
    ok = Sink("ok", _col(1.0))
    worker.submit(ok)
    await _wait(ok)


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_non_finite_output_fails_only_that_request(make_worker, inline_max_flops: int) -> None:
    worker = make_worker(Doubler(), inline_max_flops=inline_max_flops)
    a, b, c = Sink("a", _col(1.0, 2.0)), Sink("b", _col(3.0, INF, 4.0)), Sink("c", _col(5.0))
    for s in (a, b, c):
        worker.submit(s)
    await _wait(a, b, c)
    assert a.outputs().tolist() == [[2.0], [4.0]]
    assert c.outputs().tolist() == [[10.0]]
    assert a.batch_sizes == c.batch_sizes == [6]  # one batch
    assert isinstance(b.error, InvalidInput)
    assert b.error.code == "invalid_input"
    assert "row 1" in b.error.message and "finite" in b.error.message
    assert [ev[0] for ev in b.events] == ["error"]  # no row of it was sent


async def test_non_finite_row_of_a_split_request_names_its_own_row(make_worker) -> None:
    worker = make_worker(Doubler(), max_batch_size=3)
    sink = Sink("s", _col(1.0, 2.0, 3.0, 4.0, INF, 6.0, 7.0))
    worker.submit(sink)
    await _wait(sink)
    assert [ev[0] for ev in sink.events] == ["rows", "error"]
    assert isinstance(sink.error, InvalidInput) and "row 4" in sink.error.message


# --------------------------------------------------------------------------- cancel, deadlines, bound


async def test_cancelled_request_is_never_computed(make_worker) -> None:
    model = Doubler()
    worker = make_worker(model)
    keep, drop = Sink("keep", _col(1.0)), Sink("drop", _col(55.0, 56.0))
    worker.submit(keep)
    item = worker.submit(drop)
    worker.cancel(item)
    drop.mark_cancelled()
    await _wait(keep)
    await asyncio.sleep(0.01)  # absence over a window is the behaviour: never computed, even later
    assert 55.0 not in model.seen() and 56.0 not in model.seen()
    assert drop.events == [("cancelled",)]
    assert worker.statistics().queued_rows == 0


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_cancel_midway_stops_a_large_request(make_worker, inline_max_flops: int) -> None:
    model = Doubler()
    worker = make_worker(model, max_batch_size=10, inline_max_flops=inline_max_flops)
    sink = Sink("big", _col(*(i * 0.5 for i in range(1000))))
    item = worker.submit(sink)
    await asyncio.wait_for(sink.first_rows, WAIT_S)
    worker.cancel(item)
    sink.mark_cancelled()
    computed_at_cancel = len(model.seen())
    await asyncio.sleep(0.05)  # what is computed during this window is the behaviour under test
    assert len(model.seen()) <= computed_at_cancel + 10  # at most the batch already computing
    assert len(model.seen()) < 1000
    assert sink.events[-1] == ("cancelled",)
    sink.events.pop()
    sink.check_contract()
    assert worker.statistics().queued_rows == 0


async def test_expired_request_gets_deadline_exceeded(make_worker) -> None:
    model = Doubler()
    worker = make_worker(model)
    late, fine = Sink("late", _col(91.0)), Sink("fine", _col(1.0))
    worker.submit(late, deadline=monotonic() - 1.0)
    worker.submit(fine, deadline=monotonic() + 60.0)
    await _wait(late, fine)
    assert isinstance(late.error, DeadlineExceeded) and late.error.code == "deadline_exceeded"
    assert 91.0 not in model.seen()
    assert fine.outputs().tolist() == [[2.0]]


async def test_the_default_timeout_bounds_the_wait_before_a_request_starts_not_its_run(make_worker) -> None:
    """A model's default timeout (Triton's default_queue_policy) is a queue deadline: once a request's first
    rows are computing it has left the queue, and its later rows (a request split over batches: here each row
    runs alone, as for a model without a batch dimension) are not cut by it, or a request of more rows than
    fit in the timeout could never be answered even by an idle model. They expired: deadline_exceeded after
    row 0 was computed."""
    gate = threading.Event()
    model = Doubler(gate=gate)
    worker = make_worker(model, max_batch_size=1, default_timeout_ms=20, inline_max_flops=0)
    sink = Sink("split", _col(1.0, 2.0, 3.0))
    worker.submit(sink)
    await until(model.started.is_set)  # row 0 is computing: the request has started
    started = monotonic()
    await until(lambda: monotonic() > started + 0.05)  # its default timeout has passed
    gate.set()
    await _wait(sink)
    assert sink.outputs().tolist() == [[2.0], [4.0], [6.0]]
    waiting, hurried = Sink("waiting", _col(5.0)), Sink("hurried", _col(7.0, 8.0))
    gate.clear()
    model.started.clear()
    worker.submit(Sink("held", _col(9.0)))
    await until(model.started.is_set)
    worker.submit(waiting)  # queued behind the held one: the default timeout applies
    worker.submit(hurried, deadline=monotonic() + 0.01)  # a request's own (shorter) deadline applies
    now = monotonic()
    await until(lambda: monotonic() > now + 0.05)
    gate.set()
    await _wait(waiting, hurried)
    assert isinstance(waiting.error, DeadlineExceeded) and isinstance(hurried.error, DeadlineExceeded)


async def test_queue_bound_refuses_at_once(make_worker) -> None:
    gate = threading.Event()
    model = Doubler(gate=gate)
    worker = make_worker(model, max_batch_size=1, max_queue_rows=3, inline_max_flops=0)
    first = Sink("first", _col(1.0))
    worker.submit(first)
    await until(model.started.is_set)  # the model is busy with 'first'
    queued = Sink("queued", _col(2.0, 3.0, 4.0))
    worker.submit(queued)
    refused = Sink("refused", _col(5.0))
    with pytest.raises(Overloaded) as info:
        worker.submit(refused)
    assert info.value.retry_after_ms is not None and info.value.retry_after_ms > 0
    stats = worker.statistics()
    assert (stats.kind, stats.queued, stats.queued_rows) == ("predict", 1, 3)
    gate.set()
    await _wait(first, queued)
    assert refused.events == []
    assert 5.0 not in model.seen()


async def test_high_priority_is_served_first(make_worker) -> None:
    gate = threading.Event()
    model = Doubler(gate=gate)
    worker = make_worker(model, max_batch_size=1, inline_max_flops=0)
    busy = Sink("busy", _col(0.0))
    worker.submit(busy)
    await until(model.started.is_set)
    # While the model computes in its thread the loop keeps running: we can queue.
    normal, high = Sink("normal", _col(1.0)), Sink("high", _col(2.0))
    worker.submit(normal, priority=0)
    worker.submit(high, priority=1)
    gate.set()
    await _wait(busy, normal, high)
    assert Sink.order == ["busy", "high", "normal"]


async def test_loop_stays_responsive_while_the_executor_computes(make_worker) -> None:
    gate = threading.Event()
    model = Doubler(gate=gate)
    worker = make_worker(model, inline_max_flops=0)
    sink = Sink("s", _col(1.0))
    worker.submit(sink)
    await until(model.started.is_set)
    ticks = 0
    for _ in range(20):
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 20 and not sink.done.done()
    gate.set()
    await _wait(sink)


# --------------------------------------------------------------------------- window


async def test_window_collects_requests_from_later_loop_iterations(make_worker) -> None:
    worker = make_worker(Doubler(), max_batch_size=64, max_delay_ms=200.0)
    t0 = monotonic()
    a = Sink("a", _col(1.0))
    worker.submit(a)
    await asyncio.sleep(0.01)  # b arrives in a later loop iteration, inside the window: the scenario itself
    assert not a.done.done()
    b = Sink("b", _col(2.0))
    worker.submit(b)
    await _wait(a, b)
    assert monotonic() - t0 >= 0.19  # the window was honoured
    assert a.batch_sizes == b.batch_sizes == [2]


async def test_window_ends_early_when_the_batch_is_full(make_worker) -> None:
    worker = make_worker(Doubler(), max_batch_size=2, max_delay_ms=30_000.0)
    a, b = Sink("a", _col(1.0)), Sink("b", _col(2.0))
    worker.submit(a)
    await asyncio.sleep(0.01)  # b comes in a later loop iteration (the scenario itself)
    worker.submit(b)
    await _wait(a, b)  # well before the 30 s window (WAIT_S is 5 s)
    assert a.batch_sizes == b.batch_sizes == [2]


# --------------------------------------------------------------------------- statistics, lifecycle


async def test_statistics_count_scheduled_rows(make_worker) -> None:
    worker = make_worker(Doubler(), max_batch_size=4)
    sinks = [Sink(f"s{i}", _col(*range(3))) for i in range(3)]
    for s in sinks:
        worker.submit(s)
    assert worker.statistics().queued_rows == 9
    await _wait(*sinks)
    stats = worker.statistics()
    assert (stats.queued, stats.queued_rows, stats.batches, stats.computed) == (0, 0, 3, 9)


async def test_wait_idle_after_close_returns_once_the_computing_batch_ends(make_worker) -> None:
    """A retiring version closed while a batch computes in the executor: waiting for it to be idle
    ends when that batch returns (it used to wait forever: the batch's end skipped the idle note)."""
    gate = threading.Event()
    model = Doubler(gate=gate)
    worker = make_worker(model, inline_max_flops=0)
    sink = Sink("s", _col(1.0))
    worker.submit(sink)
    await until(model.started.is_set)
    await worker.close()
    idle = asyncio.ensure_future(worker.wait_idle())
    await asyncio.sleep(0)
    assert not idle.done()  # the batch still computes
    gate.set()
    await asyncio.wait_for(idle, WAIT_S)
    assert worker.statistics().running == 0
    assert sink.error is not None and sink.error.code == "shutting_down"


async def test_close_is_idempotent() -> None:
    worker = PredictWorker(Doubler())
    worker.start()
    sink = Sink("s", _col(1.0))
    worker.submit(sink)
    await _wait(sink)
    await worker.close()
    await worker.close()


class ExplodingSink(Sink):
    """A sink whose ``on_rows`` raises (a bug in one request's job)."""

    def on_rows(self, start: int, outputs: np.ndarray, batch_rows: int, queue_s: float, compute_s: float) -> None:
        raise RuntimeError("sink bug")


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_a_failing_sink_does_not_keep_the_rest_of_its_batch_from_their_results(
    make_worker, inline_max_flops: int
) -> None:
    worker = make_worker(Doubler(), max_batch_size=8, inline_max_flops=inline_max_flops)
    first, bad, last = Sink("first", _col(1.0)), ExplodingSink("bad", _col(2.0)), Sink("last", _col(3.0))
    for s in (first, bad, last):
        worker.submit(s)
    await _wait(first, bad, last)
    assert first.outputs().tolist() == [[2.0]] and last.outputs().tolist() == [[6.0]]
    assert isinstance(bad.error, Internal) and "sink bug" in bad.error.message


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_worker_drops_a_sink_once_its_last_rows_are_delivered(make_worker, inline_max_flops):
    """A connection's job keeps its work item (to cancel it) and the item holds the job: the worker
    drops the item's sink after handing out the last rows, so a finished request is freed by
    reference counting, not left for the cyclic garbage collector (it cost a busy server ~8% of its CPU)."""
    worker = make_worker(Doubler(), inline_max_flops=inline_max_flops, max_batch_size=2)
    sink = Sink("a", _col(1.0, 2.0, 3.0))  # two batches: the item is needed until the second
    item = sink.item = worker.submit(sink)  # type: ignore[attr-defined]
    await _wait(sink)
    assert sink.outputs().ravel().tolist() == [2.0, 4.0, 6.0]
    assert item.payload is None
    ref = weakref.ref(sink)
    gc.disable()
    try:
        del sink
        assert ref() is None, "the finished sink is only reachable through a reference cycle"
    finally:
        gc.enable()


# --------------------------------------------------------------------------- shared outputs


class SharingSink(Sink):
    """A sink with ``shared_outputs``: it takes whole-request rows from the batch's
    :class:`~wsserve.worker.BatchOutputs` when the worker offers them (as a plain predict's job does)."""

    shared_outputs = True

    def __init__(self, name: str, rows: list[list[float]]) -> None:
        super().__init__(name, rows)
        self.shared: list[Any] = []

    def on_batch_outputs(self, out: Any, a: int, b: int, queue_s: float) -> None:
        assert threading.current_thread() is self._loop_thread
        self.shared.append((out, a, b))
        self.on_rows(0, out.y[a:b], out.rows, queue_s, out.compute_s)


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_whole_requests_of_a_batch_share_its_outputs(make_worker, inline_max_flops: int) -> None:
    """Requests whose rows all come in one batch, with sinks that take shared outputs, get that
    batch's one BatchOutputs and their own row range in it; a sink without the attribute, and a
    request split over two batches, get ``on_rows`` as before."""
    worker = make_worker(Doubler(width=2), max_batch_size=6, inline_max_flops=inline_max_flops)
    a = SharingSink("a", [[1.0, 2.0]])
    plain = Sink("plain", [[3.0, 4.0]])
    b = SharingSink("b", [[5.0, 6.0], [7.0, 8.0]])
    split = SharingSink("split", [[float(i), 0.5] for i in range(4)])  # 2 rows in this batch, 2 in the next
    for s in (a, plain, b, split):
        worker.submit(s)
    await _wait(a, plain, b, split)
    for s in (a, plain, b, split):
        np.testing.assert_array_equal(s.outputs(), 2.0 * np.array(s.rows))
    assert [(a_, b_) for _, a_, b_ in a.shared] == [(0, 1)]
    assert [(a_, b_) for _, a_, b_ in b.shared] == [(2, 4)]
    out = a.shared[0][0]
    assert b.shared[0][0] is out  # one object per batch, for every sink that shares it
    assert out.rows == 6 and out.y.shape == (6, 2) and out.compute_s >= 0.0 and out.encoded is None
    assert split.shared == [] and split.batch_sizes == [6, 2]
    assert a.batch_sizes == b.batch_sizes == plain.batch_sizes == [6]


async def test_a_batch_with_a_non_finite_row_shares_nothing(make_worker) -> None:
    """Shared outputs are only offered when every row of the batch is finite: otherwise each
    request gets ``on_rows`` (or its error), as the per-request checks decide."""
    worker = make_worker(Doubler())
    good, bad = SharingSink("good", _col(1.0)), SharingSink("bad", _col(INF))
    for s in (good, bad):
        worker.submit(s)
    await _wait(good, bad)
    assert good.outputs().tolist() == [[2.0]] and good.shared == []
    assert isinstance(bad.error, InvalidInput) and bad.shared == []


async def test_one_dimensional_outputs_are_not_shared(make_worker) -> None:
    """A model returning ``[n]`` (no columns to encode as rows) delivers through ``on_rows``."""

    class Flat(Doubler):
        def predict(self, x: np.ndarray) -> np.ndarray:
            return super().predict(x)[:, 0].copy()

    worker = make_worker(Flat())
    sink = SharingSink("flat", _col(1.5))
    worker.submit(sink)
    await _wait(sink)
    assert sink.outputs().tolist() == [3.0] and sink.shared == []


class GateFirstRow(Doubler):
    """A :class:`Doubler` whose calls wait for ``gate`` only when the batch starts with row value 0.0
    (the first slice of a split request), so a later slice can finish before an earlier one; with
    ``fail_first`` that held call then raises."""

    fail_first = False

    def predict(self, x: np.ndarray) -> np.ndarray:
        if x[0, 0] == 0.0:
            self.started.set()
            assert self.gate is not None and self.gate.wait(WAIT_S)
            if self.fail_first:
                raise RuntimeError("boom on the first slice")
        return 2.0 * x


@pytest.mark.parametrize("fail_first", [False, True], ids=["ok", "first-batch-fails"])
async def test_split_request_rows_arrive_in_order_with_several_instances(make_worker, fail_first: bool) -> None:
    """With ``instances`` > 1, two batches of one request compute side by side: the later (smaller)
    one may finish first, yet its sink still gets its rows in order and exactly one ending (an
    error when the earlier batch fails: the rows computed ahead of it are never delivered)."""
    gate = threading.Event()
    model = GateFirstRow(gate=gate)
    model.fail_first = fail_first
    worker = make_worker(model, max_batch_size=8, instances=2, inline_max_flops=0)
    sink = Sink("split", _col(*(float(i) for i in range(12))))  # batches: rows 0-7 (held), rows 8-11
    other = Sink("other", _col(100.0))
    worker.submit(sink)
    await until(model.started.is_set)  # rows 0-7 are computing, held by the gate
    worker.submit(other)  # joins rows 8-11 in the second batch, which computes at once
    await _wait(other)
    assert sink.events == []  # rows 8-11 are computed but wait for rows 0-7
    gate.set()
    await _wait(sink)
    if fail_first:
        assert isinstance(sink.error, Internal) and [ev[0] for ev in sink.events] == ["error"]
    else:
        np.testing.assert_array_equal(sink.outputs(), 2.0 * np.arange(12.0).reshape(12, 1))
    assert other.outputs().tolist() == [[200.0]]


class HoldSplitThenRaise(Doubler):
    """Records each call; a call whose first row is 0.0 waits for ``gate``; a call holding ``RAISE`` raises."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append((x.copy(), threading.current_thread().name))
        if x[0, 0] == 0.0:
            self.started.set()
            assert self.gate is not None and self.gate.wait(WAIT_S)
        if (x == RAISE).any():
            raise RuntimeError("boom on a marker")
        return 2.0 * x


async def test_isolated_rows_of_a_split_request_come_before_its_rows_computed_ahead(make_worker) -> None:
    """instances=2: a request's first rows share a batch with a failing request, and its last rows
    compute meanwhile in another batch: the failed batch is isolated, and the request still gets all
    its rows, in order, and one ending; the failing request ends with ``internal``."""
    gate = threading.Event()
    model = HoldSplitThenRaise(gate=gate)
    worker = make_worker(model, max_batch_size=8, instances=2, inline_max_flops=0)
    sink = Sink("split", _col(*(float(i) for i in range(12))))
    bad = Sink("bad", _col(RAISE))
    worker.submit(sink)  # batches: [split rows 0-6, bad] (held, then raises), [split rows 7-11]
    worker.submit(bad)
    await until(lambda: len(model.calls) == 2)  # both batches started; the second is done or finishing
    assert sink.events == []
    gate.set()
    await _wait(sink, bad)
    assert isinstance(bad.error, Internal)
    np.testing.assert_array_equal(sink.outputs(), 2.0 * np.arange(12.0).reshape(12, 1))
    assert [ev[1] for ev in sink.events] == [0, 7]
    assert worker.isolated_batches == 1


# --------------------------------------------------------------------------- outputs per request


class Widening(Doubler):
    """A model taking a batch as its requests (``predict_requests``), answering each at its own size:
    request ``i``'s rows ``[r, 1]`` -> ``[r, w]`` (each value repeated, ``w`` its first value), as
    :class:`~wsserve.worker.RequestOutputs`.  A first value 0 fails that request by itself; with
    ``parts_short``, a call of several requests returns one part too few (bad outputs)."""

    def __init__(self, *, parts_short: bool = False) -> None:
        super().__init__()
        self.parts_short = parts_short

    def predict_requests(self, x: np.ndarray, rows: list[int], ids: list[str]) -> Any:
        self.calls.append((x.copy(), threading.current_thread().name))
        parts, errors, start = [], {}, 0
        for i, r in enumerate(rows):
            own = x[start:start + r]
            start += r
            if own[0, 0] == 0.0:
                errors[i] = RuntimeError("zero width")
                parts.append(own)  # a placeholder, never delivered
            else:
                parts.append(np.repeat(own, int(own[0, 0]), axis=1))
        if self.parts_short and len(rows) > 1:
            parts.pop()
        out = RequestOutputs(tuple(parts))
        return RequestErrors(out, errors) if errors else out


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_requests_of_one_batch_get_outputs_of_their_own_shape(make_worker, inline_max_flops: int) -> None:
    model = Widening()
    worker = make_worker(model, max_batch_size=8, inline_max_flops=inline_max_flops)
    narrow, wide, failing = Sink("narrow", _col(2.0)), Sink("wide", _col(5.0, 5.0)), Sink("failing", _col(0.0))
    for s in (narrow, wide, failing):
        worker.submit(s)
    await _wait(narrow, wide, failing)
    assert len(model.calls) == 1  # one call, nothing recomputed
    assert narrow.outputs().tolist() == [[2.0, 2.0]] and narrow.batch_sizes == [4]
    assert wide.outputs().tolist() == [[5.0] * 5] * 2 and wide.batch_sizes == [4]
    assert isinstance(failing.error, Internal) and "zero width" in failing.error.message
    assert worker.isolated_batches == 0 and worker.statistics().computed == 4


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
async def test_outputs_per_request_that_do_not_match_the_batch_isolate_it(make_worker, inline_max_flops: int) -> None:
    model = Widening(parts_short=True)
    worker = make_worker(model, max_batch_size=8, inline_max_flops=inline_max_flops)
    first, second = Sink("first", _col(1.0)), Sink("second", _col(3.0))
    worker.submit(first)
    worker.submit(second)
    await _wait(first, second)
    assert first.outputs().tolist() == [[1.0]] and second.outputs().tolist() == [[3.0, 3.0, 3.0]]
    assert len(model.calls) == 3 and worker.isolated_batches == 1  # the batch, then each alone


class Miscounting(Widening):
    """:class:`Widening`, but every call's parts are one too many (``extra`` 1: the last repeated) or
    one too few (``extra`` -1: none at all for a request computed alone)."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.extra = extra

    def predict_requests(self, x: np.ndarray, rows: list[int], ids: list[str]) -> Any:
        parts = super().predict_requests(x, rows, ids).parts
        return RequestOutputs(parts + parts[-1:] if self.extra > 0 else parts[:-1])


@pytest.mark.parametrize("inline_max_flops", [INLINE, EXECUTOR])
@pytest.mark.parametrize(("extra", "count"), [(1, 2), (-1, 0)])
async def test_a_request_computed_alone_with_other_than_one_part_fails_naming_it(
        make_worker, inline_max_flops: int, extra: int, count: int) -> None:
    model = Miscounting(extra)
    worker = make_worker(model, max_batch_size=8, inline_max_flops=inline_max_flops)
    first, second = Sink("first", _col(1.0)), Sink("second", _col(3.0))
    worker.submit(first)
    worker.submit(second)
    await _wait(first, second)  # each ends (it hung: no part raised IndexError out of the callback)
    for sink in (first, second):  # (two parts: the first was handed out as if it were the request's)
        assert isinstance(sink.error, Internal), sink.events
        assert f"outputs for {count} requests; the batch has 1" in sink.error.message
    assert worker.isolated_batches == 1
