"""A thin protocol client on the ``websockets`` library (no wsserve_client).

Deliberately thin: tests see exactly the frames the server sends, as JSON.  For
behaviour below what the library does (unanswered pings, hand-made frames) use
:mod:`tests.support.rawws`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

__all__ = ["TERMINAL", "Conn"]

TERMINAL = {"result", "done", "error"}


class Conn:
    """One socket; ``frames`` keeps every frame received, in order."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.hello = hello
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> Conn:
        kwargs.setdefault("compression", None)
        kwargs.setdefault("max_size", None)
        ws = await websockets.connect(url, **kwargs)
        hello = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert hello["type"] == "hello", hello
        return cls(ws, hello)

    async def send(self, msg: Any) -> None:
        if isinstance(msg, (str, bytes)):
            await self.ws.send(msg)
        else:
            await self.ws.send(orjson.dumps(msg).decode())

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        frame = orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def request(self, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send and return the next frame (for requests answered by one frame)."""
        await self.send(msg)
        return await self.recv(timeout)

    async def until_terminal(self, rid: Any, timeout: float = 30.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Frames of ``rid`` until its terminal frame (other ids' frames are kept in ``frames``)."""
        seen: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, end - loop.time()))
            if frame.get("id") == rid:
                if frame["type"] in TERMINAL:
                    return seen, frame
                seen.append(frame)

    async def collect(self, ids: set[Any], timeout: float = 60.0) -> dict[Any, list[dict[str, Any]]]:
        """Frames per id until every id in ``ids`` had a terminal frame."""
        out: dict[Any, list[dict[str, Any]]] = {i: [] for i in ids}
        pending = set(ids)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while pending:
            frame = await self.recv(max(0.01, end - loop.time()))
            rid = frame.get("id")
            if rid in out:
                out[rid].append(frame)
                if frame["type"] in TERMINAL:
                    pending.discard(rid)
        return out

    async def close(self) -> None:
        await self.ws.close()
