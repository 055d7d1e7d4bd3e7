"""The asyncio side of one client process: connections, readers, senders.

Shape, chosen so the client is not the bottleneck: one reader task per
connection and, in open loop, one scheduler task per process — never a task
per request.  Replies are read with ``recv(decode=False)`` and parsed with
orjson; request frames are pre-encoded (:class:`~.workload.RequestFactory`).

Closed loop: at the start each connection sends ``inflight`` requests; the
reader sends the next one on the same connection as soon as one finishes, until
the window ends.  Latency runs from the actual send.

Open loop: the scheduler sends each request at its intended time from
:class:`~.schedule.OpenLoopSchedule` on the next connection with room
(round-robin, at most ``inflight`` outstanding per connection); if none has
room the request waits in a backlog.  Latency runs from the *intended* time,
so waits of any kind — backlog, a slow client loop, a stalled server — show in
the latency; sends more than ``late_ms`` behind schedule are also counted.

Call order: :meth:`Worker.connect`, then :meth:`Worker.run` once with the
common start time; it returns the process's :class:`~.stats.RunStats`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .config import WorkerConfig
from .histogram import LatencyHistogram
from .probe import connect_kwargs
from .schedule import OpenLoopSchedule, Window
from .stats import RunStats
from .workload import RequestFactory, WeightedCycle

__all__ = ["Progress", "Worker"]

#: called about once a second with a snapshot (see :meth:`Worker.snapshot`)
Progress = Callable[[dict[str, Any]], None]

_CONNECT_CONCURRENCY = 32
_TERMINAL_OK = frozenset({"result", "done"})
_PARTIAL = frozenset({"token", "chunk"})


class _Req:
    __slots__ = ("intended", "last", "measured", "w")

    def __init__(self, w: int, intended: float, measured: bool) -> None:
        self.w = w
        self.intended = intended
        self.measured = measured
        self.last: float | None = None


class _Conn:
    __slots__ = ("alive", "close_code", "next_id", "open_at_end", "pending", "ws")

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: dict[Any, _Req] = {}
        self.next_id = 0
        self.alive = True
        self.close_code: int | None = None
        self.open_at_end = False


class Worker:
    """One client process's load generator (see the module docstring)."""

    def __init__(self, cfg: WorkerConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        load = cfg.load
        self._cfg = cfg
        self._clock = clock
        self._echo = cfg.server.kind == "echo"
        self._closed_loop = load.rate_per_s is None
        models = cfg.server.models
        self._factories = [
            RequestFactory(spec, input_width=models[spec.model].input_width if spec.model in models else 1,
                           seed=load.seed * 1009 + cfg.index)
            for spec in load.specs
        ]
        self._cycle = WeightedCycle([s.weight for s in load.specs])
        self.stats = RunStats.for_labels([(s.label, s.kind) for s in load.specs])
        self._conns: list[_Conn] = []
        self._window: Window | None = None
        self._late_s = load.late_ms / 1000.0
        # live counters for the progress line (all requests, warm-up included)
        self._live_sent = 0
        self._live_ok = 0
        self._live_err = 0
        self._live_tokens = 0
        self._live_hist = LatencyHistogram()
        self._slot_freed = asyncio.Event()
        self._want_slot = False
        self._sending = True

    # -- set-up ------------------------------------------------------------
    async def connect(self) -> tuple[int, list[str]]:
        """Open this process's connections; returns (opened, failure messages)."""
        kwargs = connect_kwargs(open_timeout_s=self._cfg.load.open_timeout_s)
        sem = asyncio.Semaphore(_CONNECT_CONCURRENCY)
        failures: list[str] = []

        async def one() -> None:
            async with sem:
                try:
                    ws = await connect(self._cfg.load.url, **kwargs)
                except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal alone
                    failures.append(f"{type(exc).__name__}: {exc}")
                    return
                self._conns.append(_Conn(ws))

        await asyncio.gather(*(one() for _ in range(self._cfg.connections)))
        self.stats.connections = len(self._conns)
        self.stats.connect_failures = len(failures)
        return len(self._conns), failures

    # -- the run -----------------------------------------------------------
    async def run(self, *, start: float, progress: Progress | None = None) -> RunStats:
        """Load from ``start`` (monotonic seconds) through warm-up, measurement and grace; close; return stats."""
        load = self._cfg.load
        window = self._window = Window(start=start, warmup_s=load.warmup_s, duration_s=load.duration_s)
        readers = [asyncio.create_task(self._reader(c)) for c in self._conns]
        ticker = asyncio.create_task(self._ticker(progress)) if progress is not None else None
        try:
            delay = start - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._closed_loop:
                await self._closed_start()
                await self._sleep_until(window.end)
            else:
                await self._open_loop(window)
            self._sending = False
            await self._drain(deadline=window.end + load.grace_s)
        finally:
            self._sending = False
            if ticker is not None:
                ticker.cancel()
            await self._close_all(readers)
        self._sweep()
        return self.stats

    async def _sleep_until(self, t: float) -> None:
        while (left := t - self._clock()) > 0:
            await asyncio.sleep(left)

    async def _closed_start(self) -> None:
        k = self._cfg.inflight
        for conn in self._conns:
            for _ in range(k):
                if not conn.alive:
                    break
                now = self._clock()
                try:
                    await self._send(conn, now)
                except ConnectionClosed:
                    conn.alive = False

    async def _open_loop(self, window: Window) -> None:
        load = self._cfg.load
        assert load.rate_per_s is not None
        sched = OpenLoopSchedule(rate_per_s=load.rate_per_s, start=window.start, end=window.end,
                                 first=self._cfg.index, stride=load.procs)
        cap = self._cfg.inflight
        conns = self._conns
        backlog: deque[float] = deque()
        stats = self.stats
        late_s = self._late_s
        rr = 0
        while True:
            now = self._clock()
            backlog.extend(sched.due(now))
            while backlog:
                conn = None
                for _ in range(len(conns)):
                    c = conns[rr]
                    rr = (rr + 1) % len(conns)
                    if c.alive and len(c.pending) < cap:
                        conn = c
                        break
                if conn is None:
                    break
                intended = backlog.popleft()
                now = self._clock()
                if window.measured(intended):
                    lag = now - intended
                    stats.send_lag.record_s(lag)
                    if lag > late_s:
                        stats.late_sends += 1
                try:
                    await self._send(conn, intended)
                except ConnectionClosed:
                    conn.alive = False
            if not any(c.alive for c in conns):
                self._fail_backlog(backlog)
                return
            nxt = sched.next_time
            if nxt == math.inf and not backlog:
                return
            timeout = None if nxt == math.inf else max(0.0, nxt - self._clock())
            if backlog:
                self._slot_freed.clear()
                self._want_slot = True
                try:
                    await asyncio.wait_for(self._slot_freed.wait(), timeout)
                except TimeoutError:
                    pass
                self._want_slot = False
            elif timeout:
                await asyncio.sleep(timeout)

    def _fail_backlog(self, backlog: deque[float]) -> None:
        """Requests that could never be sent (every connection closed) count as ``connection_closed``."""
        window = self._window
        assert window is not None
        while backlog:
            intended = backlog.popleft()
            if window.measured(intended):
                i = self._cycle.next()
                w = self.stats.workloads[i]
                w.sent += 1
                w.errors["connection_closed"] += 1

    async def _send(self, conn: _Conn, intended: float) -> None:
        i = self._cycle.next()
        rid = conn.next_id
        conn.next_id = rid + 1
        assert self._window is not None
        measured = self._window.measured(intended)
        conn.pending[rid] = _Req(i, intended, measured)
        if measured:
            self.stats.workloads[i].sent += 1
        self._live_sent += 1
        await conn.ws.send(self._factories[i].build(rid), text=True)

    # -- replies -----------------------------------------------------------
    async def _reader(self, conn: _Conn) -> None:
        ws = conn.ws
        pending = conn.pending
        loads = orjson.loads
        clock = self._clock
        window = self._window
        assert window is not None
        workloads = self.stats.workloads
        echo = self._echo
        try:
            while True:
                data = await ws.recv(decode=False)
                now = clock()
                try:
                    frame = loads(data)
                    rid = frame.get("id")
                except (orjson.JSONDecodeError, AttributeError, TypeError):
                    continue  # not ours to judge; the request it might answer will end as no_reply
                req = pending.get(rid) if rid is not None else None
                if req is None:
                    continue  # hello, draining, pong, or a frame for an unknown id
                code: str | None
                if echo:
                    code = None
                else:
                    kind = frame.get("type")
                    if kind in _PARTIAL:
                        if window.measured(now):
                            workloads[req.w].tokens += 1
                            self._live_tokens += 1
                        if req.measured:
                            w = workloads[req.w]
                            if req.last is None:
                                w.first.record_s(now - req.intended)
                            else:
                                w.gap.record_s(now - req.last)
                        req.last = now
                        continue
                    if kind in _TERMINAL_OK:
                        code = None
                    elif kind == "error":
                        code = str(frame.get("code") or "unknown")
                    else:
                        continue
                del pending[rid]
                self._finish(req, now, code)
                if self._closed_loop:
                    if self._sending and now < window.end:
                        await self._send(conn, clock())
                elif self._want_slot:
                    self._slot_freed.set()
        except ConnectionClosed:
            pass
        finally:
            conn.alive = False
            conn.close_code = ws.close_code if ws.close_code is not None else 1006
            if self._want_slot:
                self._slot_freed.set()

    def _finish(self, req: _Req, now: float, code: str | None) -> None:
        w = self.stats.workloads[req.w]
        if code is None:
            self._live_ok += 1
            self._live_hist.record_s(now - req.intended)
            if req.measured:
                w.ok += 1
                w.latency.record_s(now - req.intended)
            assert self._window is not None
            if self._window.measured(now):
                w.ok_in_window += 1
        else:
            self._live_err += 1
            if req.measured:
                w.errors[code] += 1

    # -- the end -----------------------------------------------------------
    def outstanding(self) -> int:
        return sum(len(c.pending) for c in self._conns if c.alive)

    async def _drain(self, *, deadline: float) -> None:
        while self.outstanding() and self._clock() < deadline:
            await asyncio.sleep(0.005)

    async def _close_all(self, readers: list[asyncio.Task[None]]) -> None:
        async def close(c: _Conn) -> None:
            try:
                await c.ws.close()
            except Exception:  # noqa: BLE001 - closing is best effort; the code is read below
                pass

        for c in self._conns:
            c.open_at_end = c.close_code is None
        await asyncio.gather(*(close(c) for c in self._conns))
        done, still = await asyncio.wait(readers, timeout=3.0) if readers else (set(), set())
        for t in still:
            t.cancel()
        for c in self._conns:
            if c.close_code is None:
                c.close_code = c.ws.close_code if c.ws.close_code is not None else 1006
            self.stats.close_codes[str(c.close_code)] += 1

    def _sweep(self) -> None:
        """Whatever is still unfinished counts as ``no_reply`` (connection was open) or ``connection_closed``."""
        for c in self._conns:
            for req in c.pending.values():
                if req.measured:
                    code = "no_reply" if c.open_at_end else "connection_closed"
                    self.stats.workloads[req.w].errors[code] += 1
            c.pending.clear()

    # -- progress ----------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Cumulative counts plus the latency histogram since the previous snapshot (then reset)."""
        hist, self._live_hist = self._live_hist, LatencyHistogram()
        return {
            "sent": self._live_sent,
            "ok": self._live_ok,
            "errors": self._live_err,
            "tokens": self._live_tokens,
            "outstanding": self.outstanding(),
            "hist": hist.encode(),
        }

    async def _ticker(self, progress: Progress) -> None:
        while True:
            await asyncio.sleep(1.0)
            progress(self.snapshot())
