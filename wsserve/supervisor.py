"""``wsserve serve --workers N``: N server processes sharing one port, under one supervisor.

The supervisor:

1. trains (or loads) the default models once and writes the built-in model
   repository (workers only load it: they never train);
2. picks the port (``--port 0``: the kernel's free port, reserved by a bound
   socket until the workers listen) and starts N worker processes that each
   listen on it with ``SO_REUSEPORT``, so the kernel spreads new connections
   over them; ``--grpc-port`` likewise (``0``: one free port, logged, that every
   worker's gRPC server binds with ``SO_REUSEPORT``: the kernel spreads new
   HTTP/2 connections, so all the RPCs of one gRPC channel go to one worker);
3. prints the ``ws://HOST:PORT`` ready line once every worker is ready;
4. restarts a worker that dies (with a log line naming its exit status); one
   that keeps dying within 30 s of its start is restarted with a doubling
   delay (at once, then 0.5 s, 1 s, ... up to 30 s: :func:`restart_delay`);
   a worker that dies before it ever said it is ready (its ``on_ready`` message
   on the pipe to the supervisor) failed to boot: after
   :data:`MAX_BOOT_FAILURES` such exits in a row of one worker index, the
   supervisor logs ``worker N (pid P) failed to boot K times in a row``, stops the
   other workers as SIGTERM does and exits 1 (gunicorn's arbiter halts on its
   ``WORKER_BOOT_ERROR`` likewise), so systemd or Kubernetes see the failure
   instead of an endless crash loop.  A worker that dies *after* it was ready
   is restarted as before, and its readiness resets its count.  While the
   server starts, a worker that dies before its ready message fails the start
   at once (exit 1).  A worker that *hangs* while starting (no ready message, no exit: a
   backend deadlocked holding the GIL, a read that never returns on its event loop, where
   ``--model-load-timeout-s`` cannot reach) is stopped once ``--worker-boot-timeout-s`` has passed
   since its start: SIGTERM, then SIGKILL :data:`BOOT_KILL_GRACE_S` later if it is still there
   (gunicorn's ``--timeout``, Kubernetes' startupProbe), with a log line naming the worker and the
   timeout; its death is a boot failure like any other (while the server starts: it fails the
   start).  The decisions, timeouts included, are :class:`RestartPolicy`'s (no I/O, ``now`` given);
5. on SIGTERM/SIGINT forwards SIGTERM to every worker — each drains as a single
   process does, within ``--drain-timeout-s`` — and exits 0 when they are done
   (a worker still alive a second (:data:`KILL_MARGIN_S`) after the drain timeout plus the time a
   server process may take to exit after its drain deadline is killed); a
   second signal kills the workers and exits 1 at once;
6. an error in its own loop (a bug; a process or file it cannot open: ``EMFILE``) is logged and
   handled as a failed start: the workers are drained as on SIGTERM and it exits 1, never leaving
   them unsupervised (a metrics file it cannot write, a full disk, is only logged);
7. a supervisor killed outright (SIGKILL) cannot signal its workers: on Linux
   each worker asks the kernel for SIGTERM when its parent dies
   (``PR_SET_PDEATHSIG``), so they drain and exit instead of staying behind
   as orphans that still serve the port.

Metrics: every worker writes a snapshot of its metrics to a shared temporary
directory twice a second and ``/metrics`` on any worker merges its own live
values with the other workers' snapshots (counters and histograms summed,
gauges labelled ``worker``) — the approach of prometheus-client's multiprocess
mode, with plain per-process counters on the hot path.  A dead worker's
counters keep counting in the totals (its gauges are dropped), as in that mode.
The supervisor serves nothing but writes its own figures there too
(``supervisor.json``, :func:`~wsserve.metrics.supervisor_snapshot`), so ``/metrics``
shows the restarts as Kubernetes shows a pod's:

- ``wsserve_worker_restarts_total{worker}`` — restarts the supervisor made of each
  worker index (``kube_pod_container_status_restarts_total``); 0 from the start for
  every index, so ``increase()`` sees the first restart;
- ``wsserve_worker_restart_backoff_seconds{worker}`` — the delay of a dead worker's
  pending restart while it waits in backoff, 0 when it runs (or is restarted at once).
  Kubernetes says ``CrashLoopBackOff`` with a 0/1 gauge
  (``kube_pod_container_status_waiting_reason``); the delay says as much (> 0: waiting,
  not serving) and also how deep the crash loop is (it doubles with each quick death, up
  to 30 s).  It is the delay, not the time left, so it holds between the supervisor's
  writes and the file is only rewritten when something changes;
- ``wsserve_worker_boot_timeouts_total{worker}`` — workers the supervisor stopped because they
  were not ready within ``--worker-boot-timeout-s`` (each also counts as a boot failure).

Both are absent without ``--workers``: one process has no supervisor, and whatever
restarts it (systemd, Kubernetes) counts its restarts.  The file is written atomically
(temp file + rename), with one entry per worker index, so it does not grow with restarts.
Hot reload (``--reload``) runs in every worker: each watches the repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._version import __version__
from .config import ServerConfig
from .metrics import fold_dead_snapshot, supervisor_snapshot
from .server import exit_after_drain_s

__all__ = ["GiveUp", "Kill", "Restart", "RestartPolicy", "Terminate", "restart_delay", "run_supervisor"]

log = logging.getLogger("wsserve.supervisor")

#: How long a draining worker is given, past the drain timeout and the time a server process may take
#: to exit after its drain deadline (:func:`~wsserve.server.exit_after_drain_s`: closes, model code,
#: stuck threads, the last spans' export), before it is killed: one on that path is never killed first.
KILL_MARGIN_S = 1.0
#: A worker that dies within this long of its start died "quickly": its restarts back off.
STABLE_S = 30.0
#: Backoff of the restarts of a worker that keeps dying quickly: doubling from the base, capped.
RESTART_BASE_S = 0.5
RESTART_MAX_S = 30.0
#: Exits in a row of one worker index before it ever was ready after which the supervisor gives up.
MAX_BOOT_FAILURES = 5
#: How long a worker stopped for its boot timeout (SIGTERM) may take to exit before it is killed (SIGKILL).
#: A worker stopped while starting abandons its loads and exits within ~2 s (its stuck threads' grace).
BOOT_KILL_GRACE_S = 5.0


def restart_delay(quick_deaths: int) -> float:
    """Seconds to wait before restarting a worker after its ``quick_deaths``-th death in a row
    within :data:`STABLE_S` of its start: the first is restarted at once, then 0.5 s, 1 s, 2 s, ...
    up to :data:`RESTART_MAX_S`, so a worker that cannot run does not spin the CPU."""
    if quick_deaths <= 1:
        return 0.0
    return min(RESTART_MAX_S, RESTART_BASE_S * 2.0 ** (quick_deaths - 2))


@dataclasses.dataclass(frozen=True)
class Restart:
    """:meth:`RestartPolicy.exited`'s answer: restart the worker in ``delay_s`` seconds.
    ``boot_failures``: its exits in a row before it was ready, this one included (0: it was ready);
    ``boot_timed_out``: this start overran the boot timeout (:class:`Terminate` was given for it)."""

    delay_s: float
    boot_failures: int
    boot_timed_out: bool = False


@dataclasses.dataclass(frozen=True)
class GiveUp:
    """:meth:`RestartPolicy.exited`'s answer: the worker failed to boot ``boot_failures`` times
    in a row; stop the server and exit non-zero.  ``boot_timed_out``: the last start overran the
    boot timeout."""

    boot_failures: int
    boot_timed_out: bool = False


@dataclasses.dataclass(frozen=True)
class Terminate:
    """:meth:`RestartPolicy.boot_overdue`'s answer: worker ``index`` was not ready within
    ``timeout_s`` of its start; send it SIGTERM."""

    index: int
    timeout_s: float


@dataclasses.dataclass(frozen=True)
class Kill:
    """:meth:`RestartPolicy.boot_overdue`'s answer: worker ``index`` is still alive ``grace_s``
    after its :class:`Terminate`; send it SIGKILL."""

    index: int
    grace_s: float


@dataclasses.dataclass
class _Slot:
    """One worker index's history, as :class:`RestartPolicy` keeps it."""

    started_at: float
    ready: bool = False
    quick_deaths: int = 0  # deaths in a row within stable_s of the start
    boot_failures: int = 0  # deaths in a row before the ready message
    timed_out_at: float | None = None  # when this start's Terminate was given
    killed: bool = False  # this start's Kill was given


class RestartPolicy:
    """What the supervisor does when a worker exits; no processes, no clock (``now`` is given).

    Call order per worker index: :meth:`started` at each start, :meth:`ready` when its ready
    message arrives (at most once per start), :meth:`boot_overdue` whenever it is found alive and
    not ready, :meth:`exited` when it is found dead; then :meth:`started` again if the answer was a
    :class:`Restart`.  Any of them but :meth:`started` for an index never started raises ``KeyError``.

    ``boot_timeout_s``: a start not ready that long after :meth:`started` is overdue (None: never);
    ``kill_grace_s``: how long after its :class:`Terminate` it gets :class:`Kill`."""

    def __init__(self, *, max_boot_failures: int = MAX_BOOT_FAILURES, stable_s: float = STABLE_S,
                 boot_timeout_s: float | None = None, kill_grace_s: float = BOOT_KILL_GRACE_S) -> None:
        if max_boot_failures < 1:
            raise ValueError(f"max_boot_failures must be >= 1, got {max_boot_failures}")
        if boot_timeout_s is not None and not boot_timeout_s > 0:
            raise ValueError(f"boot_timeout_s must be > 0 or None, got {boot_timeout_s}")
        if not kill_grace_s >= 0:
            raise ValueError(f"kill_grace_s must be >= 0, got {kill_grace_s}")
        self.max_boot_failures = max_boot_failures
        self.stable_s = stable_s
        self.boot_timeout_s = boot_timeout_s
        self.kill_grace_s = kill_grace_s
        self._slots: dict[int, _Slot] = {}

    def started(self, index: int, now: float) -> None:
        """Worker ``index`` was (re)started at ``now``; it is not ready yet."""
        slot = self._slots.get(index)
        if slot is None:
            self._slots[index] = _Slot(started_at=now)
        else:
            slot.started_at, slot.ready, slot.timed_out_at, slot.killed = now, False, None, False

    def ready(self, index: int) -> None:
        """Worker ``index`` said it is ready: it booted, so its boot-failure count starts again.
        A ready message after the start overran its boot timeout is ignored: that worker is being
        stopped, and its death is a boot failure (a worker always a little slower than the
        timeout would otherwise reset its count at each start and be restarted forever)."""
        slot = self._slots[index]
        if slot.timed_out_at is not None:
            return
        slot.ready, slot.boot_failures = True, 0

    def boot_overdue(self, index: int, now: float) -> Terminate | Kill | None:
        """What to do at ``now`` about worker ``index``, alive and not ready: :class:`Terminate` once
        ``boot_timeout_s`` has passed since its start, :class:`Kill` once ``kill_grace_s`` has passed
        since that; each is answered once per start, None otherwise (and always when it is ready or
        there is no boot timeout)."""
        slot = self._slots[index]
        if self.boot_timeout_s is None or slot.ready or slot.killed:
            return None
        if slot.timed_out_at is None:
            if now - slot.started_at < self.boot_timeout_s:
                return None
            slot.timed_out_at = now
            return Terminate(index, self.boot_timeout_s)
        if now - slot.timed_out_at < self.kill_grace_s:
            return None
        slot.killed = True
        return Kill(index, self.kill_grace_s)

    def boot_deadline(self, index: int) -> float | None:
        """The time at which :meth:`boot_overdue` will next answer for worker ``index`` (None: it
        will not: ready, no boot timeout, or already killed), so the caller knows when to look."""
        slot = self._slots[index]
        if self.boot_timeout_s is None or slot.ready or slot.killed:
            return None
        if slot.timed_out_at is None:
            return slot.started_at + self.boot_timeout_s
        return slot.timed_out_at + self.kill_grace_s

    def boot_timed_out(self, index: int) -> bool:
        """Whether worker ``index``'s current start overran its boot timeout."""
        return self._slots[index].timed_out_at is not None

    def is_ready(self, index: int) -> bool:
        """Whether worker ``index`` said it is ready since its last start."""
        slot = self._slots.get(index)
        return slot is not None and slot.ready

    def exited(self, index: int, now: float) -> Restart | GiveUp:
        """Worker ``index`` was found dead at ``now``: restart it (after a delay that doubles while
        it keeps dying within ``stable_s`` of its start, :func:`restart_delay`), or give up when it
        died before it was ready ``max_boot_failures`` times in a row (a death after its boot
        timeout is one of those, however it ended)."""
        slot = self._slots[index]
        slot.quick_deaths = slot.quick_deaths + 1 if now - slot.started_at < self.stable_s else 0
        timed_out = slot.timed_out_at is not None
        if not slot.ready:
            slot.boot_failures += 1
            if slot.boot_failures >= self.max_boot_failures:
                return GiveUp(slot.boot_failures, timed_out)
        return Restart(restart_delay(slot.quick_deaths), slot.boot_failures, timed_out)


def _exit_description(exitcode: int | None) -> str:
    """A worker's end as a log says it: ``status 3``, ``signal SIGKILL``."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"status {exitcode}"


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel send this process SIGTERM (a drain) when the supervisor dies,
    even by SIGKILL, so that no worker is left behind serving the port as an orphan."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot ask to be stopped with the supervisor (prctl: errno %d)", ctypes.get_errno())
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(config: ServerConfig, builtin: str | None, index: int, metrics_dir: str, ready: Any,
                 log_level: int, secrets: frozenset[str], parent_pid: int) -> None:
    """One worker process: serve until SIGTERM (also sent when the supervisor dies), drain, exit 0."""
    from .server import StartupInterrupted, stop_on_signal_while_starting

    try:
        with stop_on_signal_while_starting():
            _die_with_parent(parent_pid)
            status = _serve_worker(config, builtin, index, metrics_dir, ready, log_level, secrets)
    except StartupInterrupted as exc:
        log.info("received %s while starting: stopped", exc.name)
        status = 0
    from .server import exit_past_stuck_threads

    exit_past_stuck_threads(status)
    sys.exit(status)


def _serve_worker(config: ServerConfig, builtin: str | None, index: int, metrics_dir: str, ready: Any,
                  log_level: int, secrets: frozenset[str]) -> int:
    """The worker's server, from its start to its exit status."""
    from .logs import configure_logging
    from .server import Server, _limit_blas_threads, _loop_factory, serve_until_signal

    configure_logging(logging.getLevelName(log_level), secrets=secrets, prefix=f"worker {index}", fmt=config.log_format)
    _limit_blas_threads()

    async def main() -> int:
        server = Server(config, builtin_repository=Path(builtin) if builtin else None, worker=index,
                        metrics_dir=Path(metrics_dir))
        return await serve_until_signal(server, on_ready=lambda: ready.send(("ready", index, os.getpid())),
                                        exit_on_second_signal=False)

    with asyncio.Runner(loop_factory=_loop_factory(config.loop)) as runner:
        return runner.run(main())


class _Workers:
    """The supervisor's view of its worker processes."""

    def __init__(self, config: ServerConfig, builtin: Path | None, metrics_dir: Path, log_level: int,
                 secrets: frozenset[str]) -> None:
        self.config = config
        self.builtin = str(builtin) if builtin else None
        self.metrics_dir = metrics_dir
        self.log_level = log_level
        self.secrets = secrets
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, Any] = {}
        self.pipes: dict[int, Any] = {}
        self.stopping = False
        #: each worker's starts, readiness and deaths, and what to do when one dies
        self.policy = RestartPolicy(boot_timeout_s=config.worker_boot_timeout_s)
        #: loop time at which a dead worker is due to be restarted
        self.restart_at: dict[int, float] = {}
        #: the delay of each pending restart (``wsserve_worker_restart_backoff_seconds``)
        self.backoff_s: dict[int, float] = {}
        #: restarts made of each worker index (``wsserve_worker_restarts_total``)
        self.restarts: dict[int, int] = dict.fromkeys(range(config.workers), 0)
        #: workers stopped for their boot timeout, per index (``wsserve_worker_boot_timeouts_total``)
        self.boot_timeouts: dict[int, int] = dict.fromkeys(range(config.workers), 0)

    def start(self, index: int) -> None:
        parent, child = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=_worker_main, name=f"wsserve-worker-{index}", daemon=False,
            args=(self.config, self.builtin, index, str(self.metrics_dir), child, self.log_level, self.secrets,
                  os.getpid()),
        )
        proc.start()
        self.policy.started(index, asyncio.get_running_loop().time())
        child.close()
        log.info("worker %d started (pid %d)", index, proc.pid)
        self.procs[index] = proc
        old = self.pipes.get(index)
        if old is not None:  # the previous worker's end
            old.close()
        self.pipes[index] = parent

    def poll_ready(self, index: int) -> bool:
        """Read worker ``index``'s ready message if it has come (then tell the policy); return
        whether the worker has said it is ready since its start.  A pipe closed before the
        message (the worker is dying) reads as not ready: its death is seen by ``is_alive``."""
        if self.policy.is_ready(index):
            return True
        pipe = self.pipes[index]
        if not pipe.poll():
            return False
        try:
            pipe.recv()
        except EOFError:
            return False
        self.policy.ready(index)
        return self.policy.is_ready(index)  # not after its boot timeout: it is being stopped

    def check_boot(self, index: int, now: float) -> bool:
        """Act on the policy's boot-timeout answer for live worker ``index`` at ``now`` (SIGTERM,
        or SIGKILL after the grace), with a log line; return whether the metrics changed."""
        action = self.policy.boot_overdue(index, now)
        if action is None:
            return False
        pid = self.procs[index].pid
        if isinstance(action, Terminate):
            log.error("worker %d (pid %d) was not ready within %g s of its start (--worker-boot-timeout-s): "
                      "stopping it (SIGTERM, SIGKILL in %g s)", index, pid, action.timeout_s,
                      self.policy.kill_grace_s)
            self.boot_timeouts[index] = self.boot_timeouts.get(index, 0) + 1
            self.signal(index, signal.SIGTERM)
            return True
        log.error("worker %d (pid %d) still running %g s after its SIGTERM (boot timeout): killing it", index, pid,
                  action.grace_s)
        self.signal(index, signal.SIGKILL)
        return False

    def boot_wait(self, now: float) -> float | None:
        """Seconds from ``now`` until the policy's next boot-timeout answer for a live worker (None: none)."""
        due = [self.policy.boot_deadline(i) for i in self.procs if i not in self.restart_at]
        times = [t - now for t in due if t is not None]
        return min(times) if times else None

    def signal(self, index: int, sig: int) -> None:
        """Send ``sig`` to worker ``index`` if it still runs."""
        proc = self.procs[index]
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    def schedule_restart(self, index: int, at: float, delay: float) -> None:
        """Restart dead worker ``index`` at loop time ``at``, ``delay`` s after its death."""
        self.restart_at[index] = at
        self.backoff_s[index] = delay

    def restart(self, index: int) -> None:
        """Start dead worker ``index`` again (its restart was due) and count the restart."""
        del self.restart_at[index]
        self.backoff_s.pop(index, None)
        self.start(index)
        self.restarts[index] = self.restarts.get(index, 0) + 1

    def write_metrics(self) -> None:
        """Write the supervisor's figures for the workers' ``/metrics`` (atomically: temp
        file + rename, as the workers write theirs); call it after each change.  A failed
        write (a full disk) is logged, not raised: the workers matter more than the figures."""
        backoff = {i: self.backoff_s.get(i, 0.0) for i in self.restarts}
        path = self.metrics_dir / "supervisor.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(supervisor_snapshot(self.restarts, backoff, pid=os.getpid(),
                                                          boot_timeouts=self.boot_timeouts)))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write the restart metrics: %s", exc)

    def retire_metrics(self, index: int) -> None:
        """Keep a dead worker's counters in the totals (folded into the one ``retired.json``
        of every dead worker, so the directory does not grow with each restart); drop its
        gauges and its snapshot.  A failed write (a full disk) is logged, not raised: the
        restart matters more than the counts."""
        path = self.metrics_dir / f"worker-{index}.json"
        try:
            snap = json.loads(path.read_text())
        except (OSError, ValueError):
            snap = None
        if isinstance(snap, dict):
            retired_path = self.metrics_dir / "retired.json"
            try:
                retired = json.loads(retired_path.read_text())
            except (OSError, ValueError):
                retired = None
            tmp = retired_path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(fold_dead_snapshot(retired, snap)))
                os.replace(tmp, retired_path)
            except OSError as exc:  # a full disk: its counts are lost, as write_metrics' figures would be
                log.warning("cannot keep the counts of dead worker %d in the metrics: %s", index, exc)
        path.unlink(missing_ok=True)
        for leftover in self.metrics_dir.glob(f"worker-{index}.*.tmp"):  # killed between write and rename
            leftover.unlink(missing_ok=True)

    def signal_all(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket holding the port until the workers listen.

    Raises ``OSError`` (``EADDRINUSE``) if another process listens on the port, even with
    SO_REUSEPORT: the kernel would let this one share the port with, say, another
    ``wsserve --workers`` of the same user, splitting the traffic between two servers.  The
    port is first bound without SO_REUSEPORT, which any listener refuses, then released and
    bound again with it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _reserve_ports(config: ServerConfig) -> tuple[ServerConfig, list[socket.socket]]:
    """Reserve the port and, with ``--grpc-port``, the gRPC port (:func:`_reserve_port`); return
    ``config`` with both concrete (a ``0`` resolved to the kernel's free port, which every worker
    then binds) and the reserving sockets, to close once the workers listen.

    Raises :class:`~wsserve.server.ListenError` when a port is taken (its message names the gRPC
    port when that is the one), with nothing left reserved.  A
    fixed port is reserved before a ``0`` one, so the free port the kernel picks is never the
    other fixed one (two fixed ones are different: :meth:`ServerConfig.validate`)."""
    from .server import ListenError

    ports = {"port": config.port}
    if config.grpc_port is not None:
        ports["grpc_port"] = config.grpc_port
    reserved: list[socket.socket] = []
    try:
        for name in sorted(ports, key=lambda n: ports[n] == 0):  # fixed ports first
            try:
                sock = _reserve_port(config.host, ports[name])
            except OSError as exc:
                what = exc.strerror or str(exc)
                raise ListenError(exc.errno, what if name == "port" else f"gRPC port {ports[name]}: {what}") from exc
            reserved.append(sock)
            ports[name] = sock.getsockname()[1]
    except BaseException:
        for sock in reserved:
            sock.close()
        raise
    return dataclasses.replace(config, **ports), reserved


def _release(reserved: list[socket.socket]) -> None:
    for sock in reserved:
        sock.close()


async def _supervise(config: ServerConfig, builtin: Path | None, log_level: int, secrets: frozenset[str]) -> int:
    loop = asyncio.get_running_loop()
    config, reserved = _reserve_ports(config)
    port = config.port
    if config.grpc_port is not None:
        log.info("gRPC (Open Inference Protocol) on %s:%d, shared by the %d workers", config.host, config.grpc_port,
                 config.workers)
    with tempfile.TemporaryDirectory(prefix="wsserve-metrics-") as metrics_dir:
        workers = _Workers(config, builtin, Path(metrics_dir), log_level, secrets)
        stop = asyncio.Event()
        signals = 0
        started = False  # every worker was ready (the ready line is out)

        def on_signal(signum: int) -> None:
            nonlocal signals, started
            signals += 1
            if signals == 1:
                log.info("received %s%s: %s %d workers", signal.Signals(signum).name,
                         "" if started else " while starting", "draining" if started else "stopping", len(workers.procs))
                workers.stopping = True
                workers.signal_all(signal.SIGTERM)
                stop.set()
            else:
                log.warning("second signal: killing the workers")
                workers.signal_all(signal.SIGKILL)
                sys.stdout.flush()
                os._exit(1)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        failed = False  # the exit status is 1: a worker failed the start, or failed to boot too often
        try:
            workers.write_metrics()  # every worker's restart count is 0 from its first scrape
            for i in range(config.workers):
                workers.start(i)
            # Wait for every worker's ready message (a worker that dies first fails the start).
            pending = set(range(config.workers))
            while pending and not stop.is_set():
                for i in list(pending):
                    proc = workers.procs[i]
                    alive = proc.is_alive()
                    if workers.poll_ready(i):  # after the liveness check, as below: ready, even if it died since
                        pending.discard(i)
                        continue
                    if not alive:
                        why = (f" (it was not ready within {workers.policy.boot_timeout_s:g} s: --worker-boot-timeout-s)"
                               if workers.policy.boot_timed_out(i) else "")
                        log.error("worker %d exited with status %s while starting%s", i, proc.exitcode, why)
                        failed = workers.stopping = True  # the others are stopped and waited for, as on SIGTERM
                        workers.signal_all(signal.SIGTERM)
                        stop.set()
                        break
                    if workers.check_boot(i, loop.time()):
                        workers.write_metrics()
                await asyncio.sleep(0.02)
            _release(reserved)
            if not stop.is_set():
                started = True
                print(f"wsserve {__version__} ready on {config.url(port)} ({config.workers} workers)", flush=True)
            # Watch the workers: restart one that dies (backing off if it keeps dying), until a signal
            # asks them to stop or one fails to boot MAX_BOOT_FAILURES times in a row.
            while not stop.is_set():
                now = loop.time()
                changed = False
                for i, proc in list(workers.procs.items()):
                    if workers.stopping:
                        break
                    if i in workers.restart_at:
                        if workers.restart_at[i] <= now:
                            workers.restart(i)
                            changed = True
                        continue
                    alive = proc.is_alive()
                    # read after the liveness check: a worker found dead sent its ready message (if it did)
                    # before it died, so it is in the pipe now, and that worker was no boot failure
                    workers.poll_ready(i)
                    if alive:
                        changed |= workers.check_boot(i, now)
                        continue
                    workers.retire_metrics(i)
                    changed = True
                    decision = workers.policy.exited(i, now)
                    hung = (f", not ready within {workers.policy.boot_timeout_s:g} s (--worker-boot-timeout-s)"
                            if decision.boot_timed_out else "")
                    if isinstance(decision, GiveUp):
                        log.error("worker %d (pid %d) failed to boot %d times in a row (last exit: %s%s): stopping the "
                                  "server", i, proc.pid, decision.boot_failures, _exit_description(proc.exitcode), hung)
                        failed = workers.stopping = True
                        workers.signal_all(signal.SIGTERM)
                        stop.set()
                        break
                    delay = decision.delay_s
                    not_ready = (f"not ready within {workers.policy.boot_timeout_s:g} s, --worker-boot-timeout-s"
                                 if decision.boot_timed_out else "not ready yet")
                    booting = (f" (it was {not_ready}: boot failure {decision.boot_failures} of "
                               f"{workers.policy.max_boot_failures} in a row)" if decision.boot_failures else "")
                    log.error("worker %d (pid %d) exited with status %s: restarting it %s%s", i, proc.pid,
                              proc.exitcode, f"in {delay:.1f} s" if delay else "now", booting)
                    workers.schedule_restart(i, now + delay, delay)
                    if delay <= 0:
                        workers.restart(i)
                if changed:
                    workers.write_metrics()
                boot = workers.boot_wait(now)
                wake = min([0.5, *(t - now for t in workers.restart_at.values()), *([boot] if boot is not None else [])])
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wake, 0.01)):
                        await stop.wait()
        except Exception:  # a bug, or a file the supervisor cannot write: stop the workers, never leave them
            # unsupervised (the interpreter's exit would wait for them forever, with their temporary
            # directories gone)
            log.exception("the supervisor failed: stopping the %d workers", len(workers.procs))
            failed = workers.stopping = True
            workers.signal_all(signal.SIGTERM)
            _release(reserved)
        # Draining: every worker exits by itself within the drain timeout.
        deadline = loop.time() + config.drain_timeout_s + exit_after_drain_s(config) + KILL_MARGIN_S
        while any(p.is_alive() for p in workers.procs.values()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        late = [i for i, p in workers.procs.items() if p.is_alive()]
        for i in late:
            log.error("worker %d did not stop in time: killed", i)
            workers.procs[i].kill()
        for p in workers.procs.values():
            p.join(timeout=5)
        log.info("stopped")
        return 1 if failed else 0


def load_timeouts_past_boot(config: ServerConfig) -> list[str]:
    """Why ``config`` cannot start its workers: one line per repository model whose config.toml
    ``model_load_timeout_s`` is not shorter than ``--worker-boot-timeout-s`` (a worker would be stopped
    while a load that timeout allows still runs; the flag's own check sees only
    ``--model-load-timeout-s``).  Reads the repositories' configs (:func:`wsserve.repository.scan.scan`),
    loads nothing; empty without a boot timeout."""
    boot = config.worker_boot_timeout_s
    if boot is None:
        return []
    from .repository.scan import scan

    found = []
    for repo in config.model_repository:
        for m in scan(repo).models:
            load = m.config.model_load_timeout_s if m.config is not None else None
            if load is not None and load >= boot:
                found.append(f"model {m.name!r} ({m.path / 'config.toml'}) has model_load_timeout_s {load:g}, not less "
                             f"than --worker-boot-timeout-s {boot:g}: its worker would be stopped while a load its "
                             "timeout allows still runs; raise --worker-boot-timeout-s (or turn it off)")
    return found


def run_supervisor(config: ServerConfig) -> int:
    """Blocking entry point for ``--workers N`` (N > 1).  Returns 1 at once, logging why, when a
    repository model's load timeout reaches the boot timeout (:func:`load_timeouts_past_boot`)."""
    from .server import (
        StartupInterrupted,
        _limit_blas_threads,
        stop_on_signal_while_starting,
    )
    from .trainer import prepare_builtin_repository

    refused = load_timeouts_past_boot(config)
    if refused:
        for line in refused:
            log.error("%s", line)
        return 1
    _limit_blas_threads()
    root = logging.getLogger()
    secrets: frozenset[str] = frozenset()
    for handler in root.handlers:
        for f in handler.filters:
            secrets = secrets | frozenset(getattr(f, "secrets", ()))
    with tempfile.TemporaryDirectory(prefix="wsserve-builtin-") as scratch:
        try:
            with stop_on_signal_while_starting():  # a signal while training: stop, clean up, exit 0
                builtin = prepare_builtin_repository(
                    config.models, seed=config.seed, cache_dir=config.cache_dir, cache=config.cache,
                    scratch=Path(scratch),
                )
                return asyncio.run(_supervise(config, builtin, root.level, secrets))
        except StartupInterrupted as exc:
            log.info("received %s while starting: stopped", exc.name)
            return 0
