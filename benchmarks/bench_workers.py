"""``--workers 2`` vs one process on this machine, with every process's CPU measured.

``python benchmarks/bench_workers.py [--reps 3] [--duration 4]`` (about 2 minutes) writes
``benchmarks/results/workers.md``: single-row predict at 64 connections (``linear`` and
``mlp``), closed loop, for ``wsserve serve`` (one process) and ``wsserve serve --workers 2``
(a supervisor and two worker processes sharing the port with ``SO_REUSEPORT``),
interleaved, medians of ``--reps``.  Beside the throughput it reports the CPU used by
the server processes (supervisor and workers summed) and by the load-test client, in
cores: on a 2-core machine the client needs a core of its own to load one server
process, so two workers and the client compete for two cores, and the figure says how
much of the machine each side had rather than pretending the client is free.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import ROOT, bench_env, start_wsserve  # noqa: E402
from tests.support import cpu_seconds  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "workers.md"


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def run_once(workers: int, model: str, duration: float, warmup: float) -> dict[str, float]:
    flags = ["--log-level", "warning", "--models", model] + (["--workers", str(workers)] if workers > 1 else [])
    server = start_wsserve(*flags)
    try:
        time.sleep(0.5)
        pids = _tree(server.proc.pid)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            cmd = [sys.executable, "-m", "wsserve.loadtest", server.url, "-c", "64", "-k", "1", "-d", f"{duration:g}",
                   "-w", f"{warmup:g}", "--model", model, "-q", "--json", str(out)]
            server_before = _cpu(pids)
            t0 = time.monotonic()
            client = subprocess.Popen(cmd, cwd=ROOT, env=bench_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            # The client and its own client processes, once reaped: the server is still running,
            # so the only children that end in between are the client's.
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            client.wait()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            wall = time.monotonic() - t0
            server_cpu = _cpu(pids) - server_before
            if client.returncode not in (0, 3):
                raise RuntimeError(client.stderr.read().decode()[-2000:] if client.stderr else "loadtest failed")
            rep = json.loads(out.read_text())
        return {
            "rps": rep["throughput"]["achieved_rps"],
            "p99": rep["latency_ms"]["p99"],
            "errors": sum(rep["errors"].values()) if isinstance(rep["errors"], dict) else 0,
            "server_cores": server_cpu / wall,
            "client_cores": client_cpu / wall,
        }
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    args = ap.parse_args()
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    for rep in range(args.reps):
        for model in ("linear", "mlp"):
            for workers in (1, 2):
                r = run_once(workers, model, args.duration, args.warmup)
                rows.setdefault((model, workers), []).append(r)
                print(f"[{rep + 1}/{args.reps}] {model} workers={workers}: {r['rps']:,.0f} req/s  p99 {r['p99']:.2f} ms  "
                      f"server {r['server_cores']:.2f} cores, client {r['client_cores']:.2f} cores", flush=True)

    def med(model: str, workers: int, key: str) -> float:
        return statistics.median(r[key] for r in rows[(model, workers)])

    lines = [
        "## Worker processes: `--workers 2` vs one process",
        "",
        f"`python benchmarks/bench_workers.py --reps {args.reps} --duration {args.duration:g}` on {os.cpu_count()} cores "
        f"(load average at the end {os.getloadavg()[0]:.1f}); single-row predict, 64 connections, closed loop, one "
        "load-test client process; medians of interleaved runs. CPU is measured for every process "
        "(`/proc`): the server's (supervisor and workers summed) and the client's, in cores.",
        "",
        "| model | processes | req/s | ratio | p99 ms | server cores | client cores |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model in ("linear", "mlp"):
        base = med(model, 1, "rps")
        for workers in (1, 2):
            rps = med(model, workers, "rps")
            lines.append(f"| {model} | {'1' if workers == 1 else '2 workers'} | {rps:,.0f} | {rps / base:.2f}× | "
                         f"{med(model, workers, 'p99'):.2f} | {med(model, workers, 'server_cores'):.2f} | "
                         f"{med(model, workers, 'client_cores'):.2f} |")
    lines += [
        "",
        f"Reading it: this machine has {os.cpu_count()} cores, shared by the server processes and the "
        "load-test client (a Python process). Server cores plus client cores is how much of the machine "
        "the run had; when that is the whole machine, a second worker can only take CPU from the client, "
        "and `--workers 2` cannot beat one process. The load average at the end says how much other work "
        "competed. On a host with spare cores (or with load from other hosts) each worker adds up to a "
        "core; here the honest result is the ratio above.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
