"""The plain ``websockets`` ``send()`` path, used when coalesced writes are unavailable."""

from __future__ import annotations

import asyncio

import pytest
import wsserve_client._connection as connection_module
from wsserve_client import Client

from tests.support import ServerProcess, wait_until_async


@pytest.fixture
def plain_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_module, "COALESCE", False)


@pytest.mark.usefixtures("plain_send")
async def test_calls_and_cancel_without_coalescing(server: ServerProcess, slow_server: ServerProcess) -> None:
    async with Client(server.url) as c:
        assert c._conn is not None and c._conn._fast is None
        out = await asyncio.gather(*(c.predict("linear", [[i / 100]]) for i in range(100)))
        assert len(out) == 100 and c.stats().requests_sent == 100
        chunks = [ch async for ch in c.predict_stream("linear", [[0.5]] * 5, chunk_rows=2)]
        assert [len(ch.outputs) for ch in chunks] == [2, 2, 1]
    async with Client(slow_server.url) as c:
        task = asyncio.ensure_future(c.predict("linear", [[0.5]]))
        await wait_until_async(lambda: c.stats().requests_sent == 1, 5)  # queued in the 2 s window
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until_async(lambda: c.stats().inflight == 0, 5, what="the server answered the cancel")
        assert c.stats().cancels_sent == 1 and c.stats().server_cancelled == 1
