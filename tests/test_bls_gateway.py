""":class:`wsserve.bls.BlsGateway` on a real event loop, without a server: how the calls a model's
threads hand over reach the loop.  A burst of calls is started a slice per turn of the loop
(:data:`~wsserve.bls.BLS_STARTS_PER_TURN`), so one ``execute`` firing thousands of ``async_exec``
calls cannot hold the loop, and every call still ends exactly once, also when the gateway closes
with calls not yet started.  The ordering is made deterministic by holding the loop thread while
the burst is handed over: what the loop runs next is then fixed by its ready queue alone."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from time import monotonic

import numpy as np

from wsserve.bls import BLS_STARTS_PER_TURN, BlsGateway
from wsserve.config import ServerConfig
from wsserve.errors import DeadlineExceeded, UnknownModel
from wsserve.metrics import VersionStats
from wsserve.pool import ModelEntry, ModelPool
from wsserve.repository import triton_pb_utils as pb
from wsserve.repository.bls import Caller
from wsserve.repository.function_backend import FunctionModel

BURST = 10 * BLS_STARTS_PER_TURN + 5


def _lookup(name: str, version: str | None) -> object:
    raise UnknownModel(f"unknown model {name!r}")


def _request() -> pb.InferenceRequest:
    return pb.InferenceRequest(model_name="nowhere", requested_output_names=[],
                               inputs=[pb.Tensor("x", np.zeros((1, 2), np.float32))])


Futures = list[concurrent.futures.Future]


async def _burst_while_the_loop_is_held(gateway: BlsGateway, then: Callable[[Futures], None]) -> Futures:
    """Hand over :data:`BURST` calls from another thread while the loop thread is blocked, then
    (still from that thread, after the calls) schedule ``then(futures)`` on the loop."""
    loop = asyncio.get_running_loop()
    caller = Caller("burster", 1, gateway)
    futures: Futures = []
    handed = threading.Event()

    def burst() -> None:
        futures.extend(gateway.call(caller, _request()) for _ in range(BURST))
        loop.call_soon_threadsafe(then, futures)
        handed.set()

    thread = threading.Thread(target=burst)
    thread.start()
    handed.wait()  # the loop thread is held here: nothing the burst scheduled has run yet
    thread.join()
    return futures


def test_a_burst_of_calls_is_started_a_slice_per_loop_turn_and_all_end() -> None:
    async def scenario() -> tuple[list[int], Futures]:
        gateway = BlsGateway(_lookup, ServerConfig())
        seen: list[int] = []
        futures = await _burst_while_the_loop_is_held(gateway, lambda fs: seen.append(sum(f.done() for f in fs)))
        while not all(f.done() for f in futures):
            await asyncio.sleep(0)
        return seen, futures

    seen, futures = asyncio.run(scenario())
    # a callback scheduled right after the burst ran after one slice, not after all of it
    assert seen == [BLS_STARTS_PER_TURN]
    assert len(futures) == BURST
    for future in futures:
        response = future.result()
        assert response.has_error() and response.error().code() == pb.TritonError.NOT_FOUND
        assert "nowhere" in response.error().message()


def test_closing_answers_the_calls_not_yet_started_and_later_ones() -> None:
    async def scenario() -> tuple[list[int], Futures, pb.InferenceResponse]:
        gateway = BlsGateway(_lookup, ServerConfig())
        seen: list[int] = []
        futures = await _burst_while_the_loop_is_held(gateway, lambda fs: seen.append(sum(f.done() for f in fs)))
        gateway.close()  # before the loop has started any of them
        answered = sum(f.done() for f in futures)
        later = await asyncio.to_thread(lambda: gateway.call(Caller("burster", 1, gateway), _request()).result())
        await asyncio.sleep(0)
        seen.append(answered)
        return seen, futures, later

    seen, futures, later = asyncio.run(scenario())
    assert seen[-1] == BURST  # close() answered every waiting call at once
    for future in futures + [later]:
        response = future.result() if isinstance(future, concurrent.futures.Future) else future
        assert response.has_error() and response.error().code() == pb.TritonError.UNAVAILABLE
        assert "shutting down" in response.error().message()


def test_a_call_made_on_the_event_loop_thread_is_refused_not_deadlocked() -> None:
    async def scenario() -> tuple[pb.InferenceResponse, pb.InferenceResponse]:
        gateway = BlsGateway(_lookup, ServerConfig())
        caller = Caller("inline", 1, gateway)
        blocking = gateway.call(caller, _request())
        awaited = await gateway.call_async(caller, _request())
        return blocking.result(timeout=0), awaited

    for response in asyncio.run(scenario()):
        assert response.has_error() and response.error().code() == pb.TritonError.UNSUPPORTED
        assert "model 'inline' made a BLS request on the event loop thread" in response.error().message()


def test_async_exec_answers_reach_their_model_loop_in_one_wake_up_per_turn() -> None:
    """The answers of a burst of ``call_async`` calls ended in one turn of the server's loop arrive
    on the model's loop together: counted by wrapping that loop's ``call_soon_threadsafe``."""
    server_ready = threading.Event()
    holder: dict[str, object] = {}

    def server() -> None:
        async def main() -> None:
            holder["gateway"] = BlsGateway(_lookup, ServerConfig())
            holder["loop"] = asyncio.get_running_loop()
            server_ready.set()
            await asyncio.Event().wait()
        try:
            asyncio.run(main())
        except RuntimeError:
            pass

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    server_ready.wait()
    gateway, server_loop = holder["gateway"], holder["loop"]
    assert isinstance(gateway, BlsGateway) and isinstance(server_loop, asyncio.AbstractEventLoop)

    holding, release = threading.Event(), threading.Event()

    def hold() -> None:  # the server's loop waits here until the whole burst is handed over
        holding.set()
        release.wait()

    async def model() -> tuple[int, list[pb.InferenceResponse]]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal wakeups
            wakeups += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        caller = Caller("burster", 1, gateway)
        server_loop.call_soon_threadsafe(hold)
        holding.wait()
        futures = [gateway.call_async(caller, _request()) for _ in range(BURST)]
        release.set()
        responses = await asyncio.gather(*futures)
        return wakeups, list(responses)

    wakeups, responses = asyncio.run(model())
    server_loop.call_soon_threadsafe(server_loop.stop)
    thread.join(10)
    assert len(responses) == BURST
    assert all(r.has_error() and r.error().code() == pb.TritonError.NOT_FOUND for r in responses)
    # one wake-up per slice the server's loop started (a turn each), not one per call
    assert wakeups == -(-BURST // BLS_STARTS_PER_TURN)


def test_a_calls_timeout_counts_from_its_hand_over_not_from_its_start() -> None:
    """A call's ``timeout`` bounds its whole wait, the incoming queue included: a call that waited
    there past it (the loop busy, here held) is answered ``UNAVAILABLE`` when the loop reaches it,
    never started; before, its timeout started counting only then and the model ran it."""
    async def scenario() -> tuple[pb.InferenceResponse, pb.InferenceResponse, int, tuple[int, int]]:
        pool = ModelPool(ServerConfig())
        await pool.start()
        ran: list[int] = []

        def double(x: np.ndarray) -> np.ndarray:
            ran.append(len(x))
            return x * 2

        pool.serve("double", "1", FunctionModel(double, input_shape=2, output_shape=2, dtype="float32", name="double"))
        stats = pool.lookup("double", None).worker.stats = VersionStats()  # what a server's metrics give it
        ran.clear()
        gateway = BlsGateway(pool.lookup, ServerConfig())
        caller = Caller("caller", 1, gateway)

        def request(timeout_us: int) -> pb.InferenceRequest:
            return pb.InferenceRequest(model_name="double", requested_output_names=[], timeout=timeout_us,
                                       inputs=[pb.Tensor("input", np.ones((1, 2), np.float32))])

        futures: Futures = []
        handed = threading.Event()

        def hand_over() -> None:
            futures.append(gateway.call(caller, request(1000)))  # 1 ms
            futures.append(gateway.call(caller, request(60_000_000)))  # a minute
            handed.set()

        thread = threading.Thread(target=hand_over)
        thread.start()
        handed.wait()  # the loop thread is held: neither call has started
        thread.join()
        held_until = monotonic() + 0.01
        while monotonic() < held_until:  # the loop held past the first call's 1 ms (a predicate, not a bound)
            pass
        late, meanwhile = [await asyncio.wrap_future(f) for f in futures]
        await pool.close()
        return late, meanwhile, sum(ran), (stats.ok, stats.fail)

    late, meanwhile, rows_run, (ok, failed) = asyncio.run(scenario())
    assert late.has_error() and late.error().code() == pb.TritonError.UNAVAILABLE
    assert "BLS request to model 'double' timed out after 1000 us (before it started)" in late.error().message()
    assert not meanwhile.has_error() and meanwhile.output_tensors()[0].as_numpy().tolist() == [[2.0, 2.0]]
    assert rows_run == 1  # only the second call's row reached the model
    # both are requests of the called model, as Triton counts a BLS request timed out in its queue
    assert (ok, failed) == (1, 1)


class _DeadlineFirstWorker:
    """A called model's worker whose own deadline timer runs a moment before the gateway's (two
    timers due together: which runs first is the loop's), or its queue timeout (``early_s``) well
    before it: it ends the call with its own :class:`DeadlineExceeded`, as DecoupledWorker does."""

    def __init__(self, early_s: float, message: str) -> None:
        self.early_s, self.message = early_s, message
        self.cancelled: list[object] = []

    def submit(self, sink: object, deadline: float | None = None) -> object:
        assert deadline is not None
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + max(0.0, deadline - monotonic() - self.early_s),
                     sink.on_error, DeadlineExceeded(self.message))
        return sink

    def cancel(self, item: object) -> None:
        self.cancelled.append(item)


def _timed_call(worker: _DeadlineFirstWorker, timeout_us: int) -> pb.InferenceResponse:
    async def scenario() -> pb.InferenceResponse:
        model = FunctionModel(lambda x: x, input_shape=2, output_shape=2, dtype="float32", name="slow")
        entry = ModelEntry("slow", "1", "predict", model, worker)
        gateway = BlsGateway(lambda name, version: entry, ServerConfig())
        request = pb.InferenceRequest(model_name="slow", requested_output_names=[], timeout=timeout_us,
                                      inputs=[pb.Tensor("input", np.ones((1, 2), np.float32))])
        caller = Caller("caller", 1, gateway)  # calls from a model's thread, never the loop's
        return await asyncio.wrap_future(await asyncio.to_thread(gateway.call, caller, request))

    return asyncio.run(scenario())


def test_the_called_models_deadline_noticed_first_is_answered_as_the_calls_timeout() -> None:
    """Before, whichever timer ran first named the error: ``the request to model 'slow' passed its
    deadline`` when the worker's did (seen in CI), ``timed out after`` when the gateway's did."""
    worker = _DeadlineFirstWorker(0.001, "the request to model 'slow' passed its deadline")
    response = _timed_call(worker, 50_000)
    assert response.has_error() and response.error().code() == pb.TritonError.UNAVAILABLE
    assert response.error().message() == "BLS request to model 'slow' timed out after 50000 us"
    assert worker.cancelled == []  # it ended the request itself: not told again from inside its own callback


def test_a_called_models_earlier_queue_timeout_keeps_its_own_message() -> None:
    message = "the request to model 'slow' waited past its queue timeout (default_timeout_microseconds)"
    worker = _DeadlineFirstWorker(60.0, message)  # its queue timeout passes at once
    response = _timed_call(worker, 60_000_000)  # a minute
    assert response.has_error() and response.error().code() == pb.TritonError.UNAVAILABLE
    assert response.error().message() == message
    assert worker.cancelled == []
