"""Capacity: thousands of idle connections on one server process, and what they cost a live load.

``python -m benchmarks.capacity`` (~2.5 minutes; ``--quick``: one repetition, ~1 minute).

One ``wsserve serve`` subprocess (defaults: compression off, keepalive pings every
20 s).  A separate holder process opens ``--idle`` WebSocket connections (default
5,000) on 127.0.0.1, reads their ``hello`` and then just keeps them open (answering
the server's pings).  The live load is the project's load-test tool
(``python -m wsserve.loadtest``): ``--load-connections`` (default 64) connections,
closed loop, one single-row ``predict`` on ``linear`` in flight on each, for 20 s
measured — long enough that, with the idle connections, the window includes the
server's first keepalive ping to every one of them (20 s after each opened).

Runs alternate with and without the idle connections — B, A, B, A, ... with the
idle connections opened before each B and closed after it — so drift on a shared
machine hits both alike; the p99 of the median B run is compared with the p99 of
the median A run.  RSS per idle connection is ``(VmRSS after the idle connections
are open and settled − VmRSS just before they were opened) / N``, measured at the
first opening, on the freshly started server: memory freed when they close stays
with the process, so later openings reuse it and show (almost) no growth.  The soft ``RLIMIT_NOFILE`` is raised for every process here.

Pass (exit 0) when all idle connections opened, the load saw no errors, p99 with
idle connections ≤ 2 × p99 without, and RSS per idle connection ≤ 50 KiB.  Writes
``benchmarks/results/capacity.md`` (``--no-write`` to skip) and reassembles BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python benchmarks/capacity.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import ROOT, bench_env, start_wsserve
from tests.support import ServerProcess, wait_until

__all__ = ["hold", "main"]

RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
P99_RATIO_MAX = 2.0
KIB_PER_IDLE_MAX = 50.0


def raise_nofile(need: int) -> int:
    """Raise the soft open-files limit to at least ``need`` (up to the hard limit); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------- the idle-connection holder


async def _hold(url: str, n: int, parallel: int) -> None:
    import websockets

    conns: list[Any] = []
    failures = 0
    sem = asyncio.Semaphore(parallel)
    extensions: set[str] = set()

    async def one() -> None:
        nonlocal failures
        async with sem:
            for _attempt in range(5):
                try:
                    ws = await websockets.connect(url, compression=None, ping_interval=None, open_timeout=30,
                                                  max_queue=4)
                    await asyncio.wait_for(ws.recv(), 30)  # hello
                except (OSError, TimeoutError, websockets.WebSocketException):
                    await asyncio.sleep(0.2)
                    continue
                if ws.response.headers.get("Sec-WebSocket-Extensions"):
                    extensions.add(ws.response.headers["Sec-WebSocket-Extensions"])
                conns.append(ws)
                return
            failures += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    print(json.dumps({"opened": len(conns), "failed": failures, "open_s": round(time.monotonic() - t0, 2),
                      "extensions": sorted(extensions)}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # hold until told (or stdin closes)
    t0 = time.monotonic()
    for i in range(0, len(conns), parallel):
        await asyncio.gather(*(ws.close() for ws in conns[i : i + parallel]), return_exceptions=True)
    print(json.dumps({"closed": len(conns), "close_s": round(time.monotonic() - t0, 2)}), flush=True)


def hold(url: str, n: int, parallel: int = 200) -> None:
    """Entry point of the holder process (``python -m benchmarks.capacity --hold URL N``)."""
    raise_nofile(n + 256)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        runner.run(_hold(url, n, parallel))


class Holder:
    """The holder subprocess: ``open()`` returns once all connections are open; ``close()`` closes them."""

    def __init__(self, url: str, n: int) -> None:
        self.proc = subprocess.Popen([PY, "-m", "benchmarks.capacity", "--hold", url, str(n)], cwd=ROOT,
                                     env=bench_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def opened(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"holder exited with {self.proc.wait()}")
        return json.loads(line)

    def close(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("close\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        self.proc.wait(timeout=60)
        return json.loads(line) if line else {}


# --------------------------------------------------------------------------- measurements


def wait_gauge(server: ServerProcess, name: str, value: float, timeout_s: float = 60.0) -> float:
    """The gauge ``name`` once it reads ``value``, or what it reads after ``timeout_s`` (reported, not raised)."""
    with contextlib.suppress(AssertionError):
        wait_until(lambda: server.metrics().value(name) == value, timeout_s, interval_s=0.1)
    return server.metrics().value(name)


def load(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One load-test run: the figures kept (``failed`` when the tool did not complete)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = [PY, "-m", "wsserve.loadtest", url, "-c", str(args.load_connections), "-k", "1", "-d",
               f"{args.duration:g}", "-w", f"{args.warmup:g}", "--model", "linear", "-q", "--json", str(out)]
        proc = subprocess.run(cmd, check=False, cwd=ROOT, env=bench_env(), capture_output=True, text=True,
                              timeout=args.duration + args.warmup + 120)
        if proc.returncode not in (0, 3) or not out.exists():
            return {"failed": (proc.stderr or proc.stdout).strip()[-800:]}
        rep = json.loads(out.read_text())
    lat = rep["latency_ms"]
    return {"rps": rep["throughput"]["achieved_rps"], "p50": lat["p50"], "p90": lat["p90"], "p99": lat["p99"],
            "p999": lat["p99.9"], "max": lat["max"], "ok": rep["requests"]["ok"], "errors": rep["errors"],
            "client_cpu": max(rep["client"]["cpu_cores_per_proc"] or [float("nan")])}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median p99 (its other figures stay consistent with it)."""
    good = sorted((r for r in runs if "failed" not in r), key=lambda r: r["p99"])
    return good[(len(good) - 1) // 2] if good else {"failed": runs[0].get("failed", "not run")}


# --------------------------------------------------------------------------- report


def render(args: argparse.Namespace, command: str, result: dict[str, Any], failures: list[str]) -> str:
    a, b = result["without"], result["with"]
    lines = [
        "## Capacity: idle connections",
        "",
        (f"Command: `{command}` ({result['wall_s'] / 60:.1f} min). One server process "
        "(`python -m wsserve serve --port 0 --log-level warning`: defaults, permessage-deflate off, keepalive pings "
        f"every 20 s); {args.idle:,} idle WebSocket connections opened from one separate holder process on 127.0.0.1 "
        "(each reads its `hello`, then only answers pings); the live load is `python -m wsserve.loadtest URL "
        f"-c {args.load_connections} -k 1 -d {args.duration:g} -w {args.warmup:g} --model linear` (closed loop, "
        f"single-row `predict`), {args.reps} run(s) with and {args.reps} without the idle connections, alternating; "
        f"the median run of each is shown. Open-files limit raised to {result['nofile']:,}. {date()}."),
        "",
        f"**Verdict: {'PASS' if not failures else 'FAIL'}**" + ("" if not failures else " — " + "; ".join(failures)),
        "",
        "| | idle connections | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, run, idle in (("without", a, 0), ("with", b, args.idle)):
        if "failed" in run:
            lines.append(f"| {label} | {idle:,} | failed: {run['failed'][:80]} | | | | | | |")
        else:
            lines.append(f"| {label} | {idle:,} | {run['rps']:,.0f} | {run['p50']:.3f} | {run['p90']:.3f} | "
                         f"{run['p99']:.3f} | {run['p999']:.3f} | {run['max']:.3f} | {sum(run['errors'].values())} |")
    ratio = result.get("p99_ratio")
    all_a = ", ".join(f"{r['p99']:.3f}" for r in result["runs_without"] if "failed" not in r)
    all_b = ", ".join(f"{r['p99']:.3f}" for r in result["runs_with"] if "failed" not in r)
    opens = result["opens"]
    covered = args.settle + args.warmup + args.duration > 20 + max(o["open_s"] for o in opens)
    covers = "covers" if covered else "does NOT cover"
    lines += [
        "",
        (f"p99 with / without idle connections: **{ratio:.2f}×** (limit {P99_RATIO_MAX:g}×; every run's p99 in ms — "
        f"without: {all_a}; with: {all_b})."),
        "",
        f"Server memory: VmRSS {result['rss_before_kib'] / 1024:.1f} MiB idle → {result['rss_with_kib'] / 1024:.1f} MiB "
        f"with {args.idle:,} idle connections open and settled, on the freshly started server: "
        f"**{result['kib_per_idle']:.1f} KiB per idle connection** (limit {KIB_PER_IDLE_MAX:g} KiB; later openings, "
        "which reuse the memory the earlier ones freed: "
        + (", ".join(f"{o['kib_per_idle']:.1f}" for o in opens[1:]) or "none")
        + f" KiB). `wsserve_connections` read {result['connections_gauge']:,.0f} with the holder connected. "
        f"Opening {args.idle:,} connections took {statistics.median(o['open_s'] for o in opens):.1f} s "
        f"(median), {sum(o['failed'] for o in opens)} failed; the measured window with them {covers} the server's "
        "keepalive ping to each (20 s after it opened); negotiated extensions: "
        f"{sorted({e for o in opens for e in o['extensions']}) or 'none'}.",
        "",
        ("The load tool's client process busy share (cores) in the median runs: "
        f"{a.get('client_cpu', float('nan')):.2f} without, {b.get('client_cpu', float('nan')):.2f} with. "
        "The holder, the load tool and the server share a 2-core machine with other work."),
    ]
    return "\n".join(lines) + "\n"


def date() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    wall0 = time.monotonic()
    nofile = raise_nofile(args.idle + 1024)  # inherited by the server, the holder and the load tool
    if nofile < args.idle + 200:
        raise SystemExit(f"open-files limit {nofile} is too low for {args.idle} idle connections")
    server = start_wsserve("--log-level", "warning")
    runs_a: list[dict[str, Any]] = []
    runs_b: list[dict[str, Any]] = []
    opens: list[dict[str, Any]] = []
    gauges: list[float] = []
    try:
        time.sleep(1.0)
        for rep in range(args.reps):
            before = server.memory_kib()
            holder = Holder(server.url, args.idle)
            try:
                info = holder.opened()
                gauges.append(wait_gauge(server, "wsserve_connections", float(info["opened"])))
                time.sleep(args.settle)  # the measurement procedure: RSS once the connections settled
                after = server.memory_kib()
                info.update(rss_before_kib=before, rss_with_kib=after,
                            kib_per_idle=(after - before) / max(1, info["opened"]))
                opens.append(info)
                _log(f"[{rep + 1}/{args.reps}] opened {info['opened']} idle in {info['open_s']} s; "
                     f"RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB ({info['kib_per_idle']:.1f} KiB each)")
                runs_b.append(load(server.url, args))
                _log(f"[{rep + 1}/{args.reps}] with {info['opened']} idle: {_brief(runs_b[-1])}")
            finally:
                holder.close()
            wait_gauge(server, "wsserve_connections", 0)
            time.sleep(1.0)
            runs_a.append(load(server.url, args))
            _log(f"[{rep + 1}/{args.reps}] without idle: {_brief(runs_a[-1])}")
            wait_gauge(server, "wsserve_connections", 0)
            time.sleep(1.0)
    finally:
        server.stop()
    a, b = median_run(runs_a), median_run(runs_b)
    first = opens[0]
    return {
        "without": a, "with": b, "runs_without": runs_a, "runs_with": runs_b, "opens": opens,
        "p99_ratio": (b["p99"] / a["p99"]) if "failed" not in a and "failed" not in b else float("nan"),
        "rss_before_kib": first["rss_before_kib"], "rss_with_kib": first["rss_with_kib"],
        # Only the first opening, on a fresh server, measures the cost: memory freed when the idle
        # connections close stays with the process (allocator) and the next openings reuse it.
        "kib_per_idle": first["kib_per_idle"],
        "connections_gauge": max(gauges) if gauges else float("nan"),
        "nofile": nofile, "wall_s": time.monotonic() - wall0,
    }


def verdict(args: argparse.Namespace, result: dict[str, Any]) -> list[str]:
    failures = []
    opened = min(o["opened"] for o in result["opens"])
    if opened < args.idle:
        failures.append(f"only {opened} of {args.idle} idle connections opened")
    for label in ("without", "with"):
        run = result[label]
        if "failed" in run:
            failures.append(f"load run {label} idle connections failed")
        elif sum(run["errors"].values()):
            failures.append(f"load {label} idle connections had errors {run['errors']}")
    if not result["p99_ratio"] <= P99_RATIO_MAX:
        failures.append(f"p99 ratio {result['p99_ratio']:.2f} > {P99_RATIO_MAX:g}")
    if not result["kib_per_idle"] <= KIB_PER_IDLE_MAX:
        failures.append(f"{result['kib_per_idle']:.1f} KiB per idle connection > {KIB_PER_IDLE_MAX:g}")
    return failures


def _brief(run: dict[str, Any]) -> str:
    if "failed" in run:
        return "FAILED " + run["failed"][-200:]
    return f"{run['rps']:,.0f} req/s p50 {run['p50']:.3f} p99 {run['p99']:.3f} ms errors {sum(run['errors'].values())}"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--hold"]:
        hold(argv[1], int(argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=int, default=5000, help="idle connections (default 5000)")
    ap.add_argument("--load-connections", type=int, default=64, help="load-test connections (default 64)")
    ap.add_argument("--duration", type=float, default=20.0,
                    help="measured seconds per load run (default 20: with the idle connections the window covers the "
                    "server's first keepalive ping to each of them, 20 s after it opened)")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per load run (default 1)")
    ap.add_argument("--reps", type=int, default=None, help="runs without and with (default 3; 1 with --quick)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after opening before reading RSS (default 3)")
    ap.add_argument("--quick", action="store_true", help="one repetition instead of three")
    ap.add_argument("--no-write", action="store_true", help="print the report; do not write benchmarks/results/capacity.md")
    args = ap.parse_args(argv)
    args.reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    command = "python -m benchmarks.capacity" + ("" if not argv else " " + " ".join(argv))
    result = run(args)
    failures = verdict(args, result)
    report = render(args, command, result, failures)
    print(report)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "capacity.md").write_text(report)
        from benchmarks.assemble import assemble

        print(f"wrote {RESULTS / 'capacity.md'} and {assemble()}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
