"""The response cache in :class:`wsserve.worker.PredictWorker` on a real asyncio loop, no sockets:
lookups in ``submit``, hits answered on a later loop iteration without the queue, stores only
of whole, finite, plain requests, and a dropped scope never answering again."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import numpy as np
import pytest

from tests.test_pool_worker import INF, Doubler, Sink, _col, _wait
from wsserve.config import ServerConfig
from wsserve.errors import Overloaded
from wsserve.metrics import VersionStats
from wsserve.pool import ModelPool
from wsserve.respcache import ResponseCache
from wsserve.worker import PredictWorker


@pytest.fixture
async def make_worker():
    workers: list[PredictWorker] = []
    Sink.order = []

    def make(model: Doubler, **kwargs: Any) -> PredictWorker:
        worker = PredictWorker(model, **kwargs)
        worker.start()
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.close()


class Observer:
    def __init__(self) -> None:
        self.cache: list[tuple[str, str]] = []

    def on_batch(self, model: str, rows: int, compute_s: float) -> None:
        pass

    def on_cache(self, model: str, result: str) -> None:
        self.cache.append((model, result))


def _cached(make_worker: Any, model: Doubler | None = None, **kwargs: Any) -> tuple[Any, Doubler, ResponseCache]:
    model = model or Doubler()
    cache = ResponseCache(max_bytes=1 << 20)
    worker = make_worker(model, **kwargs)
    worker.stats = VersionStats()
    worker.use_cache(cache, "double", "1")
    return worker, model, cache


async def test_a_repeated_request_is_answered_from_the_cache_without_the_queue(make_worker) -> None:
    observer = Observer()
    worker, model, cache = _cached(make_worker, observer=observer)
    first = Sink("a", _col(1.0, 2.0))
    worker.submit(first)
    await _wait(first)
    again = Sink("b", _col(1.0, 2.0))
    worker.submit(again)
    assert again.events == []  # never called from submit
    assert worker.statistics().queued == 0  # the hit never entered the queue
    await _wait(again)
    assert len(model.calls) == 1
    np.testing.assert_array_equal(again.outputs(), [[2.0], [4.0]])
    assert again.events[0][3:] == (2, 0.0, 0.0)  # batch size its rows, queue and compute 0
    stats = worker.stats
    assert (stats.cache_hit, stats.cache_miss, stats.executions) == (1, 1, 1)
    assert stats.cache_miss_s > 0 and stats.cache_hit_s > 0
    assert observer.cache == [("double", "miss"), ("double", "hit")]
    assert len(cache) == 1


async def test_different_inputs_miss(make_worker) -> None:
    worker, model, _ = _cached(make_worker)
    for i, rows in enumerate((_col(1.0), _col(2.0), _col(1.0, 2.0))):
        sink = Sink(str(i), rows)
        worker.submit(sink)
        await _wait(sink)
    assert len(model.calls) == 3 and worker.stats.cache_hit == 0 and worker.stats.cache_miss == 3


async def test_a_hit_cancelled_before_its_answer_is_never_called(make_worker) -> None:
    worker, _, _ = _cached(make_worker)
    first = Sink("a", _col(3.0))
    worker.submit(first)
    await _wait(first)
    late = Sink("b", _col(3.0))
    item = worker.submit(late)
    worker.cancel(item)
    late.mark_cancelled()
    control = Sink("c", _col(3.0))  # submitted after: its answer comes after the cancelled one's turn
    worker.submit(control)
    await _wait(control)
    assert late.events == [("cancelled",)]


async def test_streamed_requests_bypass_the_cache(make_worker) -> None:
    worker, model, cache = _cached(make_worker)
    for name in ("a", "b"):
        sink = Sink(name, _col(5.0))
        sink.stream = True  # type: ignore[attr-defined]
        worker.submit(sink)
        await _wait(sink)
    assert len(model.calls) == 2 and len(cache) == 0
    assert worker.stats.cache_hit == worker.stats.cache_miss == 0


async def test_a_request_split_over_batches_is_not_stored(make_worker) -> None:
    worker, model, cache = _cached(make_worker, max_batch_size=2)
    for name in ("a", "b"):
        sink = Sink(name, _col(1.0, 2.0, 3.0))
        worker.submit(sink)
        await _wait(sink)
    assert len(cache) == 0 and len(model.calls) == 4


async def test_a_request_with_a_non_finite_row_is_not_stored(make_worker) -> None:
    worker, model, cache = _cached(make_worker)
    for name in ("a", "b"):
        sink = Sink(name, _col(1.0, INF))
        worker.submit(sink)
        await _wait(sink)
        assert sink.error is not None
    assert len(cache) == 0 and len(model.calls) == 2


async def test_requests_of_one_batch_are_each_stored(make_worker) -> None:
    worker, model, cache = _cached(make_worker)
    sinks = [Sink(str(i), _col(float(i))) for i in range(3)]
    for s in sinks:
        worker.submit(s)
    await _wait(*sinks)
    assert len(model.calls) == 1 and len(cache) == 3
    again = Sink("again", _col(2.0))
    worker.submit(again)
    await _wait(again)
    np.testing.assert_array_equal(again.outputs(), [[4.0]])
    assert len(model.calls) == 1


async def test_a_dropped_version_never_answers_from_its_entries(make_worker) -> None:
    worker, model, cache = _cached(make_worker)
    first = Sink("a", _col(1.0))
    worker.submit(first)
    await _wait(first)
    worker.drop_cache()
    assert len(cache) == 0
    again = Sink("b", _col(1.0))
    worker.submit(again)
    await _wait(again)
    assert len(model.calls) == 2 and len(cache) == 0  # not stored after the drop either


@pytest.mark.parametrize("inline_max_flops", [10**9, 0], ids=["inline", "executor"])
async def test_named_outputs_are_cached(make_worker, inline_max_flops: int) -> None:
    class Named(Doubler):
        def predict(self, x: np.ndarray) -> Any:  # type: ignore[override]
            y = super().predict(x)
            return {"y": y, "n": np.full((len(x), 1), len(self.calls), np.int64)}

    class NamedSink(Sink):
        def on_rows(self, start: int, outputs: Any, *rest: Any) -> None:  # type: ignore[override]
            self.events.append(("rows", start, outputs, *rest))
            self._finish()

    worker, model, _ = _cached(make_worker, Named(), inline_max_flops=inline_max_flops)
    got = []
    for name in ("a", "b"):
        sink = NamedSink(name, _col(7.0))
        worker.submit(sink)
        await asyncio.wait_for(sink.done, 5)
        got.append(sink.events[-1][2])
    assert len(model.calls) == 1
    assert got[0]["n"][0, 0] == got[1]["n"][0, 0] == 1
    np.testing.assert_array_equal(got[1]["y"], [[14.0]])


async def test_a_miss_refused_by_a_full_queue_is_not_counted(make_worker) -> None:
    """Triton counts a miss when its response was computed: a request the queue refused
    (max_queue_requests) never was, so it counts in no ``cache_miss`` nor as a "miss" metric."""
    observer = Observer()
    gate = threading.Event()
    worker, model, _ = _cached(make_worker, Doubler(gate=gate), observer=observer, inline_max_flops=0,
                               max_queue_requests=1)
    running = Sink("running", _col(1.0))
    worker.submit(running)
    await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 5)  # computing, the queue empty
    waiting = Sink("waiting", _col(2.0))
    worker.submit(waiting)
    with pytest.raises(Overloaded):
        worker.submit(Sink("refused", _col(3.0)))
    assert worker.stats.cache_miss == 2 and observer.cache == [("double", "miss")] * 2
    gate.set()
    await _wait(running, waiting)
    assert worker.stats.cache_miss == 2


def test_a_generative_model_enabling_the_cache_is_warned_it_is_not_cached(caplog: pytest.LogCaptureFixture) -> None:
    """The cache holds plain predicts: a generative model's response_cache would be silently
    ignored; it is named in one warning instead."""
    from tests.test_gen_structured import charlm

    pool = ModelPool(ServerConfig(response_cache_bytes=1 << 20))
    with caplog.at_level(logging.WARNING, logger="wsserve"):
        pool.make_worker("charlm", charlm(), response_cache=True)
        pool.make_worker("charlm", charlm())
    warned = [r.getMessage() for r in caplog.records if "response cache" in r.getMessage()]
    assert warned == ["model 'charlm' generates text: the response cache holds plain predicts only, so its "
                      "response_cache is ignored"]
