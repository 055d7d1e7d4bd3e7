"""Client processes: spawn, synchronise, collect progress and stats, merge.

The parent probes the server, validates the workload against its models,
then starts ``procs`` worker processes (``spawn`` context, so nothing of the
parent's state — an event loop, threads — leaks into them).  Messages on each
worker's pipe, in order:

* worker → parent ``("ready", opened, failures)`` or ``("error", text)``;
* parent → worker ``("start", t0)``: the common start time on the monotonic
  clock (system-wide on Linux, so every process shares the time line);
* worker → parent ``("progress", snapshot)`` about once a second;
* worker → parent ``("final", stats_dict)`` — the encoded histograms merge
  in the parent into exactly the histogram of all samples.

The parent prints one progress line a second to ``err`` and returns the
report dict; it raises :class:`~.probe.LoadTestError` when the test cannot run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import multiprocessing.connection as mpc
import signal
import sys
import time
import traceback
from typing import Any, TextIO

from .config import LoadConfig, ServerInfo, WorkerConfig
from .driver import Worker
from .probe import LoadTestError, probe
from .report import build_report
from .schedule import split_evenly
from .stats import RunStats
from .workload import check_against_models

__all__ = ["run_load", "worker_main"]

_READY_TIMEOUT_S = 60.0
_START_MARGIN_S = 0.1
_DEFAULT_OPEN_INFLIGHT = 256


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def worker_main(pipe: mpc.Connection, cfg: WorkerConfig) -> None:
    """Entry point of one worker process (see the module docstring for the pipe protocol)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            runner.run(_worker(pipe, cfg))
    except BaseException:  # noqa: BLE001 - reported to the parent, which decides
        try:
            pipe.send(("error", f"client process {cfg.index}: " + traceback.format_exc()))
        except OSError:
            pass
    finally:
        pipe.close()


async def _worker(pipe: mpc.Connection, cfg: WorkerConfig) -> None:
    worker = Worker(cfg)
    opened, failures = await worker.connect()
    pipe.send(("ready", opened, failures[:5]))
    if not opened:
        return
    msg = pipe.recv()  # blocks the loop briefly; nothing runs before the start anyway
    if msg[0] != "start":
        return
    stats = await worker.run(start=msg[1], progress=lambda snap: pipe.send(("progress", snap)))
    pipe.send(("final", stats.to_dict()))


def resolve_inflight(cfg: LoadConfig, server: ServerInfo) -> int:
    """Per-connection cap: the flag; else 1 (closed loop) or the server's ``max_inflight`` (open loop)."""
    if cfg.inflight is not None:
        return cfg.inflight
    if cfg.rate_per_s is None:
        return 1
    return server.max_inflight or _DEFAULT_OPEN_INFLIGHT


def run_load(cfg: LoadConfig, *, err: TextIO = sys.stderr) -> dict[str, Any]:
    """Run the whole load test and return the report (see :func:`~.report.build_report`)."""
    server = asyncio.run(probe(cfg.url, echo=cfg.echo, open_timeout_s=cfg.open_timeout_s, api_key=cfg.api_key))
    if server.kind == "protocol" and server.models:
        try:
            check_against_models(cfg.specs, server.models)
        except ValueError as exc:
            raise LoadTestError(str(exc)) from None
    inflight = resolve_inflight(cfg, server)
    effective = dataclasses.replace(cfg, inflight=inflight)
    started_unix = time.time()
    stats, start = _run_procs(effective, server, err=err)
    return build_report(effective, server, stats, started_at_unix=started_unix, start_monotonic=start)


def _run_procs(cfg: LoadConfig, server: ServerInfo, *, err: TextIO) -> tuple[RunStats, float]:
    ctx = multiprocessing.get_context("spawn")
    pipes: list[mpc.Connection] = []
    procs: list[multiprocessing.process.BaseProcess] = []
    ok = False
    try:
        for index, n_conns in enumerate(split_evenly(cfg.connections, cfg.procs)):
            parent_end, child_end = ctx.Pipe()
            wcfg = WorkerConfig(load=cfg, server=server, index=index, connections=n_conns, inflight=cfg.inflight or 1)
            p = ctx.Process(target=worker_main, args=(child_end, wcfg), name=f"loadtest-{index}", daemon=True)
            p.start()
            child_end.close()
            pipes.append(parent_end)
            procs.append(p)
        _await_ready(cfg, pipes, err=err)
        start = time.monotonic() + _START_MARGIN_S
        for pipe in pipes:
            pipe.send(("start", start))
        parts = _collect(cfg, pipes, start=start, err=err)
        merged = RunStats.merged(parts), start
        ok = True
        return merged
    finally:
        for proc in procs:
            proc.join(timeout=2.0 if ok else 0.0)  # on failure or Ctrl-C: no waiting
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
        for pipe in pipes:
            pipe.close()


def _recv(pipe: mpc.Connection) -> tuple[Any, ...]:
    try:
        return pipe.recv()  # type: ignore[no-any-return]
    except EOFError:
        raise LoadTestError("a client process exited without reporting (see its output above)") from None


def _await_ready(cfg: LoadConfig, pipes: list[mpc.Connection], *, err: TextIO) -> None:
    waiting = set(pipes)
    deadline = time.monotonic() + _READY_TIMEOUT_S + cfg.open_timeout_s
    opened = 0
    failures: list[str] = []
    while waiting:
        ready = mpc.wait(list(waiting), timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise LoadTestError("client processes did not get ready in time")
        for pipe in ready:
            msg = _recv(pipe)  # type: ignore[arg-type]
            if msg[0] == "error":
                raise LoadTestError(msg[1])
            opened += msg[1]
            failures.extend(msg[2])
            waiting.discard(pipe)
    if opened == 0:
        raise LoadTestError(
            f"no connection to {cfg.url} could be opened: {failures[0] if failures else 'unknown reason'}"
        )
    if opened < cfg.connections:
        print(
            f"warning: only {opened} of {cfg.connections} connections opened; first failure: {failures[0]}",
            file=err,
            flush=True,
        )


def _collect(cfg: LoadConfig, pipes: list[mpc.Connection], *, start: float, err: TextIO) -> list[RunStats]:
    end = start + cfg.warmup_s + cfg.duration_s
    hard_deadline = end + cfg.grace_s + 15.0
    latest: dict[int, dict[str, Any]] = {}
    interval = _Interval()
    finals: dict[int, RunStats] = {}
    index = {id(p): i for i, p in enumerate(pipes)}
    next_line = start + 1.0
    last_ok, last_t = 0, start
    while len(finals) < len(pipes):
        now = time.monotonic()
        if now > hard_deadline:
            raise LoadTestError("client processes did not finish in time")
        live = [p for p in pipes if index[id(p)] not in finals]
        for pipe in mpc.wait(live, timeout=max(0.0, min(next_line, hard_deadline) - now)):
            i = index[id(pipe)]
            msg = _recv(pipe)  # type: ignore[arg-type]
            if msg[0] == "progress":
                latest[i] = msg[1]
                interval.add(msg[1])
            elif msg[0] == "final":
                finals[i] = RunStats.from_dict(msg[1])
            elif msg[0] == "error":
                raise LoadTestError(msg[1])
        now = time.monotonic()
        if now >= next_line:
            if cfg.progress and latest and now < end + cfg.grace_s + 1.0:
                ok = sum(s["ok"] for s in latest.values())
                rate = (ok - last_ok) / max(1e-9, now - last_t)
                last_ok, last_t = ok, now
                mid = now - 0.5  # the line covers the second before it
                phase = "warmup" if mid < start + cfg.warmup_s else ("measure" if mid < end else "drain")
                print(_progress_line(now - start, phase, latest, rate, interval), file=err, flush=True)
            interval = _Interval()
            next_line += 1.0
    return [finals[i] for i in range(len(pipes))]


class _Interval:
    """Latency mean and max over one progress interval, across processes."""

    __slots__ = ("max_s", "n", "sum_s")

    def __init__(self) -> None:
        self.sum_s, self.n, self.max_s = 0.0, 0, 0.0

    def add(self, snap: dict[str, Any]) -> None:
        self.sum_s += snap["lat_sum_s"]
        self.n += snap["lat_n"]
        self.max_s = max(self.max_s, snap["lat_max_s"])


def _progress_line(elapsed: float, phase: str, latest: dict[int, dict[str, Any]], rate: float, iv: _Interval) -> str:
    tot = {k: sum(s[k] for s in latest.values()) for k in ("sent", "ok", "errors", "tokens", "outstanding")}
    mean_ms = iv.sum_s / iv.n * 1000 if iv.n else 0.0
    line = (
        f"[{elapsed:6.1f}s {phase:<7}] sent {tot['sent']:>10,}  ok {tot['ok']:>10,}  err {tot['errors']:>7,}  "
        f"{rate:>9,.0f} ok/s  latency mean {mean_ms:8.3f} ms  max {iv.max_s * 1000:8.3f} ms  "
        f"in flight {tot['outstanding']:,}"
    )
    if tot["tokens"]:
        line += f"  tokens {tot['tokens']:,}"
    return line
