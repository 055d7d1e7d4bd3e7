"""The shared test support (tests/support/) against itself: frames, metrics, waits, the launcher."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from tests.support import (
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    READY_LINE,
    Frame,
    FrameParser,
    Metrics,
    ServerProcess,
    child_env,
    client_frame,
    close_code,
    wait_until,
    wait_until_async,
)
from tests.support.process import ROOT


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_a_client_frame_parses_back_whole_and_byte_by_byte(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = client_frame(payload)
    assert data[1] & 0x80  # masked
    assert FrameParser(data).next() == Frame(OP_TEXT, payload, True)
    parser = FrameParser()
    frames = []
    for i in range(0, len(data), max(1, len(data) // 50)):
        parser.feed(data[i : i + max(1, len(data) // 50)])
        if (frame := parser.next()) is not None:
            frames.append(frame)
    assert frames == [Frame(OP_TEXT, payload, True)]


def test_frame_bits_are_as_asked_and_frames_split_at_their_boundaries() -> None:
    unmasked = client_frame(b"abc", OP_PING, fin=False, rsv=0x40, mask=False)
    assert unmasked == bytes((0x40 | OP_PING, 3)) + b"abc"
    parser = FrameParser(client_frame(b"one") + client_frame(b"\x03\xe8", OP_CLOSE) + b"\x81")
    assert parser.next() == Frame(OP_TEXT, b"one", True)
    close = parser.next()
    assert close is not None and close.opcode == OP_CLOSE and close_code(close.payload) == 1000
    assert parser.next() is None  # one byte of a third frame: incomplete
    assert close_code(b"") is None


def test_metrics_are_found_by_name_and_labels_in_any_order() -> None:
    m = Metrics.parse(
        "# TYPE wsserve_requests_total counter\n"
        'wsserve_requests_total{model="linear",type="predict",code="ok"} 5.0\n'
        'wsserve_requests_total{code="cancelled",type="predict",model="linear"} 2.0\n'
        "# TYPE wsserve_connections gauge\n"
        "wsserve_connections 3.0\n"
    )
    assert m.value("wsserve_requests_total", code="ok", type="predict", model="linear") == 5.0
    assert m.value("wsserve_connections") == 3.0
    assert m.get("wsserve_requests_total", code="internal", type="predict", model="linear") == 0.0
    assert m.sum("wsserve_requests_total", model="linear") == 7.0
    assert m.has("wsserve_connections") and not m.has("wsserve_connections", x="1")
    with pytest.raises(KeyError, match="cancelled"):  # the message lists the series there are
        m.value("wsserve_requests_total", code="internal")


def test_wait_until_returns_the_value_or_fails_naming_the_condition() -> None:
    calls = []
    assert wait_until(lambda: calls.append(1) or (len(calls) >= 3 and "ok"), 5, interval_s=0.001) == "ok"
    with pytest.raises(AssertionError, match="the sky falls.*last value: 0"):
        wait_until(lambda: 0, 0.05, what="the sky falls")
    with pytest.raises(AssertionError, match=r"lambda: calls\.count\(2\)"):  # unnamed: the predicate's source
        wait_until(lambda: calls.count(2), 0.0)


async def test_wait_until_async_takes_plain_async_and_threaded_predicates() -> None:
    ticks = []

    async def later() -> int:
        ticks.append(1)
        return len(ticks) if len(ticks) >= 2 else 0

    assert await wait_until_async(later, 5, interval_s=0.001) == 2
    assert await wait_until_async(lambda: "x", 5) == "x"
    loop_thread = threading.get_ident()
    assert await wait_until_async(lambda: threading.get_ident() != loop_thread, 5, in_thread=True)
    with pytest.raises(AssertionError, match="never"):
        await wait_until_async(lambda: None, 0.02, what="never")


def test_child_env_puts_this_checkout_first_and_one_blas_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", f"/elsewhere:{ROOT}")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    env = child_env({"X": "1"})
    assert env["PYTHONPATH"].split(":") == [str(ROOT), "/elsewhere"]
    assert env["OPENBLAS_NUM_THREADS"] == "1" and env["X"] == "1"


def test_launcher_reads_the_ready_line_and_reports_a_server_that_never_starts() -> None:
    assert READY_LINE.search(b"wsserve 1.2.3 ready on ws://127.0.0.1:8765").groups() == (b"ws", b"127.0.0.1", b"8765")
    printer = [sys.executable, "-c", ("import sys, time; print('noise'); print('up on ws://127.0.0.1:4321', flush=True); "
                                      "print('oops', file=sys.stderr, flush=True); time.sleep(60)")]
    with ServerProcess.from_command(printer, start_timeout_s=30) as proc:
        assert (proc.url, proc.http, proc.port) == ("ws://127.0.0.1:4321", "http://127.0.0.1:4321", 4321)
        wait_until(lambda: "oops" in proc.stderr_text(), 10)
        assert proc.stdout_text().startswith("noise\n")
    assert proc.proc.returncode is not None
    quitter = [sys.executable, "-c", "import sys; print('no url here'); sys.exit('bad flag --x')"]
    with pytest.raises(RuntimeError, match="(?s)exited with status 1 before its ready line.*no url here.*bad flag --x"):
        ServerProcess.from_command(quitter, start_timeout_s=30)
    silent = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(RuntimeError, match="printed no ready line within 0.5 s"):
        ServerProcess.from_command(silent, start_timeout_s=0.5)



def test_wait_logged_waits_for_a_line_and_an_exited_servers_log_is_read_whole() -> None:
    """The log reaches ``stderr_text`` through a reading thread, a moment after it was written (CI
    once saw a line missing that the server had logged before the state the test waited for)."""
    late = [sys.executable, "-c", ("import sys, time; print('up on ws://127.0.0.1:4321', flush=True); "
                                   "time.sleep(0.3); print('late line', file=sys.stderr, flush=True); "
                                   "print('late line', file=sys.stderr, flush=True); time.sleep(60)")]
    with ServerProcess.from_command(late, start_timeout_s=30) as proc:
        assert proc.wait_logged("late line", 30, count=2).count("late line") == 2
        with pytest.raises(AssertionError, match="(?s)did not log 'never' .*late line"):
            proc.wait_logged("never", 0.2)
    # once wait() returned, everything written to the server's pipes is read: here a process it
    # started writes its last line after the server exited (a worker process flushing its log)
    tail = "import sys, time; time.sleep(0.5); print('the end', file=sys.stderr, flush=True)"
    parent = [sys.executable, "-c", ("import subprocess, sys; print('up on ws://127.0.0.1:4321', flush=True); "
                                     f"subprocess.Popen([sys.executable, '-c', {tail!r}])")]
    proc = ServerProcess.from_command(parent, start_timeout_s=30)
    assert proc.wait(30) == 0
    assert proc.stderr_text().endswith("the end\n")


def _gone(pid: int) -> bool:
    """The process ended (a zombie waiting to be reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_sigtermed_test_session_stops_the_servers_it_started(tmp_path) -> None:
    """``interrupt_on_sigterm`` (installed by the conftests): SIGTERM to pytest tears the fixtures
    and ``with`` blocks down as Ctrl-C does, so no server is left running (without it, Python dies
    on the spot and the server, a child of the session, is orphaned)."""
    pidfile = tmp_path / "server.pid"
    server = [sys.executable, "-c", "import time; print('up on ws://127.0.0.1:4321', flush=True); time.sleep(300)"]
    (tmp_path / "test_holds_a_server.py").write_text(
        "import threading\nfrom pathlib import Path\nfrom tests.support import ServerProcess\n\n"
        "def test_hold():\n"
        f"    with ServerProcess.from_command({server!r}, start_timeout_s=30) as proc:\n"
        f"        Path({str(pidfile)!r}).write_text(str(proc.proc.pid))\n"
        "        threading.Event().wait(300)  # held until the session is signalled\n"
    )
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider", "-p", "no:randomly",
         str(tmp_path / "test_holds_a_server.py")],
        cwd=ROOT, env=child_env(None), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), 60, what="the session's server started"))
        session.send_signal(signal.SIGTERM)
        out, _ = session.communicate(timeout=60)
        assert b"KeyboardInterrupt" in out, out.decode(errors="replace")
        wait_until(lambda: _gone(pid), 30, what="the server stopped with its session")
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
