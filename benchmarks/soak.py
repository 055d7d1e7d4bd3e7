"""Bounded soak: mixed load with disconnects and cancels against a real server; memory and gauges over time.

``python -m benchmarks.soak`` (10 minutes of measured load after a 30 s warm-up),
``--quick`` (60 s after 10 s), or ``--duration SECONDS``.

One ``wsserve serve`` subprocess; ``--procs`` client processes, each holding
``--connections`` WebSocket connections with ``--inflight`` requests outstanding on
each (closed loop).  Requests are a mix of single- and few-row ``predict`` on
``linear`` and ``mlp``, streamed ``predict`` of a few hundred rows on ``mlp`` and
``generate`` on ``charlm``; some generations and streams are cancelled part-way,
and every connection lives for a random time (exponential, mean ``--life`` s)
before it is dropped — half the time abruptly (TCP abort, no closing handshake),
half with a clean close — with its requests still in flight, then reconnects.

The clients check the protocol as they go: each request id gets exactly one
terminal frame, nothing after it, ``token``/``chunk`` frames in ``seq`` order.

Sampled from outside the server (nothing added to it): resident memory
(``VmRSS`` from ``/proc/PID/status``), threads and open file descriptors
(``/proc/PID/fd``), and the ``/metrics`` gauges ``wsserve_connections`` and
``wsserve_inflight_requests``: idle before the load, at the end of the warm-up
("start"), every ``--sample-every`` s, at the end of the load and idle again after
it.  The server's asyncio task count is not exported, so open descriptors and
the connection/in-flight gauges returning to their idle values stand in for it.

Verdict (exit 1 on failure): no protocol violation and no ``internal`` error; after
the load the gauges are back to 0 and descriptors within 4 of the idle value; the
median RSS of the last third of the samples under load at most the noise above
that of the first third (noise: max(8 MiB, 5 %, the first third's own range) —
RSS under this load swings by 10-20 MiB with the big streamed requests in flight).  Writes
``benchmarks/results/soak.md`` (``--no-write`` to skip) and reassembles BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python benchmarks/soak.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import ROOT, start_wsserve
from tests.support import Metrics, ServerProcess, proc_status

__all__ = ["Sample", "main", "sample_server", "verdict"]

RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable

# --------------------------------------------------------------------------- server-side sampling


@dataclass(frozen=True)
class Sample:
    """One look at the server process from outside."""

    label: str
    t_s: float  # seconds since the load started
    rss_kib: int
    threads: int
    fds: int
    connections: float
    inflight: float
    requests_total: float


def sample_server(label: str, server: ServerProcess, t0: float) -> Sample:
    pid = server.proc.pid
    status = proc_status(pid, "VmRSS", "Threads")
    metrics = server.metrics()
    return Sample(
        label=label,
        t_s=round(time.monotonic() - t0, 1),
        rss_kib=status["VmRSS"],
        threads=status["Threads"],
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        connections=metrics.get("wsserve_connections", float("nan")),
        inflight=metrics.get("wsserve_inflight_requests", float("nan")),
        requests_total=metrics.sum("wsserve_requests_total"),
    )


# --------------------------------------------------------------------------- the load (client processes)


@dataclass
class ClientStats:
    """What one client process saw.  Plain data: it crosses a process boundary."""

    sent: Counter = field(default_factory=Counter)  # kind -> requests sent
    ok: Counter = field(default_factory=Counter)  # kind -> served to completion
    cancelled: Counter = field(default_factory=Counter)  # kind -> ended as cancelled after our cancel
    errors: Counter = field(default_factory=Counter)  # "kind:code" -> n
    dropped: int = 0  # requests in flight when we dropped the connection
    connects: int = 0
    connect_failures: int = 0
    aborts: int = 0
    clean_closes: int = 0
    server_closes: Counter = field(default_factory=Counter)  # close code -> n (closes we did not start)
    tokens: int = 0
    chunks: int = 0
    violations: list[str] = field(default_factory=list)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)

    def violation(self, text: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(text)

    def latency(self, kind: str, ms: float, rng: random.Random) -> None:
        bucket = self.latencies_ms.setdefault(kind, [])
        if len(bucket) < 20_000:
            bucket.append(ms)
        else:  # reservoir: keep a uniform sample
            j = rng.randrange(self.ok[kind] or 1)
            if j < len(bucket):
                bucket[j] = ms


class _Request:
    """One request in flight: checks its frames, resolves ``done`` at its terminal frame."""

    __slots__ = ("cancel_at", "done", "kind", "progress", "rid", "seq", "t0")

    def __init__(self, kind: str, rid: int, cancel_at: int | None, loop: asyncio.AbstractEventLoop) -> None:
        self.kind = kind
        self.rid = rid
        self.seq = 0
        self.done: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self.progress = asyncio.Event()  # set when ``cancel_at`` streamed frames have arrived
        self.cancel_at = cancel_at
        self.t0 = time.perf_counter()


def _pick(rng: random.Random) -> tuple[str, dict[str, Any], int | None]:
    """A request of the mix, and after how many streamed frames to cancel it (None: never)."""
    r = rng.random()
    if r < 0.35:
        n = rng.choice((1, 1, 1, 4, 8))
        return "predict_linear", {"type": "predict", "model": "linear", "inputs": [[rng.random()] for _ in range(n)]}, None
    if r < 0.60:
        n = rng.choice((1, 1, 4, 16))
        rows = [[rng.random() for _ in range(32)] for _ in range(n)]
        return "predict_mlp", {"type": "predict", "model": "mlp", "inputs": rows}, None
    if r < 0.75:
        n = rng.choice((256, 512, 1024))
        rows = [[rng.random() for _ in range(32)]] * n
        cancel = rng.choice((1, 2)) if rng.random() < 0.15 else None
        return "stream_mlp", {"type": "predict", "model": "mlp", "inputs": rows, "stream": True, "chunk_rows": 64}, cancel
    max_tokens = rng.choice((16, 64, 128, 256))
    cancel = rng.choice((0, 1, 5, 10)) if rng.random() < 0.2 else None
    msg = {"type": "generate", "model": "charlm", "prompt": rng.choice(("The ", "Once ", "", "A b")),
           "max_tokens": max_tokens}
    if rng.random() < 0.5:
        msg.update(temperature=0.8, top_k=20, seed=rng.randrange(1 << 30))
    return "generate", msg, cancel


class _Connection:
    """One WebSocket connection of a client process, from connect to its (random) end."""

    def __init__(self, ws: Any, rng: random.Random, stats: ClientStats, stop_at: float, first_id: int) -> None:
        self.ws = ws
        self.rng = rng
        self.stats = stats
        self.stop_at = stop_at
        self.next_id = first_id
        self.pending: dict[int, _Request] = {}
        self.we_closed = False
        self.loop = asyncio.get_running_loop()

    async def reader(self) -> None:
        import orjson
        import websockets

        stats, pending = self.stats, self.pending
        try:
            async for raw in self.ws:
                frame = orjson.loads(raw)
                req = pending.get(frame.get("id"))
                if req is None:
                    if frame.get("type") not in ("draining", "pong"):
                        stats.violation(f"frame for no request in flight: {str(frame)[:120]}")
                    continue
                kind = frame["type"]
                if kind in ("token", "chunk"):
                    if frame["seq"] != req.seq:
                        stats.violation(f"{req.kind} {req.rid}: seq {frame['seq']} where {req.seq} was due")
                    req.seq += 1
                    if kind == "token":
                        stats.tokens += 1
                    else:
                        stats.chunks += 1
                    if req.cancel_at is not None and req.seq >= req.cancel_at:
                        req.progress.set()
                elif kind in ("result", "done", "error"):
                    del pending[req.rid]
                    req.done.set_result(frame)
                else:
                    stats.violation(f"unexpected frame type for {req.kind} {req.rid}: {str(frame)[:120]}")
        except websockets.ConnectionClosed as exc:
            if not self.we_closed:
                stats.server_closes[str(exc.rcvd.code if exc.rcvd is not None else 1006)] += 1
        finally:
            self.drop_pending()

    def drop_pending(self) -> None:
        for req in list(self.pending.values()):
            if not req.done.done():
                req.done.set_result(None)

    async def requester(self, reader_task: asyncio.Task[None]) -> None:
        """Closed loop: one request at a time until the end, the connection's or the run's."""
        import orjson
        import websockets

        stats = self.stats
        while time.monotonic() < self.stop_at and not reader_task.done():
            kind, msg, cancel_at = _pick(self.rng)
            self.next_id += 1
            req = _Request(kind, self.next_id, cancel_at, self.loop)
            self.pending[req.rid] = req
            msg["id"] = req.rid
            try:
                await self.ws.send(orjson.dumps(msg).decode())
            except websockets.ConnectionClosed:
                self.pending.pop(req.rid, None)
                return
            stats.sent[kind] += 1
            if cancel_at is not None:
                if cancel_at > 0:
                    waiter = asyncio.ensure_future(req.progress.wait())
                    try:
                        await asyncio.wait([waiter, req.done], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                if not req.done.done():
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await self.ws.send(orjson.dumps({"type": "cancel", "id": req.rid}).decode())
            frame = await req.done
            if frame is None:
                stats.dropped += 1
                return
            self.account(req, frame)

    def account(self, req: _Request, frame: dict[str, Any]) -> None:
        stats, kind = self.stats, req.kind
        if frame["type"] == "error":
            if frame["code"] == "cancelled" and req.cancel_at is not None:
                stats.cancelled[kind] += 1
            else:
                stats.errors[f"{kind}:{frame['code']}"] += 1
        elif frame["type"] == "done" and frame.get("reason") == "cancelled":
            if req.cancel_at is None:
                stats.violation(f"{kind} {req.rid} cancelled without a cancel")
            stats.cancelled[kind] += 1
        else:
            expected = "done" if kind in ("generate", "stream_mlp") else "result"
            if frame["type"] != expected:
                stats.violation(f"{kind} {req.rid}: terminal {frame['type']} where {expected} was due")
            stats.ok[kind] += 1
            stats.latency(kind, (time.perf_counter() - req.t0) * 1000, self.rng)

    async def run(self, inflight: int, life_s: float) -> None:
        """Work until a random lifetime ends, then vanish (TCP abort) or close cleanly, mid-work."""
        reader_task = asyncio.create_task(self.reader())
        workers = [asyncio.create_task(self.requester(reader_task)) for _ in range(inflight)]
        life_end = min(self.stop_at, time.monotonic() + self.rng.expovariate(1.0 / life_s))
        await asyncio.wait([reader_task], timeout=max(0.0, life_end - time.monotonic()))
        self.we_closed = True
        if time.monotonic() >= self.stop_at:
            await self.ws.close()
        elif self.rng.random() < 0.5:
            self.stats.aborts += 1
            self.ws.transport.abort()  # vanish: no closing handshake, requests in flight
        else:
            self.stats.clean_closes += 1
            await self.ws.close()
        for task in workers:
            task.cancel()
        await asyncio.gather(reader_task, *workers, return_exceptions=True)
        self.drop_pending()


async def _one_connection(url: str, rng: random.Random, stats: ClientStats, stop_at: float, inflight: int,
                          life_s: float) -> None:
    """Connect, work, drop, reconnect, ... until ``stop_at``."""
    import websockets

    next_id = 0
    while time.monotonic() < stop_at:
        try:
            ws = await websockets.connect(url, compression=None, max_size=None, open_timeout=10)
            await asyncio.wait_for(ws.recv(), 10)  # hello
        except (OSError, TimeoutError, websockets.WebSocketException):
            stats.connect_failures += 1
            await asyncio.sleep(0.2)
            continue
        stats.connects += 1
        conn = _Connection(ws, rng, stats, stop_at, next_id)
        await conn.run(inflight, life_s)
        next_id = conn.next_id


async def _client_main(url: str, connections: int, inflight: int, seconds: float, life_s: float, seed: int) -> ClientStats:
    stats = ClientStats()
    stop_at = time.monotonic() + seconds
    rngs = [random.Random(seed * 1000 + i) for i in range(connections)]
    await asyncio.gather(*(_one_connection(url, rng, stats, stop_at, inflight, life_s) for rng in rngs))
    return stats


def client_process(url: str, connections: int, inflight: int, seconds: float, life_s: float, seed: int) -> ClientStats:
    """Entry point of one client process (picklable arguments and result)."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        return runner.run(_client_main(url, connections, inflight, seconds, life_s, seed))


def merge(parts: list[ClientStats]) -> ClientStats:
    total = ClientStats()
    for p in parts:
        for name in ("sent", "ok", "cancelled", "errors", "server_closes"):
            getattr(total, name).update(getattr(p, name))
        for name in ("dropped", "connects", "connect_failures", "aborts", "clean_closes", "tokens", "chunks"):
            setattr(total, name, getattr(total, name) + getattr(p, name))
        total.violations += p.violations
        for kind, values in p.latencies_ms.items():
            total.latencies_ms.setdefault(kind, []).extend(values)
    return total


# --------------------------------------------------------------------------- verdict and report


def slope_kib_per_min(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time (KiB per minute)."""
    if len(samples) < 2:
        return 0.0
    xs = [s.t_s / 60 for s in samples]
    ys = [float(s.rss_kib) for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def windows(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """The first and the last third of the samples taken under load (at least one sample each)."""
    k = max(1, len(samples) // 3)
    return samples[:k], samples[-k:]


def rss_growth(measured: list[Sample]) -> tuple[float, float, float]:
    """``(growth, allowed, baseline)`` in KiB: median RSS of the last third of the measured samples minus that
    of the first third; allowed is the noise: max(8 MiB, 5 % of the baseline, the first third's own range)."""
    first, last = windows(measured)
    base = statistics.median(s.rss_kib for s in first)
    growth = statistics.median(s.rss_kib for s in last) - base
    spread = max(s.rss_kib for s in first) - min(s.rss_kib for s in first)
    return growth, max(8 * 1024, 0.05 * base, spread), base


def verdict(before: Sample, measured: list[Sample], after: Sample, stats: ClientStats) -> list[str]:
    """Failures (empty list: pass).  ``measured``: the samples under load, from the end of the warm-up on."""
    failures = []
    if stats.violations:
        failures.append(f"{len(stats.violations)} protocol violations, first: {stats.violations[0]}")
    internal = sum(n for k, n in stats.errors.items() if k.endswith(":internal"))
    if internal:
        failures.append(f"{internal} internal errors")
    if after.connections != 0 or after.inflight != 0:
        failures.append(f"after the load: {after.connections:g} connections, {after.inflight:g} requests in flight")
    if after.fds > before.fds + 4:
        failures.append(f"open descriptors {before.fds} before the load, {after.fds} after")
    growth, allowed, _ = rss_growth(measured)
    if growth > allowed:
        failures.append(f"RSS grew {growth / 1024:.1f} MiB under load (noise allowance {allowed / 1024:.1f} MiB)")
    return failures


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def render(args: argparse.Namespace, command: str, samples: list[Sample], stats: ClientStats, metrics: Metrics,
           failures: list[str], wall_s: float) -> str:
    before, after = samples[0], samples[-1]
    measured = samples[1:-1]
    lines = [
        "## Soak",
        "",
        (f"Command: `{command}` — {args.warmup:g} s warm-up, then {args.duration:g} s measured "
        f"({wall_s / 60:.1f} min wall clock in all). {args.procs} client processes × {args.connections} connections × "
        f"{args.inflight} requests in flight (closed loop); mix: 35 % `predict` linear (1–8 rows), 25 % `predict` mlp "
        "(1–16 rows), 15 % streamed `predict` mlp (256–1,024 rows, 64-row chunks; 15 % cancelled after 1–2 chunks), "
        "25 % `generate` charlm (16–256 tokens, half sampled; 20 % cancelled after 0–10 tokens). Every connection is "
        f"dropped after an exponential lifetime (mean {args.life:g} s), half by TCP abort and half by a clean close, with "
        "its requests in flight, and reconnects. Server: `python -m wsserve serve --port 0 --log-level warning` "
        f"(defaults), {date()}."),
        "",
        f"**Verdict: {'PASS' if not failures else 'FAIL'}**" + ("" if not failures else " — " + "; ".join(failures)),
        "",
        "| sample | t (s) | RSS (MiB) | threads | open fds | connections | in flight | requests served (total) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        lines.append(f"| {s.label} | {s.t_s:g} | {s.rss_kib / 1024:.1f} | {s.threads} | {s.fds} | {s.connections:g} | "
                     f"{s.inflight:g} | {s.requests_total:,.0f} |")
    growth, allowed, base = rss_growth(measured)
    first, last = windows(measured)
    lines += [
        "",
        (f"RSS under load: median {base / 1024:.1f} MiB over the first {len(first)} samples from the start "
        f"(t = {first[0].t_s:g}–{first[-1].t_s:g} s), {(base + growth) / 1024:.1f} MiB over the last {len(last)} "
        f"(t = {last[0].t_s:g}–{last[-1].t_s:g} s): **{growth / 1024:+.1f} MiB** (noise allowance "
        f"{allowed / 1024:.1f} MiB: max(8 MiB, 5 %, the first samples' own range)); range over all measured samples "
        f"{min(s.rss_kib for s in measured) / 1024:.1f}–{max(s.rss_kib for s in measured) / 1024:.1f} MiB; "
        f"least-squares slope {slope_kib_per_min(measured) / 1024:+.2f} MiB/min. Idle before → after the load: RSS "
        f"{before.rss_kib / 1024:.1f} → {after.rss_kib / 1024:.1f} MiB, open fds {before.fds} → {after.fds}, threads "
        f"{before.threads} → {after.threads}, connections / in-flight gauges {after.connections:g} / {after.inflight:g}."),
        "",
        "| request kind | sent | served | cancelled | errors | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("predict_linear", "predict_mlp", "stream_mlp", "generate"):
        errs = sum(n for k, n in stats.errors.items() if k.startswith(kind + ":"))
        lat = stats.latencies_ms.get(kind, [])
        lines.append(f"| {kind} | {stats.sent[kind]:,} | {stats.ok[kind]:,} | {stats.cancelled[kind]:,} | {errs:,} | "
                     f"{_pct(lat, 0.5):.2f} | {_pct(lat, 0.99):.2f} |")
    closes = ", ".join(f"{k}: {int(v):,}" for k, v in sorted(
        ((dict(labels)["code"], v) for (name, labels), v in metrics.samples.items()
         if name == "wsserve_connections_closed_total"),
    )) or "none"
    lines += [
        "",
        (f"Connections: {stats.connects:,} opened ({stats.connect_failures} failed), {stats.aborts:,} dropped by TCP "
        f"abort and {stats.clean_closes:,} closed cleanly mid-work, {stats.dropped:,} requests in flight at those "
        f"moments; closes the server did not start as seen by clients: {dict(stats.server_closes) or 'none'}. "
        f"Server close codes (`wsserve_connections_closed_total`): {closes}. Streamed {stats.tokens:,} tokens and "
        f"{stats.chunks:,} chunks. Errors by kind and code: {dict(stats.errors) or 'none'}. Protocol violations seen "
        f"by the clients: {len(stats.violations)}."),
        "",
        ("Latencies include the client processes' own scheduling on a shared 2-core machine and are for orientation; "
        "the soak is about what does not grow. The server's asyncio task count is not exported; the open-descriptor "
        "count and the connection/in-flight gauges returning to their idle values are the leak checks here."),
    ]
    return "\n".join(lines) + "\n"


def date() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------- main


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 8192):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=None, help="measured seconds of load (default 600; 60 with --quick)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds of load before the start sample (default 30; 10 with --quick)")
    ap.add_argument("--quick", action="store_true", help="60 s measured after 10 s warm-up, a sample every 5 s")
    ap.add_argument("--sample-every", type=float, default=None, help="seconds between samples (default 30; 5 with --quick)")
    ap.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--connections", type=int, default=8, help="connections per client process (default 8)")
    ap.add_argument("--inflight", type=int, default=2, help="requests in flight per connection (default 2)")
    ap.add_argument("--life", type=float, default=5.0, help="mean connection lifetime in s before it is dropped (default 5)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print the report; do not write benchmarks/results/soak.md")
    args = ap.parse_args(argv)
    if args.duration is None:
        args.duration = 60.0 if args.quick else 600.0
    args.warmup = args.warmup if args.warmup is not None else (10.0 if args.quick else 30.0)
    every = args.sample_every if args.sample_every is not None else (5.0 if args.quick else 30.0)
    command = " ".join(["python -m benchmarks.soak", *(argv if argv is not None else sys.argv[1:])])
    _raise_nofile()

    wall0 = time.monotonic()
    server = start_wsserve("--log-level", "warning")
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        samples = [sample_server("idle before", server, t0)]
        load_s = args.warmup + args.duration
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.procs) as pool:
            jobs = [pool.apply_async(client_process, (server.url, args.connections, args.inflight, load_s, args.life,
                                                      args.seed + i)) for i in range(args.procs)]
            t0 = time.monotonic()  # the load starts now (give or take the processes' start-up)
            next_at = args.warmup
            label = "start"
            while next_at < load_s - 1.0:
                time.sleep(max(0.0, t0 + next_at - time.monotonic()))
                samples.append(sample_server(label, server, t0))
                print(f"  {samples[-1]}", flush=True)
                label = "under load"
                next_at += every
            time.sleep(max(0.0, t0 + load_s - 1.0 - time.monotonic()))
            samples.append(sample_server("end of load", server, t0))
            parts = [job.get(timeout=load_s + 120) for job in jobs]
        time.sleep(2.0)
        samples.append(sample_server("idle after", server, t0))
        metrics = server.metrics()
        log = server.stderr_text()
    finally:
        server.stop()
    wall_s = time.monotonic() - wall0
    stats = merge(parts)
    failures = verdict(samples[0], samples[1:-1], samples[-1], stats)
    if "Traceback" in log:
        failures.append("the server logged a traceback: " + log[log.index("Traceback"):][:300])
    report = render(args, command, samples, stats, metrics, failures, wall_s)
    print(report)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "soak.md").write_text(report)
        from benchmarks.assemble import assemble

        print(f"wrote {RESULTS / 'soak.md'} and {assemble()}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
