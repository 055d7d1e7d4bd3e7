"""``--workers``: ``/metrics`` does not show a worker whose event loop no longer runs as ready.

Each worker writes its snapshot twice a second and any worker's ``/metrics`` merges the others'
last ones.  A worker that stopped running (SIGSTOP here: a debugger, a hung loop) writes no more
snapshots; its gauges used to be shown with the values it last had (``wsserve_ready`` 1) for as
long as it stayed so, while a share of the new connections waited on it unanswered."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.support import Metrics, ServerProcess, http_get, wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only (SO_REUSEPORT)")


def _scrape_by(server: ServerProcess, worker: str) -> Metrics | None:
    """One ``/metrics`` answered by ``worker`` (its ``Wsserve-Worker`` header), else None (another
    worker answered, or the connection landed on a stopped worker and got no answer)."""
    try:
        status, headers, body = http_get(f"http://127.0.0.1:{server.port}/metrics", timeout_s=1.0)
    except OSError:
        return None
    if status != 200 or headers.get("Wsserve-Worker") != worker:
        return None
    return Metrics.parse(body.decode())


def test_a_stopped_worker_is_not_shown_ready_by_the_others(model_cache: Path) -> None:
    server = ServerProcess("--workers", "2", "--models", "linear", cache_dir=model_cache)
    pids = {i: int(p) for i, p in re.findall(r"worker (\d+) started \(pid (\d+)\)", server.stderr_text())}
    stopped = False
    try:
        def both_ready() -> bool:
            m = _scrape_by(server, "0")
            return m is not None and m.get("wsserve_ready", worker="0") == 1 and m.get("wsserve_ready", worker="1") == 1

        wait_until(both_ready, 30, what="worker 0 showing both workers ready")
        os.kill(pids["1"], signal.SIGSTOP)
        stopped = True

        def not_shown() -> bool:
            m = _scrape_by(server, "0")
            return (m is not None and not m.has("wsserve_ready", worker="1")
                    and m.get("wsserve_ready", worker="0") == 1 and m.has("wsserve_worker_restarts_total", worker="1"))

        wait_until(not_shown, 60, what="worker 0 no longer showing the stopped worker 1 as ready")
        os.kill(pids["1"], signal.SIGCONT)
        stopped = False
        wait_until(both_ready, 30, what="worker 1 shown ready again once it runs")
    finally:
        if stopped:
            os.kill(pids["1"], signal.SIGCONT)
        assert server.stop() == 0
