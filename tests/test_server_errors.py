"""Every error code over a real socket; bad input never closes the socket or touches other requests."""

from __future__ import annotations

import asyncio
import struct

import orjson
import pytest
import websockets

from tests.support import Conn, RawClient

P = {"type": "predict", "model": "linear", "inputs": [[1.0]]}


@pytest.mark.parametrize(
    ("message", "code", "rid"),
    [
        ("not json", "bad_json", None),
        ('{"type":"predict","id":1,"model":"linear","inputs":[[1e400]]}', "bad_json", None),
        ('{"type": "ping", "id": 1', "bad_json", None),
        ("[1,2,3]", "bad_request", None),
        ('"hello"', "bad_request", None),
        ('{"type":"fly","id":5}', "bad_request", 5),
        ('{"id":5}', "bad_request", 5),
        ('{"type":"predict","model":"linear","inputs":[[1]]}', "bad_request", None),
        ('{"type":"predict","id":true,"model":"linear","inputs":[[1]]}', "bad_request", None),
        ('{"type":"predict","id":1.5,"model":"linear","inputs":[[1]]}', "bad_request", None),
        ('{"type":"predict","id":"a","inputs":[[1]]}', "bad_request", "a"),
        ('{"type":"predict","id":"a","model":"linear"}', "bad_request", "a"),
        ('{"type":"predict","id":"a","model":"linear","inputs":[[1]],"priority":2}', "bad_request", "a"),
        ('{"type":"predict","id":"a","model":"linear","inputs":[[1]],"timeout_ms":-1}', "bad_request", "a"),
        ('{"type":"predict","id":"a","model":"linear","inputs":[[1]],"stream":"yes"}', "bad_request", "a"),
        ('{"type":"predict","id":"a","model":"linear","inputs":[[1]],"chunk_rows":0}', "bad_request", "a"),
        ('{"type":"predict","id":"a","model":"charlm","inputs":[[1]]}', "bad_request", "a"),
        ('{"type":"generate","id":"g","model":"linear","prompt":"x"}', "bad_request", "g"),
        ('{"type":"generate","id":"g","model":"charlm","prompt":"x","max_tokens":0}', "bad_request", "g"),
        ('{"type":"generate","id":"g","model":"charlm","prompt":"x","max_tokens":100001}', "bad_request", "g"),
        ('{"type":"generate","id":"g","model":"charlm","prompt":"x","temperature":-0.1}', "bad_request", "g"),
        ('{"type":"generate","id":"g","model":"charlm","prompt":"x","top_k":-1}', "bad_request", "g"),
        ('{"type":"generate","id":"g","model":"charlm","prompt":"x","stop":[""]}', "bad_request", "g"),
        ('{"type":"generate","id":"g","model":"charlm","prompt":"x","seed":"s"}', "bad_request", "g"),
        ('{"type":"generate","id":"g","model":"charlm"}', "bad_request", "g"),
        ('{"type":"cancel"}', "bad_request", None),
        ('{"type":"predict","id":"u","model":"linaer","inputs":[[1]]}', "unknown_model", "u"),
        ('{"type":"predict","id":"u","model":"linear","version":"9","inputs":[[1]]}', "unknown_model", "u"),
        ('{"type":"generate","id":"u","model":"gpt","prompt":"x"}', "unknown_model", "u"),
        ('{"type":"predict","id":"i","model":"linear","inputs":[[1,2]]}', "invalid_input", "i"),
        ('{"type":"predict","id":"i","model":"linear","inputs":[1]}', "invalid_input", "i"),
        ('{"type":"predict","id":"i","model":"linear","inputs":[]}', "invalid_input", "i"),
        ('{"type":"predict","id":"i","model":"linear","inputs":[["1"]]}', "invalid_input", "i"),
        ('{"type":"predict","id":"i","model":"linear","inputs":[[true]]}', "invalid_input", "i"),
        ('{"type":"predict","id":"i","model":"linear","inputs":[[null]]}', "invalid_input", "i"),
        ('{"type":"predict","id":"i","model":"linear","inputs":[[[1]]]}', "invalid_input", "i"),
        ('{"type":"predict","id":"i","model":"linear","inputs":"x"}', "invalid_input", "i"),
        ('{"type":"predict","id":"i","model":"mlp","inputs":[[1]]}', "invalid_input", "i"),
    ],
)
async def test_error_codes(server_url: str, message: str, code: str, rid: object) -> None:
    conn = await Conn.open(server_url)
    await conn.send(message)
    reply = await conn.recv()
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert reply["id"] == rid
    assert isinstance(reply["message"], str) and reply["message"]
    # The connection is still fine.
    assert await conn.request({"type": "ping", "id": "after"}) == {"type": "pong", "id": "after"}
    await conn.close()


async def test_binary_frame_is_bad_request(server_url: str) -> None:
    conn = await Conn.open(server_url)
    await conn.ws.send(orjson.dumps({"type": "ping", "id": 1}))  # bytes: a binary frame
    reply = await conn.recv()
    assert reply["code"] == "bad_request" and "binary" in reply["message"]
    assert await conn.request({"type": "ping", "id": 2}) == {"type": "pong", "id": 2}
    await conn.close()


def _deep(levels: int) -> str:
    """A JSON array nested ``levels`` deep: the frames' parser takes 1,024 levels, Python's ``repr`` fewer."""
    return "[" * levels + "1" + "]" * levels


def _tensor_frame(header: str, payload: bytes) -> bytes:
    """A binary tensor frame with this JSON ``header`` text, as a client writes it by hand."""
    head = header.encode()
    return len(head).to_bytes(4, "little") + head + payload


async def test_a_refused_value_nested_too_deeply_to_show_still_gets_its_precise_error(server_url: str) -> None:
    """A value refused with its repr in the message (a ``type``, the sequence fields, a binary frame's
    ``shape`` item), nested deeper than ``repr`` goes, is described instead: the precise code and the
    request's id.  It was ``internal`` (RecursionError), with id null, on text and binary frames."""
    conn = await Conn.open(server_url)
    deep = _deep(1000)
    one = struct.pack("<d", 1.0)  # a float64 value
    cases = [
        ('{"type":' + deep + ',"id":"t"}', "t"),
        ('{"type":"predict","id":"s","model":"linear","inputs":[[1]],"sequence_id":' + deep + "}", "s"),
        ('{"type":"predict","id":"b","model":"linear","inputs":[[1]],"sequence_id":1,"sequence_start":' + deep + "}",
         "b"),
        ('{"type":"predict","id":"e","model":"linear","inputs":[[1]],"sequence_id":1,"sequence_end":' + deep + "}",
         "e"),
        (_tensor_frame('{"type":' + deep + ',"id":"bt"}', b""), "bt"),
        (_tensor_frame('{"type":"predict","id":"bs","model":"linear","dtype":"float64","shape":[1,' + deep + "]}",
                       one), "bs"),
    ]
    for message, rid in cases:
        await conn.ws.send(message)
        reply = await conn.recv()
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "bad_request", rid), reply
        assert "nested too deeply to show" in reply["message"], reply
    assert await conn.request({"type": "ping", "id": "after"}) == {"type": "pong", "id": "after"}
    await conn.close()


async def test_an_unknown_model_name_is_shown_cut_to_64_characters(server_url: str) -> None:
    """A model name (up to 256 characters) that names no model is a refused value: shown cut to 64
    characters, as PROTOCOL.md says; it was echoed whole (predict and generate alike)."""
    conn = await Conn.open(server_url)
    name = "m" * 256
    for message in ({**P, "id": "p", "model": name}, {"type": "generate", "id": "g", "model": name, "prompt": "x"}):
        reply = await conn.request(message)
        assert (reply["code"], reply["id"]) == ("unknown_model", message["id"]), reply
        assert "m" * 61 not in reply["message"] and "m" * 60 + "..." in reply["message"], reply
    await conn.close()


async def test_too_many_rows_is_invalid_input(start_server) -> None:
    server = start_server("--max-rows", "10", "--models", "linear")
    conn = await Conn.open(server.url)
    assert conn.hello["limits"]["max_rows"] == 10
    reply = await conn.request({**P, "id": 1, "inputs": [[0.0]] * 11})
    assert reply["code"] == "invalid_input" and "10" in reply["message"]
    assert (await conn.request({**P, "id": 2, "inputs": [[0.0]] * 10}))["type"] == "result"
    await conn.close()


async def test_duplicate_id_leaves_the_first_request_alone(server_url: str) -> None:
    conn = await Conn.open(server_url)
    await conn.send({"type": "generate", "id": "d", "model": "charlm", "prompt": "a", "max_tokens": 2000})
    await conn.send({**P, "id": "d"})
    tokens_before, dup = await conn.until_terminal("d")
    assert dup["type"] == "error" and dup["code"] == "duplicate_id"
    tokens_after, done = await conn.until_terminal("d")
    assert done["type"] == "done" and done["reason"] == "length" and done["tokens"] == 2000
    seqs = [f["seq"] for f in tokens_before + tokens_after]
    assert seqs == list(range(2000))
    await conn.close()


async def test_max_inflight_overloaded_then_recovers(start_server) -> None:
    server = start_server("--max-inflight", "2", "--models", "charlm")
    conn = await Conn.open(server.url)
    assert conn.hello["limits"]["max_inflight"] == 2
    gen = {"type": "generate", "model": "charlm", "prompt": "x", "max_tokens": 5000}
    await conn.send({**gen, "id": 1})
    await conn.send({**gen, "id": 2})
    await conn.send({**gen, "id": 3})
    _, third = await conn.until_terminal(3)
    assert third["code"] == "overloaded" and third["retry_after_ms"] > 0
    await conn.send({"type": "cancel", "id": 1})
    _, first = await conn.until_terminal(1)
    assert first["type"] == "done" and first["reason"] == "cancelled"
    await conn.send({**gen, "id": 3, "max_tokens": 3})
    _, again = await conn.until_terminal(3)
    assert again["type"] == "done" and again["tokens"] == 3
    await conn.send({"type": "cancel", "id": 2})
    await conn.until_terminal(2)
    await conn.close()


async def test_queue_bound_overloaded(start_server, request: pytest.FixtureRequest) -> None:
    server = start_server("--max-queue-rows", "1000", "--max-batch-size", "8", "--models", "mlp", "--max-message-bytes", "8000000")
    raw = RawClient(server.port)
    request.addfinalizer(raw.close)
    assert raw.recv_json()["type"] == "hello"
    # Both in one TCP write, so the server reads the second a loop iteration or two after the first,
    # while nearly all of the first's 1,000 rows still wait (batches of 8, one per iteration): 1,000 +
    # 500 rows cannot fit the 1,000-row bound unless 63 batches ran in between. (Two separate writes
    # from a client preempted between them once let the queue drain below the bound.)
    raw.send({**P, "model": "mlp", "id": "fill", "inputs": [[0.1] * 32] * 1000},
             {**P, "model": "mlp", "id": "more", "inputs": [[0.1] * 32] * 500})
    replies: dict[str, dict] = {}
    while len(replies) < 2:
        frame = await asyncio.to_thread(raw.recv_json)
        replies[frame["id"]] = frame
    more = replies["more"]
    assert more["type"] == "error" and more["code"] == "overloaded" and more["retry_after_ms"] > 0, more
    assert replies["fill"]["type"] == "result"
    assert len(replies["fill"]["outputs"]) == 1000


async def test_deadline_exceeded_while_queued_or_running(start_server) -> None:
    server = start_server("--max-message-bytes", "16777216", "--max-batch-size", "64", "--models", "mlp")
    conn = await Conn.open(server.url)
    rows = [[0.5] * 32] * 65536
    await conn.send(orjson.dumps({**P, "model": "mlp", "id": "slow", "inputs": rows, "timeout_ms": 20}).decode())
    _, end = await conn.until_terminal("slow")
    assert end["type"] == "error" and end["code"] == "deadline_exceeded"
    # A request with a generous deadline is unaffected.
    ok = await conn.request({**P, "model": "mlp", "id": "fast", "inputs": [[0.5] * 32], "timeout_ms": 5000})
    assert ok["type"] == "result"
    await conn.close()


async def test_oversize_message_closes_1009_and_spares_others(server_url: str) -> None:
    victim = await Conn.open(server_url)
    other = await Conn.open(server_url)
    await other.send({"type": "generate", "id": "g", "model": "charlm", "prompt": "a", "max_tokens": 200})
    await victim.send("x" * (1048576 + 1))
    with pytest.raises(websockets.ConnectionClosed) as info:
        await victim.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    frames = await other.collect({"g"})
    assert frames["g"][-1]["type"] == "done" and frames["g"][-1]["tokens"] == 200
    await other.close()


async def test_unauthorized_until_auth_message(start_server) -> None:
    server = start_server("--api-key", "s3cret", "--models", "linear")
    conn = await Conn.open(server.url)
    assert conn.hello.get("auth_required") is True
    reply = await conn.request({**P, "id": 1})
    assert reply["code"] == "unauthorized" and reply["id"] == 1
    bad = await conn.request({"type": "auth", "id": "a", "token": "wrong"})
    assert bad["code"] == "unauthorized"
    ok = await conn.request({"type": "auth", "id": "a", "token": "s3cret"})
    assert ok == {"type": "auth", "id": "a", "ok": True}
    assert (await conn.request({**P, "id": 2}))["type"] == "result"
    await conn.close()
    # Bearer token on the handshake authenticates too; a wrong one is refused with 401.
    good = await Conn.open(server.url, additional_headers={"Authorization": "Bearer s3cret"})
    assert (await good.request({**P, "id": 3}))["type"] == "result"
    await good.close()
    with pytest.raises(websockets.InvalidStatus) as info:
        await Conn.open(server.url, additional_headers={"Authorization": "Bearer nope"})
    assert info.value.response.status_code == 401
    # The key never appears in the server's log.
    assert "s3cret" not in server.stderr_text()
