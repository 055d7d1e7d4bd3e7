"""Cost of explanations: per row in-process and over the wire, and what they cost other requests.

Side by side, one BLAS thread everywhere:

- in-process: ``explain(model, x[:n])`` (wsserve.explain) for ``mlp`` (integrated gradients, 128
  steps) and ``linear`` (exact), n = 1, 8 and 256 held-out rows; median of ``--runs`` calls;
- over the wire: a server (``--models linear,mlp``) and one connection sending one predict at a
  time, 1 and 256 rows, with and without ``"explain": true``; median round trip of ``--runs``;
- the cost bound: single-row plain ``mlp`` predicts on one connection, sequentially for
  ``--seconds``, while another connection keeps one 256-row explain request in flight (and, for
  comparison, while it is idle); p50/p99 of the plain requests' round trips.  With the default
  ``--explain-row-cost 32`` a row to explain counts 32 units of the 256-unit batch, so a batch
  holds at most 8 of them; side by side, a server with ``--explain-row-cost 2`` (128 per batch).

Writes ``benchmarks/results/explain.md``.

    python benchmarks/bench_explain.py            # ~1 min
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.servers import start_wsserve  # noqa: E402
from tests.support import Conn  # noqa: E402
from wsserve.explain import explain  # noqa: E402
from wsserve.models.linear import LinearModel  # noqa: E402
from wsserve.models.mlp import make_mlp_data  # noqa: E402
from wsserve.trainer import train_default_models  # noqa: E402


def _median_ms(fn: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _in_process(cache: str | None, runs: int) -> list[tuple[str, int, float]]:
    models = train_default_models(names=["linear", "mlp"], cache_dir=cache)
    x = make_mlp_data(0)[1][0]
    out = []
    with threadpool_limits(limits=1):
        for name, model, data in (("mlp", models["mlp"], x), ("linear", models["linear"], x[:, :1])):
            explain(model, data[:8])  # warm-up
            for n in (1, 8, 256):
                out.append((name, n, _median_ms(lambda m=model, d=data[:n]: explain(m, d), runs)))
    assert isinstance(models["linear"], LinearModel)
    return out


async def _wire(url: str, runs: int) -> dict[tuple[str, int, bool], float]:
    conn = await Conn.open(url)
    x = make_mlp_data(0)[1][0]
    out: dict[tuple[str, int, bool], float] = {}
    rid = 0
    for model, data in (("mlp", x), ("linear", x[:, :1])):
        for n in (1, 256):
            rows = data[:n].tolist()
            for explained in (False, True):
                times = []
                for i in range(runs + 2):
                    rid += 1
                    t0 = time.perf_counter()
                    msg = {"type": "predict", "id": rid, "model": model, "inputs": rows}
                    if explained:
                        msg["explain"] = True
                    reply = await conn.request(msg, timeout=120)
                    assert reply["type"] == "result", reply
                    if i >= 2:  # two warm-up calls
                        times.append((time.perf_counter() - t0) * 1e3)
                out[(model, n, explained)] = statistics.median(times)
    await conn.close()
    return out


async def _interference(url: str, seconds: float, labels: tuple[str, ...]) -> dict[str, tuple[float, float, int]]:
    """p50/p99 ms of single-row plain mlp predicts, with the other connection idle or explaining."""
    x = make_mlp_data(0)[1][0]
    out: dict[str, tuple[float, float, int]] = {}
    for label in labels:
        plain, heavy = await Conn.open(url), await Conn.open(url)
        stop = asyncio.Event()

        async def explain_loop() -> None:
            rid = 0
            while not stop.is_set():
                rid += 1
                reply = await heavy.request({"type": "predict", "id": rid, "model": "mlp",
                                             "inputs": x[:256].tolist(), "explain": True}, timeout=120)
                assert reply["type"] == "result", reply

        task = asyncio.create_task(explain_loop()) if label == "explaining" else None
        if task is not None:
            await asyncio.sleep(0.5)  # the explain requests are flowing
        lat: list[float] = []
        end = time.perf_counter() + seconds
        rid = 0
        while time.perf_counter() < end:
            rid += 1
            t0 = time.perf_counter()
            reply = await plain.request({"type": "predict", "id": rid, "model": "mlp", "inputs": x[rid % 100:rid % 100 + 1].tolist()})
            assert reply["type"] == "result", reply
            lat.append((time.perf_counter() - t0) * 1e3)
        stop.set()
        if task is not None:
            await task
        await plain.close()
        await heavy.close()
        lat.sort()
        out[label] = (lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.99 * len(lat)))], len(lat))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=9, help="calls per figure (medians; default 9)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each interference run (default 10)")
    ap.add_argument("--cache-dir", default=None, help="trained-weights cache (default the server's own)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "explain.md")
    args = ap.parse_args()
    if args.runs < 5:
        ap.error("--runs must be >= 5")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    local = _in_process(args.cache_dir, args.runs)
    server = start_wsserve("--models", "linear,mlp", cache_dir=args.cache_dir)
    try:
        wire = asyncio.run(_wire(server.url, args.runs))
        inter = asyncio.run(_interference(server.url, args.seconds, ("idle", "explaining")))
    finally:
        server.stop()
    server = start_wsserve("--models", "mlp", "--explain-row-cost", "2", cache_dir=args.cache_dir)
    try:
        inter["cost 2"] = asyncio.run(_interference(server.url, args.seconds, ("explaining",)))["explaining"]
    finally:
        server.stop()
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    cmd = "python benchmarks/bench_explain.py" + (f" --runs {args.runs}" if args.runs != 9 else "") + (
        f" --seconds {args.seconds:g}" if args.seconds != 10 else "")
    lines = [
        "## Explanations (`\"explain\": true`)",
        "",
        f"Command: `{cmd}` - medians of {args.runs} calls. CPython {platform.python_version()}, numpy "
        f"{np.__version__}, one BLAS thread, {os.cpu_count()} cores (shared machine; load average "
        f"{load:.1f} at the start, {load_end:.1f} at the end).",
        "",
        "In-process `wsserve.explain.explain(model, x)` on held-out rows (`mlp`: integrated gradients, "
        "128 midpoint steps in float64, rows in fixed 8-row chunks; `linear`: exact):",
        "",
        "| model | rows | ms per call | ms per row |",
        "|---|---:|---:|---:|",
    ]
    for name, n, ms in local:
        lines.append(f"| `{name}` | {n} | {ms:.3f} | {ms / n:.4f} |")
    lines += [
        "",
        "Over the wire, one request at a time on one connection (round trip, ms; the explain request's "
        "rows cost 32 batch units each, so 256 rows run as 32 batches of 8):",
        "",
        "| model | rows | plain ms | explain ms | explain ms per row |",
        "|---|---:|---:|---:|---:|",
    ]
    for model in ("mlp", "linear"):
        for n in (1, 256):
            p, e = wire[(model, n, False)], wire[(model, n, True)]
            lines.append(f"| `{model}` | {n} | {p:.3f} | {e:.3f} | {e / n:.4f} |")
    idle, busy, cheap = inter["idle"], inter["explaining"], inter["cost 2"]
    lines += [
        "",
        f"Cost to others: single-row plain `mlp` predicts on one connection for {args.seconds:g} s each, "
        "while another connection is idle, then while it keeps one 256-row `mlp` explain request in flight:",
        "",
        "| server | other connection | plain requests | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|",
        f"| default (`--explain-row-cost 32`: 8 rows to explain per batch) | idle | {idle[2]:,} | {idle[0]:.3f} "
        f"| {idle[1]:.3f} |",
        f"| default (`--explain-row-cost 32`: 8 rows to explain per batch) | explaining 256 rows at a time "
        f"| {busy[2]:,} | {busy[0]:.3f} | {busy[1]:.3f} |",
        f"| `--explain-row-cost 2` (128 rows to explain per batch) | explaining 256 rows at a time "
        f"| {cheap[2]:,} | {cheap[0]:.3f} | {cheap[1]:.3f} |",
        "",
        "With the default cost a plain request waits for at most about two 8-row explain batches (the one "
        "computing when it arrives, and its own, which it shares with up to 7 rows to explain): each is one "
        "1024-point integrated-gradients chunk.",
        "",
    ]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
