"""Start-up, signals and graceful drain, on both event loops."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import websockets

from tests.support import (
    Conn,
    Metrics,
    child_env,
    http_get,
    serve_command,
    wait_until,
    wait_until_async,
)


def _status(url: str) -> int:
    return http_get(url)[0]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_drain_lets_work_finish_then_exits_zero(start_server, loop: str) -> None:
    server = start_server("--drain-timeout", "20", "--models", "linear,charlm", loop=loop)
    busy = await Conn.open(server.url)
    idle = await Conn.open(server.url)
    await busy.send({"type": "generate", "id": "long", "model": "charlm", "prompt": "The ", "max_tokens": 20000})
    first = await busy.recv()
    assert first["type"] == "token"
    server.signal(signal.SIGTERM)
    # The idle connection is told, then closed with 1001 at once.
    draining = await idle.recv()
    assert draining["type"] == "draining" and draining["deadline_ms"] == 20000
    with pytest.raises(websockets.ConnectionClosed) as info:
        await idle.recv()
    assert info.value.rcvd.code == 1001
    assert _status(server.http + "/readyz") == 503
    assert _status(server.http + "/healthz") == 200
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(server.url)
    assert refused.value.response.status_code == 503
    # The busy connection: new work refused, ping answered, the generation completes.
    await busy.send({"type": "predict", "id": "new", "model": "linear", "inputs": [[1]]})
    await busy.send({"type": "ping", "id": "p"})
    frames = await busy.collect({"long", "new"}, timeout=60)
    assert frames["new"][-1]["code"] == "shutting_down"
    assert {"type": "pong", "id": "p"} in busy.frames
    done = frames["long"][-1]
    assert done["type"] == "done" and done["reason"] == "length" and done["tokens"] == 20000
    assert any(f["type"] == "draining" for f in busy.frames)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await busy.recv()
    assert closed.value.rcvd.code == 1001
    assert server.wait(20) == 0


async def test_drain_deadline_ends_the_rest_with_shutting_down(start_server) -> None:
    server = start_server("--drain-timeout", "0.5", "--models", "charlm")
    conn = await Conn.open(server.url)
    await conn.send({"type": "generate", "id": "forever", "model": "charlm", "prompt": "a", "max_tokens": 100000})
    await conn.recv()
    server.signal(signal.SIGTERM)
    # The generation would run for seconds more: ended by the 0.5 s deadline instead.
    _, end = await conn.until_terminal("forever", timeout=10)
    assert end["type"] == "error" and end["code"] == "shutting_down"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await conn.recv()
    assert closed.value.rcvd.code == 1001
    assert server.wait(10) == 0


async def test_second_signal_exits_at_once(start_server) -> None:
    server = start_server("--drain-timeout", "30", "--models", "charlm")
    conn = await Conn.open(server.url)
    await conn.send({"type": "generate", "id": "g", "model": "charlm", "prompt": "a", "max_tokens": 100000})
    await conn.recv()
    server.signal(signal.SIGINT)
    await wait_until_async(lambda: "draining (send again to exit at once)" in server.stderr_text(), 10)
    server.signal(signal.SIGINT)
    status = server.wait(10)  # TimeoutExpired if it drained instead (the drain may take 30 s)
    assert status != 0
    assert "second signal: exiting now" in server.stderr_text()


async def test_disconnect_cancels_and_frees_slots(start_server) -> None:
    server = start_server("--models", "charlm")
    conn = await Conn.open(server.url)
    for i in range(10):
        await conn.send({"type": "generate", "id": i, "model": "charlm", "prompt": "a", "max_tokens": 100000})
    seen: set[int] = set()
    while len(seen) < 10:  # every generation is running
        seen.add((await conn.recv())["id"])
    assert server.metrics().value("wsserve_inflight_requests") == 10
    conn.ws.transport.abort()  # the client vanishes without a closing handshake

    def settled() -> Metrics | None:
        values = server.metrics()
        return values if values.value("wsserve_inflight_requests") == 0 else None

    values = await wait_until_async(settled, 10, in_thread=True)
    cancelled = values.get("wsserve_requests_total", code="cancelled", model="charlm", type="generate")
    assert cancelled == 10, {k: v for k, v in values.samples.items() if k[0] == "wsserve_requests_total"}
    assert values.value("wsserve_connections") == 0


def test_bad_flags_exit_2_naming_the_flag() -> None:
    for args, word in ((["--port", "70000"], "port"), (["--max-inflight", "0"], "max-inflight"), (["--models", "nope"], "nope")):
        proc = subprocess.run([sys.executable, "-m", "wsserve", "serve", *args], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert word in proc.stderr


def test_a_file_error_while_starting_names_the_file_not_the_port(tmp_path: Path) -> None:
    """An OSError about a file (here: the cache's ``repository`` is a file, so the trained weights cannot
    be written under it) used to be reported as "cannot listen on HOST:PORT".  (A cache directory
    that is itself a file is refused before start-up, naming $WSSERVE_CACHE_DIR: test_config_cli.)"""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "repository").write_text("not a directory")
    proc = subprocess.run(
        [sys.executable, "-m", "wsserve", "serve", "--host", "127.0.0.1", "--port", "0", "--models", "linear"],
        capture_output=True, text=True, timeout=120, env=child_env({"WSSERVE_CACHE_DIR": str(cache)}),
    )
    assert proc.returncode == 1, proc.stderr
    assert "cannot listen" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "Not a directory" in proc.stderr and str(cache) in proc.stderr, proc.stderr


def test_port_in_use_is_a_clear_error(start_server) -> None:
    server = start_server("--models", "linear")
    proc = subprocess.run(
        [sys.executable, "-m", "wsserve", "serve", "--host", "127.0.0.1", "--port", str(server.port), "--models", "linear"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr and "Traceback" not in proc.stderr



def _start_and_signal_when(tmp_path: Path, flags: list[str], when: Callable[[str], bool], sig: int
                           ) -> tuple[int, str, str, Path]:
    """Run ``wsserve serve FLAGS`` with its own ``$TMPDIR``; once ``when(its log so far)`` is
    true, send ``sig``; return its exit status, stdout, stderr and that temporary directory."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(serve_command(*flags), stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                env=child_env({"TMPDIR": str(tmp)}))
        try:
            wait_until(lambda: when(err.read_text()) or proc.poll() is not None, 120, what="the moment to signal")
            proc.send_signal(sig)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, out.read_text(), err.read_text(), tmp


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_training_stops_cleanly(tmp_path: Path, workers: str, sig: int) -> None:
    """SIGTERM (a rollout, ``docker stop``) or SIGINT while the default models train: the process
    stops as it does when serving (exit 0, a log line saying so, no traceback) and leaves no
    temporary directory behind.  SIGTERM used to kill it outright (status -15, the built-in
    repository's directory left in $TMPDIR, which a Kubernetes /tmp emptyDir keeps across
    container restarts) and SIGINT ended in a KeyboardInterrupt traceback."""
    code, out, err, tmp = _start_and_signal_when(
        tmp_path, ["--no-cache", "--workers", workers], lambda log: "wsserve.trainer: trained linear" in log, sig)
    assert code == 0, err[-3000:]
    assert "ready" not in out and "Traceback" not in err, err[-3000:]
    assert "while starting" in err, err[-3000:]
    assert list(tmp.iterdir()) == []


SLOW_MODEL = """import time
from pathlib import Path
class Model:
    def __init__(self, d):
        Path({flag!r}).write_text("loading")
        time.sleep(60)
    def predict(self, x):
        return x
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_signal_while_loading_models_stops_cleanly(tmp_path: Path, workers: str) -> None:
    """SIGTERM while a repository model still loads (a slow ``__init__``): the start is abandoned,
    the process exits 0 without waiting out the load, and leaves no temporary directory."""
    repo = tmp_path / "repo"
    (repo / "slow" / "1").mkdir(parents=True)
    (repo / "slow" / "config.toml").write_text("input_shape = [1]\noutput_shape = [1]\n")
    flag = tmp_path / "loading"
    (repo / "slow" / "1" / "model.py").write_text(SLOW_MODEL.format(flag=str(flag)))
    code, out, err, tmp = _start_and_signal_when(
        tmp_path, ["--no-cache", "--models", "linear", "--model-repository", str(repo), "--workers", workers,
                   "--drain-timeout-s", "1"], lambda _: flag.exists(), signal.SIGTERM)
    assert code == 0, err[-3000:]
    assert "ready" not in out and "Traceback" not in err, err[-3000:]
    assert "while starting" in err, err[-3000:]
    assert list(tmp.iterdir()) == []
