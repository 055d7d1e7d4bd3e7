"""Connection loss: unfinished calls fail promptly with ConnectionLost; the next call
reconnects with bounded backoff."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
from wsserve_client import Backoff, Client, ClientClosed, ConnectionLost

from tests.support import ServerProcess, wait_until_async

FAST = Backoff(max_attempts=3, base_delay=0.05, max_delay=0.2)


async def test_reconnect_after_server_restart_on_same_port(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server()
    port = srv.port
    # Keepalive off: only the socket's end can tell the client the server is gone.
    async with Client(srv.url, reconnect=FAST, ping_interval=None) as c:
        assert len((await c.predict("linear", [[0.5]])).outputs) == 1
        srv.kill()
        # The reader sees the socket die ...
        await wait_until_async(lambda: not c.stats().connected, 10, interval_s=0.01, what="the client sees the EOF")
        # ... and the next call tries to reconnect, boundedly (3 attempts; the watchdog only
        # catches endless retrying), and fails.
        with pytest.raises(ConnectionLost, match="could not connect"):
            await asyncio.wait_for(c.predict("linear", [[0.5]]), 30)
        assert not c.stats().connected
        start_server(port=port)  # same port, new process
        r = await c.predict("linear", [[0.5]])
        assert len(r.outputs) == 1
        s = c.stats()
        assert s.connects == 2 and s.connected and s.inflight == 0
        assert await c.ping() > 0


async def test_server_dies_mid_stream(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--max-delay-ms", "5000")  # the predict below stays queued
    # Keepalive off: only the socket's end can end the calls (a hang fails the 30 s watchdog).
    async with Client(srv.url, reconnect=FAST, ping_interval=None) as c, asyncio.timeout(30):
        pending = asyncio.ensure_future(c.predict("linear", [[0.5]]))
        stream = c.predict_stream("linear", [[0.5]] * 3)
        await stream.__aenter__()
        tokens = 0
        with pytest.raises(ConnectionLost) as ei:
            async for _ in c.generate("charlm", "The ", max_tokens=100_000):
                tokens += 1
                if tokens == 5:
                    srv.kill()
        assert ei.value.code is None and isinstance(ei.value.request_id, int)
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(pending, 2)
        with pytest.raises(ConnectionLost):
            async for _ in stream:
                pass
        assert c.stats().inflight == 0 and not c.stats().connected


async def test_connect_failure_is_bounded() -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionLost, match="after 3 attempts"):
        async with asyncio.timeout(30), Client(f"ws://127.0.0.1:{port}", reconnect=FAST):  # (watchdog)
            pass


async def test_calls_waiting_for_a_slot_survive_a_reconnect(start_server: Callable[..., ServerProcess]) -> None:
    """Calls queued behind max_inflight when the socket dies either fail with ConnectionLost
    (if they were sent) or go out on the next connection — none hangs."""
    srv = start_server("--max-inflight", "2", "--max-delay-ms", "3000")
    port = srv.port
    async with Client(srv.url, reconnect=Backoff(max_attempts=40, base_delay=0.05, max_delay=0.2)) as c:
        calls = [asyncio.ensure_future(c.predict("linear", [[0.5]])) for _ in range(4)]
        await wait_until_async(lambda: c.stats().requests_sent == 2, 5)  # queued in the 3 s window
        assert c.stats().inflight == 2 and c.stats().waiting == 2
        srv.kill()
        start_server("--max-inflight", "2", port=port)
        out = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        lost = [r for r in out if isinstance(r, ConnectionLost)]
        ok = [r for r in out if not isinstance(r, BaseException)]
        assert len(lost) == 2 and len(ok) == 2
        assert c.stats().connects == 2 and c.stats().inflight == 0


async def test_close_interrupts_a_reconnect_in_progress() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = Client(f"ws://127.0.0.1:{port}", reconnect=Backoff(max_attempts=100, base_delay=0.2, max_delay=0.2))
    connecting = asyncio.ensure_future(c.connect())
    await asyncio.sleep(0.3)  # the scenario: a few attempts into ~20 s of them
    assert not connecting.done()
    async with asyncio.timeout(60):  # a watchdog: uninterrupted, the attempts end in ~20 s with ConnectionLost
        await c.close()
        with pytest.raises(ClientClosed):  # not the plain ConnectionLost of attempts run out
            await connecting
