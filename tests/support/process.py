"""A server under test in its own process: started, found by its ready line, stopped.

``ServerProcess(*flags)`` runs this checkout's CLI::

    python -m wsserve serve --host 127.0.0.1 --port 0 --loop auto FLAGS

from the repository root, and returns once the server printed its URL on stdout
(:data:`READY_LINE`).  clients/js/test/helpers/server.js starts the server with the
same command line and reads the same line with the same pattern;
clients/js/test/server-helper.test.js fails when the two patterns differ.

``ServerProcess.from_command(cmd)`` does the same for any server that prints a
``ws://HOST:PORT`` or ``http://HOST:PORT`` line (the benchmark peers in
benchmarks/peers/), run from this checkout or from another one (``root=``: a
base commit's worktree, which the child then imports instead of this one).

The child's stdout and stderr are read to the end by threads (never an undrained
pipe).  A line the server logged reaches :meth:`ServerProcess.stderr_text` a moment after it was
written (when that thread has read it): a test looking for a line in a running server's log waits
for it (:meth:`ServerProcess.wait_logged`); once :meth:`~ServerProcess.wait`, :meth:`~ServerProcess.stop`
or :meth:`~ServerProcess.kill` returned, everything it printed has been read.  The child imports this checkout first (see :func:`child_env`), whatever
``wsserve`` is installed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal as signals
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Self

from tests.support.metrics import Metrics, scrape_metrics

__all__ = [
    "ANY_URL_LINE", "READY_LINE", "ROOT", "TRANSPORTS", "ServerProcess", "child_env", "cpu_seconds", "proc_status",
    "serve_command", "interrupt_on_sigterm",
]

#: The repository root (the checkout these tests belong to).
ROOT = Path(__file__).resolve().parents[2]

#: The server's ready line: the first stdout line with a URL.  Groups: scheme, host, port.
READY_LINE = re.compile(rb"(wss?)://([0-9.]+|\[[0-9a-f:]+\]|localhost):(\d+)")

#: The server's WebSocket transports (``wsserve serve --transport``): the wire tests run on each.
TRANSPORTS = ("websockets", "picows")

#: A peer's ready line (:meth:`ServerProcess.from_command`): a ``ws(s)://`` or ``http(s)://`` URL.
ANY_URL_LINE = re.compile(rb"(wss?|https?)://([0-9.]+|\[[0-9a-f:]+\]|localhost):(\d+)")

#: Thread counts of the BLAS libraries in child processes unless the environment sets them.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def child_env(overrides: Mapping[str, str] | None = None, *, root: Path = ROOT) -> dict[str, str]:
    """The environment for a child process: ``os.environ``, one BLAS thread unless set,
    the checkout ``root`` (default this one) first on ``PYTHONPATH`` and this one dropped
    from it when ``root`` is another, then ``overrides``."""
    env = dict(os.environ)
    for name, value in ONE_THREAD.items():
        env.setdefault(name, value)
    root = root.resolve()
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() not in (ROOT, root)]
    env["PYTHONPATH"] = os.pathsep.join([str(root), *paths])
    env.update(overrides or {})
    return env


def serve_command(*flags: str, port: int = 0, loop: str = "auto") -> list[str]:
    """The CLI command line of a server on 127.0.0.1 (``port`` 0: a free one)."""
    return [sys.executable, "-m", "wsserve", "serve", "--host", "127.0.0.1", "--port", str(port), "--loop", loop,
            *flags]


def proc_status(pid: int, *fields: str) -> dict[str, int]:
    """Numeric fields of ``/proc/PID/status`` (``VmRSS``, ``VmHWM`` in KiB, ``Threads``...).

    Raises ``KeyError`` naming a field the kernel does not report, ``OSError`` when the
    process is gone.
    """
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0])
    missing = [f for f in fields if f not in found]
    if missing:
        raise KeyError(f"/proc/{pid}/status has no {', '.join(missing)}")
    return found


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM stop a test session the way Ctrl-C does (pytest then tears every fixture
    down, so the servers it started are stopped) instead of killing it on the spot, which
    would leave them running.  Call once from the main thread (the conftests' ``pytest_configure``)."""
    if threading.current_thread() is threading.main_thread():
        signals.signal(signals.SIGTERM, _interrupt)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (``/proc/PID/stat``); ``OSError`` when gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """A server subprocess, ready when constructed; ``stop()`` it (or use ``with``).

    Attributes once ready: ``url`` (``ws://`` or ``wss://HOST:PORT`` as printed; a peer's
    ``http(s)://`` URL as printed), ``http`` (the same with ``http``/``https``), ``port``,
    ``cmd``, ``proc`` (the ``subprocess.Popen``), ``transport`` (the ``--transport`` it was
    given, ``"websockets"`` when none).
    """

    url: str
    http: str
    port: int

    def __init__(self, *flags: str, cache_dir: Path | str | None = None, loop: str = "auto", port: int = 0,
                 env: Mapping[str, str] | None = None, start_timeout_s: float = 60.0,
                 transport: str | None = None) -> None:
        """``wsserve serve FLAGS`` on 127.0.0.1; ``cache_dir`` sets ``WSSERVE_CACHE_DIR`` (the
        trained-weights cache), ``env`` adds to the environment, ``transport`` appends
        ``--transport TRANSPORT``.

        Raises ``RuntimeError`` with the command and the server's output when it exits or
        prints no ready line within ``start_timeout_s`` (it is killed then).
        """
        overrides = {"WSSERVE_CACHE_DIR": str(cache_dir)} if cache_dir is not None else {}
        overrides.update(env or {})
        if transport is not None:
            flags = (*flags, "--transport", transport)
        self.transport = transport or "websockets"
        self._launch(serve_command(*flags, port=port, loop=loop), overrides, start_timeout_s)

    @classmethod
    def from_command(cls, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
                     start_timeout_s: float = 90.0, root: Path = ROOT) -> ServerProcess:
        """Any server command that prints a ``ws://`` or ``http://`` URL when ready, run from
        the checkout ``root`` (default this one; another one is then imported instead of this
        one, see :func:`child_env`).  Raises ``RuntimeError`` as the constructor does."""
        self = cls.__new__(cls)
        self.transport = "websockets"
        self._launch(list(cmd), dict(env or {}), start_timeout_s, root=root, ready=ANY_URL_LINE)
        return self

    def _launch(self, cmd: list[str], env: Mapping[str, str], start_timeout_s: float, *, root: Path = ROOT,
                ready: re.Pattern[bytes] = READY_LINE) -> None:
        self.cmd = cmd
        self._ready_line = ready
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        self._ready = threading.Event()
        self._found: re.Match[bytes] | None = None
        self.proc = subprocess.Popen(cmd, cwd=root, env=child_env(env, root=root), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._stderr, False), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        if not self._ready.wait(start_timeout_s) or self._found is None:
            self.kill()
            for pump in self._pumps:
                pump.join(2.0)
            status = self.proc.returncode
            what = (f"printed no ready line within {start_timeout_s:g} s" if status == -signals.SIGKILL
                    else f"exited with status {status} before its ready line")
            raise RuntimeError(f"server {what}: {' '.join(cmd)}\nstdout:\n{self.stdout_text()[-3000:]}\n"
                               f"stderr:\n{self.stderr_text()[-3000:]}")
        scheme, host, port = (g.decode() for g in self._found.groups())
        self.port = int(port)
        self.url = f"{scheme}://{host}:{self.port}"
        self.http = self.url.replace("ws", "http", 1) if scheme.startswith("ws") else self.url

    def _pump(self, stream: IO[bytes], sink: list[bytes], watch: bool) -> None:
        for line in iter(stream.readline, b""):
            sink.append(line)
            if watch and self._found is None:
                self._found = self._ready_line.search(line)
                if self._found is not None:
                    self._ready.set()
        if watch:
            self._ready.set()  # EOF: the process is gone

    # ---------------------------------------------------------------- what it printed

    def stdout_text(self) -> str:
        return b"".join(self._stdout).decode(errors="replace")

    def stderr_text(self) -> str:
        """What the server logged so far (read so far: see the module docstring)."""
        return b"".join(self._stderr).decode(errors="replace")

    def wait_logged(self, text: str, timeout_s: float = 30.0, *, count: int = 1) -> str:
        """Wait until ``text`` is in the server's log (``count`` times at least); the log.  Raises
        ``AssertionError`` with the log's end when it is not there after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (log := self.stderr_text()).count(text) < count:
            if time.monotonic() >= deadline:
                raise AssertionError(f"the server did not log {text!r} ({count}x) within {timeout_s:g} s; "
                                     f"its log ends:\n{log[-3000:]}")
            time.sleep(0.02)
        return log

    def _drained(self, status: int) -> int:
        """``status``, once the threads have read all the exited child printed (5 s at most: a
        grandchild still holding the pipes keeps them open)."""
        deadline = time.monotonic() + 5.0
        for pump in self._pumps:
            pump.join(max(0.0, deadline - time.monotonic()))
        return status

    # ---------------------------------------------------------------- looking at it

    def metrics(self, key: str | None = None) -> Metrics:
        """``/metrics``, parsed (blocking; see :func:`tests.support.metrics.scrape_metrics`)."""
        return scrape_metrics(self.http, key=key)

    async def ametrics(self, key: str | None = None) -> Metrics:
        """:meth:`metrics` from a coroutine (in a worker thread, so the loop keeps running)."""
        return await asyncio.to_thread(self.metrics, key)

    def cpu_seconds(self) -> float:
        """CPU seconds the server has used so far; NaN once it has exited."""
        try:
            return cpu_seconds(self.proc.pid)
        except OSError:
            return float("nan")

    def memory_kib(self, field: str = "VmRSS") -> int:
        """``VmRSS`` (or ``VmHWM``...) of the server in KiB."""
        return proc_status(self.proc.pid, field)[field]

    # ---------------------------------------------------------------- ending it

    def signal(self, sig: int = signals.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 30.0) -> int:
        """The exit status; ``subprocess.TimeoutExpired`` if still running after ``timeout_s``."""
        return self._drained(self.proc.wait(timeout_s))

    def kill(self) -> int:
        """SIGKILL (the process dies without closing its sockets cleanly); the exit status."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self._drained(self.proc.wait())

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (a graceful drain), SIGKILL after ``timeout_s``; the exit status.  Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signals.SIGTERM)
            try:
                return self._drained(self.proc.wait(timeout_s))
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self._drained(self.proc.wait())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
