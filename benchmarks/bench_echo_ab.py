"""Single-row ``linear`` at 64 connections: this checkout vs another one vs the websockets echo.

``python benchmarks/bench_echo_ab.py --base DIR [--reps 5] [--duration 4]`` starts three servers
(this checkout's wsserve, ``DIR``'s wsserve, ``benchmarks/peers/echo_server.py``), then runs
``python -m wsserve.loadtest URL -c 64 -k 1 -d DURATION -w 1 --model linear`` against each in turn,
the order reversed every other repetition, and reports the median requests/s of each, the ratios
and the server CPU per request (from ``/proc``).  It answers one question quickly: is wsserve's
ratio to the echo ceiling the code's or the run's?  Writes ``benchmarks/results/echo_ab.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(root: Path, cmd: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    env = dict(os.environ, **ENV, PYTHONPATH=str(root))
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    while line := proc.stdout.readline().decode():
        if m := re.search(r"ws://[0-9.]+:\d+", line):
            return proc, m.group(0)
    raise RuntimeError(f"{' '.join(cmd)} (in {root}) exited before printing its URL")


def _git(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="another checkout of wsserve")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--cache-dir", default=None, help="weights cache for both servers")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "echo_ab.md")
    args = ap.parse_args(argv)
    serve = [sys.executable, "-m", "wsserve", "serve", "--host", "127.0.0.1", "--port", "0", "--models", "linear",
             "--log-level", "warning", *(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
    servers = {
        "head": _start(ROOT, serve),
        "base": _start(args.base.resolve(), serve),
        "echo": _start(ROOT, [sys.executable, "benchmarks/peers/echo_server.py", "--host", "127.0.0.1", "--port", "0"]),
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    load = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(args.reps):
                order = list(servers) if rep % 2 == 0 else list(reversed(servers))
                for name in order:
                    proc, url = servers[name]
                    report = Path(tmp) / f"{name}.json"
                    before = _cpu_s(proc.pid)
                    subprocess.run([sys.executable, "-m", "wsserve.loadtest", url, "-c", "64", "-k", "1", "-d",
                                    str(args.duration), "-w", "1", "--model", "linear", "-q", "--json", str(report)],
                                   cwd=ROOT, env=dict(os.environ, **ENV, PYTHONPATH=str(ROOT)), check=True,
                                   stdout=subprocess.DEVNULL)
                    cpu = _cpu_s(proc.pid) - before
                    data = json.loads(report.read_text())
                    rps = float(data["throughput"]["achieved_rps"])
                    runs[name].append((rps, cpu / (rps * (args.duration + 1))))  # CPU over warm-up + run
                    print(f"[rep {rep + 1}/{args.reps}] {name}: {rps:,.0f} req/s", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=15)
    med = {name: statistics.median(r for r, _ in v) for name, v in runs.items()}
    us = {name: 1e6 * statistics.median(c for _, c in v) for name, v in runs.items()}
    cmd = f"python benchmarks/bench_echo_ab.py --base DIR --reps {args.reps} --duration {args.duration:g}"
    lines = [
        "## wsserve ÷ websockets echo, interleaved with an earlier checkout",
        "",
        f"`{cmd}` (DIR: a checkout of {_git(args.base)}; this checkout {_git(ROOT)}); load average at the start "
        f"{load[0]:.2f}. Single-row `linear` predict, 64 connections, one request in flight each, "
        f"{args.duration:g} s after 1 s of warm-up; the three servers in turn, order reversed every other "
        f"repetition; medians of {args.reps}. Server µs/req: the server's CPU over the warm-up and the run, "
        "per request of the run (an upper bound, comparable between rows).",
        "",
        "| server | req/s (every run) | median req/s | server µs/req |",
        "|---|---|---:|---:|",
    ]
    for name in servers:
        every = ", ".join(f"{r:,.0f}" for r, _ in runs[name])
        lines.append(f"| {name} | {every} | {med[name]:,.0f} | {us[name]:.1f} |")
    lines += [
        "",
        f"head ÷ echo **{med['head'] / med['echo']:.2f}×**, base ÷ echo {med['base'] / med['echo']:.2f}×, "
        f"head ÷ base {med['head'] / med['base']:.2f}×.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
