"""A lean client WebSocket: the :mod:`.frames` codec inside an ``asyncio.Protocol``.

The load generator must cost the machine less than the server it measures.
Here a received message is handed synchronously to ``on_message(payload)``
from ``data_received`` — no task, no queue, no future per message — and the
frames sent while handling one read are written with one ``transport.write``
at the end (corking).  Pings are answered; the closing handshake is done
both ways (we echo a server's close frame; :meth:`WsClient.close` starts ours).

Call order: :func:`open_client` → :meth:`WsClient.send` any number of times →
:meth:`WsClient.close` (idempotent) → await :attr:`WsClient.closed`, whose
result is the close code received (1006 when the TCP connection ended
without a close frame, 1005 when the frame carried no code).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from typing import Literal

from websockets.uri import parse_uri

from .frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    HandshakeError,
    Masker,
    ProtocolError,
    check_response,
    handshake_request,
)

__all__ = ["WsClient", "open_client"]

OnMessage = Callable[[bytes], None]
OnClose = Callable[[int], None]

_CLOSE_TIMEOUT_S = 2.0


class WsClient(asyncio.Protocol):
    """One client connection (see the module docstring).  ``on_close(code)`` runs once when the TCP connection ends."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str,
        on_message: OnMessage,
        on_close: OnClose | None = None,
        subprotocols: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._request, self._key = handshake_request(
            host=host, port=port, path=path, subprotocols=subprotocols, headers=headers
        )
        self._on_message = on_message
        self._on_close = on_close
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int] = loop.create_future()
        self.subprotocol: str | None = None
        self._state: Literal["connecting", "open", "closing", "closed"] = "connecting"
        self._head = bytearray()
        self._reader = FrameReader()
        self._masker = Masker()
        self._transport: asyncio.Transport | None = None
        self._corked = False
        self._out: list[bytes] = []
        self._close_rcvd: int | None = None
        self._abort_handle: asyncio.TimerHandle | None = None

    @property
    def is_open(self) -> bool:
        return self._state == "open"

    @property
    def close_code(self) -> int | None:
        """The close code received once the connection has ended (see :attr:`closed`), else ``None``."""
        return self.closed.result() if self.closed.done() else None

    # -- asyncio.Protocol --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        self._transport.write(self._request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self._state == "connecting":
            self._head += data
            try:
                done = check_response(self._head, self._key)
            except HandshakeError as exc:
                self.opened.set_exception(exc)
                self._abort()
                return
            if done is None:
                return
            head_len, headers = done
            self.subprotocol = headers.get("sec-websocket-protocol")
            data = bytes(self._head[head_len:])
            self._head = bytearray()
            self._state = "open"
            self.opened.set_result(None)
            if not data:
                return
        elif self._state == "closed":
            return
        try:
            events = self._reader.feed(data)
        except ProtocolError:
            self._fail(1002)
            return
        self._corked = True
        try:
            for op, payload in events:
                if op == OP_TEXT or op == OP_BINARY:
                    if self._state == "open":
                        self._on_message(payload)
                elif op == OP_PING:
                    self._out.append(self._masker.frame(OP_PONG, payload))
                elif op == OP_CLOSE:
                    self._close_rcvd = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    if self._state == "open":  # echo the close, then the server closes TCP
                        self._out.append(self._masker.close(self._close_rcvd if len(payload) >= 2 else 1000))
                    self._state = "closing"
                    self._schedule_abort()
                    break
        finally:
            self._corked = False
            if self._out and self._transport is not None:
                out, self._out = self._out, []
                self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = "closed"
        if self._abort_handle is not None:
            self._abort_handle.cancel()
        if not self.opened.done():
            self.opened.set_exception(
                ConnectionError(f"connection lost during the handshake: {exc or 'closed by the server'}")
            )
        code = self._close_rcvd if self._close_rcvd is not None else 1006
        if not self.closed.done():
            self.closed.set_result(code)
        if self._on_close is not None:
            self._on_close(code)

    # -- sending -----------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Send one text frame (``data`` is UTF-8).  Raises ``ConnectionError`` when not open."""
        if self._state != "open":
            raise ConnectionError("connection is not open")
        frame = self._masker.text(data)
        if self._corked:
            self._out.append(frame)
        else:
            self._transport.write(frame)  # type: ignore[union-attr]

    def send_binary(self, data: bytes) -> None:
        """Send one binary frame.  Raises ``ConnectionError`` when not open."""
        if self._state != "open":
            raise ConnectionError("connection is not open")
        frame = self._masker.frame(OP_BINARY, data)
        if self._corked:
            self._out.append(frame)
        else:
            self._transport.write(frame)  # type: ignore[union-attr]

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake (no-op unless open); await :attr:`closed` for the end."""
        if self._state == "open":
            self._state = "closing"
            self._transport.write(self._masker.close(code))  # type: ignore[union-attr]
            self._schedule_abort()
        elif self._state == "connecting":
            self._abort()

    # -- internals ---------------------------------------------------------
    def _fail(self, code: int) -> None:
        if self._state == "open" and self._transport is not None:
            self._transport.write(self._masker.close(code))
        self._state = "closing"
        self._abort()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _schedule_abort(self) -> None:
        if self._abort_handle is None and self._transport is not None:
            self._abort_handle = asyncio.get_running_loop().call_later(_CLOSE_TIMEOUT_S, self._transport.abort)


async def open_client(
    url: str,
    *,
    on_message: OnMessage,
    on_close: OnClose | None = None,
    subprotocols: list[str] | None = None,
    headers: dict[str, str] | None = None,
    open_timeout_s: float = 10.0,
) -> WsClient:
    """Connect and complete the handshake.  Raises ``OSError``, ``HandshakeError`` or ``TimeoutError``."""
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    ctx = ssl.create_default_context() if uri.secure else None
    async with asyncio.timeout(open_timeout_s):
        transport, client = await loop.create_connection(
            lambda: WsClient(
                host=uri.host,
                port=uri.port,
                path=uri.resource_name,
                on_message=on_message,
                on_close=on_close,
                subprotocols=subprotocols,
                headers=headers,
            ),
            uri.host,
            uri.port,
            ssl=ctx,
        )
        try:
            await client.opened
        except BaseException:
            transport.abort()
            raise
    return client
