"""What the model-repository wire tests share: reading ``models`` and waiting for a model's states."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from tests.repo_models import AFFINE_CONFIG, write_affine
from tests.support import ServerProcess, http_get, wait_until

__all__ = ["models_http", "predict", "states", "wait_models", "wait_watching"]


def models_http(server: ServerProcess, key: str | None = None) -> dict[str, dict[str, Any]]:
    """``GET /v1/models`` by name; asserts one entry per model name."""
    status, _, body = http_get(server.http + "/v1/models", key=key)
    assert status == 200, (status, body)
    listed = orjson.loads(body)
    names = [m["name"] for m in listed]
    assert len(names) == len(set(names)), f"a model is listed twice: {names}"
    return {m["name"]: m for m in listed}


def states(entry: dict[str, Any] | None) -> dict[str, str]:
    """``{version: state}`` of one ``models`` entry (``{}`` for a model not listed)."""
    return {} if entry is None else {v["version"]: v["state"] for v in entry["versions"]}


def wait_models(server: ServerProcess, name: str, what: str, predicate: Any, timeout_s: float = 30.0,
                key: str | None = None) -> dict[str, Any] | None:
    """Wait until ``predicate(entry)`` (the model's ``models`` entry, or None when it is not
    listed) holds; return that entry.  ``what`` names the condition in the failure."""
    found: list[dict[str, Any] | None] = []

    def check() -> bool:
        entry = models_http(server, key).get(name)
        found[:] = [entry]
        return bool(predicate(entry))

    try:
        wait_until(check, timeout_s, interval_s=0.05, what=f"model {name!r}: {what}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast entry: {found}\nserver log:\n{server.stderr_text()[-4000:]}") from None
    return found[0]


async def predict(conn: Any, rid: Any, model: str, inputs: Any, **fields: Any) -> dict[str, Any]:
    """One predict on a :class:`tests.support.Conn`; its terminal frame."""
    await conn.send({"type": "predict", "id": rid, "model": model, "inputs": inputs, **fields})
    _, last = await conn.until_terminal(rid)
    return last


def wait_watching(server: ServerProcess, repo: Path, timeout_s: float = 30.0) -> None:
    """Return once ``server``'s ``--reload`` watcher sees changes under ``repo``.

    A change made before the watcher is in place is missed (no event), a later one is not: so
    a probe model (``repo/probe``) is added, then a file in it rewritten until ``models`` lists it.
    """
    version = repo / "probe" / "1"
    if not version.exists():
        (repo / "probe").mkdir()
        (repo / "probe" / "config.toml").write_text(AFFINE_CONFIG)
        write_affine(version, bias=0.0)

    def listed() -> bool:
        (version / "tick.txt").write_text(str(time.monotonic_ns()))
        return "probe" in models_http(server)

    wait_until(listed, timeout_s, interval_s=0.25, what=f"the --reload watcher sees {repo}")
