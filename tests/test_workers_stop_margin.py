"""``--workers`` drain: the supervisor gives a draining worker at least the time a server process
may take to exit after its drain deadline (``wsserve.server.exit_after_drain_s``: closes, model
code still running, threads stuck in it, and with ``--otlp-traces-endpoint`` the last spans' export)
before it kills it."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.repo_models import BIGRAM_CONFIG, write_py
from tests.support import ServerProcess, wait_until
from tests.support.rawws import RawClient
from tests.test_shutdown_stuck_models import NEVER_STEPS_PY, fifo_repo


@contextmanager
def silent_collector() -> Iterator[str]:
    """An OTLP/HTTP collector's URL on loopback that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                held.append(sock.accept()[0])
        except OSError:  # closed
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
        for conn in held:
            conn.close()


@pytest.mark.parametrize("tracing", [False, True], ids=["plain", "tracing-to-a-silent-collector"])
def test_a_worker_past_its_drain_deadline_exits_by_itself_before_the_supervisor_kills_it(
        tmp_path: Path, tracing: bool) -> None:
    """A worker whose generation step never returns, with a client that never answers the close
    frame, takes every grace after its drain deadline (the close, the model code, the stuck thread;
    with tracing, 5 s more for its last spans, which a silent collector never takes) and exits by
    itself, naming the stuck thread.  The supervisor used to kill it first: 5 s after the drain
    timeout, whatever the worker still had to do."""
    repo, fifo = fifo_repo(tmp_path)
    (repo / "gen").mkdir()
    (repo / "gen" / "config.toml").write_text(BIGRAM_CONFIG)
    write_py(repo / "gen" / "1", NEVER_STEPS_PY, **{"seed.txt": "3", "fifo.txt": str(fifo)})
    with silent_collector() as collector:
        traced = ["--otlp-traces-endpoint", collector] if tracing else []
        server = ServerProcess("--workers", "2", "--models", "none", "--model-repository", str(repo),
                               "--drain-timeout-s", "1", *traced)
        try:
            with RawClient(server.port, timeout_s=60) as client:
                assert client.recv_json()["type"] == "hello"
                client.send({"type": "generate", "id": "held", "model": "gen", "prompt": "h", "max_tokens": 4})
                wait_until(lambda: Path(f"{fifo}.started").exists(), 30, what="the generation step is blocked")
                server.signal()  # the client reads nothing more: it never answers the close frame
                assert server.wait(timeout_s=60) == 0, server.stderr_text()[-3000:]
            log = server.stderr_text()
            assert "gave up waiting for the models to stop" in log, log[-3000:]
            if tracing:
                assert "spans not exported within 5 s at shutdown" in log, log[-3000:]
            assert "exiting with 1 thread(s) still running model code: wsserve-generate" in log, log[-3000:]
            assert "did not stop in time" not in log, log[-3000:]
        finally:
            if server.proc.poll() is None:
                server.kill()
            try:  # let the blocked thread go, if its process is still there
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
