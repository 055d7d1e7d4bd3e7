"""One model's slow or hung load holds up that model only (a real server, ``--reload``).

Each model's changes (hot reload, admin operations) run one after the other, in order; different
models do not wait for each other.  A ``Model()`` held by a gate (:data:`~tests.repo_models.GATED_PY`'s
``init_gate.txt``) stands for a load that takes long; one blocked reading a FIFO nobody writes to
stands for one that never returns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tests.repo_models import (
    AFFINE_CONFIG,
    AFFINE_PY,
    GATED_PY,
    affine,
    move_in,
    write_affine,
)
from tests.repo_wire import models_http, predict, states, wait_models, wait_watching
from tests.support import Conn, ServerProcess, wait_until

ROWS = [[1.0, 2.0, 3.0]]


async def reply_to(conn: Conn, rid: str) -> dict[str, Any]:
    """The frame answering ``rid`` (other frames may come first)."""
    while True:
        frame = await conn.recv(30)
        if frame.get("id") == rid:
            return frame


def versions(reply: dict[str, Any]) -> dict[str, str]:
    return {v["version"]: v["state"] for v in reply["versions"]}


async def test_a_load_that_hangs_holds_up_only_its_own_model(tmp_path: Path) -> None:
    repo, gate = tmp_path / "repository", tmp_path / "init-gate"
    for name in ("slow", "other"):
        (repo / name).mkdir(parents=True)
        (repo / name / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "slow" / "1", bias=1.0, source=GATED_PY, **{"gate.txt": str(tmp_path / "unused")})
    write_affine(repo / "other" / "1", bias=3.0)
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--reload") as server:
        wait_watching(server, repo)
        # slow's next Model() waits for the gate: an admin reload of it is held (the watcher sees the
        # new file too and queues its own reload of slow behind or ahead of it: slow's business)
        (repo / "slow" / "1" / "init_gate.txt").write_text(str(gate))
        held, conn = await Conn.open(server.url), await Conn.open(server.url)
        await held.send({"type": "reload", "id": "slow", "model": "slow"})
        wait_until(lambda: Path(f"{gate}.started").exists(), 30, what="slow's Model() is held")

        # an admin operation on another model is answered meanwhile
        await conn.send({"type": "reload", "id": "other", "model": "other"})
        reply = await reply_to(conn, "other")
        assert (reply["type"], reply.get("ok"), versions(reply)) == ("reload", True, {"1": "ready"}), reply
        # a hot-reload change to another model is applied meanwhile
        build = repo / "other" / ".2.tmp"
        write_affine(build, bias=4.0)
        move_in(build, repo / "other" / "2")
        wait_models(server, "other", "version 2 the default", lambda e: e is not None and e["version"] == "2")
        r = await predict(conn, "p", "other", ROWS)
        assert (r["type"], r["version"]) == ("result", "2"), r
        np.testing.assert_allclose(r["outputs"], affine(ROWS, 4.0), rtol=1e-12)
        r = await predict(conn, "s", "slow", ROWS)  # its old copy serves while the new one is held
        assert (r["type"], r["version"]) == ("result", "1"), r

        gate.touch()  # slow's load finishes, and then its reload is answered
        reply = await reply_to(held, "slow")
        assert (reply["type"], reply.get("ok"), versions(reply)) == ("reload", True, {"1": "ready"}), reply
        r = await predict(held, "q", "slow", ROWS)
        assert (r["type"], r["version"]) == ("result", "1"), r
        np.testing.assert_allclose(r["outputs"], affine(ROWS, 1.0), rtol=1e-12)
        await held.close()
        await conn.close()


async def test_an_admin_unload_waits_for_the_model_s_load_in_progress_then_wins(tmp_path: Path) -> None:
    """Changes to one model keep their order: an ``unload`` sent while a new version is loading
    (moved in, hot reload) runs after that load, and the model is then gone, not served again."""
    repo, gate = tmp_path / "repository", tmp_path / "init-gate"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "m" / "1", bias=1.0)
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--reload") as server:
        wait_watching(server, repo)
        build = repo / "m" / ".2.tmp"
        write_affine(build, bias=2.0, source=GATED_PY, **{"gate.txt": str(tmp_path / "unused"), "init_gate.txt": str(gate)})
        move_in(build, repo / "m" / "2")
        wait_until(lambda: Path(f"{gate}.started").exists(), 30, what="version 2's Model() is held")
        conn = await Conn.open(server.url)
        await conn.send({"type": "unload", "id": "u", "model": "m"})
        assert states(models_http(server)["m"]) == {"1": "ready", "2": "loading"}
        gate.touch()
        reply = await reply_to(conn, "u")
        assert (reply["type"], reply.get("ok")) == ("unload", True), reply
        assert set(versions(reply).values()) <= {"unloading"}, reply
        wait_models(server, "m", "gone", lambda e: e is None)
        (repo / "m" / "2" / "touched.txt").write_text("a change after the unload")  # stays unloaded
        (repo / "later").mkdir()  # a model added after that change: once it serves, the change was seen
        (repo / "later" / "config.toml").write_text(AFFINE_CONFIG)
        write_affine(repo / "later" / "1", bias=5.0)
        wait_models(server, "later", "served", lambda e: states(e) == {"1": "ready"})
        assert "m" not in models_http(server)
        await conn.close()


NEVER_PY = AFFINE_PY.replace(
    "    def __init__(self, version_dir):\n",
    "    def __init__(self, version_dir):\n"
    "        open((Path(version_dir) / 'fifo.txt').read_text().strip()).read()  # nobody writes to it\n",
)


async def test_a_server_whose_model_load_never_returns_still_stops(tmp_path: Path) -> None:
    """SIGTERM drains and exits though a ``Model()`` never returns (its thread is abandoned)."""
    assert NEVER_PY != AFFINE_PY
    repo, fifo = tmp_path / "repository", tmp_path / "fifo"
    os.mkfifo(fifo)
    (repo / "ok").mkdir(parents=True)
    (repo / "ok" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "ok" / "1", bias=1.0)
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
        try:
            assert server.stop(timeout_s=30) == 0, server.stderr_text()[-3000:]
        finally:  # let the thread go if the server did not exit (the test failed)
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) if server.proc.poll() is None else None
            if fd is not None:
                os.close(fd)


NEVER_CLOSES_PY = AFFINE_PY + """
    def close(self):  # never returns: nobody writes to the FIFO
        open((Path(__file__).parent / "fifo.txt").read_text().strip()).read()
"""


async def test_a_server_whose_model_close_never_returns_still_stops(tmp_path: Path) -> None:
    """An unloaded version's ``Model.close()`` that never returns is abandoned at shutdown, after
    the drain deadline, rather than holding the process forever."""
    repo, fifo = tmp_path / "repository", tmp_path / "fifo"
    os.mkfifo(fifo)
    (repo / "stuck").mkdir(parents=True)
    (repo / "stuck" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "stuck" / "1", bias=1.0, source=NEVER_CLOSES_PY, **{"fifo.txt": str(fifo)})
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--drain-timeout-s", "1") as server:
        conn = await Conn.open(server.url)
        await conn.send({"type": "unload", "id": "u", "model": "stuck"})
        reply = await reply_to(conn, "u")
        assert (reply["type"], reply.get("ok")) == ("unload", True), reply
        await conn.close()
        try:
            assert server.stop(timeout_s=30) == 0, server.stderr_text()[-3000:]
        finally:  # let the thread go if the server did not exit (the test failed)
            if server.proc.poll() is None:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        assert "gave up waiting for 1 unloading model version(s)" in server.stderr_text()
        assert "stuck-1" in server.stderr_text()
