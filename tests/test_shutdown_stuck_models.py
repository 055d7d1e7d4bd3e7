"""Model code that never returns does not keep the server from stopping (a real server, SIGTERM).

Each model here blocks reading a FIFO nobody writes to: in ``Model()`` (a load), in ``close()``
(an unloaded version), in ``predict`` and in a generation step.  The server drains as usual
(``--drain-timeout-s 1``: what is in flight ends with ``shutting_down``), abandons that code,
logs it, and exits 0.  Each test lets the blocked thread go if the server did not exit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.repo_models import (
    AFFINE_CONFIG,
    AFFINE_PY,
    BIGRAM_CONFIG,
    BIGRAM_PY,
    move_in,
    write_affine,
    write_py,
)
from tests.repo_wire import predict, states, wait_models, wait_watching
from tests.support import Conn, ServerProcess, wait_until

ROWS = [[1.0, 2.0, 3.0]]


async def reply_to(conn: Conn, rid: str) -> dict:
    """The frame answering ``rid`` (other frames may come first)."""
    while True:
        frame = await conn.recv(30)
        if frame.get("id") == rid:
            return frame


@contextmanager
def stops_cleanly(server: ServerProcess, fifo: Path) -> Iterator[None]:
    """SIGTERM, run the body (reading what the drain sends), then the server must exit 0 by itself."""
    server.signal()
    try:
        yield
        assert server.wait(timeout_s=30) == 0, server.stderr_text()[-3000:]  # a hang guard
    finally:  # the server did not exit (the test failed): let the blocked thread go
        if server.proc.poll() is None:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass


def fifo_repo(tmp_path: Path) -> tuple[Path, Path]:
    """``(repository, fifo)``: an empty repository directory and a FIFO nobody writes to."""
    repo, fifo = tmp_path / "repository", tmp_path / "fifo"
    repo.mkdir()
    os.mkfifo(fifo)
    return repo, fifo


def add_affine(repo: Path, name: str, source: str = AFFINE_PY, config: str = AFFINE_CONFIG, **files: str) -> Path:
    """Model ``name`` with version 1 (an affine model.py, ``source``) in ``repo``; returns the model directory."""
    (repo / name).mkdir()
    (repo / name / "config.toml").write_text(config)
    write_affine(repo / name / "1", bias=1.0, source=source, **files)
    return repo / name


NEVER_PY = AFFINE_PY.replace(
    "    def __init__(self, version_dir):\n",
    "    def __init__(self, version_dir):\n"
    "        open((Path(version_dir) / 'fifo.txt').read_text().strip()).read()  # nobody writes to it\n",
)


async def test_a_server_whose_model_load_never_returns_still_stops(tmp_path: Path) -> None:
    """SIGTERM drains and exits though a ``Model()`` never returns (its thread is abandoned)."""
    assert NEVER_PY != AFFINE_PY
    repo, fifo = fifo_repo(tmp_path)
    add_affine(repo, "ok")
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--reload") as server:
        wait_watching(server, repo)
        (repo / "stuck").mkdir()
        (repo / "stuck" / "config.toml").write_text(AFFINE_CONFIG)
        build = repo / "stuck" / ".1.tmp"
        write_affine(build, bias=2.0, source=NEVER_PY, **{"fifo.txt": str(fifo)})
        move_in(build, repo / "stuck" / "1")
        wait_models(server, "stuck", "loading", lambda e: states(e) == {"1": "loading"})
        conn = await Conn.open(server.url)
        r = await predict(conn, "p", "ok", ROWS)  # the rest serves
        assert (r["type"], r["version"]) == ("result", "1"), r
        await conn.close()
        with stops_cleanly(server, fifo):
            pass


NEVER_CLOSES_PY = AFFINE_PY + """
    def close(self):  # never returns: nobody writes to the FIFO
        open((Path(__file__).parent / "fifo.txt").read_text().strip()).read()
"""


async def test_a_server_whose_model_close_never_returns_still_stops(tmp_path: Path) -> None:
    """An unloaded version's ``Model.close()`` that never returns is abandoned at shutdown, after
    the drain deadline, rather than holding the process forever."""
    repo, fifo = fifo_repo(tmp_path)
    add_affine(repo, "stuck", NEVER_CLOSES_PY, **{"fifo.txt": str(fifo)})
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--drain-timeout-s", "1") as server:
        conn = await Conn.open(server.url)
        await conn.send({"type": "unload", "id": "u", "model": "stuck"})
        reply = await reply_to(conn, "u")
        assert (reply["type"], reply.get("ok")) == ("unload", True), reply
        await conn.close()
        with stops_cleanly(server, fifo):
            pass
        assert "gave up waiting for 1 unloading model version(s)" in server.stderr_text()
        assert "stuck-1" in server.stderr_text()


NEVER_PREDICTS_PY = AFFINE_PY.replace(
    "    def predict(self, batch):\n",
    "    def predict(self, batch):\n"
    "        if (batch[:, 0] == -1).any():  # never returns: nobody writes to the FIFO\n"
    "            fifo = (Path(__file__).parent / 'fifo.txt').read_text().strip()\n"
    "            Path(fifo + '.started').touch()\n"
    "            open(fifo).read()\n",
)

NEVER_STEPS_PY = BIGRAM_PY.replace(
    "    def logits(self, contexts):          # [B, 2] int64 -> [B, V]: the last token's row\n",
    "    def logits(self, contexts):          # [B, 2] int64 -> [B, V]: the last token's row\n"
    "        if (contexts[:, -1] == VOCAB.index('h')).any():  # never returns: nobody writes to the FIFO\n"
    "            fifo = (Path(__file__).parent / 'fifo.txt').read_text().strip()\n"
    "            Path(fifo + '.started').touch()\n"
    "            open(fifo).read()\n",
)


async def test_a_server_whose_predict_never_returns_still_stops(tmp_path: Path) -> None:
    assert NEVER_PREDICTS_PY != AFFINE_PY
    repo, fifo = fifo_repo(tmp_path)
    # costly enough to run in a thread (a batch declared cheap runs on the event loop: its own business)
    add_affine(repo, "stuck", NEVER_PREDICTS_PY, AFFINE_CONFIG + "flops_per_row = 1000000000\n", **{"fifo.txt": str(fifo)})
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--drain-timeout-s", "1") as server:
        conn = await Conn.open(server.url)
        r = await predict(conn, "fine", "stuck", ROWS)
        assert (r["type"], r["version"]) == ("result", "1"), r
        await conn.send({"type": "predict", "id": "held", "model": "stuck", "inputs": [[-1.0, 0.0, 0.0]]})
        wait_until(lambda: Path(f"{fifo}.started").exists(), 30, what="the predict is blocked")
        with stops_cleanly(server, fifo):
            last = await reply_to(conn, "held")  # ended at the drain deadline
            assert (last["type"], last["code"]) == ("error", "shutting_down"), last
        assert "exiting with 1 thread(s) still running model code: wsserve-stuck" in server.stderr_text()


async def test_a_server_whose_generation_step_never_returns_still_stops(tmp_path: Path) -> None:
    assert NEVER_STEPS_PY != BIGRAM_PY
    repo, fifo = fifo_repo(tmp_path)
    (repo / "gen").mkdir()
    (repo / "gen" / "config.toml").write_text(BIGRAM_CONFIG)
    write_py(repo / "gen" / "1", NEVER_STEPS_PY, **{"seed.txt": "3", "fifo.txt": str(fifo)})
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--drain-timeout-s", "1") as server:
        conn = await Conn.open(server.url)
        await conn.send({"type": "generate", "id": "held", "model": "gen", "prompt": "h", "max_tokens": 4})
        wait_until(lambda: Path(f"{fifo}.started").exists(), 30, what="the generation step is blocked")
        # the model does not say what a token costs: its steps run in a thread, so the event loop
        # still serves everyone else (it used to run steps of up to 64 sequences inline)
        other = await Conn.open(server.url)
        pong = await other.request({"type": "ping", "id": "p"})
        assert pong["type"] == "pong", pong
        await other.close()
        with stops_cleanly(server, fifo):
            last = await reply_to(conn, "held")  # ended at the drain deadline
            assert (last["type"], last["code"]) == ("error", "shutting_down"), last
        assert "gave up waiting for the models to stop" in server.stderr_text()
        assert "exiting with 1 thread(s) still running model code: wsserve-generate" in server.stderr_text()
