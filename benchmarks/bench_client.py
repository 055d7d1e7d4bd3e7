"""Client overhead: calls/s through ``wsserve_client`` vs a raw ``websockets`` client.

Both clients speak the same protocol to the same server over ONE socket, keeping
``--inflight`` single-row ``predict`` requests outstanding, in the same process and run,
interleaved (raw, client, raw, client, ...). The raw client is the floor of client-side work:
one coroutine that receives a result, pops its id, and sends the next request. The difference
between the two is the library's own cost per call (future, id routing, limiter, result object).

    python benchmarks/bench_client.py                # starts its own server on a free port
    python benchmarks/bench_client.py --url ws://127.0.0.1:8765

Writes a Markdown fragment to ``benchmarks/results/client.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from wsserve_client import Client  # noqa: E402

from benchmarks.servers import start_wsserve  # noqa: E402

__all__ = ["raw_run", "client_run", "main"]


Sample = tuple[float, float]  # (calls/s, client-process CPU µs per call)


async def raw_run(url: str, *, calls: int, inflight: int, model: str) -> Sample:
    """A bare websockets client keeping ``inflight`` requests outstanding."""
    async with connect(url, subprotocols=["wsserve.v1"], compression=None, max_size=None) as ws:  # type: ignore[list-item]
        hello = orjson.loads(await ws.recv(decode=False))
        assert hello["type"] == "hello"
        pending: dict[int, float] = {}
        next_id = 0

        async def send_one() -> None:
            nonlocal next_id
            next_id += 1
            x = (next_id % 1000) / 1000
            pending[next_id] = x
            await ws.send(orjson.dumps({"type": "predict", "id": next_id, "model": model, "inputs": [[x]]}), text=True)

        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(min(inflight, calls)):
            await send_one()
        done = 0
        while done < calls:
            frame = orjson.loads(await ws.recv(decode=False))
            if frame.get("type") != "result":
                raise RuntimeError(f"raw client got {frame!r}")
            del pending[frame["id"]]
            done += 1
            if next_id < calls:
                await send_one()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        return calls / elapsed, cpu / calls * 1e6


async def client_run(url: str, *, calls: int, inflight: int, model: str) -> Sample:
    """``inflight`` tasks awaiting ``Client.predict`` in a loop on one client."""
    async with Client(url, max_inflight=inflight) as c:
        per_worker, extra = divmod(calls, inflight)

        async def worker(k: int, n: int) -> None:
            for i in range(n):
                await c.predict(model, [[((k + i) % 1000) / 1000]])

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(k, per_worker + (1 if k < extra else 0)) for k in range(inflight)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert c.stats().requests_sent == calls
        return calls / elapsed, cpu / calls * 1e6


def _run(loop: str, coro: Coroutine[Any, Any, Sample]) -> Sample:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def _fmt(values: list[float], digits: int = 0) -> str:
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def report(results: dict[str, dict[str, list[Sample]]], args: argparse.Namespace, command: str) -> str:
    lines = [
        "## Python client overhead",
        "",
        f"Single-row `predict` on `{args.model}` over **one socket** with {args.inflight} requests in flight, "
        f"{args.calls:,} calls per run, median of {args.runs} interleaved runs (min–max in brackets). "
        "*raw* is a bare `websockets` client (one coroutine: receive a result, pop its id, send the next "
        "request); *wsserve_client* is "
        f"{args.inflight} tasks each awaiting `Client.predict` in a loop. Server: `wsserve serve` (uvloop) in "
        "its own process on the same machine; the server is the same for both columns, so the gap is the "
        "client library's own cost. Throughput on this shared 2-core machine is dominated by the server "
        "and by other load, so the client process's **CPU time per call** (`time.process_time`, which "
        "other processes do not inflate) is the better measure of the library's overhead. The library "
        "writes queued frames in groups (up to 16 frames, or what one event-loop iteration queued) with "
        "one syscall each, where the raw client's `send()` makes one per request; that saving pays for "
        "most of the library's extra Python work (a future per call, id routing, the inflight limiter, "
        "result objects).",
        "",
        "| client loop | raw calls/s | wsserve_client calls/s | client / raw | raw CPU µs/call "
        "| wsserve_client CPU µs/call | library cost per call |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for loop, r in results.items():
        raw_rate = [x[0] for x in r["raw"]]
        cli_rate = [x[0] for x in r["client"]]
        raw_cpu = [x[1] for x in r["raw"]]
        cli_cpu = [x[1] for x in r["client"]]
        ratio = statistics.median(cli_rate) / statistics.median(raw_rate)
        cost = statistics.median(cli_cpu) - statistics.median(raw_cpu)
        lines.append(
            f"| {loop} | {_fmt(raw_rate)} | {_fmt(cli_rate)} | {ratio:.2f}× | {_fmt(raw_cpu, 1)} "
            f"| {_fmt(cli_cpu, 1)} | {cost:+.1f} µs CPU |"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += [
        "",
        f"Command: `{command}` — {platform.python_version()}, websockets {websockets.__version__}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end of the run (the machine is shared; "
        "compare columns of one row, not separate runs).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="server to use (default: start one on a free port)")
    ap.add_argument("--model", default="linear")
    ap.add_argument("--calls", type=int, default=20_000, help="calls per run (default 20000)")
    ap.add_argument("--inflight", type=int, default=256, help="requests outstanding (default 256)")
    ap.add_argument("--runs", type=int, default=7, help="runs per client and loop (default 7)")
    ap.add_argument("--loops", default="asyncio,uvloop", help="client event loops (default asyncio,uvloop)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "client.md")
    args = ap.parse_args(argv)
    command = "python benchmarks/bench_client.py " + " ".join(argv if argv is not None else sys.argv[1:])
    server = None
    url = args.url
    if url is None:
        server = start_wsserve("--log-level", "warning")
        url = server.url
    try:
        loops = [lp.strip() for lp in args.loops.split(",") if lp.strip()]
        kinds: dict[str, Callable[..., Coroutine[Any, Any, Sample]]] = {"raw": raw_run, "client": client_run}
        results: dict[str, dict[str, list[Sample]]] = {lp: {"raw": [], "client": []} for lp in loops}
        for lp in loops:  # warm-up: first connections, caches, the server's first batches
            for fn in kinds.values():
                _run(lp, fn(url, calls=min(args.calls, 2000), inflight=args.inflight, model=args.model))
        for i in range(args.runs):
            for lp in loops:
                for name, fn in kinds.items():
                    rate, cpu_us = _run(lp, fn(url, calls=args.calls, inflight=args.inflight, model=args.model))
                    results[lp][name].append((rate, cpu_us))
                    print(f"run {i + 1}/{args.runs} {lp:7} {name:6} {rate:10,.0f} calls/s "
                          f"{cpu_us:6.1f} CPU µs/call", flush=True)
    finally:
        if server is not None:
            server.stop()
    text = report(results, args, command.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print()
    print(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
