"""Rows to explain in the batch scheduler (cost units) and the worker (attributions in the same batch)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from wsserve.batching import BatchQueue, WorkItem
from wsserve.errors import BadRequest, Overloaded
from wsserve.explain import Explainer, explainer_for
from wsserve.models.base import ModelInfo, PredictiveModel
from wsserve.models.linear import LinearModel
from wsserve.models.mlp import MLPModel, init_params
from wsserve.pool import resolve_explainer
from wsserve.worker import EXPLAIN_ROW_COST, PredictWorker


def _item(rows: int, cost: int = 1, name: str = "") -> WorkItem:
    return WorkItem(rows=rows, payload=name, cost=cost)


# --------------------------------------------------------------------------- BatchQueue

def test_a_batch_holds_at_most_its_budget_of_costly_rows() -> None:
    q = BatchQueue(max_batch_size=256)
    explain = _item(100, cost=32, name="explain")
    q.add(explain, 0.0)
    batch = q.next_batch(0.0)
    assert batch is not None and batch.rows == 8 and batch.cost == 256
    assert [(s.item.payload, s.start, s.stop) for s in batch.slices] == [("explain", 0, 8)]
    assert q.statistics(0.0).rows == 92


def test_costly_and_plain_rows_share_a_batch_fairly() -> None:
    q = BatchQueue(max_batch_size=256)
    q.add(_item(1000, name="plain"), 0.0)
    q.add(_item(100, cost=32, name="explain"), 0.0)
    batch = q.next_batch(0.0)
    assert batch is not None
    taken = {s.item.payload: s.rows for s in batch.slices}
    # round-robin in units: 128 units each - 128 plain rows and 4 rows to explain
    assert taken == {"plain": 128, "explain": 4} and batch.rows == 132 and batch.cost == 256


def test_everything_fits_takes_all_and_reports_units() -> None:
    q = BatchQueue(max_batch_size=256)
    q.add(_item(96, name="plain"), 0.0)
    q.add(_item(5, cost=32, name="explain"), 0.0)
    batch = q.next_batch(0.0)
    assert batch is not None and batch.rows == 101 and batch.cost == 256
    assert q.next_batch(0.0) is None


def test_a_row_costlier_than_the_whole_budget_still_runs_alone() -> None:
    q = BatchQueue(max_batch_size=16)
    q.add(_item(3, cost=32, name="explain"), 0.0)
    q.add(_item(2, name="plain"), 0.0)
    first = q.next_batch(0.0)
    assert first is not None and [(s.item.payload, s.rows) for s in first.slices] == [("explain", 1)]
    assert first.cost == 32 and first.rows == 1
    second = q.next_batch(0.0)
    # the plain rows go next (the explain item was put back behind them), then the rest one by one
    assert second is not None and [(s.item.payload, s.rows) for s in second.slices] == [("plain", 2)]
    assert [s.rows for s in q.next_batch(0.0).slices] == [1]  # type: ignore[union-attr]
    assert [s.rows for s in q.next_batch(0.0).slices] == [1]  # type: ignore[union-attr]
    assert q.next_batch(0.0) is None


def test_queue_bound_counts_units_and_cancel_returns_them() -> None:
    q = BatchQueue(max_batch_size=256, max_queue_rows=100)
    big = _item(3, cost=32)
    q.add(big, 0.0)  # 96 units
    with pytest.raises(Overloaded, match=r"queue full: 3 rows \(96 units\) queued, limit 100"):
        q.add(_item(1, cost=32), 0.0)
    q.add(_item(4), 0.0)  # 100 units: fits
    assert q.cancel(big)
    q.add(_item(3, cost=32), 0.0)  # room again
    with pytest.raises(ValueError, match="at least 1 unit"):
        q.add(_item(1, cost=0), 0.0)


def test_window_ends_when_the_units_fill_a_batch() -> None:
    q = BatchQueue(max_batch_size=256, max_delay_ms=5000)
    q.add(_item(7, cost=32), 0.0)
    assert q.ready_at(0.0) == 5.0  # 224 units: wait
    q.add(_item(32), 0.001)
    assert q.ready_at(0.001) == 0.001  # 256 units: now


# --------------------------------------------------------------------------- the worker

class Sink:
    def __init__(self, x: np.ndarray, explain: bool) -> None:
        self.inputs, self.n, self.nbytes, self.explain = x, len(x), x.nbytes, explain
        self.finished = False
        self.rows: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        self.done = asyncio.Event()

    def on_rows(self, start: int, outputs: np.ndarray, batch_rows: int, queue_s: float, compute_s: float,
                **kwargs: Any) -> None:
        self.rows.append((start, outputs, kwargs.get("attributions")))
        if sum(len(o) for _, o, _ in self.rows) == self.n:
            self.finished = True
            self.done.set()

    def on_error(self, exc: Exception) -> None:
        assert not self.finished, "a second ending"
        self.finished = True
        self.error = exc
        self.rows.append((-1, np.zeros(0), None))
        self.done.set()

    error: Exception | None = None


def _mlp() -> MLPModel:
    return MLPModel(init_params(np.random.default_rng(0), [6, 16, 3]))


@pytest.mark.parametrize("model", [LinearModel(2.0, 1.0), _mlp()], ids=["linear", "mlp"])
async def test_worker_explains_only_the_rows_that_asked_in_the_same_batch(model: Any) -> None:
    d = model.info.input_shape[0]
    explainer, refusal = resolve_explainer("m", model)
    assert explainer is not None and refusal is None
    worker = PredictWorker(model, max_delay_ms=50, explainer=explainer)
    worker.start()
    rng = np.random.default_rng(3)
    plain, wants = Sink(rng.standard_normal((5, d)), False), Sink(rng.standard_normal((3, d)), True)
    other = Sink(rng.standard_normal((2, d)), True)
    for sink in (plain, wants, other):
        worker.submit(sink)
    await asyncio.wait_for(asyncio.gather(plain.done.wait(), wants.done.wait(), other.done.wait()), 30)
    assert worker.statistics().batches == 1  # one batch for all three
    assert [a for _, _, a in plain.rows] == [None]
    for sink in (wants, other):
        [(start, outputs, attributions)] = sink.rows
        assert start == 0 and attributions is not None and attributions.shape == sink.inputs.shape
        np.testing.assert_array_equal(outputs, model.predict(sink.inputs))
        assert np.array_equal(attributions, explainer.attributions(sink.inputs))  # as if alone
    await worker.close()


async def test_worker_without_an_explainer_refuses_explain_sinks() -> None:
    worker = PredictWorker(LinearModel(1.0, 0.0), explain_refusal="model 'x' version 3 cannot be explained: no")
    worker.start()
    with pytest.raises(BadRequest, match="model 'x' version 3 cannot be explained"):
        worker.submit(Sink(np.zeros((1, 1)), True))
    assert worker.statistics().queued == 0
    with pytest.raises(ValueError, match="explain_row_cost must be >= 2"):
        PredictWorker(LinearModel(1.0, 0.0), explain_row_cost=1)
    await worker.close()


def test_explainer_rounds_rows_to_the_served_input_dtype() -> None:
    model = _mlp()
    x = np.random.default_rng(9).standard_normal((4, 6)) / 3
    f32 = explainer_for(model, label="m", input_dtype="float32").attributions(x)
    f64 = explainer_for(model, label="m").attributions(x)
    assert np.array_equal(f32, explainer_for(model, label="m").attributions(x.astype(np.float32)))
    assert not np.array_equal(f32, f64)  # the rounding is really applied
    assert EXPLAIN_ROW_COST == 32


class CheapQuadratic(LinearModel):
    """A model that says it is cheap (2 flops a row) but is explained by integrated gradients."""

    def __init__(self) -> None:
        super().__init__(1.0, 0.0)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x * x

    def input_gradient(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        return 2 * x


async def test_integrated_gradients_never_run_on_the_loop_however_cheap_the_model() -> None:
    from wsserve.explain import Explainer

    exact = PredictWorker(LinearModel(2.0, 1.0), explainer=resolve_explainer("lin", LinearModel(2.0, 1.0))[0])
    quad = CheapQuadratic()
    ig = PredictWorker(quad, explainer=Explainer(quad, "integrated-gradients", 128, np.dtype("float64")))
    for worker in (exact, ig):
        worker.start()
        plain, wants = Sink(np.ones((2, 1)), False), Sink(np.ones((2, 1)), True)
        worker.submit(plain)
        await asyncio.wait_for(plain.done.wait(), 10)
        worker.submit(wants)
        await asyncio.wait_for(wants.done.wait(), 10)
        await worker.close()
    assert exact.statistics().executor_batches == 0  # exact attributions are cheap: inline
    assert ig.statistics().executor_batches == 1  # only the explain batch left the loop
    np.testing.assert_allclose(wants.rows[0][2], np.ones((2, 1)), rtol=1e-12)  # IG of x**2 from 0: x**2


RAISE, NAN = 666.0, 777.0  # markers of Weighted: predict raises / the input gradient is NaN on the path


class Weighted(PredictiveModel):
    """``[n, 3] -> [n, 1]``, ``x @ w``, explained by integrated gradients through its own
    ``input_gradient`` (``w`` for every row, so the attributions are ``x * w``).  A batch holding
    ``RAISE`` makes ``predict`` raise; the gradient is NaN at points whose first value is over 100
    (on the path from 0 to a row starting with ``NAN``, never for the rows that do not)."""

    w = np.array([1.0, 2.0, 3.0])

    def __init__(self) -> None:
        self.info = ModelInfo(name="weighted", version="1", task="regression", input_shape=(3,),
                              output_shape=(1,), parameters=3)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if (x == RAISE).any():
            raise ValueError("poison row")
        return x @ self.w[:, None]

    def input_gradient(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        g = np.tile(self.w, (len(x), 1))
        g[x[:, 0] > 100] = np.nan
        return g


def _weighted_worker(**kwargs: Any) -> tuple[PredictWorker, Weighted]:
    model = Weighted()
    explainer = Explainer(model, "integrated-gradients", 8, np.dtype("float64"))
    worker = PredictWorker(model, max_delay_ms=50, explainer=explainer, **kwargs)
    worker.start()
    return worker, model


async def test_a_failing_batch_with_rows_to_explain_is_recomputed_request_by_request() -> None:
    """The model raises on one request's row: the others of the batch - explained or not - get
    their outputs and attributions as if alone; only that request ends with ``internal``."""
    worker, model = _weighted_worker()
    explained = Sink(np.array([[1.0, 1.0, 1.0], [0.5, -1.0, 2.0]]), True)
    plain = Sink(np.array([[2.0, 0.0, 0.0]]), False)
    poison = Sink(np.array([[1.0, RAISE, 0.0]]), True)
    for sink in (explained, poison, plain):
        worker.submit(sink)
    await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in (explained, poison, plain))), 30)
    assert worker.statistics().batches == 1 and worker.isolated_batches == 1
    assert poison.error is not None and poison.error.code == "internal"
    assert "'weighted'" in poison.error.message and "poison row" in poison.error.message
    [(start, outputs, attributions)] = explained.rows
    np.testing.assert_array_equal(outputs, model.predict(explained.inputs))
    np.testing.assert_allclose(attributions, explained.inputs * model.w, rtol=1e-12)
    [(_, outputs, attributions)] = plain.rows
    assert outputs.tolist() == [[2.0]] and attributions is None
    await worker.close()


async def test_non_finite_attributions_end_only_their_request_with_invalid_input() -> None:
    """A row whose attributions are NaN ends its request with ``invalid_input`` naming the row (as a
    non-finite output row does), never a NaN in a reply; the batch's other requests are served."""
    worker, model = _weighted_worker()
    nan = Sink(np.array([[1.0, 1.0, 1.0], [NAN, 1.0, 1.0]]), True)
    explained = Sink(np.array([[0.5, -1.0, 2.0]]), True)
    plain = Sink(np.array([[NAN, 0.0, 0.0]]), False)  # its gradient would be NaN, but it is not explained
    for sink in (nan, explained, plain):
        worker.submit(sink)
    await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in (nan, explained, plain))), 30)
    assert worker.statistics().batches == 1
    assert nan.error is not None and nan.error.code == "invalid_input"
    assert nan.error.message == "attributions of row 1 are not finite"
    assert [start for start, _, _ in nan.rows] == [-1]  # nothing delivered before the error
    [(_, outputs, attributions)] = explained.rows
    np.testing.assert_allclose(attributions, explained.inputs * model.w, rtol=1e-12)
    assert plain.rows[0][1].tolist() == [[NAN]]
    await worker.close()
