"""The load-test tool end to end against tiny servers written here (the network is the true boundary).

* an echo server (what ``benchmarks/peers/echo_server.py`` is),
* a protocol server that stalls once for 300 ms — open-loop latency measured
  from intended send times must show the stall in the percentiles,
* a protocol server that refuses everything with ``overloaded``.

The tool runs in a thread (``run_load`` / ``main`` block and spawn client
processes) while these servers run on the test's event loop.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import socket
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from wsserve.loadtest import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SLO,
    EXIT_USAGE,
    REPORT_SCHEMA,
    LatencyHistogram,
    LoadConfig,
    WorkloadSpec,
    main,
    run_load,
)

HELLO = orjson.dumps(
    {
        "type": "hello",
        "server": "fake",
        "version": "9",
        "protocol": 1,
        "limits": {"max_inflight": 64},
        "models": ["linear"],
    }
).decode()
MODELS = [
    {"name": "linear", "version": "1", "task": "regression", "input_shape": [1], "output_shape": [1], "parameters": 2}
]


async def _echo(ws: ServerConnection) -> None:
    async for msg in ws:
        await ws.send(msg)


def _protocol_handler(answer: Callable[[dict[str, Any], int], Any]) -> Callable[[ServerConnection], Any]:
    """A minimal protocol server: hello, models, and ``answer(frame, n)`` for the n-th predict (1-based, all connections)."""
    count = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal count
        await ws.send(HELLO)
        async for msg in ws:
            frame = orjson.loads(msg)
            if frame.get("type") == "models":
                await ws.send(orjson.dumps({"type": "models", "id": frame.get("id"), "models": MODELS}).decode())
            elif frame.get("type") == "predict":
                count += 1
                reply = await answer(frame, count)
                await ws.send(orjson.dumps(reply).decode())

    return handler


async def _start(handler: Callable[[ServerConnection], Any]) -> tuple[Any, str]:
    server = await serve(handler, "127.0.0.1", 0, compression=None)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}"


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    server, url = await _start(_echo)
    yield url
    server.close()
    await server.wait_closed()


def _result(frame: dict[str, Any]) -> dict[str, Any]:
    return {"type": "result", "id": frame["id"], "model": "linear", "version": "1", "outputs": [[1.0]]}


STALL_AT = 100  # the 100th predict (intended at 0.99 s at 100/s) is held 300 ms before the server reads on


async def _stall_once(frame: dict[str, Any], n: int) -> dict[str, Any]:
    if n == STALL_AT:
        await asyncio.sleep(0.3)
    return _result(frame)


async def _overloaded(frame: dict[str, Any], n: int) -> dict[str, Any]:
    return {"type": "error", "id": frame["id"], "code": "overloaded", "message": "busy", "retry_after_ms": 10}


def _cfg(url: str, **kw: Any) -> LoadConfig:
    base: dict[str, Any] = dict(
        url=url,
        specs=(WorkloadSpec("predict", "linear"),),
        connections=2,
        inflight=1,
        duration_s=1.0,
        warmup_s=0.2,
        progress=False,
        grace_s=2.0,
    )
    base.update(kw)
    return LoadConfig(**base)


async def test_open_loop_latency_from_intended_time_shows_a_stall() -> None:
    server, url = await _start(_protocol_handler(_stall_once))
    try:
        # one connection, one request in flight: while the server stalls the client *cannot* send, so
        # the requests due meanwhile wait; measured from their intended time they carry the stall.
        cfg = _cfg(url, connections=1, inflight=1, rate_per_s=100.0, warmup_s=0.3, duration_s=2.0, late_ms=5.0)
        rep = await asyncio.to_thread(run_load, cfg, err=io.StringIO())
    finally:
        server.close()
        await server.wait_closed()
    lat = rep["latency_ms"]
    assert rep["requests"]["errors"] == 0 and rep["requests"]["sent"] == 200
    # ~30 requests were due during the 300 ms stall: latencies spread from ~300 ms down to ~0,
    # i.e. about 15 % of all requests - not one slow request among 200 fast ones.
    assert lat["max"] >= 280.0
    assert lat["p99"] >= 250.0
    assert lat["p90"] >= 50.0
    assert rep["late_sends"]["count"] >= 20
    assert rep["late_sends"]["send_lag_ms"]["max"] >= 250.0
    assert rep["throughput"]["achieved_rps"] == pytest.approx(100.0, rel=0.1)


async def test_closed_loop_against_echo_counts_everything(echo_url: str) -> None:
    rep = await asyncio.to_thread(run_load, _cfg(echo_url, connections=4, inflight=2), err=io.StringIO())
    assert rep["server"]["kind"] == "echo"
    rq = rep["requests"]
    assert rq["ok"] > 100 and rq["errors"] == 0 and rq["sent"] == rq["ok"]
    assert rep["latency_ms"]["count"] == rq["ok"]
    assert rep["close_codes"] == {"1000": 4} and rep["connections"] == {"opened": 4, "failed": 0, "closed_early": 0}
    assert rep["throughput"]["target_rps"] is None and rep["throughput"]["achieved_rps"] > 100
    assert rep["late_sends"]["count"] == 0


async def test_two_client_processes_merge_their_histograms(echo_url: str) -> None:
    rep = await asyncio.to_thread(run_load, _cfg(echo_url, connections=4, procs=2), err=io.StringIO())
    per_proc = rep["client"]["ok_per_proc"]
    assert rep["client"]["procs"] == 2 and len(per_proc) == 2 and all(n > 0 for n in per_proc)
    assert sum(per_proc) == rep["requests"]["ok"] == rep["latency_ms"]["count"]
    assert len(rep["client"]["cpu_cores_per_proc"]) == 2
    merged = LatencyHistogram.decode(rep["histograms"]["all"])
    assert merged.count == rep["requests"]["ok"]
    assert rep["close_codes"] == {"1000": 4}


async def test_open_loop_with_two_processes_keeps_the_total_rate(echo_url: str) -> None:
    cfg = _cfg(echo_url, connections=4, procs=2, rate_per_s=400.0, inflight=None)
    rep = await asyncio.to_thread(run_load, cfg, err=io.StringIO())
    assert rep["requests"]["sent"] == 400  # exactly the schedule: 400/s for 1 s, split across processes
    assert rep["throughput"]["achieved_rps"] == pytest.approx(400.0, rel=0.1)
    assert rep["config"]["inflight"] == 256  # echo gives no max_inflight: the default cap


async def test_server_pings_are_answered() -> None:
    # the server pings every 50 ms and drops a connection whose pong is 500 ms late (long before the end)
    server = await serve(_echo, "127.0.0.1", 0, compression=None, ping_interval=0.05, ping_timeout=0.5)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        rep = await asyncio.to_thread(run_load, _cfg(url, connections=2, duration_s=1.0), err=io.StringIO())
    finally:
        server.close()
        await server.wait_closed()
    assert rep["requests"]["errors"] == 0 and rep["requests"]["ok"] > 0
    assert rep["close_codes"] == {"1000": 2}


async def test_server_closing_mid_run_is_reported() -> None:
    async def going_away_after_50(ws: ServerConnection) -> None:
        n = 0
        async for msg in ws:
            n += 1
            if n == 50:
                await ws.close(1001, "going away")  # the 50th request is never answered
                return
            await ws.send(msg)

    server, url = await _start(going_away_after_50)
    try:
        rep = await asyncio.to_thread(
            run_load, _cfg(url, connections=3, warmup_s=0.0, duration_s=0.5, echo=True), err=io.StringIO()
        )
    finally:
        server.close()
        await server.wait_closed()
    assert rep["close_codes"] == {"1001": 3}
    assert rep["requests"]["ok"] == 3 * 49  # (--echo: the probe sends nothing)
    assert rep["errors"] == {"connection_closed": 3}


async def _run_against_a_silent_server() -> dict[str, Any]:
    """0.5 s at 50/s on one connection to a server that never answers, 0.5 s grace: the report."""

    async def silent(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    server, url = await _start(silent)
    cfg = _cfg(url, connections=1, inflight=1, rate_per_s=50.0, warmup_s=0.0, duration_s=0.5, grace_s=0.5, echo=True)
    try:
        # A watchdog, not a timing bound: a run that never ended would hang the suite.
        rep = await asyncio.wait_for(asyncio.to_thread(run_load, cfg, err=io.StringIO()), 60)
    finally:
        server.close()
        await server.wait_closed()
    return rep


async def test_a_server_that_never_answers_ends_the_run_with_every_request_accounted() -> None:
    # A run that waited for the replies instead of ending with its grace period would not
    # report: run_load raises LoadTestError once its client processes overrun it (by 15 s).
    rep = await _run_against_a_silent_server()
    # the first request is sent and never answered; the other 24 wait for room that never comes
    assert rep["requests"]["sent"] == 25 and rep["requests"]["ok"] == 0
    assert rep["errors"] == {"no_reply": 1, "not_sent": 24}
    assert rep["requests"]["error_rate"] == 1.0


async def test_refused_connections_are_reported_and_the_rest_load() -> None:
    accepted = 0

    def at_most_three(connection: Any, request: Any) -> Any:  # the probe + two load connections
        nonlocal accepted
        accepted += 1
        if accepted > 3:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "full\n")
        return None

    server = await serve(_echo, "127.0.0.1", 0, compression=None, process_request=at_most_three)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    err = io.StringIO()
    try:
        rep = await asyncio.to_thread(run_load, _cfg(url, connections=5, duration_s=0.5), err=err)
    finally:
        server.close()
        await server.wait_closed()
    assert rep["connections"] == {"opened": 2, "failed": 3, "closed_early": 0}
    assert rep["close_codes"] == {"1000": 2} and rep["requests"]["ok"] > 0
    assert "only 2 of 5 connections opened" in err.getvalue() and "503" in err.getvalue()


async def test_errors_by_code_and_error_rate_slo() -> None:
    server, url = await _start(_protocol_handler(_overloaded))
    try:
        rep = await asyncio.to_thread(run_load, _cfg(url, max_error_rate=0.5), err=io.StringIO())
        code_ok = await asyncio.to_thread(main, [url, "-c", "1", "-d", "0.3", "-w", "0", "-q", "--max-error-rate", "1"])
    finally:
        server.close()
        await server.wait_closed()
    assert rep["server"] == {"kind": "protocol", "name": "fake", "version": "9"}
    assert rep["requests"]["ok"] == 0 and rep["errors"] == {"overloaded": rep["requests"]["sent"]}
    assert rep["requests"]["error_rate"] == 1.0
    assert rep["exit_code"] == EXIT_SLO and not rep["slo"]["passed"]
    assert code_ok == EXIT_OK  # 100 % errors is within --max-error-rate 1


async def test_exit_codes(echo_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["-c", "2", "-d", "0.5", "-w", "0.1", "-q"]
    assert await asyncio.to_thread(main, [echo_url, *common, "--slo-p99-ms", "10000"]) == EXIT_OK
    assert "SLO: PASS" in capsys.readouterr().out
    assert await asyncio.to_thread(main, [echo_url, *common, "--slo-p99-ms", "0.001"]) == EXIT_SLO
    assert "SLO: FAIL: p99 latency" in capsys.readouterr().out
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{s.getsockname()[1]}"
    assert await asyncio.to_thread(main, [dead, *common]) == EXIT_ERROR
    assert "loadtest: error: cannot use" in capsys.readouterr().err
    assert await asyncio.to_thread(main, [echo_url, "-c", "0"]) == EXIT_USAGE
    assert "--connections must be an integer in 1..100,000" in capsys.readouterr().err
    assert await asyncio.to_thread(main, [echo_url, "--protocol", *common]) == EXIT_ERROR
    assert "echo server" in capsys.readouterr().err


async def test_unknown_model_is_refused_before_any_load() -> None:
    server, url = await _start(_protocol_handler(_stall_once))
    try:
        code = await asyncio.to_thread(main, [url, "--model", "mlp", "-d", "0.2", "-q"])
    finally:
        server.close()
        await server.wait_closed()
    assert code == EXIT_ERROR


# -- JSON report schema ----------------------------------------------------------

NUM = (int, float)
SUMMARY = {k: NUM for k in ("count", "min", "mean", "p50", "p90", "p99", "p99.9", "max")}
SCHEMA: dict[str, Any] = {
    "schema": str,
    "url": str,
    "started_at": str,
    "mode": str,
    "exit_code": int,
    "server": {"kind": str, "name": str, "version": (str, type(None))},
    "config": {
        "connections": int,
        "inflight": int,
        "rate_per_s": (float, type(None)),
        "duration_s": NUM,
        "warmup_s": NUM,
        "procs": int,
        "late_ms": NUM,
        "grace_s": NUM,
        "mix": list,
    },
    "throughput": {"target_rps": (float, type(None)), "achieved_rps": NUM, "achieved_ratio": (float, type(None))},
    "requests": {"sent": int, "ok": int, "errors": int, "error_rate": NUM},
    "latency_ms": SUMMARY,
    "workloads": dict,
    "errors": dict,
    "close_codes": dict,
    "connections": {"opened": int, "failed": int, "closed_early": int},
    "client": {"procs": int, "ok_per_proc": list, "cpu_cores_per_proc": list, "busy": bool},
    "timeline": {"start_monotonic": float, "measure_start_monotonic": float, "end_monotonic": float},
    "late_sends": {"count": int, "threshold_ms": NUM, "send_lag_ms": SUMMARY},
    "slo": {"p99_ms": (float, type(None)), "max_error_rate": (float, type(None)), "passed": bool, "breaches": list},
    "histograms": dict,
}
WORKLOAD = {
    "kind": str,
    "weight": int,
    "sent": int,
    "ok": int,
    "errors": dict,
    "error_rate": NUM,
    "achieved_rps": NUM,
    "latency_ms": SUMMARY,
}


def _check(obj: Any, schema: Any, path: str = "$") -> None:
    if isinstance(schema, dict):
        assert isinstance(obj, dict), path
        assert set(obj) == set(schema), f"{path}: keys {sorted(obj)} != {sorted(schema)}"
        for key, sub in schema.items():
            _check(obj[key], sub, f"{path}.{key}")
    else:
        assert isinstance(obj, schema) and not (schema is not bool and isinstance(obj, bool)), (
            f"{path}: {obj!r} is not {schema}"
        )


async def test_json_report_schema(echo_url: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code = await asyncio.to_thread(
        main,
        [
            echo_url,
            "-c",
            "2",
            "-d",
            "0.5",
            "-w",
            "0.1",
            "-q",
            "--rate",
            "200",
            "--slo-p99-ms",
            "5000",
            "--max-error-rate",
            "0.01",
            "--json",
            str(out),
        ],
    )
    assert code == EXIT_OK
    rep = orjson.loads(out.read_bytes())
    _check(rep, SCHEMA)
    assert rep["schema"] == REPORT_SCHEMA and rep["mode"] == "open"
    assert list(rep["workloads"]) == ["predict:linear"]
    _check(rep["workloads"]["predict:linear"], WORKLOAD)
    assert rep["config"]["mix"] == [
        {
            "label": "predict:linear",
            "kind": "predict",
            "model": "linear",
            "weight": 1,
            "rows": 1,
            "chunk_rows": None,
            "max_tokens": 32,
            "binary": False,
            "explain": False,
        }
    ]
    assert set(rep["histograms"]) == {"all", "predict:linear"}
    assert len(rep["client"]["cpu_cores_per_proc"]) == 1 and 0 < rep["client"]["cpu_cores_per_proc"][0] < 2
    tl = rep["timeline"]
    assert tl["measure_start_monotonic"] - tl["start_monotonic"] == pytest.approx(0.1)
    assert tl["end_monotonic"] - tl["measure_start_monotonic"] == pytest.approx(0.5)
    assert all(LatencyHistogram.decode(v).count == rep["requests"]["ok"] for v in rep["histograms"].values())


# -- histograms across real processes ------------------------------------------------


def _record_in_child(seed: int) -> str:
    import random

    rng = random.Random(seed)
    h = LatencyHistogram()
    for _ in range(20_000):
        h.record_s(rng.lognormvariate(-6.0, 1.0))
    return h.encode()


def test_histograms_from_separate_processes_merge_exactly() -> None:
    import random

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        encoded = pool.map(_record_in_child, [1, 2, 3])
    merged = LatencyHistogram()
    for text in encoded:
        merged.merge(LatencyHistogram.decode(text))
    union = LatencyHistogram()
    for seed in (1, 2, 3):
        rng = random.Random(seed)
        for _ in range(20_000):
            union.record_s(rng.lognormvariate(-6.0, 1.0))
    assert merged.count == 60_000
    assert merged.summary_ms() == union.summary_ms()
