"""The peer-comparison suite: ``python -m benchmarks.run [--quick]`` (or ``python benchmarks/run.py``).

Starts the servers, each its own process with uvloop and one BLAS thread —
the raw ``websockets`` echo (the ceiling), the naive per-message server, a
FastAPI/uvicorn endpoint, wsserve, and for ``--transport picows`` a raw picows
echo and wsserve on picows — and drives each with the load-test tool
(``python -m wsserve.loadtest``, a separate process) using single-row
``predict`` at 1, 64 and 256 connections, closed loop, one request in flight
per connection.  Repetitions are interleaved across servers (so a noisy
neighbour hurts every server alike) and medians reported.  Then an open-loop
latency-vs-load curve for wsserve ``linear`` at 10 %…100 % of its measured
capacity.  Writes ``benchmarks/results/suite.md``, ``suite.json`` and
``latency_curve.svg`` and reassembles BENCHMARKS.md.

Full run: 3 repetitions of 4 s (+1 s warm-up) per cell, ~8 minutes.
``--quick``: 1 repetition of 1 s (+0.5 s warm-up), 3 curve points, ~1.5 minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.assemble import assemble
from benchmarks.machine import describe
from benchmarks.servers import ROOT, CpuSampler, bench_env, start_command
from benchmarks.suite_report import render_suite, render_svg
from tests.support import ServerProcess, serve_command

RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    reps: int
    duration_s: float
    warmup_s: float
    connections: tuple[int, ...] = (1, 64, 256)
    curve_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    curve_connections: int = 64
    client_procs: int = 1
    quick: bool = False
    inflight: int = 1  # requests in flight per connection (closed loop, ``-k``)


FULL = Plan(reps=3, duration_s=4.0, warmup_s=1.0)
QUICK = Plan(reps=1, duration_s=1.0, warmup_s=0.5, curve_fractions=(0.1, 0.5, 0.9), quick=True)

#: name -> (server command, models to drive it with; None = echo)
SERVERS: dict[str, tuple[list[str], tuple[str | None, ...]]] = {
    "echo": ([PY, "benchmarks/peers/echo_server.py", "--port", "0"], (None,)),
    "naive": ([PY, "benchmarks/peers/naive_server.py", "--port", "0"], ("linear", "mlp")),
    "fastapi": ([PY, "benchmarks/peers/fastapi_server.py", "--port", "0"], ("linear", "mlp")),
    "wsserve": (serve_command("--log-level", "warning"), ("linear", "mlp")),
    # --transport picows and its library's raw echo (the `fast` extra; skipped when missing)
    "echo-picows": ([PY, "benchmarks/peers/picows_echo_server.py", "--port", "0"], (None,)),
    "wsserve-picows": (serve_command("--log-level", "warning", "--transport", "picows"), ("linear", "mlp")),
}


def shown(cmd: list[str]) -> str:
    """A command as a reader would type it."""
    return " ".join("python" if c == PY else c for c in cmd)


def loadtest_cmd(
    url: str, *, model: str | None, connections: int, plan: Plan, rate: float | None = None, json_path: str = "FILE"
) -> list[str]:
    cmd = [
        PY,
        "-m",
        "wsserve.loadtest",
        url,
        "-c",
        str(connections),
        "-d",
        f"{plan.duration_s:g}",
        "-w",
        f"{plan.warmup_s:g}",
    ]
    cmd += ["--rate", f"{rate:.0f}"] if rate is not None else ["-k", str(plan.inflight)]
    cmd += ["--echo"] if model is None else ["--model", model]
    if plan.client_procs > 1:
        cmd += ["--procs", str(plan.client_procs)]
    return [*cmd, "-q", "--json", json_path]


def measure(
    server: ServerProcess, *, model: str | None, connections: int, plan: Plan, rate: float | None = None
) -> dict[str, Any]:
    """One load-test run; the figures the suite keeps (``failed`` set when the tool did not complete)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = loadtest_cmd(server.url, model=model, connections=connections, plan=plan, rate=rate, json_path=str(out))
        with CpuSampler(server) as sampler:
            proc = subprocess.run(
                cmd,
                cwd=ROOT,
                env=bench_env(),
                capture_output=True,
                text=True,
                timeout=plan.warmup_s + plan.duration_s + 90,
            )
        if proc.returncode not in (0, 3) or not out.exists():
            return {"failed": (proc.stderr or proc.stdout).strip()[-800:]}
        rep = json.loads(out.read_text())
    tl = rep["timeline"]
    server_cores = sampler.cores_between(tl["measure_start_monotonic"], tl["end_monotonic"])
    lat = rep["latency_ms"]
    result = {
        "rps": rep["throughput"]["achieved_rps"],
        "target_rps": rep["throughput"]["target_rps"],
        "p50": lat["p50"],
        "p90": lat["p90"],
        "p99": lat["p99"],
        "p999": lat["p99.9"],
        "max": lat["max"],
        "sent": rep["requests"]["sent"],
        "ok": rep["requests"]["ok"],
        "errors": rep["errors"],
        "error_rate": rep["requests"]["error_rate"],
        "late_sends": rep["late_sends"]["count"],
        # busy cores during the measurement window: the server process, and the busiest client process
        "server_cpu": round(server_cores, 2),
        "client_cpu": max(rep["client"]["cpu_cores_per_proc"] or [float("nan")]),
    }
    if result["rps"]:
        result["server_us_per_req"] = result["server_cpu"] / result["rps"] * 1e6  # its own cost, whatever the client's speed
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "failed" not in r]
    if not good:
        return {"failed": runs[0]["failed"] if runs else "not run", "n": 0}
    out: dict[str, Any] = {
        k: statistics.median(r[k] for r in good)
        for k in ("rps", "p50", "p90", "p99", "p999", "max", "error_rate", "server_cpu", "client_cpu")
    }
    out["rps_min"], out["rps_max"] = min(r["rps"] for r in good), max(r["rps"] for r in good)
    cpu = [r["server_us_per_req"] for r in good if "server_us_per_req" in r]
    if cpu:
        out["server_us_per_req"] = statistics.median(cpu)
    out["n"] = len(good)
    errors: dict[str, int] = {}
    for r in good:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    out["errors"] = errors
    if len(good) < len(runs):
        out["failures"] = len(runs) - len(good)
    return out


def write_results(results: Path, stem: str, data: dict[str, Any], markdown: str, *, rebuild: bool) -> None:
    """Write ``results/STEM.json`` (the raw figures) and ``results/STEM.md`` (the fragment), and
    rebuild BENCHMARKS.md from all fragments when ``rebuild``."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (results / f"{stem}.md").write_text(markdown)
    _log(f"wrote {results / stem}.md")
    if rebuild:
        _log(f"wrote {assemble(results)}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_suite(plan: Plan, only: tuple[str, ...]) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC)
    machine = describe()
    servers: dict[str, ServerProcess] = {}
    skipped: dict[str, str] = {}
    try:
        for name in only:
            cmd, _ = SERVERS[name]
            try:
                servers[name] = start_command(cmd)
                _log(f"started {name} at {servers[name].url}")
            except RuntimeError as exc:
                skipped[name] = str(exc).splitlines()[-1][:300]
                _log(f"SKIPPED {name}: {exc}")
        cells = [(name, model, n) for name in servers for model in SERVERS[name][1] for n in plan.connections]
        runs: dict[str, list[dict[str, Any]]] = {}
        for rep in range(plan.reps):
            for name, model, n in cells:
                key = f"{name}|{model or '-'}|{n}"
                result = measure(servers[name], model=model, connections=n, plan=plan)
                runs.setdefault(key, []).append(result)
                brief = (
                    result.get("failed")
                    or f"{result['rps']:>10,.0f} req/s  p50 {result['p50']:.3f}  p99 {result['p99']:.3f} ms"
                )
                _log(f"[rep {rep + 1}/{plan.reps}] {name:<8} {model or '-':<6} {n:>4} conns: {brief}")
        summary = {key: median_of(rs) for key, rs in runs.items()}
        curve: dict[str, Any] = {}
        if "wsserve" in servers:
            curve = run_curve(servers["wsserve"], summary, plan)
    finally:
        for s in servers.values():
            s.stop()
    commands = {name: shown(SERVERS[name][0]) for name in only}
    return {
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "machine": machine,
        "server_commands": commands,
        "loadtest_command": shown(loadtest_cmd("URL", model="MODEL", connections=0, plan=plan)).replace("-c 0", "-c N"),
        "curve_command": shown(
            loadtest_cmd("URL", model="linear", connections=plan.curve_connections, plan=plan, rate=0.0)
        ).replace("--rate 0", "--rate R"),
        "skipped": skipped,
        "runs": runs,
        "summary": summary,
        "curve": curve,
    }


def run_curve(server: ServerProcess, summary: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """Open loop on wsserve ``linear`` at fractions of its best closed-loop median throughput."""
    best = [(v["rps"], k) for k, v in summary.items() if k.startswith("wsserve|linear|") and "rps" in v]
    if not best:
        return {}
    capacity, source = max(best)
    points = []
    for f in plan.curve_fractions:
        rate = max(1.0, capacity * f)
        r = measure(server, model="linear", connections=plan.curve_connections, plan=plan, rate=rate)
        r["fraction"] = f
        points.append(r)
        brief = (
            r.get("failed")
            or f"achieved {r['rps']:,.0f}  p50 {r['p50']:.3f}  p99 {r['p99']:.3f}  p99.9 {r['p999']:.3f} ms"
        )
        _log(f"[curve] {f:>4.0%} of {capacity:,.0f} = {rate:,.0f} req/s: {brief}")
    return {"capacity_rps": capacity, "capacity_from": source, "connections": plan.curve_connections, "points": points}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The machine should be otherwise idle; the report records the load average.",
    )
    ap.add_argument("--quick", action="store_true", help="1 repetition of 1 s per cell, 3 curve points (< 2 min)")
    ap.add_argument("--reps", type=int, help="repetitions per cell (default 3; quick 1)")
    ap.add_argument("--duration", type=float, help="measured seconds per run (default 4; quick 1)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run (default 1; quick 0.5)")
    ap.add_argument("--client-procs", type=int, default=1, help="load-test client processes (default 1)")
    ap.add_argument("--only", default=",".join(SERVERS), help=f"servers to run (default {','.join(SERVERS)})")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where suite.md/json and the plot go")
    ap.add_argument("--no-assemble", action="store_true", help="do not rewrite BENCHMARKS.md")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = replace(
        plan,
        client_procs=args.client_procs,
        **{
            k: v
            for k, v in (("reps", args.reps), ("duration_s", args.duration), ("warmup_s", args.warmup))
            if v is not None
        },
    )
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in only if s not in SERVERS]
    if unknown or not only:
        ap.error(f"unknown server(s) {unknown}; known: {', '.join(SERVERS)}")
    t0 = time.monotonic()
    data = run_suite(plan, only)
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "suite.json").write_text(json.dumps(data, indent=1) + "\n")
    if data["curve"].get("points"):
        (args.results / "latency_curve.svg").write_text(render_svg(data))
    (args.results / "suite.md").write_text(render_suite(data))
    _log(f"wrote {args.results / 'suite.md'} in {data['elapsed_s']:.0f} s")
    if not args.no_assemble:
        _log(f"wrote {assemble(args.results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
