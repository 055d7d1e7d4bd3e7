"""Servers under test for the benchmarks: started through :mod:`tests.support`, plus a CPU sampler.

A server is a :class:`tests.support.ServerProcess` (the same launcher the test suites use),
with one BLAS/OpenMP thread forced in its environment whatever the caller's environment says.
"""

from __future__ import annotations

import bisect
import threading
import time
from pathlib import Path

from tests.support import ROOT, ServerProcess, child_env

__all__ = ["BENCH_THREADS", "ROOT", "CpuSampler", "bench_env", "start_command", "start_wsserve"]

#: Forced in every benchmark process, so figures do not depend on the caller's environment.
BENCH_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: Seconds a server may take to print its ready line (a first start trains the default models).
START_TIMEOUT_S = 90.0


def bench_env(root: Path = ROOT) -> dict[str, str]:
    """Environment for every benchmark process: one BLAS thread, the checkout ``root`` (default
    this one) importable first."""
    return child_env(BENCH_THREADS, root=root)


def start_wsserve(*flags: str, cache_dir: str | None = None) -> ServerProcess:
    """``python -m wsserve serve --host 127.0.0.1 --port 0 FLAGS``, ready (``cache_dir``: the weights
    cache, default the server's own).  ``RuntimeError`` with the server's output when it does not start."""
    return ServerProcess(*flags, cache_dir=cache_dir, env=BENCH_THREADS, start_timeout_s=START_TIMEOUT_S)


def start_command(cmd: list[str], *, root: Path = ROOT) -> ServerProcess:
    """Any server command (a peer in benchmarks/peers/, or wsserve from another checkout
    ``root``) that prints a ``ws://`` or ``http://`` URL, ready."""
    return ServerProcess.from_command(cmd, env=BENCH_THREADS, start_timeout_s=START_TIMEOUT_S, root=root)


class CpuSampler:
    """Samples a server's CPU seconds every ``interval_s`` in a thread, to read its use over any sub-interval.

    ``with CpuSampler(server) as s: ...`` then ``s.cores_between(t0, t1)`` (monotonic
    seconds): busy cores averaged over [t0, t1], linearly interpolated between samples.
    """

    def __init__(self, server: ServerProcess, *, interval_s: float = 0.05) -> None:
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
