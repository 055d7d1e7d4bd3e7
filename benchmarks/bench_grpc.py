"""The Open Inference Protocol over gRPC (``--grpc-port``) beside the same protocol over HTTP, driven by
Triton's own load generator.

``python benchmarks/bench_grpc.py [--runs 3] [--concurrency 64] [--batch 1]`` (~1 min)

One wsserve process (uvloop, ``OPENBLAS_NUM_THREADS=1``) serves the built-in ``mlp`` on its HTTP
port and on a gRPC port; ``perf_analyzer`` (``bash scripts/install-perf-analyzer``, or
``$WSSERVE_PERF_ANALYZER``) drives ``mlp`` over each protocol in turn (``-i http`` and ``-i grpc``,
``--concurrency-range C``, batch ``B``, random FP32 inputs, fixed windows), the two interleaved,
``--runs`` times.  Reported: medians of perf_analyzer's throughput (inferences/s) and p99 latency,
the server's CPU per inference (its CPU time over the run ÷ the run's inferences at the measured
rate), and gRPC ÷ HTTP.  Writes ``benchmarks/results/grpc.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402
from tests.support import ServerProcess, cpu_seconds, wait_until  # noqa: E402

GRPC_LINE = re.compile(r"gRPC \(Open Inference Protocol\) on [0-9.]+:(\d+)")


def perf_analyzer() -> str:
    found = os.environ.get("WSSERVE_PERF_ANALYZER") or next(
        (str(p) for p in [ROOT / ".cache" / "perf_analyzer" / "perf_analyzer"] if p.exists()),
        shutil.which("perf_analyzer"))
    if not found:
        raise SystemExit("perf_analyzer is not installed: bash scripts/install-perf-analyzer")
    return found


def run_one(binary: str, protocol: str, url: str, concurrency: int, batch: int, window_ms: int, *,
            model: str = "mlp", extra: tuple[str, ...] = ()) -> dict[str, float]:
    """One perf_analyzer run of ``model`` (``extra``: more of its flags): its throughput (infer/s)
    and p99 latency (us) at ``concurrency``.  Raises ``SystemExit`` with its output when it fails."""
    run = subprocess.run(
        [binary, "-m", model, "-u", url, "-i", protocol, "-b", str(batch), "--concurrency-range", str(concurrency),
         "--measurement-interval", str(window_ms), "--max-trials", "3", "--stability-percentage", "100000",
         "--percentile", "99", *extra],
        capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        raise SystemExit(f"perf_analyzer failed ({run.returncode}): {run.stdout[-800:]} {run.stderr[-800:]}")
    out = run.stdout
    throughput = float(re.search(r"Concurrency: \d+, throughput: ([0-9.]+) infer/sec", out).group(1))
    p99 = float(re.search(r"p99 latency: (\d+) usec", out).group(1))
    return {"throughput": throughput, "p99_us": p99}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--window-ms", type=int, default=3000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grpc.md"))
    args = ap.parse_args()
    binary = perf_analyzer()
    env = {"OPENBLAS_NUM_THREADS": "1"}
    results: dict[str, list[dict[str, float]]] = {"http": [], "grpc": []}
    with ServerProcess("--models", "mlp", "--loop", "uvloop", "--grpc-port", "0", env=env) as server:
        found = wait_until(lambda: GRPC_LINE.search(server.stderr_text()), 30, what="the gRPC port in the log")
        urls = {"http": f"127.0.0.1:{server.port}", "grpc": f"127.0.0.1:{found.group(1)}"}
        for protocol in ("http", "grpc"):  # warm-up
            run_one(binary, protocol, urls[protocol], args.concurrency, args.batch, 1000)
        for r in range(args.runs):
            for protocol in (("http", "grpc") if r % 2 == 0 else ("grpc", "http")):
                cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
                figures = run_one(binary, protocol, urls[protocol], args.concurrency, args.batch, args.window_ms)
                busy = (cpu_seconds(server.proc.pid) - cpu0) / (time.perf_counter() - t0)  # server cores busy
                figures["cpu_us"] = busy / figures["throughput"] * 1e6
                results[protocol].append(figures)
                print(protocol, figures, flush=True)
    write(args, results)


def write(args: Any, results: dict[str, list[dict[str, float]]]) -> None:
    med = {p: {k: statistics.median(r[k] for r in rs) for k in ("throughput", "p99_us", "cpu_us")}
           for p, rs in results.items()}
    machine = describe()
    lines = [
        "## The Open Inference Protocol over gRPC and over HTTP (`perf_analyzer`, `mlp`)",
        "",
        f"Command: `python benchmarks/bench_grpc.py --runs {args.runs} --concurrency {args.concurrency} --batch "
        f"{args.batch}` - one wsserve process (uvloop, one BLAS thread) serving `mlp` on its HTTP port and on "
        f"`--grpc-port`; Triton's `perf_analyzer` at concurrency {args.concurrency}, batch {args.batch}, "
        f"{args.window_ms} ms windows, `-i http` and `-i grpc` interleaved {args.runs} times (alternately first), "
        f"medians. {machine.get('cpu', '')}, {machine.get('cores', '')} cores; perf_analyzer runs on the same "
        "machine (it uses one of the cores).",
        "",
        "| protocol | inferences/s | p99 latency ms | server CPU us per inference | runs (inferences/s) |",
        "|---|---:|---:|---:|---|",
    ]
    for p in ("http", "grpc"):
        runs = ", ".join(f"{r['throughput']:,.0f}" for r in results[p])
        lines.append(f"| {p} | {med[p]['throughput']:,.0f} | {med[p]['p99_us'] / 1000:.2f} | {med[p]['cpu_us']:,.0f} "
                     f"| {runs} |")
    ratio = med["grpc"]["throughput"] / med["http"]["throughput"]
    lines += ["", f"gRPC ÷ HTTP: {ratio:.2f}× the inferences/s.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
