"""An ensemble's requests through :class:`wsserve.ensemble.EnsembleWorker`, with fake step workers:
the DAG (independent steps at once, a step when its inputs exist), priority and deadline on every
step, a step's failure, cancellation and shutdown."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")

from tests.test_ensemble_plan import ensemble_pbtxt, sig, step  # noqa: E402
from wsserve.ensemble import EnsembleModel, EnsembleWorker  # noqa: E402
from wsserve.errors import Internal, InvalidInput, ShuttingDown, UnknownModel  # noqa: E402
from wsserve.repository.ensemble_plan import plan_ensemble  # noqa: E402
from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402


@dataclass
class FakeWorker:
    """A step model's worker: records what is submitted and cancelled."""

    submitted: list[tuple[Any, int, float | None]] = field(default_factory=list)
    cancelled: list[Any] = field(default_factory=list)

    def submit(self, sink: Any, *, priority: int = 0, deadline: float | None = None) -> Any:
        self.submitted.append((sink, priority, deadline))
        return ("item", sink)

    def cancel(self, item: Any) -> None:
        self.cancelled.append(item)


@dataclass
class FakeEntry:
    name: str
    worker: FakeWorker
    input_specs: tuple[Any, ...]
    kind: str = "predict"
    decoupled: bool = False


@dataclass
class Sink:
    inputs: Any
    n: int
    nbytes: int = 0
    finished: bool = False
    rows: list[Any] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)

    def on_rows(self, start: int, outputs: Any, batch_rows: int, queue_s: float, compute_s: float) -> None:
        self.rows.append((start, outputs))
        self.finished = True

    def on_error(self, exc: Any) -> None:
        self.errors.append(exc)
        self.finished = True


FAN = ", ".join([step("a", {"x": "IN"}, {"y": "A"}), step("b", {"x": "IN"}, {"y": "B"}),
                 step("join", {"p": "A", "q": "B"}, {"y": "OUT"})])
SIGS = {("a", None): sig("a", {"x": (3,)}, {"y": (3,)}), ("b", None): sig("b", {"x": (3,)}, {"y": (3,)}),
        ("join", None): sig("join", {"p": (3,), "q": (3,)}, {"y": (2,)})}


def _worker() -> tuple[EnsembleWorker, dict[str, FakeEntry]]:
    config = parse_pbtxt(ensemble_pbtxt(FAN).replace('name: "pipe"', 'name: "fan"'), "fan/config.pbtxt", model_name="fan")
    model = EnsembleModel("fan", 1, config, plan_ensemble(config.ensemble, SIGS))
    entries = {name: FakeEntry(name, FakeWorker(), SIGS[(name, None)].inputs) for name in ("a", "b", "join")}

    def lookup(name: str, version: str | None) -> FakeEntry:
        if name not in entries:
            raise UnknownModel(f"no model named {name!r}")
        return entries[name]

    worker = EnsembleWorker(model, lookup)
    worker.start()
    return worker, entries


def _x() -> np.ndarray:
    return np.arange(6, dtype=np.float32).reshape(2, 3)


def test_independent_steps_start_together_and_a_step_waits_for_its_inputs() -> None:
    async def go() -> None:
        worker, e = _worker()
        sink = Sink(_x(), 2)
        worker.submit(sink, priority=1, deadline=123.0)
        await asyncio.sleep(0)  # its first steps go on the next loop iteration
        assert len(e["a"].worker.submitted) == len(e["b"].worker.submitted) == 1 and not e["join"].worker.submitted
        (a, prio, deadline), = e["a"].worker.submitted
        assert (prio, deadline) == (1, 123.0) and np.array_equal(a.inputs, _x())
        a.on_rows(0, a.inputs * 2, 2, 0.0, 0.0)
        assert not e["join"].worker.submitted  # B is not there yet
        b = e["b"].worker.submitted[0][0]
        b.on_rows(0, b.inputs[:1] + 1, 1, 0.0, 0.0)  # in two deliveries
        b.on_rows(1, b.inputs[1:] + 1, 1, 0.0, 0.0)
        (j, prio, deadline), = e["join"].worker.submitted
        assert (prio, deadline) == (1, 123.0)
        assert np.array_equal(j.inputs["p"], _x() * 2) and np.array_equal(j.inputs["q"], _x() + 1)
        assert not sink.rows
        j.on_rows(0, np.ones((2, 2), np.float32), 2, 0.0, 0.0)
        (start, out), = sink.rows
        assert start == 0 and out.shape == (2, 2)
        await asyncio.wait_for(worker.wait_idle(), 10)

    asyncio.run(go())


def test_a_failing_step_fails_the_request_naming_the_ensemble_and_the_step_and_cancels_the_others() -> None:
    async def go() -> None:
        worker, e = _worker()
        sink = Sink(_x(), 2)
        worker.submit(sink)
        await asyncio.sleep(0)
        a = e["a"].worker.submitted[0][0]
        a.on_error(Internal("model 'a' failed: ValueError: boom"))
        (err,), = [sink.errors]
        assert isinstance(err, Internal)
        assert err.message == "ensemble 'fan' step 0 (model 'a'): model 'a' failed: ValueError: boom"
        assert e["b"].worker.cancelled == [("item", e["b"].worker.submitted[0][0])]
        assert not e["join"].worker.submitted

    asyncio.run(go())


def test_a_step_model_gone_at_run_time_is_internal_naming_the_step() -> None:
    async def go() -> None:
        worker, e = _worker()
        del e["b"]
        sink = Sink(_x(), 2)
        worker.submit(sink)
        await asyncio.sleep(0)
        (err,), = [sink.errors]
        assert isinstance(err, Internal) and err.message == "ensemble 'fan' step 1 (model 'b'): no model named 'b'"

    asyncio.run(go())


def test_cancel_stops_the_steps_in_flight_without_calling_the_sink() -> None:
    async def go() -> None:
        worker, e = _worker()
        sink = Sink(_x(), 2)
        run = worker.submit(sink)
        await asyncio.sleep(0)
        sink.finished = True  # the job ends itself (cancel, deadline), then cancels its item
        worker.cancel(run)
        assert len(e["a"].worker.cancelled) == len(e["b"].worker.cancelled) == 1
        a = e["a"].worker.submitted[0][0]
        a.on_rows(0, a.inputs, 2, 0.0, 0.0)  # a late delivery goes nowhere
        assert not e["join"].worker.submitted and not sink.rows and not sink.errors
        await asyncio.wait_for(worker.wait_idle(), 10)

    asyncio.run(go())


def test_close_ends_requests_in_flight_and_refuses_new_ones() -> None:
    async def go() -> None:
        worker, _ = _worker()
        sink = Sink(_x(), 2)
        worker.submit(sink)
        await asyncio.sleep(0)
        await worker.close()
        assert isinstance(sink.errors[0], ShuttingDown)
        # (an unload too, as a step model's unload makes the ensemble unavailable: not only a server stop)
        assert sink.errors[0].message == "ensemble 'fan' is unloaded or the server is shutting down"
        with pytest.raises(ShuttingDown):
            worker.submit(Sink(_x(), 2))

    asyncio.run(go())


def test_a_step_that_cannot_be_queued_for_an_unexpected_reason_fails_the_request_and_stops_the_others() -> None:
    async def go() -> None:
        worker, e = _worker()

        def broken(sink: Any, *, priority: int = 0, deadline: float | None = None) -> Any:
            raise MemoryError("no room for the copy")

        e["b"].worker.submit = broken  # type: ignore[method-assign]
        sink = Sink(_x(), 2)
        worker.submit(sink)
        await asyncio.sleep(0)
        (err,) = sink.errors
        assert isinstance(err, Internal)
        assert err.message == "ensemble 'fan' step 1 (model 'b'): could not queue the step: MemoryError: no room for the copy"
        assert len(e["a"].worker.cancelled) == 1  # step 0, queued first, is stopped
        await asyncio.wait_for(worker.wait_idle(), 10)

    asyncio.run(go())


def test_inputs_that_cannot_be_taken_fail_the_request() -> None:
    async def go() -> None:
        worker, e = _worker()
        sink = Sink({"OTHER": _x()}, 2)  # (the transports check the names: a bug's stand-in)
        worker.submit(sink)
        await asyncio.sleep(0)
        (err,) = sink.errors
        assert isinstance(err, Internal) and err.message == "ensemble 'fan': its inputs could not be taken: KeyError: 'IN'"
        assert not e["a"].worker.submitted
        await asyncio.wait_for(worker.wait_idle(), 10)

    asyncio.run(go())


def _ensemble(name: str, text: str, sigs: dict[Any, Any]) -> EnsembleModel:
    config = parse_pbtxt(text.replace('name: "pipe"', f'name: "{name}"'), f"{name}/config.pbtxt", model_name=name)
    return EnsembleModel(name, 1, config, plan_ensemble(config.ensemble, sigs))


def test_a_step_that_is_an_ensemble_runs_through_its_worker_and_only_the_inner_steps_it_maps() -> None:
    # outer: one step on the ensemble 'two' (a -> A, b -> B, side by side), mapping only its B
    two_outs = '{ name: "A" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 3 ] }'
    two = _ensemble("two", ensemble_pbtxt(", ".join([step("a", {"x": "IN"}, {"y": "A"}), step("b", {"x": "IN"}, {"y": "B"})]),
                                          outputs=two_outs), SIGS)
    outer = _ensemble("outer", ensemble_pbtxt(step("two", {"IN": "IN"}, {"B": "OUT"}),
                                              outputs='{ name: "OUT" data_type: TYPE_FP32 dims: [ 3 ] }'),
                      {("two", None): sig("two", {"IN": (3,)}, {"A": (3,), "B": (3,)}, ensemble=True, max_batch_size=8)})

    async def go() -> None:
        leaves = {name: FakeEntry(name, FakeWorker(), SIGS[(name, None)].inputs) for name in ("a", "b")}
        entries: dict[str, Any] = dict(leaves)
        inner = EnsembleWorker(two, lambda name, version: entries[name])
        entries["two"] = FakeEntry("two", inner, two.inputs)  # type: ignore[arg-type]
        worker = EnsembleWorker(outer, lambda name, version: entries[name])
        inner.start()
        worker.start()
        sink = Sink(_x(), 2)
        worker.submit(sink, priority=1, deadline=9.0)
        for _ in range(3):  # the outer step goes on the next loop iteration, the inner one on the one after
            await asyncio.sleep(0)
        assert not leaves["a"].worker.submitted  # A is not mapped by the outer step: 'a' never runs
        (b, prio, deadline), = leaves["b"].worker.submitted
        assert (prio, deadline) == (1, 9.0) and np.array_equal(b.inputs, _x())
        b.on_rows(0, b.inputs + 1, 2, 0.0, 0.0)
        (start, out), = sink.rows
        assert start == 0 and np.array_equal(out, _x() + 1) and not sink.errors
        await asyncio.wait_for(worker.wait_idle(), 10)
        await asyncio.wait_for(inner.wait_idle(), 10)

    asyncio.run(go())


def test_a_sink_wanting_some_outputs_runs_only_their_steps_and_gets_only_them() -> None:
    outs = '{ name: "A" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 3 ] }'
    two = _ensemble("two", ensemble_pbtxt(", ".join([step("a", {"x": "IN"}, {"y": "A"}), step("b", {"x": "IN"}, {"y": "B"})]),
                                          outputs=outs), SIGS)

    @dataclass
    class Wanting(Sink):
        def wanted_outputs(self) -> frozenset[str]:
            return frozenset({"A"})

    async def go() -> None:
        entries = {name: FakeEntry(name, FakeWorker(), SIGS[(name, None)].inputs) for name in ("a", "b")}
        worker = EnsembleWorker(two, lambda name, version: entries[name])
        worker.start()
        sink = Wanting(_x(), 2)
        worker.submit(sink)
        await asyncio.sleep(0)
        assert not entries["b"].worker.submitted
        (a, _, _), = entries["a"].worker.submitted
        a.on_rows(0, a.inputs * 2, 2, 0.0, 0.0)
        (_, out), = sink.rows
        assert list(out) == ["A"] and np.array_equal(out["A"], _x() * 2)
        none = Wanting(_x(), 2)
        none.wanted_outputs = lambda: frozenset()  # type: ignore[method-assign]
        worker.submit(none)  # naming no output is naming none in particular: every step runs
        await asyncio.sleep(0)
        assert len(entries["a"].worker.submitted) == 2 and len(entries["b"].worker.submitted) == 1

    asyncio.run(go())


def test_more_rows_than_the_ensembles_max_batch_size_are_refused_at_submit() -> None:
    async def go() -> None:
        worker, e = _worker()  # max_batch_size 8
        with pytest.raises(InvalidInput, match=r"^the request has 9 rows but ensemble 'fan' allows at most 8 "
                                               r"\(its max_batch_size\)$"):
            worker.submit(Sink(np.zeros((9, 3), np.float32), 9))
        worker.submit(Sink(np.zeros((8, 3), np.float32), 8))
        await asyncio.sleep(0)
        assert len(e["a"].worker.submitted) == 1

    asyncio.run(go())


def test_a_sink_wanting_an_output_the_ensemble_lacks_is_answered_not_left_hanging() -> None:
    """An outer ensemble's step names the inner ensemble's outputs as they were when the outer one was
    planned; an inner one re-planned meanwhile (an output renamed) must fail that step, not raise in a
    loop callback and leave the request without an answer."""

    @dataclass
    class Wanting(Sink):
        def wanted_outputs(self) -> frozenset[str]:
            return frozenset({"GONE"})

    async def go() -> None:
        worker, e = _worker()  # one output, OUT
        sink = Wanting(_x(), 2)
        worker.submit(sink)
        for _ in range(3):
            await asyncio.sleep(0)
        assert not e["a"].worker.submitted and not e["b"].worker.submitted
        (err,), = [sink.errors]
        assert isinstance(err, Internal)
        assert err.message == "ensemble 'fan' has no output 'GONE' (its outputs: OUT)"
        await asyncio.wait_for(worker.wait_idle(), 10)

    asyncio.run(go())


@dataclass
class StreamSink(Sink):
    """A decoupled request's sink: its responses (outputs, final) in order."""

    responses: list[Any] = field(default_factory=list)

    def on_response(self, outputs: Any, final: bool, nbytes: int) -> None:
        self.responses.append((outputs, final))
        if final:
            self.finished = True


CHAIN3 = ", ".join([step("gen", {"x": "IN"}, {"y": "tok"}), step("post", {"x": "tok"}, {"y": "OUT"})])


def _streaming(max_pending_bytes: int = 1 << 20) -> tuple[EnsembleWorker, dict[str, FakeEntry]]:
    sigs = {("gen", None): sig("gen", {"x": (3,)}, {"y": (3,)}, decoupled=True),
            ("post", None): sig("post", {"x": (3,)}, {"y": (2,)})}
    config = parse_pbtxt(ensemble_pbtxt(CHAIN3), "pipe/config.pbtxt", model_name="pipe")
    model = EnsembleModel("pipe", 1, config, plan_ensemble(config.ensemble, sigs))
    entries = {name: FakeEntry(name, FakeWorker(), sigs[(name, None)].inputs, decoupled=name == "gen")
               for name in ("gen", "post")}
    worker = EnsembleWorker(model, lambda name, version: entries[name], max_pending_bytes=max_pending_bytes)
    worker.start()
    return worker, entries


def test_a_decoupled_step_s_responses_are_answered_in_its_order_then_the_end_once() -> None:
    """``post`` answering the decoupled step's responses out of order: the ensemble answers them in
    the order ``gen`` sent them; the end comes once (here alone: ``gen``'s FINAL came after the last
    answer), and nothing after it; a sink that takes one answer is refused."""
    async def go() -> None:
        worker, e = _streaming()
        assert worker.decoupled
        with pytest.raises(Exception, match="is decoupled"):
            worker.submit(Sink(_x(), 2))
        sink = StreamSink(_x(), 2)
        worker.submit(sink)
        await asyncio.sleep(0)
        (gen, _, _), = e["gen"].worker.submitted
        for i in range(3):
            gen.on_response({"y": np.full((2, 3), i, np.float32)}, False, 100)
        posts = [s for s, _, _ in e["post"].worker.submitted]
        assert [int(p.inputs[0, 0]) for p in posts] == [0, 1, 2]
        posts[2].on_rows(0, np.full((2, 2), 2, np.float32), 2, 0.0, 0.0)
        posts[1].on_rows(0, np.full((2, 2), 1, np.float32), 2, 0.0, 0.0)
        assert sink.responses == []  # the first is not answered yet
        posts[0].on_rows(0, np.full((2, 2), 0, np.float32), 2, 0.0, 0.0)
        assert [(int(o["OUT"][0, 0]), final) for o, final in sink.responses] == [(0, False), (1, False), (2, False)]
        gen.on_response(None, True, 0)
        assert sink.responses[-1] == (None, True) and len(sink.responses) == 4
        gen.on_response({"y": np.zeros((2, 3), np.float32)}, True, 100)  # (after its end: dropped)
        assert len(sink.responses) == 4 and not sink.errors
        await asyncio.wait_for(worker.wait_idle(), 10)

    asyncio.run(go())


def test_what_a_request_holds_inside_the_ensemble_is_bounded_and_cancels_the_decoupled_step() -> None:
    """``post`` takes nothing: past ``max_pending_bytes`` the decoupled step's response ends the request
    ``overloaded`` naming the step and the bound, and the step's requests in flight are cancelled."""
    async def go() -> None:
        worker, e = _streaming(max_pending_bytes=1000)
        sink = StreamSink(_x(), 2)
        worker.submit(sink)
        await asyncio.sleep(0)
        (gen, _, _), = e["gen"].worker.submitted
        big = np.zeros((2, 3), np.float64)  # 48 bytes (+64 per response)
        sent = 0
        while not sink.errors:
            gen.on_response({"y": big}, False, 100)
            sent += 1
        assert sent < 20 and len(e["post"].worker.submitted) == sent - 1
        (error,) = sink.errors
        assert error.code == "overloaded" and "step 0 (model 'gen')" in error.message
        assert "max_write_buffer_bytes=1000" in error.message
        assert ("item", gen) in e["gen"].worker.cancelled
        assert len(e["post"].worker.cancelled) == sent - 1

    asyncio.run(go())


def test_a_long_stream_keeps_nothing_per_response_once_answered() -> None:
    """A decoupled step streaming many responses, each through ``post`` and answered: the request keeps
    no bookkeeping per response answered (which steps ran at which response, the values and their
    readers), so a stream of any length holds only what its responses in flight need."""
    async def go() -> None:
        worker, e = _streaming()
        sink = StreamSink(_x(), 2)
        run = worker.submit(sink)
        await asyncio.sleep(0)
        (gen, _, _), = e["gen"].worker.submitted
        for i in range(500):
            gen.on_response({"y": np.full((2, 3), i, np.float32)}, False, 100)
            post = e["post"].worker.submitted[-1][0]
            post.on_rows(0, np.full((2, 2), i, np.float32), 2, 0.0, 0.0)
        assert len(sink.responses) == 500 and not sink.errors
        assert len(run.launched) <= 1 and not run.left and not run.flying.keys() - {(0, ())}
        assert sum(map(len, run.tensors.values())) == 0 and run.held == 500 * (64 + 16)  # (the responses, unwritten: this sink never says written)
        gen.on_response(None, True, 0)
        assert sink.responses[-1] == (None, True)

    asyncio.run(go())


def test_a_step_model_no_longer_decoupled_as_planned_fails_the_request_not_answers_it_empty() -> None:
    """``gen`` served again as a model answering once (the ensemble not re-planned yet for a request in
    flight): its one answer would flow on at the request's own key, which the ensemble never answers,
    so the request would end with no response at all as if it succeeded; it fails naming the step."""
    async def go() -> None:
        worker, e = _streaming()
        e["gen"].decoupled = False
        sink = StreamSink(_x(), 2)
        worker.submit(sink)
        await asyncio.sleep(0)
        for gen, _, _ in e["gen"].worker.submitted:  # (a worker answering once)
            gen.on_rows(0, np.zeros((2, 3), np.float32), 2, 0.0, 0.0)
        for post, _, _ in e["post"].worker.submitted:
            post.on_rows(0, np.zeros((2, 2), np.float32), 2, 0.0, 0.0)
        assert sink.responses == []
        (error,) = sink.errors
        assert error.code == "internal" and "step 0 (model 'gen')" in error.message
        assert "is not decoupled" in error.message

    asyncio.run(go())
