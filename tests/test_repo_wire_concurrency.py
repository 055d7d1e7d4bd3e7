"""One model's slow or hung load holds up that model only (a real server, ``--reload``).

Each model's changes (hot reload, admin operations) run one after the other, in order; different
models do not wait for each other.  A ``Model()`` held by a gate (:data:`~tests.repo_models.GATED_PY`'s
``init_gate.txt``) stands for a load that takes long.  (Model code that never returns, at
shutdown: test_shutdown_stuck_models.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.repo_models import (
    AFFINE_CONFIG,
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
