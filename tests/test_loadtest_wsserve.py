"""The load-test tool against the real wsserve on loopback: every workload kind, both entry points."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import TRANSPORTS, ServerProcess, wait_until_async
from wsserve.loadtest import (
    EXIT_ERROR,
    EXIT_OK,
    LoadConfig,
    WorkloadSpec,
    format_text,
    parse_mix,
    run_load,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=TRANSPORTS)
def wsserve_url(request: pytest.FixtureRequest, model_cache: Path) -> Iterator[str]:
    proc = ServerProcess(cache_dir=model_cache, transport=request.param)
    yield proc.url
    proc.stop()


def test_mixed_open_loop_workload_is_served_without_errors(wsserve_url: str) -> None:
    cfg = LoadConfig(
        url=wsserve_url,
        specs=tuple(parse_mix("predict:linear=4,predict:mlp:8=2,stream:mlp:50=1,generate:charlm:16=1", chunk_rows=10)),
        connections=4,
        rate_per_s=200.0,
        duration_s=1.5,
        warmup_s=0.3,
        progress=False,
    )
    rep = run_load(cfg, err=io.StringIO())
    assert rep["server"]["kind"] == "protocol" and rep["server"]["name"] == "wsserve"
    assert rep["config"]["inflight"] >= 1  # taken from the server's hello
    assert rep["requests"]["errors"] == 0, rep["errors"]
    assert rep["requests"]["sent"] == 300
    w = rep["workloads"]
    assert set(w) == {"predict:linear", "predict:mlp:8", "stream:mlp:50", "generate:charlm:16"}
    for label, weight in (("predict:linear", 4), ("predict:mlp:8", 2), ("stream:mlp:50", 1), ("generate:charlm:16", 1)):
        assert abs(w[label]["sent"] - 300 * weight / 8) <= 1, (label, w[label]["sent"])
    gen = w["generate:charlm:16"]
    assert gen["ok"] == gen["sent"] and gen["ttft_ms"]["count"] == gen["ok"]
    assert gen["itl_ms"]["count"] == 15 * gen["ok"]  # 16 tokens -> 15 gaps per request
    assert gen["tokens"] > 0 and gen["tokens_per_s"] > 0
    stream = w["stream:mlp:50"]
    assert stream["first_chunk_ms"]["count"] == stream["ok"] and stream["chunks"] >= 5 * stream["ok"] * 0.8
    assert stream["first_chunk_ms"]["p50"] <= stream["latency_ms"]["p50"]


def _closed_loop_without_errors(url: str, specs: tuple[WorkloadSpec, ...]) -> dict[str, Any]:
    """A second of closed-loop load (2 connections, 2 in flight each); its report, which has no errors."""
    cfg = LoadConfig(url=url, specs=specs, connections=2, inflight=2, duration_s=1.0, warmup_s=0.2, progress=False)
    rep = run_load(cfg, err=io.StringIO())
    assert rep["requests"]["errors"] == 0, rep["errors"]
    return rep


def test_binary_tensor_frames_are_served_without_errors(wsserve_url: str) -> None:
    """``--binary``: predicts and streamed predicts sent as binary tensor frames, closed loop."""
    rep = _closed_loop_without_errors(wsserve_url, tuple(parse_mix("predict:mlp:4=2,stream:mlp:20=1", chunk_rows=5,
                                                                   binary=True)))
    w = rep["workloads"]
    assert set(w) == {"predict:mlp:4/binary", "stream:mlp:20/binary"}
    assert all(x["ok"] > 0 and x["ok"] == x["sent"] for x in w.values()), w
    stream = w["stream:mlp:20/binary"]
    # 4 chunks per request, give or take those of the (at most 4) requests in flight when measuring began
    assert 4 * (stream["ok"] - 4) <= stream["chunks"] <= 4 * (stream["ok"] + 4)
    assert [m["binary"] for m in rep["config"]["mix"]] == [True, True]


def test_explain_requests_are_served_without_errors(wsserve_url: str) -> None:
    """``--explain``: predicts and streamed predicts asking for attributions, as JSON and as binary
    tensor frames; the models reply says both built-in models can be explained."""
    rep = _closed_loop_without_errors(wsserve_url, (
        *parse_mix("predict:linear:3=2,stream:mlp:4=1", chunk_rows=2, explain=True),
        *parse_mix("predict:mlp", explain=True, binary=True)))
    w = rep["workloads"]
    assert set(w) == {"predict:linear:3+explain", "stream:mlp:4+explain", "predict:mlp/binary+explain"}
    assert all(x["ok"] > 0 and x["ok"] == x["sent"] for x in w.values()), w
    assert [m["explain"] for m in rep["config"]["mix"]] == [True, True, True]


@pytest.mark.parametrize("entry", [["-m", "wsserve", "loadtest"], [str(ROOT / "clients" / "loadtest.py")]])
def test_command_line_entry_points(wsserve_url: str, entry: list[str], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            *entry,
            wsserve_url,
            "-c",
            "8",
            "-k",
            "2",
            "-d",
            "1",
            "-w",
            "0.3",
            "--model",
            "mlp",
            "--slo-p99-ms",
            "5000",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "req/s achieved" in proc.stdout and "SLO: PASS" in proc.stdout
    assert "sent" in proc.stderr and "ok/s" in proc.stderr  # the progress lines
    rep = orjson.loads(out.read_bytes())
    assert rep["mode"] == "closed" and rep["config"]["inflight"] == 2 and rep["requests"]["ok"] > 0
    assert rep["requests"]["errors"] == 0


def test_api_key_is_sent_in_every_handshake(start_server) -> None:
    proc = start_server("--api-key", "k3y")
    try:
        base = dict(
            url=proc.url,
            specs=tuple(parse_mix("predict:linear")),
            connections=2,
            duration_s=0.5,
            warmup_s=0.1,
            progress=False,
        )
        with_key = run_load(LoadConfig(**base, api_key="k3y"), err=io.StringIO())
        without = run_load(LoadConfig(**base), err=io.StringIO())
    finally:
        proc.stop()
    assert with_key["requests"]["ok"] > 0 and with_key["requests"]["errors"] == 0, with_key
    assert without["requests"]["ok"] == 0 and set(without["errors"]) == {"unauthorized"}, without
    assert "k3y" not in repr(LoadConfig(**base, api_key="k3y")) and "k3y" not in orjson.dumps(with_key).decode()


@pytest.mark.parametrize("rate", [None, 2000.0], ids=["closed-loop", "open-loop"])
async def test_a_server_that_goes_away_mid_run_ends_the_run_with_exit_1(start_server, rate: float | None) -> None:
    """The server drains and closes every connection while the test runs: the run stops at once
    (it used to wait out the whole --duration with no connection, closed loop) and the report
    says so, with exit code 1 (it said exit 0 as if the whole duration had been measured)."""
    proc = start_server("--models", "linear", "--drain-timeout-s", "5")
    cfg = LoadConfig(url=proc.url, specs=tuple(parse_mix("predict:linear")), connections=3, inflight=2,
                     rate_per_s=rate, duration_s=600.0, warmup_s=0.0, progress=False)
    run = asyncio.create_task(asyncio.to_thread(run_load, cfg, err=io.StringIO()))

    def served() -> float:
        return sum(v for (name, labels), v in proc.metrics().samples.items()
                   if name == "wsserve_requests_total" and dict(labels).get("model") == "linear")

    await wait_until_async(lambda: served() > 50, timeout_s=60)
    proc.signal()
    assert await asyncio.to_thread(proc.wait, 60) == 0
    rep = await asyncio.wait_for(run, 120)  # not the 600 s duration
    assert rep["exit_code"] == EXIT_ERROR
    assert rep["connections"] == {"opened": 3, "failed": 0, "closed_early": 3}
    assert rep["requests"]["ok"] > 50 and set(rep["errors"]) <= {"connection_closed"}
    assert "closed every connection before the end" in format_text(rep)


def test_the_reports_counts_match_the_servers_metrics(start_server) -> None:
    """Successes and errors counted by the tool equal the server's ``wsserve_requests_total`` for
    the same run (no warm-up, so every request is measured): half the requests ask for more
    tokens than the server allows and are refused."""
    proc = start_server("--models", "linear,charlm", "--max-tokens", "64")

    def counts() -> dict[tuple[str, str], float]:
        return {(dict(labels)["code"], dict(labels)["model"]): v for (name, labels), v in proc.metrics().samples.items()
                if name == "wsserve_requests_total"}

    before = counts()
    cfg = LoadConfig(url=proc.url, specs=tuple(parse_mix("predict:linear=1,generate:charlm:65=1")), connections=2,
                     inflight=2, duration_s=1.0, warmup_s=0.0, progress=False)
    rep = run_load(cfg, err=io.StringIO())
    after = counts()
    delta = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
    assert rep["exit_code"] == EXIT_OK and rep["connections"]["closed_early"] == 0
    assert rep["requests"]["ok"] == delta.pop(("ok", "linear")) > 0
    assert rep["requests"]["errors"] == sum(delta.values()) > 0  # the refused generates, whatever their labels
    assert rep["requests"]["sent"] == rep["requests"]["ok"] + rep["requests"]["errors"]
