"""A load of a loaded model under ``--reload``: what it compares with is what the model serves.

The repository watcher plans a change (records the scan it saw) before it applies it (under the
model's lock, after whatever the model is doing), and a change it applied may have failed to load
(the old copy serving on).  An explicit load in either window must still load what the files hold
now, as Triton's load of a modified model: reload it (and fail, naming why, when it cannot), not
answer success while the old copy serves.  A real server on loopback with ``--reload``,
``tritonclient`` over HTTP and the WebSocket client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, wait_until, wait_until_async

pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.test_repository_load_reload import MODEL_PY, Repo, expect  # noqa: E402

# version 2's model.py whose initialize() waits while the gate's `init` file exists (after saying so)
GATED_PY = MODEL_PY.replace(
    "        self.version = float(args[\"model_version\"])\n",
    "        self.version = float(args[\"model_version\"])\n"
    "        if os.path.exists(os.path.join(self.gate, \"init\")):\n"
    "            open(os.path.join(self.gate, \"initializing\"), \"w\").close()\n"
    "            end = time.monotonic() + 120\n"
    "            while os.path.exists(os.path.join(self.gate, \"init\")) and time.monotonic() < end:\n"
    "                time.sleep(0.01)\n")


class WatchedRepo(Repo):
    """:class:`Repo` served with ``--reload``."""

    def __init__(self, root: Path) -> None:
        self.model = root / "repository" / "scaled"
        self.gate = root / "gate"
        self.gate.mkdir()
        for version in ("1", "2"):
            self.write_version(version, 0)
        self.write_config("2")
        self.proc = ServerProcess("--models", "none", "--reload", "--model-repository", str(root / "repository"))
        self.http = thttp.InferenceServerClient(self.proc.url.split("//")[1].rstrip("/"))
        self.grpc = None

    def close(self) -> None:
        self.http.close()
        self.proc.stop()


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[WatchedRepo]:
    r = WatchedRepo(tmp_path)
    yield r
    r.close()


def test_a_load_after_the_watcher_failed_to_reload_a_model_tries_again_and_says_why(repo: WatchedRepo) -> None:
    assert repo.infer() == expect(2, 2)
    failures = repo.proc.stderr_text().count("failed to load")
    repo.write_config("not a number")  # parses; initialize() raises: the watcher's reload fails
    wait_until(lambda: repo.proc.stderr_text().count("failed to load") > failures, 60.0, what="the watcher's reload failing")
    assert repo.infer() == expect(2, 2)  # the old copy serves on
    with pytest.raises(InferenceServerException, match="load failed for model 'scaled': version 2: .*ValueError"):
        repo.http.load_model("scaled")  # the files still differ from what serves: loaded again, and failing
    assert repo.infer() == expect(2, 2)

    failures = repo.proc.stderr_text().count("failed to load")
    repo.write_version("2", 10)  # a version whose new files fail: the same
    (repo.model / "2" / "model.py").write_text("raise RuntimeError('half written')\n")
    repo.write_config("2")
    wait_until(lambda: repo.proc.stderr_text().count("failed to load") > failures, 60.0, what="the watcher's reload failing")
    with pytest.raises(InferenceServerException, match="load failed for model 'scaled': version 2: .*half written"):
        repo.http.load_model("scaled")
    assert repo.infer() == expect(2, 2)


async def test_a_load_waiting_behind_the_watcher_loads_a_change_the_watcher_planned_but_has_not_applied(
        repo: WatchedRepo) -> None:
    from wsserve_client import Client

    assert repo.infer() == expect(2, 2)
    (repo.gate / "init").touch()
    (repo.model / "2" / "model.py").write_text(GATED_PY.format(offset=10))  # the watcher reloads version 2: held
    await wait_until_async(lambda: (repo.gate / "initializing").exists(), 60.0, what="the watcher's reload started")
    async with Client(repo.proc.url) as c:
        load = asyncio.create_task(c.load("scaled"))  # waits for the model's lock, behind the watcher's reload
        await c.models()  # (answered after the load frame was taken: the load is queued for the lock)
        repo.write_config("3")  # planned by the watcher now, applied after the load
        (repo.model.parent / "probe").mkdir()  # a model of its own, loaded by the same rescan
        (repo.model.parent / "probe" / "config.pbtxt").write_text(
            (repo.model / "config.pbtxt").read_text().replace('name: "scaled"', 'name: "probe"'))
        (repo.model.parent / "probe" / "2").mkdir()
        (repo.model.parent / "probe" / "2" / "model.py").write_text(MODEL_PY.format(offset=0))
        await wait_until_async(lambda: "serving model 'probe'" in repo.proc.stderr_text(), 60.0,
                               what="the watcher's rescan that saw config.pbtxt change")
        (repo.gate / "init").unlink()  # the watcher's reload of version 2 ends; then the load runs
        status = await load
        assert status.states() == {"2": "ready"}
        assert repo.infer() == expect(3, 2, 10)  # what the files hold when it answered


async def test_a_change_the_watcher_planned_before_a_load_of_newer_files_does_not_replace_what_the_load_served(
        repo: WatchedRepo) -> None:
    from wsserve_client import Client, UnknownModelError

    # config.pbtxt is a link to a file outside the watched repository: its edits are seen by a scan,
    # not by the watcher (so the watcher plans only the changes the test shows it)
    outside = repo.gate.parent / "outside.pbtxt"
    outside.write_text((repo.model / "config.pbtxt").read_text())
    (repo.model / "config.pbtxt").unlink()
    (repo.model / "config.pbtxt").symlink_to(outside)
    assert repo.infer() == expect(2, 2)
    (repo.gate / "init").touch()
    (repo.model / "2" / "model.py").write_text(GATED_PY.format(offset=10))  # the watcher reloads version 2: held
    await wait_until_async(lambda: (repo.gate / "initializing").exists(), 60.0, what="the watcher's reload started")
    async with Client(repo.proc.url) as c:
        load = asyncio.create_task(c.load("scaled"))  # waits for the model's lock, behind the watcher's reload
        await c.models()
        outside.write_text(outside.read_text().replace('string_value: "2"', 'string_value: "3"'))
        (repo.model.parent / "probe").mkdir()  # a change the watcher sees: its rescan plans scale 3 (after the load)
        (repo.model.parent / "probe" / "config.pbtxt").write_text(
            outside.read_text().replace('name: "scaled"', 'name: "probe"'))
        (repo.model.parent / "probe" / "2").mkdir()
        (repo.model.parent / "probe" / "2" / "model.py").write_text(MODEL_PY.format(offset=0))
        await wait_until_async(lambda: "serving model 'probe'" in repo.proc.stderr_text(), 60.0,
                               what="the watcher's rescan that saw scale 3")
        outside.write_text(outside.read_text().replace('string_value: "3"', 'string_value: "4"'))  # unseen by the watcher
        (repo.gate / "init").unlink()  # the watcher's reload of version 2 ends; then the load runs
        await load
        assert repo.infer() == expect(4, 2, 10)  # the load served the files as they are now
        with pytest.raises(UnknownModelError):  # after the watcher's planned change (scale 3), if it runs
            await c.unload("scaled", version=99)
        assert repo.infer() == expect(4, 2, 10)  # not replaced by the older change
