"""A lean client WebSocket: websockets' sans-I/O protocol inside an ``asyncio.Protocol``.

The load generator must cost the machine less than the server it measures.
``websockets.asyncio`` hands every message through a queue to a coroutine;
here a message is handed synchronously to ``on_message(data)`` from
``data_received`` — no task, no queue, no future per message — and frames
sent while handling received data are written in one ``transport.write`` at the
end (corking).  Handshake, masking, ping/pong and the closing handshake are
websockets' own (:class:`websockets.client.ClientProtocol`).

Call order: :func:`open_client` → :meth:`WsClient.send` any number of times →
:meth:`WsClient.close` (idempotent) → await :attr:`WsClient.closed`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.protocol import CLOSED, OPEN
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

__all__ = ["WsClient", "open_client"]

OnMessage = Callable[[bytes], None]
OnClose = Callable[[int], None]

_CLOSE_TIMEOUT_S = 2.0


class WsClient(asyncio.Protocol):
    """One client connection (see the module docstring).  ``on_close(code)`` runs once when the TCP connection ends."""

    def __init__(self, url: str, *, on_message: OnMessage, on_close: OnClose | None = None,
                 subprotocols: list[str] | None = None) -> None:
        self._ws = ClientProtocol(parse_uri(url), subprotocols=[Subprotocol(s) for s in subprotocols or []], max_size=None)
        self._on_message = on_message
        self._on_close = on_close
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int] = loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._corked = False
        self._frags: list[bytes] = []
        self._abort_handle: asyncio.TimerHandle | None = None

    # -- state -------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._ws.state is OPEN

    @property
    def close_code(self) -> int | None:
        """The close code received (1006 if none), once closed; else ``None``."""
        return self._ws.close_code

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol

    # -- asyncio.Protocol --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        self._ws.send_request(self._ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        self._corked = True
        try:
            self._handle_events()
        finally:
            self._corked = False
            self._flush()
        if ws.close_expected():
            self._schedule_abort()

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._corked = True
        try:
            self._handle_events()
        finally:
            self._corked = False
            self._flush()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        ws = self._ws
        if ws.state is not CLOSED:
            ws.receive_eof()  # moves the protocol to CLOSED (code 1006 unless a close frame came)
            ws.events_received()
        if self._abort_handle is not None:
            self._abort_handle.cancel()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc or 'closed by peer'}"))
        code = ws.close_code if ws.close_code is not None else 1006
        if not self.closed.done():
            self.closed.set_result(code)
        if self._on_close is not None:
            self._on_close(code)

    # -- sending -----------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Send one text frame (``data`` is UTF-8).  Raises ``ConnectionError`` when not open."""
        if self._ws.state is not OPEN:
            raise ConnectionError("connection is not open")
        self._ws.send_text(data)
        if not self._corked:
            self._flush()

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake (no-op if not open); await :attr:`closed` for the end."""
        if self._ws.state is OPEN:
            self._ws.send_close(code)
            self._flush()
            self._schedule_abort()
        elif self._transport is not None and not self.closed.done() and self._ws.state is not OPEN:
            self._schedule_abort()

    # -- internals ---------------------------------------------------------
    def _handle_events(self) -> None:
        for ev in self._ws.events_received():
            if isinstance(ev, Frame):
                op = ev.opcode
                if op is Opcode.TEXT or op is Opcode.BINARY:
                    if ev.fin:
                        self._on_message(ev.data)
                    else:
                        self._frags = [ev.data]
                elif op is Opcode.CONT:
                    self._frags.append(ev.data)
                    if ev.fin:
                        data, self._frags = b"".join(self._frags), []
                        self._on_message(data)
                # ping, pong and close are answered by the protocol itself
            elif not self.opened.done():  # the handshake response
                exc = self._ws.handshake_exc
                if exc is not None:
                    self.opened.set_exception(exc if isinstance(exc, InvalidHandshake) else ConnectionError(str(exc)))
                else:
                    self.opened.set_result(None)

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for chunk in self._ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    def _schedule_abort(self) -> None:
        if self._abort_handle is None and self._transport is not None:
            self._abort_handle = asyncio.get_running_loop().call_later(_CLOSE_TIMEOUT_S, self._transport.abort)


async def open_client(url: str, *, on_message: OnMessage, on_close: OnClose | None = None,
                      subprotocols: list[str] | None = None, open_timeout_s: float = 10.0) -> WsClient:
    """Connect and complete the handshake; raises ``OSError``/``InvalidHandshake``/``TimeoutError``."""
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    ctx = ssl.create_default_context() if uri.secure else None
    async with asyncio.timeout(open_timeout_s):
        transport, client = await loop.create_connection(
            lambda: WsClient(url, on_message=on_message, on_close=on_close, subprotocols=subprotocols),
            uri.host, uri.port, ssl=ctx)
        try:
            await client.opened
        except BaseException:
            transport.abort()
            raise
    return client
