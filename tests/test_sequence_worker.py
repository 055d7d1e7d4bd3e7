"""The stateful model worker (:class:`wsserve.sequence_worker.SequenceWorker`) around a real
:class:`~wsserve.worker.PredictWorker`, on a loop: a request handed to the model and then cancelled
still runs in its turn (its sink told nothing), a waiting one is dropped, close() ends what waits,
requests without a sequence are refused, control inputs and ids reach the model."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from wsserve.errors import BadRequest, ShuttingDown, WsserveError
from wsserve.sequence_worker import SequenceWorker
from wsserve.sequences import START, Control, SequenceConfig
from wsserve.worker import PredictWorker


class _Spec:
    def __init__(self, name: str) -> None:
        self.name = name


class _Model:
    """Answers IN; records each execute's (correlation id, flags, IN, START control) per request;
    blocks while ``gate`` is clear (it runs off the loop)."""

    off_loop = True
    batching = True

    def __init__(self) -> None:
        self.inputs = [_Spec("IN")]
        self.calls: list[list[tuple[Any, int, int, float]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def flops_per_row(self) -> int:
        return 1

    def predict_requests(self, x: dict[str, np.ndarray], rows: list[int], ids: list[Any]) -> np.ndarray:
        self.gate.wait(30)
        if 99 in x["IN"]:
            self.calls.append([("raised", len(ids))])
            raise RuntimeError("99 is refused")
        self.calls.append([(rid.correlation_id, rid.flags, int(x["IN"][i, 0]), float(x["S"][i, 0]))
                           for i, rid in enumerate(ids)])
        return x["IN"].astype(np.float64)


class _Sink:
    def __init__(self, value: int, sequence: tuple[Any, bool, bool] | None) -> None:
        self.inputs = np.array([[value]], np.int32)
        self.n = 1
        self.nbytes = 4
        self.finished = False
        self.sequence = sequence
        self.request_id = f"r{value}"
        self.got: list[Any] = []
        self.done = asyncio.Event()

    def on_rows(self, start: int, outputs: Any, batch_rows: int, queue_s: float, compute_s: float) -> None:
        self.got.append(outputs.tolist())
        self.finished = True
        self.done.set()

    def on_error(self, exc: WsserveError) -> None:
        self.got.append(exc)
        self.finished = True
        self.done.set()


def _worker(model: _Model, slots: int = 4) -> SequenceWorker:
    config = SequenceConfig(controls=(Control("S", "START", np.dtype(np.float32), 0.0, 1.0),))
    worker = SequenceWorker(PredictWorker(model, name="acc", max_batch_size=slots, explain_refusal="no"), config, slots=slots)
    worker.start()
    return worker


async def test_a_cancelled_request_that_was_handed_out_still_runs_before_the_next_of_its_sequence() -> None:
    model = _Model()
    worker = _worker(model)
    model.gate.clear()
    first = _Sink(1, (5, True, False))
    item = worker.submit(first, priority=0, deadline=None)
    await asyncio.sleep(0)  # the batch starts (the model waits on its gate)
    second, third = _Sink(2, (5, False, False)), _Sink(3, (5, False, True))
    worker.submit(second)
    dropped = worker.submit(third)
    first.finished = True  # the client left: its transport marks the sink finished, then cancels
    worker.cancel(item)
    third.finished = True
    worker.cancel(dropped)  # still waiting for its turn: dropped
    model.gate.set()
    await asyncio.wait_for(second.done.wait(), 30)
    assert first.got == [] and second.got == [[[2.0]]] and third.got == []
    assert [c for call in model.calls for c in call] == [(5, START, 1, 1.0), (5, 0, 2, 0.0)]
    await worker.close()


async def test_close_ends_the_requests_waiting_for_a_slot() -> None:
    model = _Model()
    worker = _worker(model, slots=1)
    a, b = _Sink(1, ("a", True, False)), _Sink(2, ("b", True, True))
    worker.submit(a)
    worker.submit(b)  # one slot, held by "a": b waits
    await asyncio.wait_for(a.done.wait(), 30)
    assert b.got == []
    await worker.close()
    assert isinstance(b.got[0], ShuttingDown)
    with pytest.raises(ShuttingDown):
        worker.submit(_Sink(3, ("c", True, False)))


async def test_requests_without_a_sequence_or_asking_explanations_are_refused() -> None:
    worker = _worker(_Model())
    with pytest.raises(BadRequest, match="inference request to model 'acc' must specify a non-zero or non-empty "
                                         "correlation ID"):
        worker.submit(_Sink(1, None))
    sink = _Sink(1, (1, True, True))
    sink.explain = True  # type: ignore[attr-defined]
    with pytest.raises(BadRequest, match="stateful"):
        worker.submit(sink)
    ok = _Sink(4, (1, True, True))
    worker.submit(ok)
    await asyncio.wait_for(ok.done.wait(), 30)
    assert ok.got == [[[4.0]]] and worker.scheduler.held == 0  # END let the slot go
    await worker.close()


async def test_a_failed_batch_of_several_sequences_fails_each_request_once_never_recomputed() -> None:
    """A request computed again alone would change its sequence's state twice: a stateful model's
    failed batch fails every request of it (Triton's), and wait_idle returns once nothing waits."""
    model = _Model()
    worker = _worker(model)
    model.gate.clear()
    a, b = _Sink(99, (1, True, False)), _Sink(2, (2, True, False))
    worker.submit(a)
    worker.submit(b)
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(a.done.wait(), b.done.wait()), 30)
    assert isinstance(a.got[0], WsserveError) and isinstance(b.got[0], WsserveError)
    assert model.calls == [[("raised", 2)]]  # one execute for both, none again alone
    after = _Sink(3, (2, False, True))  # the sequence goes on
    worker.submit(after)
    await asyncio.wait_for(worker.wait_idle(), 30)
    assert after.got == [[[3.0]]]
    await worker.close()


async def test_a_request_waiting_for_a_slot_past_its_deadline_ends_deadline_exceeded_then() -> None:
    """Its deadline holds while it waits for its sequence's turn, not only once handed to the batch
    queue: a sequence backlogged behind one that holds the only slot (for an hour of idleness) ends
    with ``deadline_exceeded`` when its deadline passes, never reaching the model."""
    from time import monotonic

    from wsserve.errors import DeadlineExceeded

    model = _Model()
    config = SequenceConfig(max_idle_s=3600.0, controls=(Control("S", "START", np.dtype(np.float32), 0.0, 1.0),))
    worker = SequenceWorker(PredictWorker(model, name="acc", max_batch_size=1, explain_refusal="no"), config, slots=1)
    worker.start()
    holder, late = _Sink(1, ("a", True, False)), _Sink(2, ("b", True, True))
    worker.submit(holder)
    await asyncio.wait_for(holder.done.wait(), 30)
    worker.submit(late, deadline=monotonic() + 0.05)  # "a" holds the slot: "b" waits in the backlog
    await asyncio.wait_for(late.done.wait(), 10)
    assert isinstance(late.got[0], DeadlineExceeded)
    assert [c[0] for call in model.calls for c in call] == ["a"] and worker.scheduler.waiting == 0
    assert len(worker.scheduler) == 1  # "b" never reached the model: forgotten, its backlog place free
    await worker.close()


async def test_a_request_of_several_rows_is_refused_as_triton_refuses_it() -> None:
    """Triton's sequence batcher takes batch-size 1 only (one row per slot); its message."""
    model = _Model()
    worker = _worker(model)
    two = _Sink(1, (1, True, True))
    two.inputs = np.array([[1], [2]], np.int32)
    two.n = 2
    with pytest.raises(BadRequest, match="^inference request to model 'acc' must specify batch-size 1 due to "
                                         "requirements of sequence batcher$"):
        worker.submit(two)
    assert len(worker.scheduler) == 0 and model.calls == []
    await worker.close()


async def test_wait_idle_lets_idle_slot_holders_go_so_an_unload_drains_the_backlog_at_once() -> None:
    """An unloading version gets no new request: a sequence holding a slot with nothing waiting can
    never go on there, so draining (wait_idle) lets it go at once and the backlogged sequences run,
    instead of the unload waiting ``max_sequence_idle_microseconds`` (here an hour) per holder."""
    model = _Model()
    config = SequenceConfig(max_idle_s=3600.0, controls=(Control("S", "START", np.dtype(np.float32), 0.0, 1.0),))
    worker = SequenceWorker(PredictWorker(model, name="acc", max_batch_size=1, explain_refusal="no"), config, slots=1)
    worker.start()
    holder, backlogged = _Sink(1, ("a", True, False)), _Sink(2, ("b", True, False))
    worker.submit(holder)
    await asyncio.wait_for(holder.done.wait(), 30)
    worker.submit(backlogged)
    await asyncio.wait_for(worker.wait_idle(), 10)
    assert backlogged.got == [[[2.0]]]
    await worker.close()


async def test_an_id_the_corrid_control_cannot_hold_is_refused_before_it_takes_a_slot() -> None:
    """A string id to a numeric CORRID (or one past its type) is refused at submit, so the sequence
    never holds a slot it cannot use (before: the slot stayed held until idle expiry)."""
    from wsserve.errors import InvalidInput

    model = _Model()
    config = SequenceConfig(controls=(Control("S", "START", np.dtype(np.float32), 0.0, 1.0),
                                      Control("C", "CORRID", np.dtype(np.int32))))
    worker = SequenceWorker(PredictWorker(model, name="acc", max_batch_size=1, explain_refusal="no"), config, slots=1)
    worker.start()
    for sid in ("abc", 1 << 40):
        with pytest.raises(InvalidInput, match="CORRID"):
            worker.submit(_Sink(1, (sid, True, False)))
    assert len(worker.scheduler) == 0 and worker.scheduler.held == 0
    await worker.close()


async def test_a_sequence_taking_a_freed_slot_is_not_refused_by_the_queue_bound_it_was_admitted_under() -> None:
    """``max_queue_rows`` 2, three slots: "c" waits for a slot (admitted with the queue empty), then
    the slot holders "b" and "d" fill the batch queue while "a" runs.  When "a" ends, "c" takes its
    slot; its START, admitted already, runs in its turn (before: the batch queue refused it when it
    was handed over, ``overloaded``, and "c" was aborted with the request behind it)."""
    model = _Model()
    worker = SequenceWorker(PredictWorker(model, name="acc", max_batch_size=3, max_queue_rows=2, explain_refusal="no"),
                            SequenceConfig(controls=(Control("S", "START", np.dtype(np.float32), 0.0, 1.0),)),
                            slots=3)
    worker.start()
    try:
        for sid, value in (("b", 1), ("d", 2)):  # two slot holders, idle
            sink = _Sink(value, (sid, True, False))
            worker.submit(sink)
            await asyncio.wait_for(sink.done.wait(), 30)
        model.gate.clear()
        a = _Sink(3, ("a", True, True))
        worker.submit(a)  # the third slot; the model runs it and waits on its gate
        while len(worker.inner.queue):
            await asyncio.sleep(0.001)
        c1, c2 = _Sink(4, ("c", True, False)), _Sink(5, ("c", False, True))
        worker.submit(c1)  # no slot: the backlog (the queue was empty)
        worker.submit(c2)
        b2, d2 = _Sink(6, ("b", False, True)), _Sink(7, ("d", False, True))
        worker.submit(b2)  # slot holders: handed to the batch queue, which is now full
        worker.submit(d2)
        assert len(worker.inner.queue) == 2 and worker.scheduler.waiting == 2
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in (a, b2, d2, c1, c2))), 30)
        assert (a.got, b2.got, d2.got, c1.got, c2.got) == ([[[3.0]]], [[[6.0]]], [[[7.0]]], [[[4.0]]], [[[5.0]]])
        assert worker.scheduler.held == 0
    finally:
        model.gate.set()
        await worker.close()


async def test_a_slot_freed_while_handing_out_goes_to_the_backlog_at_once() -> None:
    """One slot: "a"'s END waits for its turn, its client gone (the sink finished, not yet
    cancelled); "b" waits for the slot.  When "a"'s START ends, its END is dropped as it is handed
    out, "a" lets its slot go and "b" runs then (before: "b" held the slot but waited for some later
    event to be handed out, here forever)."""
    model = _Model()
    worker = _worker(model, slots=1)
    try:
        model.gate.clear()
        a1, a2, b1 = _Sink(1, ("a", True, False)), _Sink(2, ("a", False, True)), _Sink(3, ("b", True, True))
        worker.submit(a1)
        worker.submit(a2)
        worker.submit(b1)
        a2.finished = True  # its client left; the transport's cancel has not come yet
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(a1.done.wait(), b1.done.wait()), 30)
        assert (a1.got, a2.got, b1.got) == ([[[1.0]]], [], [[[3.0]]])
        assert worker.scheduler.held == 0 and worker.scheduler.waiting == 0
    finally:
        model.gate.set()
        await worker.close()


async def test_a_sink_is_told_while_its_request_waits_for_a_slot() -> None:
    """``on_slot_wait(True)`` when a request is queued in a sequence without a slot, ``False`` when
    the sequence gets one (a transport's count of the connection's requests reads it)."""
    class _Told(_Sink):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.told: list[bool] = []

        def on_slot_wait(self, waiting: bool) -> None:
            self.told.append(waiting)

    model = _Model()
    worker = _worker(model, slots=1)
    a1, b1, a2 = _Told(1, ("a", True, False)), _Told(2, ("b", True, True)), _Told(3, ("a", False, True))
    for sink in (a1, b1, a2):
        worker.submit(sink)
    assert (a1.told, b1.told, a2.told) == ([], [True], [])
    await asyncio.wait_for(b1.done.wait(), 30)  # a's END ran: b got the slot, then ran
    assert (a1.told, b1.told, a2.told) == ([], [True, False], [])
    assert b1.got == [[[2.0]]]
    await worker.close()
