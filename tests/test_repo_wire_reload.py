"""Hot reload (``--reload``) over the wire: versions moved in, deleted, broken; config.toml changed.

One server watches one repository; each test works on models of its own, added to the
repository while the server runs (built under a hidden name, then moved in with one rename,
as an operator does).  Work is held in flight, or a version held ``loading``, with gate files
(tests/repo_models.py ``GATED_PY``): the test decides when it may go on, so nothing depends
on timing.  Every wait is a predicate on ``GET /v1/models`` (or the log).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.repo_models import (
    AFFINE_CONFIG,
    GATED_PY,
    RAISES_PY,
    WARMUP_FAILS_PY,
    affine,
    move_in,
    remove_version,
    write_affine,
    write_py,
)
from tests.repo_wire import models_http, predict, states, wait_models, wait_watching
from tests.support import Conn, ServerProcess, wait_until

ROWS = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    (root / "seed").mkdir()  # something to serve at start-up
    (root / "seed" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(root / "seed" / "1", bias=0.0)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--reload") as srv:
        wait_watching(srv, repo)
        yield srv


@pytest.fixture
async def conn(server: ServerProcess) -> Any:
    c = await Conn.open(server.url)
    yield c
    await c.close()


@pytest.fixture
def gates(tmp_path: Path) -> Path:
    """A directory outside the repository for gate files."""
    return tmp_path


def add_model(server: ServerProcess, repo: Path, name: str, versions: dict[int, Any], config: str = AFFINE_CONFIG) -> None:
    """Add model ``name`` (``versions``: number -> writer of the version directory) with one
    rename, and wait until every version is ready."""
    build = repo / f".{name}.tmp"
    build.mkdir()
    (build / "config.toml").write_text(config)
    for version, write in versions.items():
        write(build / str(version))
    os.rename(build, repo / name)
    want = {str(v): "ready" for v in versions}
    wait_models(server, name, f"versions {want}", lambda e: states(e) == want)


def close(outputs: Any, expected: Any) -> None:
    np.testing.assert_allclose(np.asarray(outputs, dtype=np.float64), expected, rtol=1e-9)


# --------------------------------------------------------------------------- new versions


async def test_a_version_moved_in_loads_in_the_background_then_becomes_the_default(
        server: ServerProcess, repo: Path, conn: Conn, gates: Path) -> None:
    add_model(server, repo, "swap", {1: lambda d: write_affine(d, bias=1.0)})
    init_gate = gates / "init"
    build = repo / "swap" / ".2.tmp"
    write_affine(build, bias=2.0, source=GATED_PY, **{"gate.txt": str(gates / "unused"), "init_gate.txt": str(init_gate)})
    move_in(build, repo / "swap" / "2")
    # Model() of version 2 is running (held): version 2 is loading, version 1 serves.
    entry = wait_models(server, "swap", "version 2 loading", lambda e: states(e).get("2") == "loading")
    assert entry is not None and entry["version"] == "1" and states(entry) == {"1": "ready", "2": "loading"}
    wait_until(lambda: Path(f"{init_gate}.started").exists(), 30, what="Model() of version 2 started")
    r = await predict(conn, 1, "swap", ROWS)
    assert r["version"] == "1"
    close(r["outputs"], affine(ROWS, 1.0))
    pinned = await predict(conn, 2, "swap", ROWS, version=2)
    assert (pinned["code"], pinned["message"]) == ("unknown_model", "version '2' of model 'swap' is loading")
    init_gate.touch()  # let Model() finish: version 2 warms up, then becomes the default
    wait_models(server, "swap", "version 2 the default", lambda e: e["version"] == "2")
    assert states(models_http(server)["swap"]) == {"1": "ready", "2": "ready"}
    r = await predict(conn, 3, "swap", ROWS)
    assert r["version"] == "2"
    close(r["outputs"], affine(ROWS, 2.0))
    r = await predict(conn, 4, "swap", ROWS, version="1")  # the older version still serves when pinned
    assert r["version"] == "1"
    close(r["outputs"], affine(ROWS, 1.0))


# --------------------------------------------------------------------------- removed versions


async def test_a_deleted_version_finishes_its_work_then_leaves_and_the_previous_one_serves_again(
        server: ServerProcess, repo: Path, conn: Conn, gates: Path) -> None:
    gate = gates / "v2"
    add_model(server, repo, "retire", {
        1: lambda d: write_affine(d, bias=1.0),
        2: lambda d: write_affine(d, bias=2.0, source=GATED_PY, **{"gate.txt": str(gate)}),
    })
    # Two requests for version 2: the first is held in its predict, the second waits behind it.
    held = [[-1.0, 0.0, 0.0]]
    await conn.send({"type": "predict", "id": "held", "model": "retire", "inputs": held})
    wait_until(lambda: Path(f"{gate}.started").exists(), 30, what="version 2's predict started")
    await conn.send({"type": "predict", "id": "queued", "model": "retire", "inputs": ROWS})
    remove_version(repo / "retire" / "2")
    entry = wait_models(server, "retire", "version 2 unloading", lambda e: states(e).get("2") == "unloading")
    assert entry is not None and entry["version"] == "1" and states(entry) == {"1": "ready", "2": "unloading"}
    # New requests go to version 1; version 2 takes none.
    r = await predict(conn, "new", "retire", ROWS)
    assert r["version"] == "1"
    close(r["outputs"], affine(ROWS, 1.0))
    pinned = await predict(conn, "pin", "retire", ROWS, version=2)
    assert (pinned["code"], pinned["message"]) == ("unknown_model", "version '2' of model 'retire' is unloading")
    assert not [f for f in conn.frames if f.get("id") in ("held", "queued")]  # still in flight
    gate.touch()
    done = await conn.collect({"held", "queued"})
    for rid, rows in (("held", held), ("queued", ROWS)):
        (result,) = done[rid]
        assert (result["type"], result["version"]) == ("result", "2"), result
        close(result["outputs"], affine(rows, 2.0))
    wait_models(server, "retire", "version 2 gone", lambda e: states(e) == {"1": "ready"})
    r = await predict(conn, "last", "retire", ROWS, version=2)
    assert (r["code"], r["message"]) == ("unknown_model", "model 'retire' has no version '2'; available: 1")


async def test_a_deleted_model_leaves_the_list(server: ServerProcess, repo: Path, conn: Conn) -> None:
    add_model(server, repo, "gone", {1: lambda d: write_affine(d, bias=0.0)})
    remove_version(repo / "gone")
    wait_models(server, "gone", "not listed", lambda e: e is None)
    r = await predict(conn, 1, "gone", ROWS)
    assert r["code"] == "unknown_model" and r["message"].startswith("no model named 'gone'")
    assert (await predict(conn, 2, "seed", ROWS))["type"] == "result"


async def test_a_deleted_model_whose_versions_all_failed_leaves_the_list(server: ServerProcess, repo: Path) -> None:
    build = repo / ".broken.tmp"
    build.mkdir()
    (build / "config.toml").write_text(AFFINE_CONFIG)
    write_py(build / "1", RAISES_PY)
    os.rename(build, repo / "broken")
    wait_models(server, "broken", "version 1 failed", lambda e: states(e) == {"1": "failed"})
    remove_version(repo / "broken")
    # it used to stay listed for good, as {"name": "broken", "version": null, "versions": []}
    wait_models(server, "broken", "not listed", lambda e: e is None)


async def test_a_repository_directory_replaced_as_a_whole_is_watched_again(tmp_path: Path) -> None:
    """``mv repo repo.old && mv repo.new repo``: the watches were on the old directory; the
    new one is watched too (it used to be never rescanned again: new models never loaded)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "first").mkdir()
    (repo / "first" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "first" / "1", bias=1.0)
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--reload") as server:
        wait_watching(server, repo)
        new = tmp_path / "repo.new"
        new.mkdir()
        (new / "first").mkdir()
        (new / "first" / "config.toml").write_text(AFFINE_CONFIG)
        write_affine(new / "first" / "1", bias=1.0)
        os.rename(repo, tmp_path / "repo.old")
        os.rename(new, repo)
        wait_models(server, "probe", "gone with the old directory", lambda e: e is None)
        build = repo / ".second.tmp"  # a change made inside the new directory afterwards
        build.mkdir()
        (build / "config.toml").write_text(AFFINE_CONFIG)
        write_affine(build / "1", bias=2.0)
        os.rename(build, repo / "second")
        wait_models(server, "second", "loaded from the new directory", lambda e: states(e) == {"1": "ready"})
        conn = await Conn.open(server.url)
        r = await predict(conn, 1, "second", ROWS)
        close(r["outputs"], affine(ROWS, 2.0))
        assert (await predict(conn, 2, "first", ROWS))["type"] == "result"
        # gone for a while (what it served keeps serving, the error is logged), then back
        os.rename(repo, tmp_path / "repo.away")
        wait_until(lambda: f"{repo}: cannot be listed" in server.stderr_text(), 30, what="the missing directory is logged")
        assert (await predict(conn, 3, "second", ROWS))["type"] == "result"
        os.rename(tmp_path / "repo.away", repo)
        (repo / "second" / "config.toml").write_text(AFFINE_CONFIG.replace('"regression"', '"other"'))
        wait_models(server, "second", "reloaded from the directory that came back", lambda e: e["task"] == "other")
        await conn.close()


# --------------------------------------------------------------------------- config.toml


async def test_a_changed_config_toml_reloads_the_model(server: ServerProcess, repo: Path, conn: Conn) -> None:
    add_model(server, repo, "cfg", {1: lambda d: write_affine(d, bias=3.0), 2: lambda d: write_affine(d, bias=4.0)})
    assert models_http(server)["cfg"]["task"] == "regression"
    (repo / "cfg" / "config.toml").write_text(AFFINE_CONFIG.replace('"regression"', '"embedding"'))
    entry = wait_models(server, "cfg", "reloaded with task embedding", lambda e: e["task"] == "embedding")
    assert entry is not None and entry["version"] == "2" and states(entry) == {"1": "ready", "2": "ready"}
    await asyncio.to_thread(server.wait_logged, "serving model 'cfg' version 1")
    r = await predict(conn, 1, "cfg", ROWS)
    assert r["version"] == "2"
    close(r["outputs"], affine(ROWS, 4.0))
    # a policy in the new config: only the latest version stays
    (repo / "cfg" / "config.toml").write_text(AFFINE_CONFIG + 'version_policy = "latest"\n')
    wait_models(server, "cfg", "only version 2 left", lambda e: states(e) == {"2": "ready"})


async def test_a_config_toml_made_invalid_is_reported_and_the_model_serves_on_with_the_old_one(
        server: ServerProcess, repo: Path, conn: Conn) -> None:
    add_model(server, repo, "badcfg", {1: lambda d: write_affine(d, bias=5.0)})
    path = repo / "badcfg" / "config.toml"
    path.write_text(AFFINE_CONFIG + 'max_delay_ms = "soon"\n')
    logged = f"model 'badcfg': {path}: key 'max_delay_ms': "
    wait_until(lambda: logged in server.stderr_text(), 30, what="the config error is logged")
    line = next(ln for ln in server.stderr_text().splitlines() if logged in ln)
    assert line.startswith(tuple("0123456789")) and " ERROR wsserve.registry: " in line and "'soon'" in line, line
    entry = models_http(server)["badcfg"]
    assert entry["version"] == "1" and states(entry) == {"1": "ready"} and entry["task"] == "regression"
    r = await predict(conn, 1, "badcfg", ROWS)
    assert r["version"] == "1"
    close(r["outputs"], affine(ROWS, 5.0))
    path.write_text(AFFINE_CONFIG.replace('"regression"', '"other"'))  # fixed: reloaded under the new config
    wait_models(server, "badcfg", "reloaded with task other", lambda e: e["task"] == "other" and states(e) == {"1": "ready"})
    assert (await predict(conn, 2, "badcfg", ROWS))["type"] == "result"


# --------------------------------------------------------------------------- broken new versions


def _onnx_version(d_in: int) -> Any:
    def write(d: Path) -> None:
        pytest.importorskip("onnx")
        from tests import onnx_builders as ob

        ob.save(ob.linear_layer(d_in, 1)[0], d)

    return write


def _garbage_onnx(d: Path) -> None:
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"\x08\x07 not an ONNX protobuf")


BROKEN: dict[str, tuple[str, Any, Any, str]] = {
    # kind: (config, good version writer, broken version writer, the reason it fails)
    "file": ("input_shape = [3]\n", _onnx_version(3), _garbage_onnx, "{v}/model.onnx: ONNX Runtime cannot load it: "),
    "init": (AFFINE_CONFIG, lambda d: write_affine(d, bias=1.0), lambda d: write_py(d, RAISES_PY),
             "{v}/model.py: Model('{v}') raised RuntimeError: weights.bin is missing"),
    "shape": ("input_shape = [3]\n", _onnx_version(3), _onnx_version(4),
              "{v}/model.onnx: config.toml says input 'x' has shape [3]; the model's is [4]"),
    "warmup": (AFFINE_CONFIG, lambda d: write_affine(d, bias=1.0), lambda d: write_py(d, WARMUP_FAILS_PY),
               "{v}/model.py: warm-up failed: ValueError: an all-zero batch is not a valid input"),
    "nofile": (AFFINE_CONFIG, lambda d: write_affine(d, bias=1.0), lambda d: d.mkdir(parents=True),
               "{v}: holds no model file (model.onnx, model.npz, model.py)"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
async def test_a_broken_new_version_is_failed_with_its_reason_and_the_old_default_serves_on(
        server: ServerProcess, repo: Path, conn: Conn, kind: str) -> None:
    config, good, broken, reason = BROKEN[kind]
    name = f"broken_{kind}"
    add_model(server, repo, name, {1: good}, config=config)
    build = repo / name / ".2.tmp"
    broken(build)
    move_in(build, repo / name / "2")
    entry = wait_models(server, name, "version 2 failed", lambda e: states(e).get("2") == "failed")
    assert entry is not None and entry["version"] == "1" and states(entry) == {"1": "ready", "2": "failed"}
    why = entry["versions"][1]["reason"]
    reason = reason.format(v=repo / name / "2")
    assert why.startswith(reason) if reason.endswith(": ") else why == reason, why  # ": ": ONNX Runtime's text follows
    await asyncio.to_thread(server.wait_logged, f"model {name!r} version 2 failed to load: {why}")
    r = await predict(conn, 1, name, [[1.0, 2.0, 3.0]])
    assert (r["type"], r["version"]) == ("result", "1"), r
    pinned = await predict(conn, 2, name, [[1.0, 2.0, 3.0]], version="2")
    assert (pinned["code"], pinned["message"]) == ("unknown_model", f"version '2' of model {name!r} is failed ({why})")
    # Fixed in place: the failed version is retried when its files change, and becomes the default.
    fixed = repo / name / ".fixed.tmp"
    good(fixed)
    target = repo / name / "2"
    for stale in set(os.listdir(target)) - set(os.listdir(fixed)):
        (target / stale).unlink()
    for f in fixed.iterdir():
        os.replace(f, target / f.name)
    fixed.rmdir()
    wait_models(server, name, "version 2 fixed and the default", lambda e: e["version"] == "2")
    r = await predict(conn, 3, name, [[1.0, 2.0, 3.0]])
    assert (r["type"], r["version"]) == ("result", "2"), r


async def test_model_py_edited_in_place_is_reloaded(server: ServerProcess, repo: Path, conn: Conn) -> None:
    add_model(server, repo, "edit", {1: lambda d: write_affine(d, bias=1.0)})
    (repo / "edit" / "1" / "bias.txt").write_text("7.0")
    wait_models(server, "edit", "reloaded with bias 7", lambda e: e["metrics"] == {"bias": 7.0})
    r = await predict(conn, 1, "edit", ROWS)
    assert r["version"] == "1"
    close(r["outputs"], affine(ROWS, 7.0))
