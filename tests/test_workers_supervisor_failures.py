"""``--workers``: what the supervisor cannot do (write a file, open one) never leaves the workers
unsupervised.  Real processes: the supervisor's own limits are lowered with ``prlimit`` once it
runs (its workers keep theirs), then a worker is killed, which the supervisor must act on.

It used to be that an error in the supervisor's loop (an ``OSError`` writing the metrics fold of
a dead worker: a full disk) ended its ``asyncio.run`` with the workers still serving: its
temporary directories were removed under them and the interpreter's exit then waited for them
forever (multiprocessing joins its non-daemon children), so nothing restarted a dead worker and,
the supervisor being alive, the workers never got their parent-death signal."""

from __future__ import annotations

import os
import re
import resource
import signal
from pathlib import Path

import pytest

from tests.support import ServerProcess, wait_until

pytestmark = pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="Linux only (prlimit)")


def _worker_pids(log: str) -> dict[str, int]:
    return {i: int(pid) for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", log)}


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not re.search(r"^State:\s+Z", status, re.M)


def test_a_dead_worker_is_restarted_though_its_counts_cannot_be_written(model_cache: Path) -> None:
    """The supervisor can write no file of more than 400 bytes (its restart figures fit, the fold of
    a dead worker's counts does not: EFBIG, as ENOSPC on a full disk): the dead worker's counts are
    lost, with a warning, and it is restarted as usual."""
    server = ServerProcess("--workers", "2", "--models", "linear", cache_dir=model_cache)
    try:
        pids = _worker_pids(server.stderr_text())
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (400, 400))
        os.kill(pids["1"], signal.SIGKILL)
        wait_until(lambda: _worker_pids(server.stderr_text())["1"] != pids["1"], 30, what="worker 1 restarted")
        wait_until(lambda: server.stderr_text().count("[worker 1] wsserve.server: serving linear") == 2, 30,
                   what="the new worker 1 serving")
        log = server.stderr_text()
        assert "cannot keep the counts of dead worker 1 in the metrics" in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    finally:
        assert server.stop() == 0, server.stderr_text()[-3000:]


def test_a_failing_supervisor_stops_its_workers_and_exits_one(model_cache: Path) -> None:
    """The supervisor can open no file descriptor more (EMFILE): restarting a killed worker fails.
    The supervisor says so, stops the other worker as SIGTERM does and exits 1 (systemd or
    Kubernetes then restart the whole server), instead of hanging with the workers it no longer
    watches."""
    server = ServerProcess("--workers", "2", "--models", "linear", cache_dir=model_cache)
    try:
        pids = _worker_pids(server.stderr_text())
        open_fds = len(os.listdir(f"/proc/{server.proc.pid}/fd"))
        _, hard = resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE, (open_fds, hard))
        os.kill(pids["1"], signal.SIGKILL)
        assert server.wait(timeout_s=60) == 1, server.stderr_text()[-3000:]
        log = server.stderr_text()
        assert "the supervisor failed: stopping the 2 workers" in log, log[-3000:]
        assert "[worker 0] wsserve.server: received SIGTERM: draining" in log, log[-3000:]
        assert not _running(pids["0"]), log[-3000:]
    finally:
        if server.proc.poll() is None:
            server.kill()
