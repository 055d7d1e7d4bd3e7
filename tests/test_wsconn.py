"""The connection's fast framing path against awkward but legal (and some illegal) byte streams.

A raw TCP client does the handshake by hand so the tests control every byte: frames split
across reads, many frames in one read, frames pipelined behind the handshake, fragmented
messages, control frames between data frames, and protocol violations.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import orjson
import pytest
import websockets

from tests.support import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    AsyncRawClient,
    Conn,
    client_frame,
    wait_until_async,
)
from wsserve.transport.framing import SHORT_TEXT_HEADERS, frame_header


async def _open(port: int, pipelined: bytes = b"") -> AsyncRawClient:
    client = await AsyncRawClient.open(port, pipelined=pipelined)
    assert client.status == 101, client.response_head
    return client


def _ping_msg(i: object) -> bytes:
    return orjson.dumps({"type": "ping", "id": i})


async def test_frame_header_sizes() -> None:
    assert frame_header(5) == b"\x81\x05"
    assert frame_header(126) == b"\x81\x7e\x00\x7e"
    assert frame_header(70000) == b"\x81\x7f" + (70000).to_bytes(8, "big")
    assert list(SHORT_TEXT_HEADERS) == [frame_header(n) for n in range(126)]


async def test_pipelined_behind_handshake_and_split_byte_by_byte(server) -> None:
    first = client_frame(_ping_msg("early"))
    client = await _open(server.port, pipelined=first)
    hello = await client.recv_json()
    assert hello["type"] == "hello"
    assert await client.recv_json() == {"type": "pong", "id": "early"}
    # One frame delivered one byte at a time, then a medium (16-bit length) frame in 7-byte pieces.
    await client.send_bytes(client_frame(_ping_msg(1)), chunk=1)
    assert await client.recv_json() == {"type": "pong", "id": 1}
    big = orjson.dumps({"type": "predict", "id": "m", "model": "linear", "inputs": [[0.25]] * 300})
    assert 126 <= len(big) < 65536
    await client.send_bytes(client_frame(big), chunk=7)
    reply = await client.recv_json()
    assert reply["type"] == "result" and len(reply["outputs"]) == 300
    client.close()


async def test_many_frames_in_one_write_keep_their_order(server) -> None:
    client = await _open(server.port)
    await client.recv_json()  # hello
    await client.send_bytes(b"".join(client_frame(_ping_msg(i)) for i in range(200)))
    assert [(await client.recv_json())["id"] for _ in range(200)] == list(range(200))
    client.close()


async def test_fragmented_message_and_control_frames_in_between(server) -> None:
    client = await _open(server.port)
    await client.recv_json()
    msg = orjson.dumps({"type": "predict", "id": "frag", "model": "linear", "inputs": [[1.0], [2.0]]})
    parts = [msg[:10], msg[10:20], msg[20:]]
    stream = (
        client_frame(parts[0], OP_TEXT, fin=False)
        + client_frame(b"hi", OP_PING)  # a ping between fragments
        + client_frame(parts[1], OP_CONT, fin=False)
        + client_frame(parts[2], OP_CONT, fin=True)
        + client_frame(_ping_msg("after"))
    )
    await client.send_bytes(stream, chunk=5)
    frame = await client.recv_frame()
    assert (frame.opcode, frame.payload) == (OP_PONG, b"hi")  # websockets answered the ping
    replies = {}
    for _ in range(2):  # replies to different ids may come in any order
        reply = await client.recv_json()
        replies[reply["id"]] = reply
    assert len(replies["frag"]["outputs"]) == 2
    assert replies["after"] == {"type": "pong", "id": "after"}
    client.close()


async def test_binary_frame_on_fast_path_is_bad_request(server) -> None:
    client = await _open(server.port)
    await client.recv_json()
    await client.send_bytes(client_frame(_ping_msg(1), OP_BINARY))
    reply = await client.recv_json()
    assert reply["code"] == "bad_request" and reply["id"] is None
    client.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(_ping_msg(1), mask=False), 1002),  # client frames must be masked
        (client_frame(_ping_msg(1), rsv=0x40), 1002),  # RSV1 without an extension
    ],
)
async def test_protocol_violations_close_the_connection(server, frame: bytes, code: int) -> None:
    client = await _open(server.port)
    await client.recv_json()
    await client.send_bytes(frame)
    assert (await client.read_until_close())[0] == code
    client.close()


async def test_oversize_frame_header_alone_closes_1009(server) -> None:
    client = await _open(server.port)
    await client.recv_json()
    # Announce 2 MiB and send only the header: the server must not wait for the body.
    await client.send_bytes(bytes((0x81, 0xFF)) + (2 << 20).to_bytes(8, "big") + os.urandom(4))
    assert (await client.read_until_close())[0] == 1009
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
    return client_frame(b"" if code is None else struct.pack("!H", code) + reason, opcode=OP_CLOSE)


@pytest.mark.parametrize("code", [0, 999, 1005, 1006, 1015, 2999, 5000])
async def test_a_close_frame_with_a_reserved_code_is_a_protocol_error(server, code: int) -> None:
    client = await _open(server.port)
    await client.recv_json()
    await client.send_bytes(_close_frame(code))
    assert (await client.read_until_close())[0] == 1002
    client.close()


@pytest.mark.parametrize(("code", "reason"), [(1000, b""), (1001, b"going"), (4000, b"app says bye")])
async def test_the_clients_close_frame_is_echoed_then_the_server_ends_the_stream(server, code: int, reason: bytes) -> None:
    client = await _open(server.port)
    await client.recv_json()
    await client.send_bytes(_close_frame(code, reason))
    frame = await client.recv_frame()
    assert (frame.opcode, frame.payload) == (OP_CLOSE, struct.pack("!H", code) + reason)
    assert await asyncio.wait_for(client.reader.read(), 10) == b""  # then EOF from the server
    client.close()


async def test_close_codes_a_client_picks_cannot_add_metric_series(start_server) -> None:
    """``wsserve_connections_closed_total{code}``: RFC 6455's codes by number, the application
    ranges a client may pick from (3000-4999) as ``3xxx`` / ``4xxx`` (one series each)."""
    server = start_server("--models", "linear")
    codes = (1000, 3001, 3999, 4000, 4321, 4999)
    for code in codes:
        client = await _open(server.port)
        await client.recv_json()
        await client.send_bytes(_close_frame(code))
        assert (await client.recv_frame()).opcode == OP_CLOSE
        client.close()
    want = {"1000": 1, "3xxx": 2, "4xxx": 3}

    def counted() -> bool:
        m = server.metrics()
        return all(m.get("wsserve_connections_closed_total", code=k) == v for k, v in want.items())

    await wait_until_async(counted, 10, in_thread=True, what=f"closes counted as {want}")
    m = server.metrics()
    for code in codes[1:]:
        assert m.get("wsserve_connections_closed_total", default=-1.0, code=str(code)) == -1.0, code


async def test_an_empty_close_frame_is_answered_with_an_empty_one(server) -> None:
    client = await _open(server.port)
    await client.recv_json()
    await client.send_bytes(_close_frame(None))
    frame = await client.recv_frame()
    assert (frame.opcode, frame.payload) == (OP_CLOSE, b"")
    client.close()


async def test_a_close_frame_between_fragments_is_echoed_on_every_transport(server) -> None:
    """RFC 6455 §5.4: control frames may come between a message's fragments, a close frame too;
    the unfinished message is dropped and the close echoed, as after a whole message (Autobahn 7.1.5)."""
    client = await _open(server.port)
    await client.recv_json()
    await client.send_bytes(client_frame(b'{"type":', opcode=OP_TEXT, fin=False) + _close_frame(1000, b"bye"))
    frame = await client.recv_frame()
    assert (frame.opcode, frame.payload) == (OP_CLOSE, struct.pack("!H", 1000) + b"bye")
    assert await asyncio.wait_for(client.reader.read(), 10) == b""  # then EOF from the server
    client.close()


@pytest.mark.parametrize(
    "stream",
    [
        client_frame(b'{"type":"ping"}', opcode=OP_CONT, fin=True),  # a continuation with nothing to continue
        client_frame(b'{"type":', opcode=OP_TEXT, fin=False) + client_frame(b'{"type":"ping"}', opcode=OP_TEXT),  # a new message inside one
    ],
    ids=["lone-continuation", "text-inside-fragmented"],
)
async def test_misordered_fragments_are_a_protocol_error(server, stream: bytes) -> None:
    client = await _open(server.port)
    await client.recv_json()
    await client.send_bytes(stream)
    assert (await client.read_until_close())[0] == 1002
    client.close()


async def test_fragments_over_max_message_bytes_in_all_close_1009(start_server) -> None:
    server = start_server("--max-message-bytes", "1000", "--models", "linear")
    client = await _open(server.port)
    await client.recv_json()
    # Each fragment is under the limit; together they are over it.
    await client.send_bytes(client_frame(b"[" + b"1," * 300, opcode=OP_TEXT, fin=False))
    await client.send_bytes(client_frame(b"1," * 300, opcode=OP_CONT, fin=False))
    await client.send_bytes(client_frame(b"1]", opcode=OP_CONT, fin=True))
    assert (await client.read_until_close())[0] == 1009
    client.close()


@pytest.mark.only_transport("picows", reason="about picows's own log lines")
async def test_picows_serves_the_socket_and_logs_connections_at_debug_only(start_server) -> None:
    quiet = start_server("--models", "linear")
    chatty = start_server("--models", "linear", "--log-level", "debug")
    for server in (quiet, chatty):
        conn = await Conn.open(server.url)
        assert (await conn.request({"type": "ping", "id": 1})) == {"type": "pong", "id": 1}
        await conn.ws.close()
        client = await _open(server.port)  # a client's protocol error: picows logs it
        await client.recv_json()
        await client.send_bytes(client_frame(_ping_msg(1), mask=False))
        assert (await client.read_until_close())[0] == 1002
        client.close()
    # picows's lines, read from the server's stderr as they come: "WS parser error" for the second
    # client, "Disconnected" once each socket is gone (the first client's may come before the
    # second's parser error is read, so all of them are waited for).
    expected = ("DEBUG wsserve.picows.library", "New connection accepted", "WS parser error")
    await wait_until_async(lambda: chatty.stderr_text().count("Disconnected") >= 2
                           and all(line in chatty.stderr_text() for line in expected), 20,
                           what="picows's debug lines for both connections")
    for line in ("New connection accepted", "WS parser error"):  # clients cannot fill the log at INFO
        assert line not in quiet.stderr_text()


def _handshake_status(port: int, connection: str = "Upgrade", upgrade: str = "websocket", version: str = "13",
                      key: str | None = "dGhlIHNhbXBsZSBub25jZQ==", extra: str = "") -> tuple[int, bytes]:
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
        ({"upgrade": "h2c"}, 200),  # another protocol: ignored (RFC 9110 7.8), the request is answered as HTTP/1.1
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


async def test_whole_data_frames_take_the_fast_path(server) -> None:
    """The fast path is how the server reaches its throughput: if a websockets release changed
    what the transport relies on and every frame went through the library instead, the server
    would still be correct, only slower; this test fails instead."""
    before = await server.ametrics()
    client = await _open(server.port)
    assert (await client.recv_json())["type"] == "hello"
    await client.send_bytes(b"".join(client_frame(_ping_msg(i)) for i in range(50)))
    for i in range(50):
        assert await client.recv_json() == {"type": "pong", "id": i}
    client.close()
    after = await server.ametrics()
    fast = after.get("wsserve_websocket_frames_total", path="fast") - before.get("wsserve_websocket_frames_total", path="fast")
    library = after.get("wsserve_websocket_frames_total", path="library") - before.get(
        "wsserve_websocket_frames_total", path="library")
    assert fast >= 50 and library == 0, (fast, library)
