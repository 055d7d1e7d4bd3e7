"""deploy/nginx.conf in front of two real wsserve processes, with Debian's nginx.

Skipped only when nginx is not installed (CI installs it: ``apt-get install -y nginx``).
Everything is on 127.0.0.1; nginx runs as this user from a rewritten copy of the
deployed file (see ``tests/nginxproc.py``).  One backend is drained with SIGTERM
while every connection has a long token stream in flight: its clients get
``draining``, their streams finish to the last token, every request gets exactly
one terminal frame, and they reconnect through nginx to the other backend.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.nginxproc import DEPLOY_CONF, NGINX, NginxProcess
from tests.support import RawClient, RawHttp, ServerProcess, http_get, wait_until_async
from wsserve.models.linear import train_linear

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install -y nginx)")

#: Tokens of the stream in flight during the drain (~1-2 s at the measured 15-20k tokens/s).
LONG_TOKENS = 30_000
#: The backends' drain budget: far longer than the streams, so nothing is cut.
DRAIN_TIMEOUT_S = 60
WAIT_S = 60.0


@pytest.fixture
def stack(tmp_path: Path, model_cache: Path, transport_name: str):
    """Backends A and B (linear + charlm) and nginx in front of both, on each WebSocket transport."""
    args = ("--models", "linear,charlm", "--drain-timeout-s", str(DRAIN_TIMEOUT_S))
    procs: list[Any] = []
    try:
        a = ServerProcess(*args, cache_dir=model_cache, transport=transport_name)
        procs.append(a)
        b = ServerProcess(*args, cache_dir=model_cache, transport=transport_name)
        procs.append(b)
        nginx = NginxProcess(tmp_path / "nginx", [a.port, b.port])
        procs.append(nginx)
        yield a, b, nginx
    finally:
        for p in reversed(procs):
            p.stop()


def _expected(x: float) -> float:
    """What both backends' ``linear`` (trained with the default seed 0) answer for ``x``."""
    return float(train_linear(seed=0).predict([[x]])[0, 0])


def _get(url: str) -> tuple[int, str]:
    status, _, body = http_get(url)
    return status, body.decode()


async def _connections(proc: ServerProcess) -> int:
    """Open WebSocket connections on one backend, from its own /metrics (not via nginx)."""
    if proc.proc.poll() is not None:
        return 0
    try:
        metrics = await asyncio.to_thread(proc.metrics)
    except OSError:
        return 0
    return int(metrics.value("wsserve_connections"))


async def _wait(predicate: Callable[[], Any], what: str) -> None:
    """Poll an (async or plain) predicate until true; fail naming ``what`` after ``WAIT_S``."""
    await wait_until_async(predicate, WAIT_S, what=what)


class Conn:
    """A raw WebSocket through nginx recording every frame, by request id."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.sent: list[str] = []
        self.terminal: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, url: str) -> Conn:
        return cls(await websockets.connect(url, subprotocols=["wsserve.v1"], max_size=2**24))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                self.frames.append(frame)
                kind, rid = frame.get("type"), frame.get("id")
                if kind == "token":
                    self.seqs[rid].append(frame["seq"])
                elif kind in ("result", "done", "error") and rid is not None:
                    self.terminal[rid].append(frame)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self._changed.set()

    async def send(self, frame: dict[str, Any]) -> None:
        self.sent.append(frame["id"])
        await self.ws.send(json.dumps(frame))

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    if predicate():
                        return
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    def index(self, kind: str, rid: str | None = None) -> int:
        return next(i for i, f in enumerate(self.frames) if f.get("type") == kind and f.get("id") == rid)

    @property
    def drained(self) -> bool:
        return any(f.get("type") == "draining" for f in self.frames)

    def all_answered(self) -> bool:
        return all(self.terminal.get(rid) for rid in self.sent)


async def _work(conn: Conn, tag: str, *, predicts: int = 3, tokens: int = 50) -> None:
    """Predicts and one short generation on ``conn``; checks every answer."""
    ids = [f"{tag}-p{k}" for k in range(predicts)]
    for k, rid in enumerate(ids):
        await conn.send({"type": "predict", "id": rid, "model": "linear", "inputs": [[k]]})
    await conn.send({"type": "generate", "id": f"{tag}-g", "model": "charlm", "prompt": "The ", "max_tokens": tokens})
    await conn.until(lambda: all(conn.terminal.get(r) for r in [*ids, f"{tag}-g"]), f"answers to {tag}")
    for k, rid in enumerate(ids):
        (frame,) = conn.terminal[rid]
        assert frame["type"] == "result", frame
        assert frame["outputs"][0][0] == pytest.approx(_expected(k), rel=1e-12)
    (done,) = conn.terminal[f"{tag}-g"]
    assert (done["type"], done["reason"], done["tokens"]) == ("done", "length", tokens)
    assert conn.seqs[f"{tag}-g"] == list(range(tokens))


async def test_drain_behind_nginx_loses_nothing(stack) -> None:
    a, b, nginx = stack
    n = 6
    conns = [await Conn.open(nginx.url) for _ in range(n)]  # least_conn alternates between A and B
    for c in conns:
        await c.until(lambda c=c: bool(c.frames), "hello")
        assert c.frames[0]["type"] == "hello"

    async def spread() -> bool:
        on_a, on_b = await _connections(a), await _connections(b)
        return on_a >= 1 and on_b >= 1 and on_a + on_b == n

    await _wait(spread, "connections on both backends")
    n_a = await _connections(a)

    for i, c in enumerate(conns):
        await _work(c, f"c{i}")

    # A long stream in flight on every connection, then SIGTERM to A.
    for i, c in enumerate(conns):
        await c.send({"type": "generate", "id": f"c{i}-long", "model": "charlm", "prompt": "The ",
                      "max_tokens": LONG_TOKENS})
    for i, c in enumerate(conns):
        await c.until(lambda c=c, i=i: bool(c.seqs[f"c{i}-long"]), f"first token of c{i}-long")
    a.signal(signal.SIGTERM)

    await _wait(lambda: sum(c.drained for c in conns) == n_a, f"'draining' on the {n_a} connections of A")
    drained = [i for i, c in enumerate(conns) if c.drained]
    for i in drained:  # new work on a draining connection is refused, and answered
        await conns[i].send({"type": "predict", "id": f"c{i}-late", "model": "linear", "inputs": [[1.0]]})
    for c in conns:
        await c.until(c.all_answered, "a terminal frame for every request")
    for i in drained:
        await conns[i].until(lambda i=i: conns[i].closed.is_set(), f"A closing c{i}")
    assert a.wait(timeout_s=DRAIN_TIMEOUT_S) == 0

    for i, c in enumerate(conns):
        # every request id got exactly one terminal frame
        assert {rid: len(c.terminal[rid]) for rid in c.sent} == {rid: 1 for rid in c.sent}
        assert set(c.terminal) == set(c.sent)
        (done,) = c.terminal[f"c{i}-long"]
        assert (done["type"], done["reason"], done["tokens"]) == ("done", "length", LONG_TOKENS)
        assert c.seqs[f"c{i}-long"] == list(range(LONG_TOKENS))  # no token lost or repeated
        if i in drained:
            assert c.index("draining") < c.index("done", f"c{i}-long")  # it was in flight during the drain
            (late,) = c.terminal[f"c{i}-late"]
            assert (late["type"], late["code"]) == ("error", "shutting_down")
            assert c.ws.close_code == 1001
        else:
            assert not c.closed.is_set()
    assert len(drained) == n_a

    # A's clients reconnect through nginx (to B: A is gone) and keep working; B's keep working.
    for i in drained:
        conns[i] = await Conn.open(nginx.url)
    for i, c in enumerate(conns):
        await _work(c, f"c{i}-after")
    assert await _connections(b) == n

    for c in conns:
        await c.ws.close()
        await c.reader


async def test_python_client_reconnects_through_nginx(stack) -> None:
    from wsserve_client import Backoff, Client, ConnectionLost, ShuttingDown

    a, b, nginx = stack
    m, predicts, halfway = 4, 30, 10
    clients = [Client(nginx.url, reconnect=Backoff(max_attempts=10, base_delay=0.05, max_delay=0.5))
               for _ in range(m)]
    for c in clients:
        await c.connect()

    async def spread() -> bool:
        on_a, on_b = await _connections(a), await _connections(b)
        return on_a >= 1 and on_b >= 1 and on_a + on_b == m

    await _wait(spread, "clients on both backends")
    n_a = await _connections(a)
    done_first = [0] * m
    first_token = [asyncio.Event() for _ in range(m)]
    resume = asyncio.Event()
    outputs: list[list[float]] = [[] for _ in range(m)]
    refusals = [0] * m

    async def predict(i: int, k: int) -> float:
        async with asyncio.timeout(WAIT_S):
            while True:
                try:
                    r = await clients[i].predict("linear", [[float(k)]])
                    return r.outputs[0][0]
                except (ShuttingDown, ConnectionLost):  # draining, or closed: the next call reconnects
                    refusals[i] += 1
                    await asyncio.sleep(0.02)

    async def stream(i: int) -> Any:
        gen = clients[i].generate("charlm", "The ", max_tokens=LONG_TOKENS)
        async with gen:
            async for _ in gen:
                first_token[i].set()
        return gen.result

    async def user(i: int) -> Any:
        streaming = asyncio.create_task(stream(i))
        for k in range(predicts):
            if k == halfway:
                done_first[i] = k
                await resume.wait()
            outputs[i].append(await predict(i, k))
        return await streaming

    async with asyncio.timeout(3 * WAIT_S):
        users = [asyncio.create_task(user(i)) for i in range(m)]
        await _wait(lambda: all(d == halfway for d in done_first) and all(e.is_set() for e in first_token),
                    "every client halfway with its stream running")
        a.signal(signal.SIGTERM)
        await _wait(lambda: sum(c.draining for c in clients) == n_a, "the clients of A seeing 'draining'")
        resume.set()
        results = await asyncio.gather(*users)
    assert a.wait(timeout_s=DRAIN_TIMEOUT_S) == 0

    for r in results:  # the streams in flight during the drain finished whole
        assert (r.reason, r.tokens, len(r.text)) == ("length", LONG_TOKENS, LONG_TOKENS)
    for out in outputs:  # every predict answered, and the same on both backends
        assert out == outputs[0]
        assert out == pytest.approx([_expected(k) for k in range(predicts)], rel=1e-12)
    reconnected = [i for i, c in enumerate(clients) if c.stats().connects == 2]
    assert len(reconnected) == n_a
    assert all(c.stats().connects == 1 for i, c in enumerate(clients) if i not in reconnected)
    assert all(refusals[i] >= 1 for i in reconnected)  # they met the drain, and retried past it
    assert await _connections(b) == m
    for c in clients:
        await c.close()


def test_http_routes_through_nginx(stack) -> None:
    a, _b, nginx = stack
    assert _get(a.http + "/metrics")[0] == 200  # the backend itself serves them (for Prometheus)
    for path in ("/metrics", "/metrics?x=1", "//metrics", "/%6Detrics", "/metrics/", "/./metrics"):
        assert _get(nginx.http + path)[0] == 403, path
    assert _get(nginx.http + "/readyz")[0] == 200
    status, body = _get(nginx.http + "/v1/models")
    assert status == 200 and {"linear", "charlm"} <= {m["name"] for m in json.loads(body)}


def test_admin_operations_through_the_proxy_are_not_loopback(stack) -> None:
    # Without keys, admin operations are for loopback clients, and behind deploy/nginx.conf every
    # client's TCP peer is nginx on 127.0.0.1: anyone on the internet could load, unload or reload
    # the models. A request a proxy forwarded (X-Forwarded-For, Forwarded, X-Real-IP) is not local.
    a, _b, nginx = stack
    load = {"type": "load", "id": 1, "model": "linear"}
    with RawClient(nginx.port) as c:
        assert c.status == 101 and c.recv_json()["type"] == "hello"
        c.send(load)
        reply = c.recv_json()
        assert reply["type"] == "error" and reply["code"] == "forbidden", reply
    with RawHttp(nginx.port) as h:
        answer = h.request("POST", "/v2/repository/models/linear/load", b"")
        assert answer.status == 403, (answer.status, answer.body)
    with RawClient(a.port) as c:  # on the backend's host itself, directly: still allowed
        assert c.recv_json()["type"] == "hello"
        c.send(load)
        assert c.recv_json()["ok"] is True


def test_proxy_timeouts_outlast_the_keepalive_ping() -> None:
    """nginx must not cut a quiet but healthy WebSocket: its timeouts exceed wsserve's ping
    period (and so the longest silence on a live connection) by a wide margin."""
    from wsserve.config import ServerConfig

    text = DEPLOY_CONF.read_text()
    ping = ServerConfig().ping_interval_s
    assert ping is not None
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        (value,) = re.findall(rf"^\s*{directive} (\d+)s;$", text, flags=re.MULTILINE)
        assert int(value) >= 10 * ping, directive
    assert re.search(r"^\s*proxy_buffering off;$", text, flags=re.MULTILINE)
    assert re.search(r"^\s*proxy_next_upstream [^;]*http_503", text, flags=re.MULTILINE)


@pytest.fixture
def grpc_stack(tmp_path: Path, model_cache: Path):
    """Backends A and B serving gRPC too, behind deploy/nginx.conf's gRPC server (grpc_pass)."""
    pytest.importorskip("tritonclient.grpc")  # the grpc extra
    from tests.test_grpc import grpc_address

    procs: list[Any] = []
    try:
        backends = []
        for _ in range(2):
            proc = ServerProcess("--models", "linear", "--grpc-port", "0", "--trusted-proxy", "127.0.0.1",
                                 cache_dir=model_cache)
            procs.append(proc)
            backends.append((proc, int(grpc_address(proc).rsplit(":", 1)[1])))
        nginx = NginxProcess(tmp_path / "nginx", [p.port for p, _ in backends], grpc_backends=[g for _, g in backends])
        procs.append(nginx)
        yield backends, nginx
    finally:
        for p in reversed(procs):
            p.stop()


def test_grpc_through_nginx_is_balanced_per_rpc_and_forwarded(grpc_stack) -> None:
    # deploy/nginx.conf had no gRPC server: a gRPC client could not go through the documented proxy.
    import numpy as np
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    backends, nginx = grpc_stack
    client = tgrpc.InferenceServerClient(nginx.grpc)  # one HTTP/2 connection to nginx
    try:
        assert client.is_server_live() and client.is_model_ready("linear")
        tensor = tgrpc.InferInput("input", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.array([[2.0]], dtype=np.float32))
        for _ in range(20):
            out = client.infer("linear", [tensor]).as_numpy("output")
            assert out.shape == (1, 1) and abs(float(out[0, 0]) - _expected(2.0)) < 1e-4

        # nginx balances per RPC: both backends answered some of the one connection's 20 RPCs.
        def inferences(proc: ServerProcess, port: int) -> int:
            direct = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
            try:
                stats = direct.get_inference_statistics("linear").model_stats
                return sum(s.inference_count for s in stats)
            finally:
                direct.close()

        counts = [inferences(p, g) for p, g in backends]
        assert sum(counts) == 20 and all(counts), counts
        # The RPC carries x-forwarded-for: not loopback for the admin rule (without keys, admin is
        # for loopback clients, and every client's peer is nginx on 127.0.0.1).
        with pytest.raises(InferenceServerException) as refused:
            client.unload_model("linear")
        assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
    finally:
        client.close()
