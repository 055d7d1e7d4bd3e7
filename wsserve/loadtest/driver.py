"""The asyncio side of one client process: connections, reply handling, sending.

Shape, chosen so the client is not the bottleneck: each connection is a
:class:`~.transport.WsClient` whose replies are handled synchronously in its
``data_received`` callback (orjson, no task, no queue); in open loop one
scheduler task per process sends on time.  Never a task per request.

Closed loop: at the start each connection sends ``inflight`` requests; the
reply handler sends the next one on the same connection as soon as one
finishes, until the window ends.  Latency runs from the actual send.

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

from .config import WorkerConfig
from .probe import SUBPROTOCOL, auth_headers
from .schedule import OpenLoopSchedule, Window
from .stats import RunStats
from .transport import WsClient, open_client
from .workload import RequestFactory, WeightedCycle

__all__ = ["Progress", "Worker"]

#: called about once a second with a snapshot (see :meth:`Worker.snapshot`)
Progress = Callable[[dict[str, Any]], None]

_CONNECT_CONCURRENCY = 32
#: the open-loop scheduler never sleeps less than this: event-loop timers have millisecond resolution
#: (uvloop turns a shorter sleep into a busy spin), so sends due within it go out together, at most
#: this late - a lag the latency (measured from the intended time) includes and ``send_lag`` reports
_MIN_SLEEP_S = 0.001
#: ... and to balance that, requests due within this much of now are sent at once, early; an early
#: request's latency runs from its actual send (never from the later intended time), so sending early
#: cannot flatter the figures
_LOOKAHEAD_S = 0.001
_CLOSE_WAIT_S = 3.0
_TERMINAL_OK = ("result", "done")  # tuples: a server may send any JSON as "type"
_PARTIAL = ("token", "chunk")


class _Req:
    __slots__ = ("intended", "last", "measured", "w")

    def __init__(self, w: int, intended: float, measured: bool) -> None:
        self.w = w
        self.intended = intended
        self.measured = measured
        self.last: float | None = None


class _Conn:
    __slots__ = ("client", "close_code", "next_id", "open_at_end", "pending")

    def __init__(self) -> None:
        self.client: WsClient | None = None
        self.pending: dict[Any, _Req] = {}
        self.next_id = 0
        self.close_code: int | None = None
        self.open_at_end = False

    @property
    def alive(self) -> bool:
        return self.close_code is None and self.client is not None and self.client.is_open


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
            RequestFactory(
                spec,
                input_width=models[spec.model].input_width if spec.model in models else 1,
                input_shape=models[spec.model].input_shape if spec.model in models else None,
                seed=load.seed * 1009 + cfg.index,
            )
            for spec in load.specs
        ]
        self._cycle = WeightedCycle([s.weight for s in load.specs])
        self.stats = RunStats.for_labels([(s.label, s.kind) for s in load.specs])
        self._conns: list[_Conn] = []
        self._window: Window | None = None
        #: set when the server has closed every connection: a closed-loop run stops waiting
        self._all_closed = asyncio.Event()
        self._late_s = load.late_ms / 1000.0
        # live counters for the progress line (all requests, warm-up included)
        self._live_sent = 0
        self._live_ok = 0
        self._live_err = 0
        self._live_tokens = 0
        self._live_lat_sum = 0.0
        self._live_lat_n = 0
        self._live_lat_max = 0.0
        self._sending = False
        self._slot_freed: asyncio.Event | None = None
        self._cpu_mark: tuple[float, float] | None = None
        self._want_slot = False

    # -- set-up ------------------------------------------------------------
    async def connect(self) -> tuple[int, list[str]]:
        """Open this process's connections; returns (opened, failure messages)."""
        load = self._cfg.load
        sem = asyncio.Semaphore(_CONNECT_CONCURRENCY)
        failures: list[str] = []

        async def one() -> None:
            conn = _Conn()
            async with sem:
                try:
                    conn.client = await open_client(
                        load.url,
                        on_message=lambda data: self._on_message(conn, data),
                        on_close=lambda code: self._on_close(conn, code),
                        subprotocols=[SUBPROTOCOL],
                        headers=auth_headers(load.api_key),
                        open_timeout_s=load.open_timeout_s,
                    )
                except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal alone
                    failures.append(f"{type(exc).__name__}: {exc}")
                    return
            self._conns.append(conn)

        await asyncio.gather(*(one() for _ in range(self._cfg.connections)))
        self.stats.connections = len(self._conns)
        self.stats.connect_failures = len(failures)
        return len(self._conns), failures

    # -- the run -----------------------------------------------------------
    async def run(self, *, start: float, progress: Progress | None = None) -> RunStats:
        """Load from ``start`` (monotonic s) through warm-up, measurement and grace; close; return stats."""
        load = self._cfg.load
        window = self._window = Window(start=start, warmup_s=load.warmup_s, duration_s=load.duration_s)
        self._slot_freed = asyncio.Event()
        ticker = asyncio.create_task(self._ticker(progress, start)) if progress is not None else None
        cpu = asyncio.create_task(self._cpu_meter(window))
        try:
            await self._sleep_until(start)
            self._sending = True
            if self._closed_loop:
                self._closed_start()
                await self._sleep_until(window.end, unless=self._all_closed)
            else:
                await self._open_loop(window)
            self._cpu_done()
            self._sending = False
            await self._drain(deadline=window.end + load.grace_s)
        finally:
            self._sending = False
            if ticker is not None:
                ticker.cancel()
            cpu.cancel()
            await self._close_all()
        self._sweep()
        self.stats.ok_per_proc = [sum(w.ok for w in self.stats.workloads)]
        return self.stats

    async def _sleep_until(self, t: float, *, unless: asyncio.Event | None = None) -> None:
        """Sleep until ``t`` on the clock, or until ``unless`` is set."""
        while (left := t - self._clock()) > 0:
            if unless is None:
                await asyncio.sleep(left)
                continue
            try:
                async with asyncio.timeout(left):
                    await unless.wait()
                return
            except TimeoutError:
                pass

    def _closed_start(self) -> None:
        k = self._cfg.inflight
        for conn in self._conns:
            for _ in range(k):
                if not conn.alive:
                    break
                now = self._clock()
                self._send(conn, now, now)

    async def _open_loop(self, window: Window) -> None:
        load = self._cfg.load
        assert load.rate_per_s is not None and self._slot_freed is not None
        sched = OpenLoopSchedule(
            rate_per_s=load.rate_per_s, start=window.start, end=window.end, first=self._cfg.index, stride=load.procs
        )
        cap = self._cfg.inflight
        conns = self._conns
        n = len(conns)
        backlog: deque[float] = deque()
        stats = self.stats
        late_s = self._late_s
        clock = self._clock
        rr = 0
        give_up = window.end + load.grace_s
        while True:
            backlog.extend(sched.due(clock() + _LOOKAHEAD_S))
            while backlog:
                conn = None
                for _ in range(n):
                    c = conns[rr]
                    rr = rr + 1 if rr + 1 < n else 0
                    if len(c.pending) < cap and c.alive:
                        conn = c
                        break
                if conn is None:
                    break
                intended = backlog.popleft()
                now = clock()
                if window.measured(intended):
                    lag = now - intended
                    stats.send_lag.record_s(lag if lag > 0.0 else 0.0)
                    if lag > late_s:
                        stats.late_sends += 1
                self._send(conn, intended, now)
            if not any(c.alive for c in conns):
                self._fail_backlog(backlog, "connection_closed")
                return
            nxt = sched.next_time
            if nxt == math.inf and not backlog:
                return
            if clock() >= give_up:  # every connection stayed full through the grace period
                self._fail_backlog(backlog, "not_sent")
                return
            timeout = max(_MIN_SLEEP_S, min(nxt, give_up) - clock())
            if backlog:
                self._slot_freed.clear()
                self._want_slot = True
                try:
                    await asyncio.wait_for(self._slot_freed.wait(), timeout)
                except TimeoutError:
                    pass
                self._want_slot = False
            else:
                await asyncio.sleep(timeout)

    def _fail_backlog(self, backlog: deque[float], code: str) -> None:
        """Requests due but never sent (see :data:`~.stats.CLIENT_ERROR_CODES`) count as errors ``code``."""
        window = self._window
        assert window is not None
        while backlog:
            if window.measured(backlog.popleft()):
                w = self.stats.workloads[self._cycle.next()]
                w.sent += 1
                w.errors[code] += 1

    def _send(self, conn: _Conn, intended: float, now: float) -> None:
        """Send one request; its latency will run from ``min(intended, now)`` (late: intended; early: actual)."""
        i = self._cycle.next()
        rid = conn.next_id
        conn.next_id = rid + 1
        measured = self._window.measured(intended)  # type: ignore[union-attr]
        factory = self._factories[i]
        data = factory.build(rid)
        try:
            if factory.binary:
                conn.client.send_binary(data)  # type: ignore[union-attr]
            else:
                conn.client.send(data)  # type: ignore[union-attr]
        except ConnectionError:  # the connection is closing: the request counts, as failed
            if measured:
                self.stats.workloads[i].sent += 1
                self.stats.workloads[i].errors["connection_closed"] += 1
            return
        conn.pending[rid] = _Req(i, intended if intended < now else now, measured)
        if measured:
            self.stats.workloads[i].sent += 1
        self._live_sent += 1

    # -- replies (synchronous, from data_received) ------------------------
    def _on_message(self, conn: _Conn, data: bytes) -> None:
        now = self._clock()
        try:
            frame = orjson.loads(data)
            rid = frame.get("id")
        except (orjson.JSONDecodeError, AttributeError):
            return  # not ours to judge; the request it might answer ends as no_reply
        req = conn.pending.get(rid) if rid is not None else None
        if req is None:
            return  # hello, draining, pong, or a frame for an unknown id
        code: str | None
        if self._echo:
            code = None
        else:
            kind = frame.get("type")
            if kind in _PARTIAL:
                self._partial(req, now)
                return
            if kind in _TERMINAL_OK:
                code = None
            elif kind == "error":
                code = str(frame.get("code") or "unknown")
            else:
                return
        del conn.pending[rid]
        self._finish(req, now, code)
        if self._closed_loop:
            if self._sending and now < self._window.end:  # type: ignore[union-attr]
                self._send(conn, now, now)
        elif self._want_slot:
            self._slot_freed.set()  # type: ignore[union-attr]

    def _partial(self, req: _Req, now: float) -> None:
        w = self.stats.workloads[req.w]
        if self._window.measured(now):  # type: ignore[union-attr]
            w.tokens += 1
            self._live_tokens += 1
        if req.measured:
            if req.last is None:
                w.first.record_s(now - req.intended)
            else:
                w.gap.record_s(now - req.last)
        req.last = now

    def _finish(self, req: _Req, now: float, code: str | None) -> None:
        w = self.stats.workloads[req.w]
        if code is None:
            self._live_ok += 1
            lat = now - req.intended
            self._live_lat_sum += lat
            self._live_lat_n += 1
            if lat > self._live_lat_max:
                self._live_lat_max = lat
            if req.measured:
                w.ok += 1
                w.latency.record_s(lat)
            if self._window.measured(now):  # type: ignore[union-attr]
                w.ok_in_window += 1
        else:
            self._live_err += 1
            if req.measured:
                w.errors[code] += 1

    def _on_close(self, conn: _Conn, code: int) -> None:
        if conn.close_code is None:
            conn.close_code = code
            if not any(c.alive for c in self._conns):
                self._all_closed.set()
        if self._want_slot and self._slot_freed is not None:
            self._slot_freed.set()

    # -- the end -----------------------------------------------------------
    def outstanding(self) -> int:
        return sum(len(c.pending) for c in self._conns if c.alive)

    async def _drain(self, *, deadline: float) -> None:
        while self.outstanding() and self._clock() < deadline:
            await asyncio.sleep(0.005)

    async def _close_all(self) -> None:
        clients = [c.client for c in self._conns if c.client is not None]
        for c in self._conns:
            c.open_at_end = c.alive
        self.stats.closed_early = sum(not c.open_at_end for c in self._conns)
        for client in clients:
            client.close(1000)
        if clients:
            await asyncio.wait([client.closed for client in clients], timeout=_CLOSE_WAIT_S)
        for c in self._conns:
            if c.close_code is None:
                c.close_code = c.client.close_code if c.client is not None and c.client.close_code is not None else 1006
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
        """Cumulative counts, plus latency sum/count/max of the successes since the previous snapshot (then reset)."""
        snap = {
            "sent": self._live_sent,
            "ok": self._live_ok,
            "errors": self._live_err,
            "tokens": self._live_tokens,
            "outstanding": self.outstanding(),
            "lat_sum_s": self._live_lat_sum,
            "lat_n": self._live_lat_n,
            "lat_max_s": self._live_lat_max,
        }
        self._live_lat_sum, self._live_lat_n, self._live_lat_max = 0.0, 0, 0.0
        return snap

    async def _cpu_meter(self, window: Window) -> None:
        """Marks CPU time at the start of the measurement; :meth:`_cpu_done` closes the interval."""
        await self._sleep_until(window.measure_start)
        self._cpu_mark = (self._clock(), time.process_time())

    def _cpu_done(self) -> None:
        """Cores this process kept busy from the measurement start until now (is the client the bottleneck?)."""
        if self._cpu_mark is not None:
            t0, c0 = self._cpu_mark
            wall = self._clock() - t0
            if wall > 0:
                self.stats.cpu_cores_per_proc = [round((time.process_time() - c0) / wall, 3)]

    async def _ticker(self, progress: Progress, start: float) -> None:
        """Snapshot at ``start + k - 0.02`` s so the parent, printing at ``start + k``, has every process's."""
        k = 1
        while True:
            await self._sleep_until(start + k - 0.02)
            progress(self.snapshot())
            k += 1
