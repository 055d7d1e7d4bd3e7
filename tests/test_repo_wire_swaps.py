"""No request is lost by version swaps: ten hot-reload swaps under ``wsserve loadtest`` (64 connections).

The model (tests/repo_models.py ``AFFINE_PY``) adds ``bias = version`` to its answer, so a reply
shows both the version it claims and the version that really computed it.  While the load
tool runs in its own process, the test moves in versions 2..11 one by one (each built under a
hidden name, then renamed), waits until each is the default, and deletes the one before.  A
raw client on a few more connections checks every reply: its ``version`` was present when the
request was in flight, and its outputs are that version's.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tests.repo_models import (
    AFFINE_CONFIG,
    affine,
    move_in,
    remove_version,
    write_affine,
)
from tests.repo_wire import states, wait_models, wait_watching
from tests.support import ROOT, Conn, ServerProcess, child_env, wait_until

SWAPS = 10
LOAD_S = 12  # the load tool's duration: long enough for the swaps (about 5 s in all here)


class Presence:
    """When each version could serve: from just before its rename until it was seen not ready."""

    def __init__(self) -> None:
        self.added: dict[str, float] = {"1": -math.inf}
        self.retired: dict[str, float] = {}

    def could_serve(self, version: str, sent: float, received: float) -> bool:
        return self.added.get(version, math.inf) <= received and sent <= self.retired.get(version, math.inf)


def swap_versions(server: ServerProcess, model_dir: Path, presence: Presence) -> None:
    """Versions 2..SWAPS+1 in turn: move in, wait until it is the default, delete the previous one."""
    for version in range(2, SWAPS + 2):
        build = model_dir / f".{version}.tmp"
        write_affine(build, bias=float(version))
        presence.added[str(version)] = time.monotonic()
        move_in(build, model_dir / str(version))
        wait_models(server, "hot", f"version {version} the default", lambda e, v=version: e["version"] == str(v))
        old = str(version - 1)
        remove_version(model_dir / old)
        wait_models(server, "hot", f"version {old} no longer ready", lambda e, v=old: states(e).get(v) != "ready")
        presence.retired[old] = time.monotonic()


async def raw_client(url: str, stop: asyncio.Event, replies: list[tuple[float, float, list[list[float]], dict[str, Any]]],
                     seed: int) -> None:
    """Single-row predicts, one at a time, until ``stop``; every reply kept with its times."""
    rng = np.random.default_rng(seed)
    conn = await Conn.open(url)
    rid = 0
    while not stop.is_set():
        rid += 1
        rows = rng.standard_normal((1, 3)).round(6).tolist()
        sent = time.monotonic()
        await conn.send({"type": "predict", "id": rid, "model": "hot", "inputs": rows})
        _, reply = await conn.until_terminal(rid)
        replies.append((sent, time.monotonic(), rows, reply))
    await conn.close()


async def test_ten_version_swaps_under_load_lose_no_request_and_every_reply_names_its_version(
        tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    (repo / "hot").mkdir(parents=True)
    (repo / "hot" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(repo / "hot" / "1", bias=1.0)
    report_path = tmp_path / "loadtest.json"
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--reload", "--log-level", "warning") as server:
        wait_watching(server, repo)
        load = subprocess.Popen(
            [sys.executable, "-m", "wsserve", "loadtest", server.url, "-c", "64", "-d", str(LOAD_S), "-w", "0",
             "--model", "hot", "--protocol", "-q", "--json", str(report_path)],
            cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            await asyncio.to_thread(wait_until, lambda: server.metrics().value("wsserve_connections") >= 64, 60,
                                    what="the load tool's 64 connections are open")
            presence = Presence()
            stop = asyncio.Event()
            replies: list[tuple[float, float, list[list[float]], dict[str, Any]]] = []
            clients = [asyncio.create_task(raw_client(server.url, stop, replies, seed)) for seed in range(4)]
            await asyncio.to_thread(swap_versions, server, repo / "hot", presence)
            still_loading = load.poll() is None
            stop.set()
            await asyncio.gather(*clients)
            out, err = await asyncio.to_thread(load.communicate, timeout=LOAD_S + 60)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        assert still_loading, f"the load tool ended before the {SWAPS} swaps did: raise LOAD_S\n{out!r}\n{err!r}"
        assert load.returncode == 0, (out, err)
        # The swapped-out versions finish and leave; the last one serves.
        wait_models(server, "hot", "only the last version left", lambda e: states(e) == {str(SWAPS + 1): "ready"})

    report = orjson.loads(report_path.read_bytes())
    requests = report["requests"]
    assert requests["errors"] == 0 and report["errors"] == {}, report["errors"]
    assert requests["sent"] == requests["ok"] > 0, requests
    assert report["connections"] == {"opened": 64, "failed": 0, "closed_early": 0}

    seen: set[str] = set()
    for sent, received, rows, reply in replies:
        assert reply["type"] == "result", reply
        version = reply["version"]
        assert presence.could_serve(version, sent, received), (version, sent, received, presence.__dict__)
        np.testing.assert_allclose(reply["outputs"], affine(rows, float(version)), rtol=1e-12)  # computed by it
        seen.add(version)
    assert len(seen) >= SWAPS // 2, f"the raw client saw too few versions to mean anything: {sorted(seen)}"
    assert sorted(os.listdir(repo / "hot")) == sorted(["config.toml", str(SWAPS + 1)])
