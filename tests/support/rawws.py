"""A WebSocket client that does only what a test tells it to, byte for byte.

Handshake and framing by hand, over a blocking socket (:class:`RawClient`) or asyncio
streams (:class:`AsyncRawClient`), for behaviour below what a WebSocket library lets
a client do: never answering pings, never reading, unmasked or reserved-bit frames,
fragments split anywhere, requests pipelined behind the handshake.

The byte-level pieces are plain functions shared by both: :func:`client_frame` builds
one client frame (masked unless told otherwise), :func:`handshake_request` the
upgrade request, and :class:`FrameParser` turns the server's bytes into
:class:`Frame` values (no I/O).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Any, NamedTuple, Self

import orjson
from websockets.utils import apply_mask

__all__ = [
    "OP_BINARY", "OP_CLOSE", "OP_CONT", "OP_PING", "OP_PONG", "OP_TEXT",
    "AsyncRawClient", "Frame", "FrameParser", "RawClient", "client_frame", "close_code", "encode_message",
    "handshake_request",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Frame(NamedTuple):
    """One frame from the server."""

    opcode: int
    payload: bytes
    fin: bool = True


def client_frame(payload: bytes, opcode: int = OP_TEXT, *, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    """One client frame.  ``rsv`` is OR-ed into the first byte as is (``0x40`` is RSV1);
    ``mask=False`` makes the (illegal) unmasked frame.  No check of anything: tests send
    invalid frames on purpose."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    mbit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def encode_message(msg: Any) -> bytes:
    """A message's bytes: ``bytes`` as is, ``str`` as UTF-8, anything else as JSON."""
    if isinstance(msg, bytes):
        return msg
    if isinstance(msg, str):
        return msg.encode()
    return orjson.dumps(msg)


def handshake_request(port: int, headers: dict[str, str] | None = None) -> bytes:
    """A WebSocket upgrade request for ``/`` on ``127.0.0.1:port`` with a fresh key, plus ``headers``
    (a ``Host`` among them replaces the default one)."""
    key = base64.b64encode(os.urandom(16)).decode()
    headers = dict(headers or {})
    host = headers.pop("Host", f"127.0.0.1:{port}")
    lines = [
        "GET / HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def close_code(payload: bytes) -> int | None:
    """The status code of a close frame's payload (None when it has none)."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


class FrameParser:
    """Server frames from a byte stream: ``feed(data)``, then ``next()`` until it returns None.

    Server frames are unmasked; a masked one is parsed all the same (its payload unmasked).
    """

    def __init__(self, data: bytes = b"") -> None:
        self._buf = bytearray(data)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> Frame | None:
        """The next complete frame, or None until more bytes are fed."""
        buf = self._buf
        if len(buf) < 2:
            return None
        n, off = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, off = struct.unpack_from("!H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, off = struct.unpack_from("!Q", buf, 2)[0], 10
        key = b""
        if buf[1] & 0x80:
            key, off = bytes(buf[off : off + 4]), off + 4
        if len(buf) < off + n:
            return None
        payload = bytes(buf[off : off + n])
        frame = Frame(buf[0] & 0x0F, apply_mask(payload, key) if key else payload, bool(buf[0] & 0x80))
        del buf[: off + n]
        return frame


def _parse_response_head(head: bytes) -> int:
    try:
        return int(head.split(None, 2)[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"not an HTTP response: {head[:200]!r}") from None


def _text_or_raise(frame: Frame) -> dict[str, Any] | None:
    """``recv_json``'s rule for one frame: text → JSON, ping/pong → None (skip),
    close → ``EOFError``, anything else → ``AssertionError``."""
    if frame.opcode == OP_TEXT:
        return orjson.loads(frame.payload)
    if frame.opcode in (OP_PING, OP_PONG):
        return None
    if frame.opcode == OP_CLOSE:
        raise EOFError(f"closed: {close_code(frame.payload)}")
    raise AssertionError(f"unexpected frame {frame!r:.200}")


class RawClient:
    """Over a blocking TCP socket.  The handshake happens in the constructor; ``status`` and
    ``response_head`` are the server's answer (101 when upgraded; anything else is kept,
    not raised, so refusals can be tested).

    ``rcvbuf`` shrinks the socket's receive buffer before ``connect`` (so the TCP window
    stays small): a client that stops reading then pushes the backlog into the server
    quickly.  ``pipelined`` bytes go in the same write as the handshake.  Socket reads
    time out after ``timeout_s`` (``TimeoutError``).
    """

    def __init__(self, port: int, *, headers: dict[str, str] | None = None, rcvbuf: int | None = None,
                 timeout_s: float = 10.0, pipelined: bytes = b"") -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout_s)
        sock.connect(("127.0.0.1", port))
        self.sock = sock
        sock.sendall(handshake_request(port, headers) + pipelined)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed during the handshake: {buf!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        self.status = _parse_response_head(head)
        self.response_head = head.decode(errors="replace")
        self._frames = FrameParser(rest)

    def send(self, *messages: Any) -> None:
        """Each message (dict → JSON) as a text frame, all in one TCP write."""
        self.sock.sendall(b"".join(client_frame(encode_message(m)) for m in messages))

    def send_bytes(self, data: bytes) -> None:
        """Bytes as they are (hand-made frames)."""
        self.sock.sendall(data)

    def recv_frame(self) -> Frame:
        """The next frame; ``EOFError`` when the server closed the TCP connection first."""
        while (frame := self._frames.next()) is None:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("connection closed")
            self._frames.feed(chunk)
        return frame

    def recv_json(self) -> dict[str, Any]:
        """The next text frame as JSON; pings and pongs are skipped; ``EOFError`` at a close
        frame; ``AssertionError`` at any other frame."""
        while (msg := _text_or_raise(self.recv_frame())) is None:
            pass
        return msg

    def read_until_close(self) -> tuple[int | None, int]:
        """Read everything up to the close frame: ``(its code, or None at a bare EOF or
        reset; the number of text frames before it)``."""
        texts = 0
        try:
            while True:
                frame = self.recv_frame()
                if frame.opcode == OP_CLOSE:
                    return close_code(frame.payload), texts
                texts += frame.opcode == OP_TEXT
        except (EOFError, ConnectionResetError):
            return None, texts

    def close(self) -> None:
        """Close the socket (no closing handshake).  Idempotent."""
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRawClient:
    """:class:`RawClient` over asyncio streams: ``await AsyncRawClient.open(port)``.

    Every read waits at most ``timeout_s`` (``TimeoutError``).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int,
                 response_head: str, rest: bytes) -> None:
        self.reader, self.writer = reader, writer
        self.status, self.response_head = status, response_head
        self._frames = FrameParser(rest)

    @classmethod
    async def open(cls, port: int, *, headers: dict[str, str] | None = None, pipelined: bytes = b"",
                   timeout_s: float = 10.0) -> AsyncRawClient:
        """Connect and do the handshake (``pipelined`` bytes go in the same write); the answer
        is in ``status``/``response_head``, not raised."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(handshake_request(port, headers) + pipelined)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        return cls(reader, writer, _parse_response_head(head), head[:-4].decode(errors="replace"), b"")

    async def send(self, *messages: Any) -> None:
        """Each message (dict → JSON) as a text frame, in one write."""
        await self.send_bytes(b"".join(client_frame(encode_message(m)) for m in messages))

    async def send_bytes(self, data: bytes, chunk: int | None = None) -> None:
        """Bytes as they are; with ``chunk``, in pieces of that size, one write and one
        event-loop iteration each (so the server reads them separately)."""
        if chunk is None:
            self.writer.write(data)
        else:
            for i in range(0, len(data), chunk):
                self.writer.write(data[i : i + chunk])
                await self.writer.drain()
                await asyncio.sleep(0)
        await self.writer.drain()

    async def recv_frame(self, timeout_s: float = 10.0) -> Frame:
        """The next frame; ``EOFError`` when the server closed the TCP connection first."""
        async with asyncio.timeout(timeout_s):
            while (frame := self._frames.next()) is None:
                chunk = await self.reader.read(1 << 20)
                if not chunk:
                    raise EOFError("connection closed")
                self._frames.feed(chunk)
        return frame

    async def recv_json(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """As :meth:`RawClient.recv_json`."""
        while (msg := _text_or_raise(await self.recv_frame(timeout_s))) is None:
            pass
        return msg

    async def read_until_close(self, timeout_s: float = 10.0) -> tuple[int | None, int]:
        """As :meth:`RawClient.read_until_close`."""
        texts = 0
        try:
            while True:
                frame = await self.recv_frame(timeout_s)
                if frame.opcode == OP_CLOSE:
                    return close_code(frame.payload), texts
                texts += frame.opcode == OP_TEXT
        except (EOFError, ConnectionResetError):
            return None, texts

    def close(self) -> None:
        self.writer.close()
