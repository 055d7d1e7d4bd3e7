"""Regression tests of the security review (issue "Security and robustness fixes"), over the wire.

Each test names the item it pins.  Servers are real ``wsserve serve`` processes on
127.0.0.1; where a behaviour lies below what a WebSocket library lets a client do,
the test speaks the protocol itself (:class:`tests.test_hardening.RawClient`).
"""

from __future__ import annotations

import asyncio
import os
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serverproc import ServerProcess
from tests.wsclient import Conn

GREEDY = {"type": "generate", "model": "charlm", "prompt": "The ", "max_tokens": 40}


def healthz(server: ServerProcess) -> int:
    with urllib.request.urlopen(server.http + "/healthz", timeout=5) as resp:
        return resp.status


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def inflight(server: ServerProcess) -> float:
    with urllib.request.urlopen(server.http + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("wsserve_inflight_requests "):
                return float(line.split()[1])
    raise AssertionError("no wsserve_inflight_requests gauge")


async def assert_idle(server: ServerProcess) -> None:
    """Nothing left in flight, and the process is not spinning: an idle server uses (almost) no
    CPU, a loop iterating without awaiting uses a whole core."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while await asyncio.to_thread(inflight, server) != 0:
        assert loop.time() < end, "requests left in flight"
        await asyncio.sleep(0.05)
    t0 = cpu_seconds(server.proc.pid)
    await asyncio.sleep(1.0)
    assert cpu_seconds(server.proc.pid) - t0 < 0.5, "the server is busy while idle"


async def greedy_text(url: str, rid: Any = "ref") -> str:
    conn = await Conn.open(url)
    try:
        await conn.send({**GREEDY, "id": rid})
        frames, end = await conn.until_terminal(rid)
        assert end["type"] == "done", end
        return "".join(f["text"] for f in frames)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- 1 (critical): top_k >= 2**63


@pytest.fixture(scope="module")
def plain_server(model_cache: Path):
    proc = ServerProcess(cache_dir=model_cache)
    yield proc
    proc.stop()


async def test_huge_top_k_is_refused_and_the_engine_keeps_serving(plain_server: ServerProcess) -> None:
    before = await greedy_text(plain_server.url)
    conn = await Conn.open(plain_server.url)
    # The four messages of the report: a huge top_k, then cancel, then more work.
    for top_k in (2**63, 2**64 - 1):
        reply = await conn.request({"type": "generate", "id": "bad", "model": "charlm", "prompt": "a",
                                    "temperature": 1.0, "top_k": top_k})
        assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["id"] == "bad", reply
        assert "top_k" in reply["message"]
    await conn.send({"type": "cancel", "id": "bad"})
    assert await conn.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
    # top_k within the limit but far above the vocabulary: sampled from every token.
    await conn.send({"type": "generate", "id": "wide", "model": "charlm", "prompt": "a", "temperature": 1.0,
                     "top_k": 2**31 - 1, "seed": 3, "max_tokens": 20})
    frames, end = await conn.until_terminal("wide")
    assert end["type"] == "done" and end["reason"] == "length" and len(frames) == 20
    await conn.close()
    assert healthz(plain_server) == 200
    assert await greedy_text(plain_server.url) == before


# Extreme values for every numeric field of every request type, written as JSON text (so that numbers
# orjson cannot serialise, e.g. 2**70, can be sent too).
EXTREME_NUMBERS = [
    "0", "-1", "1", "0.5", "-0.0", "1e-300", "5e-324", "1e308", "-1e308", "1e400", "-1e400",
    str(2**31 - 1), str(2**31), str(2**53 + 1), str(2**63 - 1), str(2**63), str(2**64 - 1), str(2**64),
    str(-(2**63)), str(-(2**63) - 1), str(2**70), "123456789012345678901234567890",
]
NUMERIC_FIELDS = {
    "predict": ["id", "chunk_rows", "timeout_ms", "priority", "inputs"],
    "generate": ["id", "max_tokens", "temperature", "top_k", "seed", "timeout_ms", "priority"],
    "cancel": ["id"],
    "ping": ["id"],
    "models": ["id"],
    "auth": ["id"],
}
BASE = {
    "predict": {"type": "predict", "id": "p", "model": "linear", "inputs": [[1.0]]},
    "generate": {"type": "generate", "id": "g", "model": "charlm", "prompt": "The ", "max_tokens": 5},
    "cancel": {"type": "cancel", "id": "g"},
    "ping": {"type": "ping", "id": 0},
    "models": {"type": "models", "id": 0},
    "auth": {"type": "auth", "id": 0, "token": "x"},
}


def with_raw_numbers(kind: str, numbers: dict[str, str], stream: bool = False) -> bytes:
    """``BASE[kind]`` with each ``field: number`` written as raw JSON number text."""
    msg = dict(BASE[kind])
    if kind == "predict" and stream:
        msg["stream"] = True
    for i, field in enumerate(numbers):
        slot = f"__NUMBER{i}__"
        msg[field] = [[slot]] if field == "inputs" else slot
    raw = orjson.dumps(msg)
    for i, number in enumerate(numbers.values()):
        raw = raw.replace(f'"__NUMBER{i}__"'.encode(), number.encode())
    return raw


async def send_then_ping(url: str, raw: bytes) -> None:
    """Send ``raw`` and check the connection still answers a ping; closing cancels its work."""
    conn = await Conn.open(url)
    try:
        await conn.send(raw.decode())  # a text frame (bytes would go as a binary frame)
        await conn.send({"type": "ping", "id": "alive"})
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while (await conn.recv(max(0.01, end - loop.time()))) != {"type": "pong", "id": "alive"}:
            pass
    finally:
        await conn.close()


async def test_every_extreme_number_in_every_field_leaves_the_server_answering(plain_server: ServerProcess) -> None:
    """Exhaustive: each extreme value in each numeric field of each request type, one at a time."""
    for kind, fields in NUMERIC_FIELDS.items():
        for field in fields:
            for number in EXTREME_NUMBERS:
                for stream in (False, True) if kind == "predict" else (False,):
                    await send_then_ping(plain_server.url, with_raw_numbers(kind, {field: number}, stream))
    assert await asyncio.to_thread(healthz, plain_server) == 200
    await assert_idle(plain_server)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(NUMERIC_FIELDS)), data=st.data(), stream=st.booleans())
def test_extreme_numbers_in_several_fields_at_once_leave_the_server_answering(
    plain_server: ServerProcess, kind: str, data: st.DataObject, stream: bool
) -> None:
    fields = data.draw(st.lists(st.sampled_from(NUMERIC_FIELDS[kind]), min_size=1, unique=True))
    numbers = {f: data.draw(st.sampled_from(EXTREME_NUMBERS), label=f) for f in fields}
    asyncio.run(send_then_ping(plain_server.url, with_raw_numbers(kind, numbers, stream)))
    assert healthz(plain_server) == 200


async def test_after_the_extreme_values_the_server_is_idle_and_exact(plain_server: ServerProcess) -> None:
    """Runs after the property test (same module server): no stuck sequence, no spinning loop."""
    ref = await greedy_text(plain_server.url)
    conn = await Conn.open(plain_server.url)
    await conn.send({**GREEDY, "id": 1, "max_tokens": 100000, "temperature": 1.0, "top_k": 2**31 - 1})
    await conn.send({"type": "cancel", "id": 1})
    _, end = await conn.until_terminal(1)
    assert end["type"] == "done" and end["reason"] == "cancelled"
    await conn.close()
    assert await greedy_text(plain_server.url) == ref
    await assert_idle(plain_server)


# --------------------------------------------------------------------------- 2: request ids are bounded


async def test_long_ids_are_refused_naming_the_limit_and_never_echoed(plain_server: ServerProcess) -> None:
    conn = await Conn.open(plain_server.url)
    assert conn.hello["limits"]["max_id_length"] == 128
    long_id = "i" * 700_000
    for msg in ({"type": "predict", "model": "mlp", "inputs": [[0] * 32] * 10, "stream": True, "chunk_rows": 1},
                {"type": "generate", "model": "charlm", "prompt": "a"}, {"type": "ping"}):
        reply = await conn.request(orjson.dumps({**msg, "id": long_id}).decode())
        assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["id"] is None, reply
        assert "128" in reply["message"] and len(orjson.dumps(reply)) < 300
    ok_id = "i" * 128
    reply = await conn.request({"type": "predict", "id": ok_id, "model": "linear", "inputs": [[1.0]]})
    assert reply["type"] == "result" and reply["id"] == ok_id
    for bad in (2**63, -(2**63) - 1):
        reply = await conn.request('{"type":"ping","id":' + str(bad) + "}")
        assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["id"] is None
    await conn.close()


# --------------------------------------------------------------------------- 6: fair share of generation slots


async def test_one_connection_cannot_hold_every_generation_slot(start_server) -> None:
    server = start_server("--max-generate-batch", "4", "--models", "charlm")
    hog = await Conn.open(server.url)
    for i in range(8):  # 4 run, 4 wait: 100,000 tokens each
        await hog.send({"type": "generate", "id": i, "model": "charlm", "prompt": "The ", "max_tokens": 100000})
    await hog.recv()  # generation has started
    other = await Conn.open(server.url)
    await other.send({"type": "generate", "id": "short", "model": "charlm", "prompt": "The ", "max_tokens": 20})
    frames, end = await other.until_terminal("short", timeout=60)
    assert end["type"] == "done" and end["reason"] == "length" and len(frames) == 20
    # ... while every one of the hog's generations is still unfinished.
    for i in range(8):
        await hog.send({"type": "cancel", "id": i})
    ended = await hog.collect(set(range(8)))
    assert all(frames_[-1]["type"] == "done" and frames_[-1]["reason"] == "cancelled" for frames_ in ended.values())
    await hog.close()
    await other.close()
