"""A hostile structured-outputs pattern on a real server: refused (``bad_request`` / HTTP 400
naming the field, "too complex to compile within the limits") while a concurrent generation on
the same server completes, with the server's RSS unmoved (the explosion happened in a child);
a request that leaves while its pattern compiles (a WebSocket ``cancel``, an HTTP client that
hangs up) kills the compiling child.  The children's limits are set with the server's
``--guide-compile-*`` flags (lowered so the refusals come fast)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.support import (
    Conn,
    RawHttp,
    ServerProcess,
    proc_status,
    request_bytes,
    wait_until,
    wait_until_async,
)
from tests.test_gen_wire import GEN, generate, text_of

openai = pytest.importorskip("openai")  # the test extra installs it
pytest.importorskip("outlines_core")  # the structured extra

#: A DFA of 2**21 states (seconds and gigabytes in outlines-core).
HOSTILE = r"(a|b)*a(a|b){20}"
#: 2**25 states: its child lives far longer than any test waits, unless killed.
ENDLESS = r"(a|b)*a(a|b){24}"
#: A JSON Schema that unrolls to HOSTILE.
HOSTILE_SCHEMA = {"type": "string", "pattern": HOSTILE}
MIB = 1 << 20


@pytest.fixture(scope="module")
def low(model_cache: Path, module_transport: str):
    """A server whose compiling children die at 256 MiB."""
    with ServerProcess("--guide-compile-memory-bytes", str(256 * MIB), cache_dir=model_cache,
                       transport=module_transport) as proc:
        yield proc


@pytest.fixture(scope="module")
def high(model_cache: Path, module_transport: str):
    """A server whose compiling children may take 4 GiB and five minutes of CPU."""
    with ServerProcess("--guide-compile-memory-bytes", str(4096 * MIB), "--guide-compile-cpu-s", "300",
                       "--guide-compile-timeout-s", "600", cache_dir=model_cache, transport=module_transport) as proc:
        yield proc


def _compilers(pid: int) -> set[int]:
    """The server's children that are compiling a pattern."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"guide_compile.py" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.add(int(child))
            except OSError:  # gone meanwhile
                pass
    return found


def _rss(server: ServerProcess) -> int:
    return proc_status(server.proc.pid, "VmRSS")["VmRSS"] * 1024


async def test_websocket_hostile_regex_is_refused_while_a_generation_completes(low: ServerProcess) -> None:
    conn = await Conn.open(low.url)
    limits = conn.hello["limits"]  # the server's settings, announced
    assert (limits["guide_compile_memory_bytes"], limits["guide_compile_cpu_s"], limits["guide_compile_timeout_s"]) \
        == (256 * MIB, 10, 15.0)
    before = _rss(low)
    await conn.send({**GEN, "id": "hostile", "prompt": "a", "max_tokens": 8, "guided_regex": HOSTILE})
    await conn.send({**GEN, "id": "plain", "prompt": "The ", "max_tokens": 12})
    frames = await conn.collect({"hostile", "plain"}, timeout=120)
    error = frames["hostile"][-1]
    assert error["type"] == "error" and error["code"] == "bad_request", error
    assert error["message"].startswith("field 'guided_regex': the pattern is too complex to compile within the "
                                       "limits (256 MiB of memory"), error
    text, done = text_of(frames["plain"])
    assert done["type"] == "done" and done["reason"] == "length" and len(text) == 12
    assert _rss(low) - before < 64 * MIB  # (outlines-core's build alone takes hundreds)
    again, done = await generate(conn, "again", prompt="x", max_tokens=4, guided_regex="[0-9]{3}")
    assert done["reason"] == "stop" and again.isdigit() and len(again) == 3  # patterns still compile
    await conn.close()


@pytest.mark.parametrize(("fields", "param"), [
    ({"extra_body": {"guided_regex": HOSTILE}}, "guided_regex"),
    ({"extra_body": {"guided_json": HOSTILE_SCHEMA}}, "guided_json"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": HOSTILE_SCHEMA}}},
     "response_format"),
])
def test_openai_hostile_pattern_is_a_400_naming_the_field(low: ServerProcess, fields: dict, param: str) -> None:
    client = openai.OpenAI(base_url=low.http + "/v1", api_key="unused", max_retries=0, timeout=120)
    before = _rss(low)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="charlm", messages=[{"role": "user", "content": "a"}], max_tokens=5,
                                       **fields)
    body = info.value.body
    assert info.value.status_code == 400 and body["param"] == param and body["code"] == "bad_request", body
    assert body["message"].startswith(f"field {param!r}: the pattern is too complex to compile within the limits")
    assert _rss(low) - before < 64 * MIB
    r = client.completions.create(model="charlm", prompt="The ", max_tokens=6)  # the server goes on
    assert r.choices[0].finish_reason == "length"
    client.close()


async def test_websocket_cancel_kills_the_compiling_child(high: ServerProcess) -> None:
    pid = high.proc.pid
    conn = await Conn.open(high.url)
    await conn.send({**GEN, "id": "h", "prompt": "a", "max_tokens": 8, "guided_regex": ENDLESS})
    await wait_until_async(lambda: _compilers(pid), 60, what="a compiling child", in_thread=True)
    await conn.send({"type": "cancel", "id": "h"})
    _, done = await conn.until_terminal("h")
    assert done["type"] == "done" and done["reason"] == "cancelled", done
    await wait_until_async(lambda: not _compilers(pid), 60, what="no compiling child left", in_thread=True)
    await conn.close()


def test_an_http_client_that_hangs_up_kills_the_compiling_child(high: ServerProcess) -> None:
    pid = high.proc.pid
    raw = RawHttp(high.port)
    body = json.dumps({"model": "charlm", "prompt": "a", "max_tokens": 8, "guided_regex": ENDLESS}).encode()
    raw.send(request_bytes("POST", "/v1/completions", body, {"Content-Type": "application/json"}))
    wait_until(lambda: _compilers(pid), 60, what="a compiling child")
    raw.sock.close()
    wait_until(lambda: not _compilers(pid), 60, what="no compiling child left")


async def test_compiles_are_counted_on_metrics_by_result(low: ServerProcess) -> None:
    """``wsserve_guide_compiles_total{model,result}`` counts each compile as it ended (a pattern
    already compiled costs none), ``wsserve_guide_compile_seconds`` times the ones a child ran."""
    def counts() -> dict[str, float]:
        m = low.metrics()
        out = {r: m.get("wsserve_guide_compiles_total", model="charlm", result=r)
               for r in ("compiled", "refused", "remembered")}
        out["timed"] = m.get("wsserve_guide_compile_seconds_count", model="charlm")
        return out

    conn = await Conn.open(low.url)
    before = counts()
    for i in range(2):  # the second is served from the engine's cache: no compile
        text, done = await generate(conn, f"ok{i}", prompt="x", max_tokens=8, guided_regex="[0-9]{5}")
        assert done["reason"] == "stop" and len(text) == 5
    for i in range(2):  # the second refusal is remembered: no child
        reply = await conn.request({**GEN, "id": f"bad{i}", "prompt": "x", "max_tokens": 4, "guided_regex": "(?<=a)b"})
        assert reply["type"] == "error" and reply["code"] == "bad_request", reply
    after = counts()
    await conn.close()
    assert {k: after[k] - before[k] for k in after} == {"compiled": 1, "refused": 1, "remembered": 1, "timed": 2}


def _abandoned(server: ServerProcess) -> float:
    return server.metrics().get("wsserve_guide_compiles_total", model="charlm", result="abandoned")


async def test_a_deadline_passing_while_a_generation_runs_kills_the_compiling_child(high: ServerProcess) -> None:
    """A request whose ``timeout_ms`` passes while its pattern compiles ends with
    ``deadline_exceeded``; with no other request waiting for the pattern, its child is killed
    (counted ``abandoned``), also while another generation keeps the engine stepping (only an
    idle engine stopped it: the child ran on to its limits)."""
    pid = high.proc.pid
    before = _abandoned(high)
    conn = await Conn.open(high.url)
    await conn.send({**GEN, "id": "plain", "prompt": "The ", "max_tokens": 100_000})
    await conn.send({**GEN, "id": "g", "prompt": "a", "max_tokens": 8, "guided_regex": ENDLESS, "timeout_ms": 1000})
    _, error = await conn.until_terminal("g", timeout=120)
    assert error["type"] == "error" and error["code"] == "deadline_exceeded", error
    await wait_until_async(lambda: not _compilers(pid), 60, what="no compiling child left", in_thread=True)
    await wait_until_async(lambda: _abandoned(high) - before == 1, 60, what="the compile counted abandoned",
                           in_thread=True)  # (counted once the killed child was reaped)
    await conn.send({"type": "cancel", "id": "plain"})
    _, done = await conn.until_terminal("plain", timeout=120)
    assert done["type"] == "done" and done["reason"] == "cancelled", done  # it ran all along
    await conn.close()


@pytest.fixture(scope="module")
def keyed(model_cache: Path, module_transport: str):
    """A server with two API keys whose compiling children outlive any test unless killed."""
    with ServerProcess("--api-key", "key-a", "--api-key", "key-b", "--guide-compile-memory-bytes", str(4096 * MIB),
                       "--guide-compile-cpu-s", "300", "--guide-compile-timeout-s", "600", cache_dir=model_cache,
                       transport=module_transport) as proc:
        yield proc


async def test_compile_slots_are_shared_per_api_key_not_per_connection(keyed: ServerProcess) -> None:
    """Key A holds both compile slots from two connections and queues a third pattern from a
    third; key B's request (the openai SDK) comes after it.  When one of A's compiles ends, the
    freed slot goes to B, which holds none (A holds one): per connection, A's third connection
    had none running either and, older, took it, so B waited until one of A's patterns died at
    its memory limit (counted ``refused``)."""
    pid = keyed.proc.pid
    auth = {"additional_headers": {"Authorization": "Bearer key-a"}}
    a = [await Conn.open(keyed.url, **auth) for _ in range(3)]
    endless = [ENDLESS, ENDLESS.replace("b", "c"), ENDLESS.replace("a", "c")]  # three distinct patterns
    for i in range(2):
        await a[i].send({**GEN, "id": "g", "prompt": "a", "max_tokens": 8, "guided_regex": endless[i]})
    await wait_until_async(lambda: len(_compilers(pid)) == 2, 60, what="A's two compiles running", in_thread=True)
    await a[2].send({**GEN, "id": "g", "prompt": "a", "max_tokens": 8, "guided_regex": endless[2]})
    pong = await a[2].request({"type": "ping", "id": "p"})  # its generate was handled: its compile waits
    assert pong["type"] == "pong", pong
    client = openai.OpenAI(base_url=keyed.http + "/v1", api_key="key-b", max_retries=0, timeout=120)
    b = asyncio.ensure_future(asyncio.to_thread(client.completions.create, model="charlm", prompt="x", max_tokens=8,
                                                extra_body={"guided_regex": "[0-9]{3}"}))
    await wait_until_async(lambda: keyed.metrics(key="key-a").get("wsserve_inflight_requests") == 4, 60,
                           what="B's request waiting for a slot", in_thread=True)
    await a[0].send({"type": "cancel", "id": "g"})  # A's first compile ends: its slot is freed
    answer = await b
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].text.isdigit(), answer
    m = await keyed.ametrics(key="key-a")  # B had the freed slot, not one A's compiles left by dying at a limit
    assert sum(m.get("wsserve_guide_compiles_total", model="charlm", result=r) for r in ("refused", "timed_out")) == 0
    client.close()
    for conn in a:
        await conn.close()
    await wait_until_async(lambda: not _compilers(pid), 60, what="no compiling child left", in_thread=True)
