"""Where a predict batch runs: on the event loop or in a thread (``--inline-max-flops``).

``python -m benchmarks.bench_inline`` (~5 min) starts ``wsserve serve --models mlp`` four times,
each in its own process on uvloop with one BLAS thread, differing only in ``--inline-max-flops``
(``mlp`` is 76,810 multiply-adds a row):

- ``200000``: an ``mlp`` batch of more than 2 rows goes to the worker thread (the default until
  the measurements below);
- ``5000000``: batches of up to 65 ``mlp`` rows run on the loop (~150 µs here);
- ``20000000``: the default: up to 260 rows (the default ``--max-batch-size`` is 256; ~0.5 ms);
- ``100000000000``: every batch on the loop, for reference.

It drives each with the load-test tool (closed loop, one single-row ``mlp`` predict in flight per
connection) at 64 and 256 connections, repetitions interleaved across the servers, medians with
their range; then, on each server, measures a backlog: one connection streams 4 predicts of 16,384
``mlp`` rows (and reads its replies) while another sends single-row predicts one after another:
the big requests' rows/s and the other connection's round trips.  It also times the model on
batches of 1 to 256 rows and an executor round trip (a no-op through ``run_in_executor``) in this
process: the two costs the threshold weighs.  Writes ``benchmarks/results/inline.md`` and
``inline.json``; ``--assemble`` also rebuilds BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python benchmarks/bench_inline.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import describe
from benchmarks.run import (
    RESULTS,
    Plan,
    loadtest_cmd,
    measure,
    median_of,
    shown,
    write_results,
)
from benchmarks.servers import start_command
from tests.support import ServerProcess, serve_command

#: --inline-max-flops values compared; the first (every batch above 2 mlp rows in the thread) is the
#: baseline of the ratios
THRESHOLDS = (200_000, 5_000_000, 20_000_000, 100_000_000_000)
#: the big request of the backlog measurement: this many streamed predicts of ``BIG_ROWS`` mlp rows
BIG_REQUESTS, BIG_ROWS, BIG_CHUNK = 4, 16_384, 32


def _label(flops: int) -> str:
    from wsserve.config import ServerConfig

    text = "10¹¹ (all inline)" if flops == THRESHOLDS[-1] else f"{flops:,}"
    return text + " (default)" if flops == ServerConfig().inline_max_flops else text


FULL = Plan(reps=5, duration_s=4.0, warmup_s=1.0, connections=(64, 256))
QUICK = Plan(reps=1, duration_s=1.5, warmup_s=0.5, connections=(64,), quick=True)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _command(flops: int, cache_dir: str | None) -> list[str]:
    extra = ["--cache-dir", cache_dir] if cache_dir else []
    return serve_command("--log-level", "warning", "--models", "mlp", "--inline-max-flops", str(flops),
                         "--max-message-bytes", str(4 << 20), *extra, loop="uvloop")


async def _beside_a_backlog(url: str) -> dict[str, float]:
    """Round trips (ms) of one connection's sequential single-row predicts while another connection
    streams ``BIG_REQUESTS`` big predicts and reads every chunk: what a backlog costs the others."""
    import numpy as np
    import orjson
    import websockets

    from wsserve.tensorframe import encode

    # binary tensor frames: decoding a JSON body this size would hold the loop ~60 ms per request
    # whatever the threshold, and be what the other connection's p99 measured
    big_rows = np.full((BIG_ROWS, 32), 0.25, dtype=np.float32)
    async with websockets.connect(url, compression=None, max_size=None) as big, \
            websockets.connect(url, compression=None, max_size=None) as small:
        await big.recv()
        await small.recv()
        for i in range(20):  # warm-up
            await small.send(orjson.dumps({"type": "predict", "id": i, "model": "mlp", "inputs": [[0.5] * 32]}).decode())
            await small.recv()

        span: list[float] = []

        async def flood() -> None:
            t0 = time.perf_counter()
            for i in range(BIG_REQUESTS):
                await big.send(encode({"type": "predict", "id": i, "model": "mlp", "stream": True,
                                       "chunk_rows": BIG_CHUNK}, big_rows))
            ended = 0
            while ended < BIG_REQUESTS:
                frame = orjson.loads(await big.recv())
                if frame["type"] != "chunk":
                    if frame["type"] != "done":
                        raise RuntimeError(f"big request failed: {frame}")
                    ended += 1
            span.append(time.perf_counter() - t0)

        task = asyncio.create_task(flood())
        trips: list[float] = []
        try:
            await _sample(small, task, trips)
        except BaseException:
            task.cancel()
            raise
        await task
    trips.sort()
    return {"samples": len(trips), "p50": trips[len(trips) // 2],
            "p99": trips[min(len(trips) - 1, int(len(trips) * 0.99))], "max": trips[-1],
            "big_rows_per_s": BIG_REQUESTS * BIG_ROWS / span[0]}


async def _sample(small: Any, task: asyncio.Task[None], trips: list[float]) -> None:
    """Sequential single-row predicts on ``small`` until ``task`` is done; round trips (ms) into ``trips``."""
    import orjson

    i = 0
    while not task.done():
        t0 = time.perf_counter()
        await small.send(orjson.dumps({"type": "predict", "id": i, "model": "mlp", "inputs": [[0.5] * 32]}).decode())
        reply = orjson.loads(await small.recv())
        if reply["type"] != "result":
            raise RuntimeError(f"small request failed: {reply}")
        trips.append((time.perf_counter() - t0) * 1e3)
        i += 1


def model_costs(cache_dir: str | None) -> dict[str, Any]:
    """The mlp's predict time per batch size, and an executor round trip, in µs (medians)."""
    import numpy as np

    from wsserve.config import ServerConfig
    from wsserve.trainer import prepare_builtin_repository

    async def go() -> dict[str, Any]:
        from wsserve.server import Server

        config = ServerConfig(host="127.0.0.1", port=0, models=("mlp",),
                              cache_dir=Path(cache_dir) if cache_dir else None, ping_interval_s=None)
        with tempfile.TemporaryDirectory(prefix="bench-inline-") as scratch:
            builtin = prepare_builtin_repository(config.models, seed=config.seed, cache_dir=config.cache_dir,
                                                 cache=config.cache, scratch=Path(scratch))
            server = Server(config, builtin_repository=builtin)
            await server.start()
        try:
            model = server.pool.lookup("mlp").model
            per_batch = {}
            for rows in (1, 8, 16, 32, 64, 128, 256):
                x = np.random.default_rng(rows).random((rows, 32))
                model.predict(x)
                times = []
                for _ in range(7):
                    t0 = time.perf_counter()
                    for _ in range(50):
                        model.predict(x)
                    times.append((time.perf_counter() - t0) / 50 * 1e6)
                per_batch[rows] = statistics.median(times)
            loop = asyncio.get_running_loop()
            trips = []
            with ThreadPoolExecutor(1) as ex:
                for _ in range(500):
                    t0 = time.perf_counter()
                    await loop.run_in_executor(ex, int)
                    trips.append((time.perf_counter() - t0) * 1e6)
            return {"flops_per_row": model.flops_per_row(), "predict_us": per_batch,
                    "executor_round_trip_us": statistics.median(trips)}
        finally:
            await server.close()

    return asyncio.run(go())


def run(plan: Plan, cache_dir: str | None) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC)
    machine = describe()
    servers: dict[str, ServerProcess] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    backlog: dict[str, list[dict[str, float]]] = {}
    try:
        for flops in THRESHOLDS:
            servers[str(flops)] = start_command(_command(flops, cache_dir))
            _log(f"started --inline-max-flops {flops} at {servers[str(flops)].url}")
        for rep in range(plan.reps):
            for flops in THRESHOLDS:
                key = str(flops)
                for n in plan.connections:
                    r = measure(servers[key], model="mlp", connections=n, plan=plan)
                    runs.setdefault(f"{key}|{n}", []).append(r)
                    brief = r.get("failed") or (f"{r['rps']:>9,.0f} req/s  server {r['server_cpu']:.2f} cores  "
                                                f"{r['server_us_per_req']:.1f} µs/req  p99 {r['p99']:.2f} ms")
                    _log(f"[rep {rep + 1}/{plan.reps}] {flops:>15,} {n:>4} conns: {brief}")
        for rep in range(plan.reps):
            for flops in THRESHOLDS:
                key = str(flops)
                b = asyncio.run(_beside_a_backlog(servers[key].url))
                backlog.setdefault(key, []).append(b)
                _log(f"[backlog {rep + 1}/{plan.reps}] {flops:>15,}: other connection p50 {b['p50']:.2f} "
                     f"p99 {b['p99']:.2f} max {b['max']:.1f} ms ({b['samples']} samples); big rows/s {b['big_rows_per_s']:,.0f}")
    finally:
        for s in servers.values():
            s.stop()
    summary = {key: median_of(rs) for key, rs in runs.items()}
    return {
        "started_at": started.isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "machine": machine,
        "server_commands": {str(f): shown(_command(f, "DIR" if cache_dir else None)) for f in THRESHOLDS},
        "loadtest_command": shown(loadtest_cmd("URL", model="mlp", connections=0, plan=plan)).replace("-c 0", "-c N"),
        "runs": runs,
        "summary": summary,
        "backlog": backlog,
        "backlog_summary": {key: {m: statistics.median(b[m] for b in bs) for m in ("p50", "p99", "max", "samples", "big_rows_per_s")}
                            for key, bs in backlog.items()},
    }


def render(data: dict[str, Any]) -> str:
    plan, m, summary, costs = data["plan"], data["machine"], data["summary"], data["costs"]
    conns = plan["connections"]
    la = m.get("load_average") or ["?", "?", "?"]
    cmd = "python -m benchmarks.bench_inline" + (" --quick" if plan["quick"] else "")
    out = ["## Predict batches on the event loop or in a thread", ""]
    if plan["quick"]:
        out += ["> **Quick run**: one short repetition per cell, a smoke test, not numbers to cite.", ""]
    per_row = costs["flops_per_row"]
    out += [
        (f"Measured {data['started_at']} by `{cmd}` in {data.get('elapsed_s', '?')} s; load average at the start "
         f"{la[0]} / {la[1]} / {la[2]} on {m['cores']} cores (wsserve {m.get('git_commit') or 'commit unknown'})."),
        "",
        ("A predict batch of at most `--inline-max-flops` multiply-adds (rows × the model's `flops_per_row`) runs "
         "on the event loop; a costlier one in the worker's thread, while the loop goes on reading. The thread "
         "costs a round trip (a no-op through `run_in_executor`: "
         f"**{costs['executor_round_trip_us']:.0f} µs** here, median) and hands the GIL back and forth. "
         f"The `mlp` ({per_row:,} multiply-adds a row) computes a batch in:"),
        "",
        "| rows | " + " | ".join(str(r) for r in costs["predict_us"]) + " |",
        "|---|" + "---:|" * len(costs["predict_us"]),
        "| µs (median) | " + " | ".join(f"{v:.0f}" for v in costs["predict_us"].values()) + " |",
        "",
        (f"Closed loop: N connections, each with one single-row `mlp` predict in flight, {plan['duration_s']:g} s after "
         f"{plan['warmup_s']:g} s of warm-up; {plan['reps']} repetitions per cell interleaved across the "
         f"{len(THRESHOLDS)} servers, median shown (range in small print). *server µs/req*: the server's CPU time per request "
         "(busy cores ÷ requests/s), which does not depend on the client's speed."),
        "",
        "| `--inline-max-flops` | " + " | ".join(f"{n} conns req/s" for n in conns) + " | "
        + " | ".join(f"{n} conns p50 / p99 ms" for n in conns) + " | "
        + " | ".join(f"{n} conns server µs/req" for n in conns) + " | "
        + " | ".join(f"{n} conns ÷ {THRESHOLDS[0]:,}" for n in conns) + " |",
        "|---|" + "---:|" * (4 * len(conns)),
    ]
    base = str(THRESHOLDS[0])
    for flops in THRESHOLDS:
        key = str(flops)
        cells = [summary.get(f"{key}|{n}") or {} for n in conns]
        rps = [f"{c['rps']:,.0f} <sub>({c['rps_min']:,.0f}–{c['rps_max']:,.0f})</sub>" if "rps" in c else "failed"
               for c in cells]
        lat = [f"{c['p50']:.2f} / {c['p99']:.2f}" if "p50" in c else "—" for c in cells]
        cpu = [f"{c['server_us_per_req']:.1f}" if "server_us_per_req" in c else "—" for c in cells]
        ratio = []
        for n, c in zip(conns, cells, strict=True):
            b = summary.get(f"{base}|{n}") or {}
            ratio.append(f"{c['rps'] / b['rps']:.2f}×" if c.get("rps") and b.get("rps") else "—")
        out.append(f"| {_label(flops)} | " + " | ".join(rps + lat + cpu + ratio) + " |")
    bsum = data.get("backlog_summary") or {}
    if bsum:
        out += [
            "",
            (f"Beside a backlog: one connection streams {BIG_REQUESTS} predicts of {BIG_ROWS:,} `mlp` rows "
             f"(binary tensor frames, `chunk_rows` {BIG_CHUNK}) and reads every chunk, while another sends single-row "
             "predicts one after another until the big ones are done: the big requests' rows per second, and the "
             f"other connection's round trips; medians over the {plan['reps']} repetitions."),
            "",
            "| `--inline-max-flops` | big requests rows/s | other connection p50 ms | p99 ms | max ms | round trips |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for flops in THRESHOLDS:
            b = bsum.get(str(flops))
            if b:
                out.append(f"| {_label(flops)} | {b['big_rows_per_s']:,.0f} | {b['p50']:.2f} | {b['p99']:.2f} | "
                           f"{b['max']:.1f} | {b['samples']:,.0f} |")
    fits = THRESHOLDS[2] // per_row
    near = max((r for r in costs["predict_us"] if int(r) <= fits), key=int)
    took = costs["predict_us"][near]
    out += [
        "",
        (f"{THRESHOLDS[2]:,} lets `mlp` batches of up to {fits} rows run on the loop; {near} rows take {took:.0f} µs "
         f"here, {took / costs['executor_round_trip_us']:.1f} executor round trips. {_verdict(data)} The thread "
         "would pay if numpy computed beside a loop with other work to do; on this machine the hop, the wake-ups "
         "and the GIL cost about what that overlap gains or more, so 20,000,000 is the default. An earlier "
         "session kept 200,000 because the stuck-reader test (`tests/test_hardening.py`) failed once at "
         "20,000,000; the cause was not the threshold but that test's p99 taken over ~100 round trips, one of "
         "which waited ~200 ms for the server to decode the stuck reader's 4 MB of JSON requests (at any "
         "threshold). The test now samples once those requests are admitted. Models whose cost is unknown (a "
         "`model.py` or `FunctionModel` without `flops_per_row`) count 10⁹ multiply-adds a row, so they always "
         "run in the thread."),
        "",
        "Servers (from the repository root):", "", "```", *data["server_commands"].values(), "```", "",
        "Load, per cell:", "", "```", data["loadtest_command"], "```", "",
        f"Reproduce: `{cmd}`. Raw per-run figures: `benchmarks/results/inline.json`.", "",
    ]
    return "\n".join(out)


def _verdict(data: dict[str, Any]) -> str:
    """This run's figures for the default threshold against 200,000, in one sentence."""
    summary, conns = data["summary"], data["plan"]["connections"]
    base, dflt = str(THRESHOLDS[0]), str(THRESHOLDS[2])
    parts = []
    for n in conns:
        a, b = summary.get(f"{dflt}|{n}") or {}, summary.get(f"{base}|{n}") or {}
        if a.get("rps") and b.get("rps"):
            overlap = a["rps_min"] <= b["rps_max"] and b["rps_min"] <= a["rps_max"]
            parts.append(f"{a['rps'] / b['rps']:.2f}× the closed-loop throughput at {n} connections"
                         + (" (the runs' ranges overlap)" if overlap else ""))
    bsum = data.get("backlog_summary") or {}
    a, b = bsum.get(dflt), bsum.get(base)
    if a and b:
        parts.append(f"{a['big_rows_per_s'] / b['big_rows_per_s']:.2f}× the big requests' rows/s beside a backlog, "
                     f"with the other connection's p50 at {a['p50']:.2f} instead of {b['p50']:.2f} ms and p99 at "
                     f"{a['p99']:.2f} instead of {b['p99']:.2f} ms")
    return ("Against 200,000, in this run, 20,000,000 gives " + "; ".join(parts) + ".") if parts else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 short repetition at 64 connections (~1.5 min)")
    ap.add_argument("--reps", type=int, help="repetitions per cell (default 5)")
    ap.add_argument("--cache-dir", help="trained-weights cache for the servers (default: theirs)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where inline.md/json go")
    ap.add_argument("--assemble", action="store_true", help="also rebuild BENCHMARKS.md")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = replace(plan, reps=args.reps)
    t0 = time.monotonic()
    data = run(plan, args.cache_dir)
    data["costs"] = model_costs(args.cache_dir)
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    write_results(args.results, "inline", data, render(data), rebuild=args.assemble)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
