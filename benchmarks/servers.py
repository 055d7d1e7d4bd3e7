"""Start a server under test in its own process, find its ``ws://`` (or ``http://``) URL, measure its CPU, stop it."""

from __future__ import annotations

import bisect
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["ROOT", "CpuSampler", "ServerUnderTest", "bench_env"]

ROOT = Path(__file__).resolve().parent.parent
_URL = re.compile(r"(?:ws|http)://[0-9.]+:\d+")


def bench_env(root: Path = ROOT) -> dict[str, str]:
    """Environment for every benchmark process: one BLAS thread, the checkout ``root`` importable first."""
    env = dict(os.environ)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class ServerUnderTest:
    """``cmd`` run from the repository root (or ``root``, another checkout: then that one is
    imported); ready when its stdout shows a ``ws://`` or ``http://`` URL.

    Output goes to temporary files (never an undrained pipe).  Raises
    ``RuntimeError`` with the server's output if it exits or is not ready in
    ``start_timeout_s``.
    """

    def __init__(self, name: str, cmd: list[str], *, start_timeout_s: float = 90.0, root: Path = ROOT) -> None:
        self.name = name
        self.cmd = cmd
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, cwd=root, env=bench_env(root), stdout=self._out, stderr=self._err)
        deadline = time.monotonic() + start_timeout_s
        while True:
            match = _URL.search(self.output())
            if match:
                self.url = match.group(0)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start ({' '.join(cmd)}):\n{self.output()}\n{self.errors()[-3000:]}")
            time.sleep(0.05)

    def output(self) -> str:
        self._out.seek(0)
        return self._out.read().decode(errors="replace")

    def errors(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (Linux ``/proc``)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        self._err.close()


class CpuSampler:
    """Samples a server's CPU seconds every ``interval_s`` in a thread, to read its use over any sub-interval.

    ``with CpuSampler(server) as s: ...`` then ``s.cores_between(t0, t1)`` (monotonic
    seconds): busy cores averaged over [t0, t1], linearly interpolated between samples.
    """

    def __init__(self, server: ServerUnderTest, *, interval_s: float = 0.05) -> None:
        self._server = server
        self._interval_s = interval_s
        self._t: list[float] = []
        self._cpu: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self._t.append(time.monotonic())
            self._cpu.append(self._server.cpu_seconds())
            if self._stop.wait(self._interval_s):
                return

    def _at(self, t: float) -> float:
        i = bisect.bisect_left(self._t, t)
        if i <= 0:
            return self._cpu[0]
        if i >= len(self._t):
            return self._cpu[-1]
        t0, t1 = self._t[i - 1], self._t[i]
        c0, c1 = self._cpu[i - 1], self._cpu[i]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0)

    def cores_between(self, t0: float, t1: float) -> float:
        if not self._t or t1 <= t0:
            return float("nan")
        return (self._at(t1) - self._at(t0)) / (t1 - t0)
