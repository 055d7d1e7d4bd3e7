"""The connection's fast framing path against awkward but legal (and some illegal) byte streams.

A raw TCP client does the handshake by hand so the tests control every byte: frames split
across reads, many frames in one read, frames pipelined behind the handshake, fragmented
messages, control frames between data frames, and protocol violations.
"""

from __future__ import annotations

import os

import orjson
import pytest
import websockets

from tests.support import (
    OP_BINARY,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    AsyncRawClient,
    Conn,
    client_frame,
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
