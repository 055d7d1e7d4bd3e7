"""Every way a caller can leave sends ``cancel``, and the server really ends the request.

Server-side evidence: the server's own ``wsserve_requests_total{code="cancelled"}`` counter and
the terminal frame it sends (counted by the client in ``stats().server_cancelled``, which only
counts frames whose code/reason is ``cancelled``).
"""

from __future__ import annotations

import asyncio
import gc

import pytest
import websockets
from wsserve_client import Client, ClientClosed, DeadlineExceeded

from tests.support import ServerProcess, wait_until_async

LONG = 100_000  # max_tokens for a generation that would run far longer than any test
PREDICT_CANCELLED = {"model": "linear", "type": "predict", "code": "cancelled"}
GENERATE_CANCELLED = {"model": "charlm", "type": "generate", "code": "cancelled"}


async def _settle(c: Client) -> None:
    """Wait until every call of ``c`` got its terminal frame from the server."""
    await wait_until_async(lambda: c.stats().inflight == 0, 5, interval_s=0.01,
                           what="every call got its terminal frame")


async def _sent(c: Client, n: int = 1) -> None:
    """Wait until ``c`` has written ``n`` requests to its socket."""
    await wait_until_async(lambda: c.stats().requests_sent >= n, 5, interval_s=0.01, what=f"{n} request(s) sent")


async def _counted_once_more(server: ServerProcess, before: float, **labels: str) -> None:
    """``wsserve_requests_total{labels}`` reaches ``before + 1`` (the server counts a request when
    its terminal frame is written, which may be just after the client saw it), and stays there."""
    await wait_until_async(lambda: server.metrics().get("wsserve_requests_total", **labels) >= before + 1, 5,
                           in_thread=True)
    assert (await server.ametrics()).get("wsserve_requests_total", **labels) == before + 1


async def test_cancelling_a_predict_task(slow_server: ServerProcess) -> None:
    before = (await slow_server.ametrics()).get("wsserve_requests_total", **PREDICT_CANCELLED)
    async with Client(slow_server.url) as c:
        task = asyncio.ensure_future(c.predict("linear", [[0.5]]))  # sits in the 2 s window
        await _sent(c)
        assert c.stats().inflight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _settle(c)
        s = c.stats()
        assert s.cancels_sent == 1 and s.server_cancelled == 1  # cancelled, not run by the window
        assert (await slow_server.ametrics()).value("wsserve_inflight_requests") == 0  # nothing left on the server
    await _counted_once_more(slow_server, before, **PREDICT_CANCELLED)


async def test_wait_for_timeout_on_predict_cancels_on_server(slow_server: ServerProcess) -> None:
    async with Client(slow_server.url) as c:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.predict("linear", [[0.5]]), 0.1)
        await _settle(c)
        assert c.stats().server_cancelled == 1


async def test_leaving_a_predict_stream_block_early(slow_server: ServerProcess) -> None:
    async with Client(slow_server.url) as c:
        async with c.predict_stream("linear", [[0.5]] * 4):
            await _sent(c)  # nothing computed yet: the rows wait in the 2 s window
        await _settle(c)
        assert c.stats().server_cancelled == 1 and c.stats().cancels_sent == 1


async def test_generation_break_from_bare_async_for(server: ServerProcess) -> None:
    """``break`` with no ``async with`` and no ``aclose()``: the cancel still goes out."""
    async with Client(server.url) as c:
        before = (await server.ametrics()).get("wsserve_requests_total", **GENERATE_CANCELLED)
        n = 0
        async for _ in c.generate("charlm", "The ", max_tokens=LONG):
            n += 1
            if n == 5:
                break
        await _settle(c)
        assert c.stats().cancels_sent == 1 and c.stats().server_cancelled == 1
        assert (await server.ametrics()).value("wsserve_inflight_requests") == 0  # no longer runs on the server
    await _counted_once_more(server, before, **GENERATE_CANCELLED)


async def test_generation_break_inside_async_with(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        gen = c.generate("charlm", "The ", max_tokens=LONG)
        async with gen:
            async for _ in gen:
                break
        await _settle(c)
        assert c.stats().server_cancelled == 1
        assert gen.finished
        with pytest.raises(RuntimeError):
            _ = gen.result  # the caller left; no result


async def test_generation_aclose(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        gen = c.generate("charlm", "The ", max_tokens=LONG)
        assert await gen.__anext__()
        await gen.aclose()
        await gen.aclose()  # idempotent
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
        await _settle(c)
        assert c.stats().server_cancelled == 1 and c.stats().cancels_sent == 1


async def test_generation_cancel_keeps_listening_for_reason_cancelled(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        gen = c.generate("charlm", "The ", max_tokens=LONG)
        n = 0
        async for _ in gen:
            n += 1
            if n == 3:
                gen.cancel()
        r = gen.result
        assert r.reason == "cancelled"
        assert 3 <= r.tokens < LONG and len(r.text) == n
        assert c.stats().server_cancelled == 1 and c.stats().inflight == 0


async def test_cancelling_the_task_consuming_a_generation(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        got = asyncio.Event()

        async def consume() -> None:
            async for _ in c.generate("charlm", "The ", max_tokens=LONG):
                got.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(got.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _settle(c)
        assert c.stats().server_cancelled == 1


async def test_leaving_the_client_cancels_unfinished_work(server: ServerProcess) -> None:
    c = Client(server.url)
    await c.connect()
    before = (await server.ametrics()).get("wsserve_requests_total", **GENERATE_CANCELLED)
    got = asyncio.Event()
    errors: list[BaseException] = []

    async def consume() -> None:
        try:
            async for _ in c.generate("charlm", "The ", max_tokens=LONG):
                got.set()
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(got.wait(), 5)
    async with c:  # leaving the block closes the client
        pass
    await asyncio.wait_for(task, 5)
    assert len(errors) == 1 and isinstance(errors[0], ClientClosed)
    assert c.stats().cancels_sent == 1
    await _counted_once_more(server, before, **GENERATE_CANCELLED)
    assert (await server.ametrics()).value("wsserve_inflight_requests") == 0


async def test_generation_garbage_collected_cycle_still_cancels(server: ServerProcess) -> None:
    """Even a stream object kept alive by a reference cycle sends its cancel once collected."""
    async with Client(server.url) as c:
        gen = c.generate("charlm", "The ", max_tokens=LONG)
        await gen.__anext__()
        gc.disable()  # so the cycle lives until the explicit collection below
        try:
            holder: dict[str, object] = {"gen": gen}
            holder["self"] = holder  # a cycle: freed only by the cycle collector
            del gen, holder
            await asyncio.sleep(0.05)  # absence over a window is the behaviour: no cancel before collection
            assert c.stats().cancels_sent == 0
            gc.collect()
        finally:
            gc.enable()
        await _settle(c)
        assert c.stats().cancels_sent == 1 and c.stats().server_cancelled == 1


async def test_client_side_deadline_guard_sends_cancel() -> None:
    """A server that never answers: after ``timeout`` + 1 s grace the client gives up, raises
    DeadlineExceeded and tells the server to cancel (checked on the fake's side)."""
    received: list[bytes] = []

    async def silent(ws: websockets.ServerConnection) -> None:
        await ws.send('{"type":"hello","server":"fake","version":"0","protocol":1,"limits":{},"models":[]}')
        async for msg in ws:
            received.append(msg if isinstance(msg, bytes) else msg.encode())

    async with websockets.serve(silent, "127.0.0.1", 0) as fake:
        port = fake.sockets[0].getsockname()[1]
        async with Client(f"ws://127.0.0.1:{port}") as c:
            start = asyncio.get_running_loop().time()
            with pytest.raises(DeadlineExceeded) as ei:
                # The watchdog only catches a client that would wait forever for the silent server.
                await asyncio.wait_for(c.predict("linear", [[0.5]], timeout=0.05), 30)
            assert asyncio.get_running_loop().time() - start >= 1.0  # the 1 s grace was granted
            assert ei.value.code == "deadline_exceeded" and "grace" in ei.value.message  # the client's guard
            assert isinstance(ei.value, TimeoutError)  # ``except TimeoutError`` catches it too
            rid = ei.value.request_id
            await wait_until_async(lambda: len(received) >= 2, 5, what="the request and its cancel reach the server")
    assert b'"timeout_ms":50' in received[0]
    assert received[1] == b'{"type":"cancel","id":%d}' % rid
