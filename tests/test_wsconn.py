"""The connection's fast framing path against awkward but legal (and some illegal) byte streams.

A raw TCP client does the handshake by hand so the tests control every byte: frames split
across reads, many frames in one read, frames pipelined behind the handshake, fragmented
messages, control frames between data frames, and protocol violations.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct

import orjson
import pytest
import websockets

from tests.wsclient import Conn
from wsserve.transport.framing import frame_header


def _client_frame(payload: bytes, opcode: int = 1, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def _handshake(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, pipelined: bytes = b"") -> "RawClient":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_handshake(port) + pipelined)
        await writer.drain()
        status = await reader.readuntil(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101"), status
        return cls(reader, writer)

    async def frame(self, timeout: float = 10) -> tuple[int, bytes]:
        """Next server frame (opcode, payload); server frames are unmasked."""
        head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return head[0] & 0x0F, await self.reader.readexactly(n)

    async def message(self) -> dict:
        while True:
            opcode, payload = await self.frame()
            if opcode == 1:
                return orjson.loads(payload)
            assert opcode in (9, 10), (opcode, payload)  # pings/pongs may interleave

    async def close_code(self) -> int:
        while True:
            opcode, payload = await self.frame()
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0]

    async def send(self, data: bytes, chunk: int | None = None) -> None:
        if chunk is None:
            self.writer.write(data)
        else:
            for i in range(0, len(data), chunk):
                self.writer.write(data[i : i + chunk])
                await self.writer.drain()
                await asyncio.sleep(0)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


def _ping_msg(i: object) -> bytes:
    return orjson.dumps({"type": "ping", "id": i})


async def test_frame_header_sizes() -> None:
    assert frame_header(5) == b"\x81\x05"
    assert frame_header(126) == b"\x81\x7e\x00\x7e"
    assert frame_header(70000) == b"\x81\x7f" + (70000).to_bytes(8, "big")


async def test_pipelined_behind_handshake_and_split_byte_by_byte(server) -> None:
    first = _client_frame(_ping_msg("early"))
    client = await RawClient.open(server.port, pipelined=first)
    hello = await client.message()
    assert hello["type"] == "hello"
    assert await client.message() == {"type": "pong", "id": "early"}
    # One frame delivered one byte at a time, then a medium (16-bit length) frame in 7-byte pieces.
    await client.send(_client_frame(_ping_msg(1)), chunk=1)
    assert await client.message() == {"type": "pong", "id": 1}
    big = orjson.dumps({"type": "predict", "id": "m", "model": "linear", "inputs": [[0.25]] * 300})
    assert 126 <= len(big) < 65536
    await client.send(_client_frame(big), chunk=7)
    reply = await client.message()
    assert reply["type"] == "result" and len(reply["outputs"]) == 300
    client.close()


async def test_many_frames_in_one_write_keep_their_order(server) -> None:
    client = await RawClient.open(server.port)
    await client.message()  # hello
    await client.send(b"".join(_client_frame(_ping_msg(i)) for i in range(200)))
    assert [(await client.message())["id"] for _ in range(200)] == list(range(200))
    client.close()


async def test_fragmented_message_and_control_frames_in_between(server) -> None:
    client = await RawClient.open(server.port)
    await client.message()
    msg = orjson.dumps({"type": "predict", "id": "frag", "model": "linear", "inputs": [[1.0], [2.0]]})
    parts = [msg[:10], msg[10:20], msg[20:]]
    stream = (
        _client_frame(parts[0], opcode=1, fin=False)
        + _client_frame(b"hi", opcode=9)  # a ping between fragments
        + _client_frame(parts[1], opcode=0, fin=False)
        + _client_frame(parts[2], opcode=0, fin=True)
        + _client_frame(_ping_msg("after"))
    )
    await client.send(stream, chunk=5)
    opcode, payload = await client.frame()
    assert (opcode, payload) == (10, b"hi")  # websockets answered the ping
    replies = {}
    for _ in range(2):  # replies to different ids may come in any order
        reply = await client.message()
        replies[reply["id"]] = reply
    assert len(replies["frag"]["outputs"]) == 2
    assert replies["after"] == {"type": "pong", "id": "after"}
    client.close()


async def test_binary_frame_on_fast_path_is_bad_request(server) -> None:
    client = await RawClient.open(server.port)
    await client.message()
    await client.send(_client_frame(_ping_msg(1), opcode=2))
    reply = await client.message()
    assert reply["code"] == "bad_request" and reply["id"] is None
    client.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (_client_frame(_ping_msg(1), mask=False), 1002),  # client frames must be masked
        (_client_frame(_ping_msg(1), rsv=0x40), 1002),  # RSV1 without an extension
    ],
)
async def test_protocol_violations_close_the_connection(server, frame: bytes, code: int) -> None:
    client = await RawClient.open(server.port)
    await client.message()
    await client.send(frame)
    assert await client.close_code() == code
    client.close()


async def test_oversize_frame_header_alone_closes_1009(server) -> None:
    client = await RawClient.open(server.port)
    await client.message()
    # Announce 2 MiB and send only the header: the server must not wait for the body.
    await client.send(bytes((0x81, 0xFF)) + (2 << 20).to_bytes(8, "big") + os.urandom(4))
    assert await client.close_code() == 1009
    client.close()


async def test_client_close_handshake(server) -> None:
    # max_queue=None: a websockets client that stops reading at its queue limit can miss
    # the server's close frame; this test is about the server's side of the handshake.
    conn = await Conn.open(server.url, max_queue=None)
    await conn.send({"type": "generate", "id": "g", "model": "charlm", "prompt": "a", "max_tokens": 50})
    await conn.ws.close()
    assert conn.ws.close_code == 1000


@pytest.mark.only_transport("websockets", reason="picows has no permessage-deflate: --compression is refused with it")
async def test_compression_negotiated_uses_websockets_framing(start_server) -> None:
    server = start_server("--compression", "--models", "linear")
    ws = await websockets.connect(server.url, compression="deflate")
    assert ws.protocol.extensions  # permessage-deflate is on
    await ws.recv()
    for i in range(3):
        await ws.send(orjson.dumps({"type": "predict", "id": i, "model": "linear", "inputs": [[1.0]] * 500}).decode())
        reply = orjson.loads(await ws.recv())
        assert reply["id"] == i and len(reply["outputs"]) == 500
    await ws.close()


def _close_frame(code: int | None, reason: bytes = b"") -> bytes:
    return _client_frame(b"" if code is None else struct.pack("!H", code) + reason, opcode=8)


@pytest.mark.parametrize("code", [0, 999, 1005, 1006, 1015, 2999, 5000])
async def test_a_close_frame_with_a_reserved_code_is_a_protocol_error(server, code: int) -> None:
    client = await RawClient.open(server.port)
    await client.message()
    await client.send(_close_frame(code))
    assert await client.close_code() == 1002
    client.close()


@pytest.mark.parametrize(("code", "reason"), [(1000, b""), (1001, b"going"), (4000, b"app says bye")])
async def test_the_clients_close_frame_is_echoed_then_the_server_ends_the_stream(server, code: int, reason: bytes) -> None:
    client = await RawClient.open(server.port)
    await client.message()
    await client.send(_close_frame(code, reason))
    opcode, payload = await client.frame()
    assert (opcode, payload) == (8, struct.pack("!H", code) + reason)
    assert await asyncio.wait_for(client.reader.read(), 10) == b""  # then EOF from the server
    client.close()


async def test_an_empty_close_frame_is_answered_with_an_empty_one(server) -> None:
    client = await RawClient.open(server.port)
    await client.message()
    await client.send(_close_frame(None))
    assert await client.frame() == (8, b"")
    client.close()


@pytest.mark.parametrize(
    "stream",
    [
        _client_frame(b'{"type":"ping"}', opcode=0, fin=True),  # a continuation with nothing to continue
        _client_frame(b'{"type":', opcode=1, fin=False) + _client_frame(b'{"type":"ping"}', opcode=1),  # a new message inside one
    ],
    ids=["lone-continuation", "text-inside-fragmented"],
)
async def test_misordered_fragments_are_a_protocol_error(server, stream: bytes) -> None:
    client = await RawClient.open(server.port)
    await client.message()
    await client.send(stream)
    assert await client.close_code() == 1002
    client.close()


async def test_fragments_over_max_message_bytes_in_all_close_1009(start_server) -> None:
    server = start_server("--max-message-bytes", "1000", "--models", "linear")
    client = await RawClient.open(server.port)
    await client.message()
    # Each fragment is under the limit; together they are over it.
    await client.send(_client_frame(b"[" + b"1," * 300, opcode=1, fin=False))
    await client.send(_client_frame(b"1," * 300, opcode=0, fin=False))
    await client.send(_client_frame(b"1]", opcode=0, fin=True))
    assert await client.close_code() == 1009
    client.close()


@pytest.mark.only_transport("picows", reason="about picows's own log lines")
async def test_picows_serves_the_socket_and_logs_connections_at_debug_only(start_server) -> None:
    quiet = start_server("--models", "linear")
    chatty = start_server("--models", "linear", "--log-level", "debug")
    for server in (quiet, chatty):
        conn = await Conn.open(server.url)
        assert (await conn.request({"type": "ping", "id": 1})) == {"type": "pong", "id": 1}
        await conn.ws.close()
        client = await RawClient.open(server.port)  # a client's protocol error: picows logs it
        await client.message()
        await client.send(_client_frame(_ping_msg(1), mask=False))
        assert await client.close_code() == 1002
        client.close()
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while "Disconnected" not in chatty.stderr_text():  # picows's line once the socket is gone
        assert loop.time() < end, chatty.stderr_text()
        await asyncio.sleep(0.02)
    assert "DEBUG wsserve.picows.library" in chatty.stderr_text()  # picows parsed these frames
    assert "New connection accepted" in chatty.stderr_text()
    assert "WS parser error" in chatty.stderr_text()
    for line in ("New connection accepted", "WS parser error"):  # clients cannot fill the log at INFO
        assert line not in quiet.stderr_text()


def _handshake_status(port: int, connection: str = "Upgrade", upgrade: str = "websocket", version: str = "13",
                      key: str | None = "dGhlIHNhbXBsZSBub25jZQ==", extra: str = "") -> tuple[int, bytes]:
    import socket

    key_line = "" if key is None else f"Sec-WebSocket-Key: {key}\r\n"
    request = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: {upgrade}\r\nConnection: {connection}\r\n"
               f"{key_line}Sec-WebSocket-Version: {version}\r\n{extra}\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1]), head


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"connection": "keep-alive, Upgrade"}, 101),  # what Firefox sends
        ({"connection": "upgrade", "upgrade": "WebSocket"}, 101),
        ({"connection": "keep-alive"}, 200),  # not an upgrade: the HTTP front serves the page
        ({"upgrade": "h2c"}, 200),
        ({"version": "8"}, 400),
        ({"key": None}, 400),
        ({"key": "c2hvcnQ="}, 400),  # not 16 bytes
        ({"extra": "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"}, 400),  # twice
    ],
    ids=["firefox-connection", "case", "no-upgrade-token", "other-protocol", "version-8", "no-key", "short-key",
         "two-keys"],
)
def test_the_same_handshakes_are_accepted_and_refused_on_every_transport(server, kwargs: dict, status: int) -> None:
    got, head = _handshake_status(server.port, **kwargs)
    assert got == status, head
    assert b"\r\nServer: wsserve/" in head
