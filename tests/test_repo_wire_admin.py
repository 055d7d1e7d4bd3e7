"""Admin operations over the socket (``load``, ``unload``, ``reload``), who may use them, and
how the repository sits next to the built-in models.

- Without keys: allowed from loopback (these tests run on loopback; the refusal of other
  addresses is unit-tested on the connection core in test_connection.py).
- ``--admin-key K``: allowed with K (handshake ``Authorization: Bearer K`` or an ``auth``
  message), ``forbidden`` with an ordinary API key or none.
- ``--models none`` serves only the repository; a repository model named like a built-in
  one is refused with a log line saying why, and the built-in serves.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import websockets

from tests.repo_models import AFFINE_CONFIG, AFFINE_PY, GATED_PY, affine, write_affine
from tests.repo_wire import models_http, predict, states, wait_models
from tests.support import ROOT, Conn, ServerProcess, child_env, http_get, wait_until

ROWS = [[1.0, 2.0, 3.0]]
ADMIN = "admin-key-0123456789"
API = "api-key-9876543210"
FORBIDDEN = "{op} needs the admin key (--admin-key), or loopback when no keys are configured"


def make_repo(root: Path) -> Path:
    (root / "adm").mkdir(parents=True)
    (root / "adm" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(root / "adm" / "1", bias=1.0)
    write_affine(root / "adm" / "2", bias=2.0)
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="module")
def open_server(repo: Path, module_transport: str) -> Iterator[ServerProcess]:
    """No keys at all: admin operations are allowed from loopback."""
    with ServerProcess("--models", "none", "--model-repository", str(repo), transport=module_transport) as srv:
        yield srv


async def admin(conn: Conn, op: str, rid: Any, model: str | None = "adm", **fields: Any) -> dict[str, Any]:
    msg = {"type": op, "id": rid, **fields}
    if model is not None:
        msg["model"] = model
    await conn.send(msg)
    while True:  # replies to admin operations may follow other frames
        frame = await conn.recv(30)
        if frame.get("id") == rid:
            return frame


def version_list(reply: dict[str, Any]) -> dict[str, str]:
    return {v["version"]: v["state"] for v in reply["versions"]}


def close(outputs: Any, expected: Any) -> None:
    np.testing.assert_allclose(np.asarray(outputs), expected, rtol=1e-12)


# --------------------------------------------------------------------------- the operations (no keys, loopback)


async def test_unload_and_load_a_version(open_server: ServerProcess) -> None:
    conn = await Conn.open(open_server.url)
    reply = await admin(conn, "unload", "u", version=2)
    assert {k: reply[k] for k in ("type", "id", "ok", "model")} == {"type": "unload", "id": "u", "ok": True, "model": "adm"}
    assert version_list(reply) in ({"1": "ready", "2": "unloading"}, {"1": "ready"})
    wait_models(open_server, "adm", "version 2 unloaded", lambda e: states(e) == {"1": "ready"})
    r = await predict(conn, 1, "adm", ROWS)
    assert r["version"] == "1"
    close(r["outputs"], affine(ROWS, 1.0))
    pinned = await predict(conn, 2, "adm", ROWS, version=2)
    assert (pinned["code"], pinned["message"]) == ("unknown_model", "model 'adm' has no version '2'; available: 1")
    for rid, pin in (("l1", 2), ("l2", "2")):  # the version as an integer or a string; loading a loaded one is a no-op
        reply = await admin(conn, "load", rid, version=pin)
        assert (reply["type"], reply["ok"], version_list(reply)) == ("load", True, {"1": "ready", "2": "ready"})
    r = await predict(conn, 3, "adm", ROWS)
    assert r["version"] == "2"
    close(r["outputs"], affine(ROWS, 2.0))
    await conn.close()


async def test_reload_reads_the_files_again(open_server: ServerProcess, repo: Path) -> None:
    conn = await Conn.open(open_server.url)
    (repo / "adm" / "2" / "bias.txt").write_text("20.0")  # no --reload: nothing happens by itself
    r = await predict(conn, 1, "adm", ROWS)
    close(r["outputs"], affine(ROWS, 2.0))
    reply = await admin(conn, "reload", "r", version="2")
    assert (reply["type"], reply["ok"], version_list(reply)) == ("reload", True, {"1": "ready", "2": "ready"})
    r = await predict(conn, 2, "adm", ROWS)
    assert r["version"] == "2"
    close(r["outputs"], affine(ROWS, 20.0))
    (repo / "adm" / "1" / "bias.txt").write_text("10.0")
    (repo / "adm" / "2" / "bias.txt").write_text("2.0")
    reply = await admin(conn, "reload", "all")  # every version of the model
    assert version_list(reply) == {"1": "ready", "2": "ready"}
    for pin, bias in ((1, 10.0), (2, 2.0)):
        r = await predict(conn, pin, "adm", ROWS, version=pin)
        close(r["outputs"], affine(ROWS, bias))
    (repo / "adm" / "1" / "bias.txt").write_text("1.0")
    await admin(conn, "reload", "back", version=1)
    await conn.close()


async def test_unload_a_whole_model_then_load_it_again(open_server: ServerProcess) -> None:
    conn = await Conn.open(open_server.url)
    reply = await admin(conn, "unload", "u")
    assert reply["ok"] is True and set(version_list(reply).values()) <= {"unloading"}
    wait_models(open_server, "adm", "not listed", lambda e: e is None)
    r = await predict(conn, 1, "adm", ROWS)
    assert r["code"] == "unknown_model" and r["message"].startswith("no model named 'adm'")
    again = await admin(conn, "unload", "u2")
    assert (again["type"], again["code"], again["message"]) == ("error", "unknown_model", "no model named 'adm' is loaded")
    reply = await admin(conn, "load", "l")
    assert (reply["type"], reply["ok"], version_list(reply)) == ("load", True, {"1": "ready", "2": "ready"})
    assert models_http(open_server)["adm"]["version"] == "2"
    assert (await predict(conn, 2, "adm", ROWS))["version"] == "2"
    await conn.close()


@pytest.mark.parametrize("whole_model", [False, True], ids=["version", "model"])
async def test_load_right_after_unload_serves_again_while_the_old_copy_finishes(tmp_path: Path, whole_model: bool) -> None:
    """A ``load`` of a version still ``unloading`` (work in flight) loads it anew: it is not
    "already loaded", and the old copy's end must not take the new one with it."""
    repo, gate = tmp_path / "repository", tmp_path / "gate"
    (repo / "g").mkdir(parents=True)
    (repo / "g" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "g" / "1", bias=2.0, source=GATED_PY, **{"gate.txt": str(gate)})
    with ServerProcess("--models", "none", "--model-repository", str(repo)) as server:
        conn = await Conn.open(server.url)
        held = [[-1.0, 0.0, 0.0]]
        await conn.send({"type": "predict", "id": "held", "model": "g", "inputs": held})
        wait_until(lambda: Path(f"{gate}.started").exists(), 30, what="the held predict started")
        pin = {} if whole_model else {"version": 1}
        reply = await admin(conn, "unload", "u", model="g", **pin)
        assert version_list(reply) == {"1": "unloading"}, reply
        reply = await admin(conn, "load", "l", model="g", **pin)
        assert (reply["type"], reply.get("ok"), version_list(reply)) == ("load", True, {"1": "ready"}), reply
        r = await predict(conn, "new", "g", ROWS)  # the new copy serves while the old one holds its request
        assert (r["type"], r["version"]) == ("result", "1"), r
        close(r["outputs"], affine(ROWS, 2.0))
        gate.touch()
        (done,) = (await conn.collect({"held"}))["held"]
        assert (done["type"], done["version"]) == ("result", "1"), done
        close(done["outputs"], affine(held, 2.0))
        wait_until(lambda: "unloaded model 'g' version 1" in server.stderr_text(), 30, what="the old copy closed")
        assert states(models_http(server).get("g")) == {"1": "ready"}
        r = await predict(conn, "after", "g", ROWS)
        assert (r["type"], r["version"]) == ("result", "1"), r
        await conn.close()


async def test_unloading_a_model_whose_only_version_failed_takes_it_off_the_list(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    (repo / "broken").mkdir(parents=True)
    (repo / "broken" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "broken" / "1", bias=1.0, source="raise RuntimeError('no weights')\n")
    with ServerProcess("--models", "none", "--model-repository", str(repo)) as server:
        assert states(models_http(server)["broken"]) == {"1": "failed"}
        conn = await Conn.open(server.url)
        reply = await admin(conn, "unload", "u", model="broken")
        assert (reply["ok"], reply["versions"]) == (True, []), reply
        assert "broken" not in models_http(server)  # it used to stay listed with no versions
        await conn.close()


SLOW_CLOSE_PY = AFFINE_PY + '''
    def close(self):  # holds until the gate named in close_gate.txt exists (at most 60 s)
        import time
        gate = Path((Path(__file__).parent / "close_gate.txt").read_text().strip())
        Path(str(gate) + ".started").touch()
        end = time.monotonic() + 60
        while not gate.exists() and time.monotonic() < end:
            time.sleep(0.005)
'''


async def test_a_model_close_that_takes_long_does_not_stall_the_server(tmp_path: Path) -> None:
    """Model.close() is the model's own code: it runs off the event loop, so other models
    (and the admin reply) are served while it runs."""
    repo, gate = tmp_path / "repository", tmp_path / "close-gate"
    for name in ("slow", "other"):
        (repo / name).mkdir(parents=True)
        (repo / name / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "slow" / "1", bias=1.0, source=SLOW_CLOSE_PY, **{"close_gate.txt": str(gate)})
    write_affine(repo / "other" / "1", bias=3.0)
    with ServerProcess("--models", "none", "--model-repository", str(repo)) as server:
        conn = await Conn.open(server.url)
        reply = await admin(conn, "unload", "u", model="slow")
        assert reply["ok"] is True, reply
        wait_until(lambda: Path(f"{gate}.started").exists(), 30, what="Model.close() started")
        r = await predict(conn, "o", "other", ROWS)  # while close() runs
        assert (r["type"], r["version"]) == ("result", "1"), r
        close(r["outputs"], affine(ROWS, 3.0))
        assert states(models_http(server)["slow"]) == {"1": "unloading"}
        gate.touch()
        wait_models(server, "slow", "gone once closed", lambda e: e is None)
        await conn.close()


@pytest.mark.parametrize("msg, code, message", [
    ({"type": "load", "model": "zzz"}, "unknown_model", "no model named 'zzz' in the model repository"),
    ({"type": "load", "model": "adm", "version": 9}, "unknown_model", "model 'adm' has no version '9' in the repository"),
    ({"type": "reload", "model": "adm", "version": "v2"}, "unknown_model", "model 'adm' has no version 'v2' in the repository"),
    # not canonical version numbers (str.isdigit() holds for them): no version of the repository, not internal
    ({"type": "load", "model": "adm", "version": "\u00b2"}, "unknown_model", "model 'adm' has no version '\u00b2' in the repository"),
    ({"type": "reload", "model": "adm", "version": "\u0662"}, "unknown_model", "model 'adm' has no version '\u0662' in the repository"),
    ({"type": "reload", "model": "adm", "version": "02"}, "unknown_model", "model 'adm' has no version '02' in the repository"),
    ({"type": "unload", "model": "adm", "version": "7"}, "unknown_model", "model 'adm' has no version '7'"),
    ({"type": "load"}, "bad_request", "missing field 'model'"),
    ({"type": "unload", "model": "adm", "version": 0}, "bad_request", "field 'version' must be a positive integer or a string, got 0"),
    ({"type": "reload", "model": "adm", "version": 1.5}, "bad_request", "field 'version' must be a string or an integer, got number"),
])
async def test_admin_errors_name_the_problem(open_server: ServerProcess, msg: dict[str, Any], code: str, message: str) -> None:
    conn = await Conn.open(open_server.url)
    reply = await conn.request({**msg, "id": "e"})
    assert (reply["type"], reply["id"], reply["code"], reply["message"]) == ("error", "e", code, message)
    assert (await predict(conn, 1, "adm", ROWS))["type"] == "result"  # nothing changed
    assert states(models_http(open_server)["adm"]) == {"1": "ready", "2": "ready"}
    await conn.close()


# --------------------------------------------------------------------------- with keys


@pytest.fixture(scope="module")
def admin_only_server(repo: Path, module_transport: str) -> Iterator[ServerProcess]:
    """An admin key and no API keys: anyone may predict, only K may administer."""
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--admin-key", ADMIN,
                       transport=module_transport) as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed_server(repo: Path, module_transport: str) -> Iterator[ServerProcess]:
    """API keys and an admin key."""
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--api-key", API,
                       "--admin-key", ADMIN, transport=module_transport) as srv:
        yield srv


def bearer(key: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {key}"}}


@pytest.mark.parametrize("op", ["load", "unload", "reload"])
async def test_an_admin_key_is_needed_when_keys_are_configured(admin_only_server: ServerProcess, keyed_server: ServerProcess,
                                                               op: str) -> None:
    for server, how in ((admin_only_server, {}), (keyed_server, bearer(API))):
        conn = await Conn.open(server.url, **how)
        reply = await admin(conn, op, "x", version=1)
        assert (reply["type"], reply["id"], reply["code"], reply["message"]) == ("error", "x", "forbidden",
                                                                                 FORBIDDEN.format(op=op))
        assert (await predict(conn, 1, "adm", ROWS))["type"] == "result"  # an ordinary client, served as before
        await conn.close()
    assert states(models_http(keyed_server, API)["adm"]) == {"1": "ready", "2": "ready"}  # nothing was done


async def _cycle(conn: Conn, server: ServerProcess, key: str | None) -> None:
    """unload version 1, load it back, reload it: each succeeds."""
    reply = await admin(conn, "unload", "u", version=1)
    assert reply["ok"] is True, reply
    wait_models(server, "adm", "version 1 unloaded", lambda e: "1" not in states(e), key=key)
    reply = await admin(conn, "load", "l", version="1")
    assert (reply["ok"], version_list(reply)) == (True, {"1": "ready", "2": "ready"}), reply
    reply = await admin(conn, "reload", "r", version=1)
    assert (reply["ok"], version_list(reply)) == (True, {"1": "ready", "2": "ready"}), reply


@pytest.mark.parametrize("via", ["bearer", "auth"])
async def test_the_admin_key_may_load_unload_and_reload(admin_only_server: ServerProcess, keyed_server: ServerProcess,
                                                        via: str) -> None:
    for server, api in ((admin_only_server, None), (keyed_server, API)):
        if via == "bearer":
            conn = await Conn.open(server.url, **bearer(ADMIN))
        else:
            conn = await Conn.open(server.url, **({} if api is None else bearer(api)))
            if api is not None:  # an ordinary key first: refused, then the admin key by message
                assert (await admin(conn, "load", "no", version=1))["code"] == "forbidden"
            assert await conn.request({"type": "auth", "id": "a", "token": ADMIN}) == {"type": "auth", "id": "a", "ok": True}
        await _cycle(conn, server, api)
        assert (await predict(conn, 1, "adm", ROWS))["type"] == "result"  # the admin key is an API key too
        await conn.close()


async def test_a_wrong_key_on_the_handshake_is_refused(admin_only_server: ServerProcess) -> None:
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        await Conn.open(admin_only_server.url, **bearer("not-the-key"))
    assert info.value.response.status_code == 401


# --------------------------------------------------------------------------- the repository and the built-in models


async def test_models_none_serves_only_the_repository(open_server: ServerProcess) -> None:
    conn = await Conn.open(open_server.url)
    assert conn.hello["models"] == ["adm"]
    assert list(models_http(open_server)) == ["adm"]
    r = await predict(conn, 1, "linear", [[0.5]])
    assert (r["code"], r["message"]) == ("unknown_model", "no model named 'linear'; known: adm")
    await conn.close()


def test_models_none_without_a_repository_is_refused_by_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "wsserve", "serve", "--models", "none", "--port", "0"], cwd=ROOT,
                         env=child_env(), capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "--models none needs --model-repository: nothing would be served" in out.stderr


async def test_a_repository_model_named_like_a_built_in_one_is_refused(tmp_path: Path, model_cache: Path) -> None:
    repo = make_repo(tmp_path / "repository")
    (repo / "linear").mkdir()
    (repo / "linear" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "linear" / "1", bias=100.0)
    with ServerProcess("--models", "linear", "--model-repository", str(repo), cache_dir=model_cache) as server:
        log = server.stderr_text()
        line = next((ln for ln in log.splitlines() if "model 'linear' in " in ln), "")
        assert f"model 'linear' in {repo} is ignored: " in line and "already serves a model of that name" in line, log
        assert " ERROR " in line
        listed = models_http(server)
        assert sorted(listed) == ["adm", "linear"]
        builtin = listed["linear"]
        assert builtin["input_shape"] == [1] and "weight" in builtin["metrics"]  # the trained one, not the file's
        conn = await Conn.open(server.url)
        r = await predict(conn, 1, "linear", [[0.5], [2.0]])
        weight, bias = builtin["metrics"]["weight"], builtin["metrics"]["bias"]
        np.testing.assert_allclose(r["outputs"], [[weight * 0.5 + bias], [weight * 2.0 + bias]], rtol=1e-6)
        assert (await predict(conn, 2, "linear", ROWS))["code"] == "invalid_input"  # not the repository's [3] rows
        assert (await predict(conn, 3, "adm", ROWS))["type"] == "result"  # the rest of the repository serves
        assert orjson.loads(http_get(server.http + "/v1/models")[2])[0]["name"] == "linear"  # built-ins first
        await conn.close()
