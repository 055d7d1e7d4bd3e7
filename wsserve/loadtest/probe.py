"""Find out what is at the URL before loading it: a wsserve-protocol server or a raw echo.

One short connection sends ``{"type":"models","id":"__loadtest_probe__"}``.  A
protocol server answers with its ``models`` list (its ``hello`` gives the
limits); an echo server sends back exactly the bytes it got.  The answer
decides how replies are matched and what inputs fit each model.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .config import ServerInfo
from .workload import ModelShape

__all__ = ["PROBE_ID", "SUBPROTOCOL", "LoadTestError", "auth_headers", "connect_kwargs", "probe"]

PROBE_ID = "__loadtest_probe__"
SUBPROTOCOL = "wsserve.v1"


class LoadTestError(Exception):
    """The load test cannot run (unreachable server, unusable answer, bad workload); the message says why."""


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization: Bearer <key>`` when a key is given."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def connect_kwargs(*, open_timeout_s: float, api_key: str | None = None) -> dict[str, Any]:
    """Client settings of the probe: no compression, no proxy, no keepalive pings, no size cap."""
    return {
        "additional_headers": auth_headers(api_key),
        "subprotocols": [SUBPROTOCOL],
        "compression": None,
        "proxy": None,
        "open_timeout": open_timeout_s,
        "ping_interval": None,
        "max_size": None,
        "close_timeout": 2,
    }


async def probe(url: str, *, echo: bool | None, open_timeout_s: float = 10.0, api_key: str | None = None) -> ServerInfo:
    """Connect once and classify the server.  Raises :class:`LoadTestError`.

    ``echo=True`` skips the question; ``echo=False`` refuses an echo server.
    """
    try:
        async with connect(url, **connect_kwargs(open_timeout_s=open_timeout_s, api_key=api_key)) as ws:
            if echo is True:
                return ServerInfo(kind="echo", server="echo")
            request = orjson.dumps({"type": "models", "id": PROBE_ID})
            await ws.send(request, text=True)
            hello: dict[str, Any] = {}
            async with asyncio.timeout(open_timeout_s):
                while True:
                    data = await ws.recv(decode=False)
                    if data == request:
                        if echo is False:
                            raise LoadTestError(
                                f"{url} echoed the probe back: an echo server, not a wsserve-protocol server (use --echo)"
                            )
                        return ServerInfo(kind="echo", server="echo")
                    try:
                        frame = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise LoadTestError(f"{url} sent a frame that is not JSON: {bytes(data)[:80]!r}") from None
                    if not isinstance(frame, dict):
                        continue
                    if frame.get("type") == "hello":
                        hello = frame
                        continue
                    if frame.get("id") != PROBE_ID:
                        continue
                    return _server_info(frame, hello)
    except LoadTestError:
        raise
    except TimeoutError:
        raise LoadTestError(f"{url} did not answer a models request within {open_timeout_s:g} s") from None
    except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
        raise LoadTestError(f"cannot use {url}: {type(exc).__name__}: {exc}") from None


def _server_info(reply: dict[str, Any], hello: dict[str, Any]) -> ServerInfo:
    models: dict[str, ModelShape] = {}
    if reply.get("type") == "models" and isinstance(reply.get("models"), list):
        for obj in reply["models"]:
            if isinstance(obj, dict) and "name" in obj:
                shape = ModelShape.from_json(obj)
                models[shape.name] = shape
    limits = hello.get("limits")
    max_inflight = limits.get("max_inflight") if isinstance(limits, dict) else None
    if not isinstance(max_inflight, int) or isinstance(max_inflight, bool) or max_inflight < 1:
        max_inflight = None
    return ServerInfo(
        kind="protocol",
        server=str(hello.get("server", "unknown")),
        version=str(hello["version"]) if "version" in hello else None,
        max_inflight=max_inflight,
        models=models,
    )
