"""Error mapping: every wire code the tests can provoke on a real server reaches the caller as
its own exception class, carrying the code, the request id and the server's message."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable

import orjson
import pytest
import websockets
from wsserve_client import (
    BadJsonError,
    BadRequestError,
    Client,
    ConnectionLost,
    DeadlineExceeded,
    DuplicateIdError,
    InvalidInput,
    OverloadedError,
    RateLimitedError,
    RequestCancelled,
    RetryPolicy,
    ShuttingDown,
    Unauthorized,
    UnknownModelError,
    WsserveError,
    error_from_frame,
)

from tests.support import ServerProcess, wait_until_async


async def test_bad_request_unknown_model_invalid_input(server: ServerProcess) -> None:
    async with Client(server.url) as c:
        cases: list[tuple[type[WsserveError], Callable[[], object]]] = [
            (BadRequestError, lambda: c.predict("linear", [[0.5]], priority=3)),
            (UnknownModelError, lambda: c.predict("linaer", [[0.5]])),
            (InvalidInput, lambda: c.predict("linear", [[0.5, 1.0]])),
            (InvalidInput, lambda: c.predict("linear", [])),
            (InvalidInput, lambda: c.predict("linear", [["x"]])),
        ]
        for cls, call in cases:
            with pytest.raises(cls) as ei:
                await call()  # type: ignore[misc]
            exc = ei.value
            assert exc.code == cls.wire_code
            assert isinstance(exc.request_id, int)
            assert exc.message and exc.message in str(exc)
        with pytest.raises(UnknownModelError, match="linaer"):
            await c.predict("linaer", [[0.5]])


async def test_raw_frames_duplicate_id_and_bad_json_map_to_classes(slow_server: ServerProcess) -> None:
    """The client never reuses ids nor sends bad JSON, so provoke those codes with a raw
    socket and check the client's mapping of the server's real frames."""
    async with websockets.connect(slow_server.url, compression=None) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello"
        frame = {"type": "predict", "id": "dup", "model": "linear", "inputs": [[0.5]]}
        await ws.send(json.dumps(frame))  # waits in the 2 s batching window
        await ws.send(json.dumps(frame))
        dup = orjson.loads(await ws.recv())
        await ws.send("{not json")
        bad = orjson.loads(await ws.recv())
        await ws.send(json.dumps({"type": "cancel", "id": "dup"}))
        cancelled = orjson.loads(await ws.recv())
    exc = error_from_frame(dup)
    assert isinstance(exc, DuplicateIdError) and exc.request_id == "dup" and "dup" in exc.message
    exc = error_from_frame(bad)
    assert isinstance(exc, BadJsonError) and exc.request_id is None and exc.code == "bad_json"
    exc = error_from_frame(cancelled)
    assert isinstance(exc, RequestCancelled) and exc.request_id == "dup"


async def test_deadline_exceeded_from_the_server(slow_server: ServerProcess) -> None:
    expired = {"model": "linear", "type": "predict", "code": "deadline_exceeded"}
    before = (await slow_server.ametrics()).get("wsserve_requests_total", **expired)
    async with Client(slow_server.url) as c:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded) as ei:
            await c.predict("linear", [[0.5]], timeout=0.2)
        elapsed = time.monotonic() - start
        assert ei.value.code == "deadline_exceeded" and isinstance(ei.value.request_id, int)
        # The server's answer ("deadline passed..."), not the client's guard ("no answer within ... grace").
        assert "deadline passed" in ei.value.message and "grace" not in ei.value.message, ei.value.message
        assert elapsed > 0.15  # not before the deadline
        assert c.stats().inflight == 0
    await wait_until_async(lambda: slow_server.metrics().get("wsserve_requests_total", **expired) >= before + 1, 5,
                           in_thread=True)
    assert (await slow_server.ametrics()).get("wsserve_requests_total", **expired) == before + 1


async def test_cancelled_code_via_stream_cancel(slow_server: ServerProcess) -> None:
    async with Client(slow_server.url) as c:
        async with c.predict_stream("linear", [[0.5]] * 10, chunk_rows=2) as stream:
            await wait_until_async(lambda: c.stats().requests_sent == 1, 5)  # queued in the 2 s window
            stream.cancel()  # ask the server, keep listening for its answer
            with pytest.raises(RequestCancelled) as ei:
                async for _ in stream:
                    pass
        assert ei.value.code == "cancelled" and ei.value.request_id == stream.request_id
        assert c.stats().server_cancelled == 1 and c.stats().cancels_sent == 1


async def test_overloaded_carries_retry_after_and_retry_recovers(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--max-inflight", "2", "--max-delay-ms", "300")
    # max_inflight above the server's limit: the server, not the client, refuses the excess.
    async with Client(srv.url, max_inflight=10) as c:
        out = await asyncio.gather(*(c.predict("linear", [[0.5]]) for _ in range(5)), return_exceptions=True)
        refused = [r for r in out if isinstance(r, BaseException)]
        assert len(refused) == 3
        for exc in refused:
            assert isinstance(exc, OverloadedError) and exc.code == "overloaded"
            assert exc.retry_after is not None and exc.retry_after > 0
            assert isinstance(exc.request_id, int) and "max_inflight" in exc.message
    overloaded = (await srv.ametrics()).get("wsserve_requests_total", model="linear", type="predict", code="overloaded")
    assert overloaded == 3
    retry = RetryPolicy(max_attempts=50, base_delay=0.02, max_delay=0.2)
    async with Client(srv.url, max_inflight=10, retry=retry) as c:
        out = await asyncio.gather(*(c.predict("linear", [[0.5]]) for _ in range(5)))
        assert all(len(r.outputs) == 1 for r in out)
    assert (await srv.ametrics()).get("wsserve_requests_total", model="linear", type="predict",
                                      code="overloaded") > overloaded


async def test_client_respects_hello_max_inflight(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--max-inflight", "2", "--max-delay-ms", "200")
    async with Client(srv.url) as c:
        assert c.stats().capacity == 2
        calls = [asyncio.ensure_future(c.predict("linear", [[i / 10]])) for i in range(6)]
        # Two sent (they wait 200 ms for company), four held back by the client.
        await wait_until_async(lambda: c.stats().requests_sent == 2, 5)
        s = c.stats()
        assert s.inflight == 2 and s.waiting == 4
        out = await asyncio.gather(*calls)
        assert len(out) == 6
    values = await srv.ametrics()
    assert values.get("wsserve_requests_total", model="linear", type="predict", code="overloaded") == 0
    assert values.get("wsserve_requests_total", model="linear", type="predict", code="ok") == 6


async def test_unauthorized_without_and_with_wrong_token(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--api-key", "s3cret-key")
    async with Client(srv.url) as c:  # no credentials: the socket opens, requests are refused
        with pytest.raises(Unauthorized) as ei:
            await c.predict("linear", [[0.5]])
        assert ei.value.code == "unauthorized" and isinstance(ei.value.request_id, int)
    with pytest.raises(Unauthorized, match="401"):
        async with Client(srv.url, token="wrong"):
            pass
    async with Client(srv.url, token="s3cret-key") as c:
        assert len((await c.predict("linear", [[0.5]])).outputs) == 1
    async with Client(srv.url, token="s3cret-key", auth_message=True) as c:
        assert len((await c.predict("linear", [[0.5]])).outputs) == 1


async def test_shutting_down_during_drain(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--max-delay-ms", "1500", "--drain-timeout", "10")
    async with Client(srv.url) as c:
        running = asyncio.ensure_future(c.predict("linear", [[0.5]]))  # queued in the window
        await wait_until_async(lambda: c.stats().requests_sent == 1, 5)
        srv.signal(signal.SIGTERM)
        await wait_until_async(lambda: c.draining, 5, what="the client saw 'draining'")
        with pytest.raises(ShuttingDown) as ei:
            await c.predict("linear", [[0.5]])
        assert ei.value.code == "shutting_down"
        # Unfinished work still completes during the drain.
        assert len((await running).outputs) == 1
        assert srv.proc is not None
        assert await asyncio.to_thread(srv.proc.wait, 15) == 0
        with pytest.raises(ConnectionLost):
            await c.ping()


async def test_rate_limited_carries_retry_after(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--rate-limit", "5", "--rate-burst", "2")
    async with Client(srv.url) as c:
        out = await asyncio.gather(*(c.predict("linear", [[0.5]]) for _ in range(10)), return_exceptions=True)
        limited = [r for r in out if isinstance(r, RateLimitedError)]
        assert limited, f"expected rate_limited refusals, got {out!r}"
        assert all(e.retry_after is not None and e.retry_after > 0 for e in limited)
        assert all(not isinstance(r, BaseException) or isinstance(r, RateLimitedError) for r in out)
    retry = RetryPolicy(max_attempts=20, base_delay=0.05, max_delay=1.0)
    async with Client(srv.url, retry=retry) as c:
        out2 = await asyncio.gather(*(c.predict("linear", [[0.5]]) for _ in range(6)))
        assert len(out2) == 6
