"""What ``--access-log`` costs: ``POST /predict`` (one ``mlp`` row) with the access log off, on
(text lines) and on with ``--log-format json``, side by side.

``python -m benchmarks.bench_access_log [--reps 5] [--duration 4]``

Three wsserve processes (this checkout, uvloop, one BLAS thread) serve the same trained ``mlp``;
each is loaded in turn by ``wrk`` (one thread, 64 keep-alive connections, the body of
``benchmarks/wrk/predict_mlp.lua``), the cells interleaved ``--reps`` times after a warm-up.
The server's stderr (the log) goes to a pipe the harness reads, as a container's does.  Reports
the median requests/s and the server's CPU per request (user + system, which moves less with
other load on the machine than req/s does), and writes ``benchmarks/results/access_log.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_http import cost_table, http_url, median_of, run_wrk, wait_ready
from benchmarks.machine import describe
from benchmarks.servers import start_wsserve

ROOT = Path(__file__).resolve().parent.parent
CELLS = {"off": (), "text": ("--access-log",), "json": ("--access-log", "--log-format", "json")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "access_log.md")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    servers = {name: start_wsserve("--models", "mlp", "--loop", "uvloop", "--log-level", "info", *flags)
               for name, flags in CELLS.items()}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CELLS}
    try:
        for server in servers.values():
            wait_ready(http_url(server))
            run_wrk(server, "predict", args.connections, 1.0)  # warm-up
        for rep in range(args.reps):
            for name, server in servers.items():
                runs[name].append(run_wrk(server, "predict", args.connections, args.duration))
                print(f"rep {rep + 1} {name}: {runs[name][-1]}", flush=True)
        logged = sum(server.stderr_text().count("wsserve.access") for server in servers.values())
    finally:
        for server in servers.values():
            server.stop()
    med = {name: median_of(r) for name, r in runs.items()}
    machine = describe()
    lines = [
        "## Access log: what `--access-log` costs",
        "",
        f"Measured {started} by `python -m benchmarks.bench_access_log --reps {args.reps} --duration "
        f"{args.duration:g}`; {machine.get('cpu', '?')}, load average at the start "
        f"{' / '.join(map(str, machine.get('load_average') or ['?']))}.",
        "",
        f"`POST /predict`, one `mlp` row, `wrk -t1 -c{args.connections}` for {args.duration:g} s per run, "
        f"{args.reps} runs per cell interleaved, median (range in small print); the log goes to a pipe "
        f"({logged:,} access lines were written in all).",
        "",
        *cost_table("access log", med),
    ]
    lines += ["", "Reproduce: `python -m benchmarks.bench_access_log` (needs Debian's `wrk`).", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
