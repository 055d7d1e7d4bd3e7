"""wsserve's real transport with an echo application: the testee for the Autobahn test suite.

``python -m benchmarks.conformance.echo_server --port 0 [--compression | --transport picows]``
prints ``ws://HOST:PORT`` when ready and serves until SIGINT/SIGTERM.

Every TCP connection starts in :class:`wsserve.transport.HttpProtocol` and is
upgraded to :class:`wsserve.transport.WebSocketProtocol` (or, with ``--transport
picows``, adopted by :class:`wsserve.transport.picows_conn.PicowsConnection`),
exactly as in ``wsserve serve``; only the application behind the transport differs:
:class:`EchoApp` implements the :class:`wsserve.transport.app.App` interface and
its connections (:class:`EchoConnection`) send each message back —

- a text message as a text frame, after checking it is UTF-8; one that is not
  fails the connection with close code 1007 (RFC 6455 §8.1), as wsserve's JSON
  path does (its core maps orjson's rejection of invalid UTF-8 to 1007);
- a binary message as a binary frame (``send_binary``, on either transport).

Without compression whole data frames take the transport's fast path; with
``--compression`` (permessage-deflate, websockets transport only) every frame
goes through the ``websockets`` library's path.  ``max_message_bytes`` is 64 MiB (Autobahn sends
messages of up to 16 MiB) and keepalive pings are off (as in
``benchmarks/peers/echo_server.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from wsserve.config import TRANSPORTS, ServerConfig  # noqa: E402
from wsserve.transport import (  # noqa: E402
    Flusher,
    HttpProtocol,
    HttpRequest,
    HttpResponse,
    WebSocketProtocol,
)
from wsserve.transport.app import Counters  # noqa: E402

__all__ = ["EchoApp", "EchoConnection", "echo_config", "start"]

#: Largest message accepted (Autobahn's largest is 16 MiB).
MAX_MESSAGE_BYTES = 64 << 20


def echo_config(*, host: str = "127.0.0.1", port: int = 0, compression: bool = False,
                transport: str = "websockets") -> ServerConfig:
    """The transport settings of the conformance runs (validated: ``ValueError`` for
    compression with picows, or picows not installed)."""
    return replace(
        ServerConfig(),
        host=host,
        port=port,
        compression=compression,
        transport=transport,
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_write_buffer_bytes=4 * MAX_MESSAGE_BYTES,
        ping_interval_s=None,
        ping_timeout_s=None,
    ).validate()


class EchoConnection:
    """The per-connection object the transport drives (the parts of
    :class:`wsserve.connection.Connection` it calls): echoes every message."""

    congested = False  # no slow-consumer policy: the transport's pause_reading is the only flow control

    def __init__(self, io: WebSocketProtocol | Any) -> None:  # or a PicowsConnection
        self.io = io
        self.closing = False
        self.timer_epoch = 0  # never changes: the echo has no deadlines
        self.messages = 0

    def open(self) -> None:
        """Nothing to send on open (wsserve's core sends ``hello`` here)."""

    def receive(self, data: bytes, binary: bool, now: float) -> None:
        """Echo one complete message; a text message that is not UTF-8 closes with 1007."""
        if self.closing:
            return
        self.messages += 1
        if binary:
            self.io.send_binary(data)
            return
        try:
            bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            self.closing = True
            self.io.close(1007, "invalid UTF-8 in a text frame")
            return
        self.io.send(data)

    def lost(self) -> None:
        self.closing = True

    def next_timer(self) -> float | None:
        return None

    def on_timer(self, now: float) -> None:
        pass

    def wrote(self, unsent: int, now: float) -> None:
        pass


class EchoApp:
    """The :class:`wsserve.transport.app.App` of the echo testee: every handshake on any path accepted."""

    server_header = "wsserve-echo"
    trusted_proxies: tuple = ()
    access_log = None

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.flusher = Flusher()
        self.counters = Counters()
        self.connections: set[EchoConnection] = set()
        self.protocols: set[Any] = set()
        self.close_codes: list[int] = []

    def route_http(self, request: HttpRequest, exchange: object = None) -> HttpResponse:
        """Every plain request: 404, answered at once (the transport passes its exchange too)."""
        return HttpResponse(404, b"WebSocket echo only\n")

    def vet_websocket(self, request: HttpRequest) -> tuple[str | None, HttpResponse | None]:
        return None, None

    def open_connection(self, io: Any, address: str, key: str | None) -> EchoConnection:
        conn = EchoConnection(io)
        self.connections.add(conn)
        return conn

    def connection_closed(self, conn: Any, close_code: int) -> None:
        self.connections.discard(conn)
        self.close_codes.append(close_code)

    def track(self, transport_protocol: object, alive: bool) -> None:
        if alive:
            self.protocols.add(transport_protocol)
        else:
            self.protocols.discard(transport_protocol)

    def abort_all(self) -> None:
        for proto in list(self.protocols):
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.abort()


async def start(app: EchoApp) -> asyncio.base_events.Server:
    """Listen on ``app.config``'s host and port with wsserve's HTTP front (port 0: a free one)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HttpProtocol(app), app.config.host, app.config.port)  # type: ignore[arg-type]


async def _main(host: str, port: int, compression: bool, transport: str) -> None:
    app = EchoApp(echo_config(host=host, port=port, compression=compression, transport=transport))
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    listener = await start(app)
    bound = listener.sockets[0].getsockname()[1]
    mode = "permessage-deflate (library path)" if compression else "no compression (fast path)"
    if transport != "websockets":
        mode = f"{transport}, {mode}"
    print(f"wsserve echo ({mode}) listening on ws://{host}:{bound}", flush=True)
    await stop
    listener.close()
    app.abort_all()
    print(f"frames: fast path {app.counters.frames_fast}, library {app.counters.frames_library}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--compression", action="store_true", help="offer permessage-deflate (library path)")
    ap.add_argument("--transport", choices=TRANSPORTS, default="websockets",
                    help="WebSocket implementation, as wsserve serve --transport (picows: no --compression)")
    ap.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    a = ap.parse_args(argv)
    try:
        echo_config(compression=a.compression, transport=a.transport)
    except ValueError as exc:
        ap.error(str(exc))
    coro = _main(a.host, a.port, a.compression, a.transport)
    if a.loop != "asyncio":
        try:
            import uvloop

            uvloop.run(coro)
            return
        except ImportError:
            if a.loop == "uvloop":
                raise
    asyncio.run(coro)


if __name__ == "__main__":
    main()
