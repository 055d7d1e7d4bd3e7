"""The serving examples run as a user runs them, each against a real server on 127.0.0.1.

- ``examples/serve_function.py`` and ``examples/serve_sklearn.py`` (``wsserve.serve``: ready line,
  batching, drain on SIGTERM with exit status 0);
- ``examples/serve_sklearn.py --write-repository`` then ``wsserve serve --model-repository``;
- ``examples/repository/`` served by the CLI (``--models none``): versions, a pinned version,
  and the bigram ``model.py`` generating exactly its own greedy continuation; the admin flow;
- docs/repository.md shows the example files as they are.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.support import ROOT, Conn, ServerProcess, child_env

EXAMPLES = ROOT / "examples"
REPOSITORY = EXAMPLES / "repository"


def _states(versions: list[dict]) -> list[tuple[str, str]]:
    """``(version, state)`` of each item of a ``versions`` list (loaded ones also carry their figures)."""
    return [(v["version"], v["state"]) for v in versions]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stop_gracefully(server: ServerProcess) -> int:
    server.signal(signal.SIGTERM)
    return server.wait(30)


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))


async def test_serve_function_example_batches_rows_from_many_connections() -> None:
    server = ServerProcess.from_command([sys.executable, "examples/serve_function.py", "--port", "0"])
    try:
        assert "ready on ws://127.0.0.1:" in server.stdout_text()
        rows = [[48.8566, 2.3522, 51.5074, -0.1278], [0.0, 0.0, 0.0, 180.0], [40.7128, -74.006, 35.6762, 139.6503]]
        conns = [await Conn.open(server.url) for _ in range(8)]
        assert conns[0].hello["models"] == ["distance"]
        replies = await asyncio.gather(*(
            c.request({"type": "predict", "id": i, "model": "distance", "inputs": rows}) for i, c in enumerate(conns)
        ))
        for reply in replies:
            assert reply["type"] == "result" and reply["version"] == "1", reply
            for row, (km,) in zip(rows, reply["outputs"], strict=True):
                assert km == pytest.approx(_haversine(*row), rel=1e-12)
        assert replies[0]["outputs"][1][0] == pytest.approx(math.pi * 6371.0)
        bad = await conns[0].request({"type": "predict", "id": "w", "model": "distance", "inputs": [[1, 2, 3]]})
        assert bad["code"] == "invalid_input"
        for c in conns:
            await c.ws.close()
        assert _stop_gracefully(server) == 0
        assert "draining" in server.stderr_text()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sklearn_example() -> ModuleType:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("skl2onnx")
    pytest.importorskip("sklearn")
    return _load(EXAMPLES / "serve_sklearn.py", "serve_sklearn_example")


def _iris_rows() -> np.ndarray:
    from sklearn.datasets import load_iris

    x, _ = load_iris(return_X_y=True)
    return x[::15]  # 10 rows across the three species


async def _check_iris(url: str, pipeline: object, version: str) -> None:
    rows = _iris_rows()
    conn = await Conn.open(url)
    try:
        reply = await conn.request({"type": "predict", "id": 1, "model": "iris", "inputs": rows.tolist()})
        assert reply["type"] == "result" and reply["version"] == version, reply
        outputs = reply["outputs"]
        assert set(outputs) == {"label", "probabilities"}  # two graph outputs: answered by name
        assert outputs["label"] == pipeline.predict(rows).tolist()  # type: ignore[attr-defined]
        np.testing.assert_allclose(outputs["probabilities"], pipeline.predict_proba(rows), atol=1e-5)  # type: ignore[attr-defined]
        listing = (await conn.request({"type": "models", "id": 2}))["models"]
        (iris,) = [m for m in listing if m["name"] == "iris"]
        assert iris["task"] == "classification" and iris["backend"] == "onnx"
        assert iris["inputs"] == [{"name": "features", "shape": [4], "dtype": "float32"}]
    finally:
        await conn.ws.close()


async def test_serve_sklearn_example_answers_as_the_pipeline_does(sklearn_example: ModuleType) -> None:
    pipeline = sklearn_example.train()
    server = ServerProcess.from_command([sys.executable, "examples/serve_sklearn.py", "--port", "0"])
    try:
        await _check_iris(server.url, pipeline, "1")
        assert _stop_gracefully(server) == 0
    finally:
        server.stop()


async def test_sklearn_example_writes_a_repository_the_cli_serves(sklearn_example: ModuleType, tmp_path: Path,
                                                                 model_cache: Path) -> None:
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "examples/serve_sklearn.py", "--write-repository", str(tmp_path)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "iris" / "1" / "model.onnx").is_file()
    server = ServerProcess("--models", "none", "--model-repository", str(tmp_path), cache_dir=model_cache)
    try:
        await _check_iris(server.url, sklearn_example.train(), "1")
    finally:
        server.stop()


async def test_repository_example_serves_versions_and_the_bigram_model(model_cache: Path) -> None:
    server = ServerProcess("--models", "none", "--model-repository", str(REPOSITORY), cache_dir=model_cache)
    try:
        conn = await Conn.open(server.url)
        assert sorted(conn.hello["models"]) == ["bigram", "custom"]
        listing = {m["name"]: m for m in (await conn.request({"type": "models", "id": 0}))["models"]}
        assert listing["custom"]["version"] == "2"
        assert _states(listing["custom"]["versions"]) == [("1", "ready"), ("2", "ready")]
        assert all(v["bytes"] > 0 for v in listing["custom"]["versions"])  # read from the version directories
        assert listing["custom"]["metrics"] == {"r2": 0.93} and listing["custom"]["parameters"] == 3
        assert listing["bigram"]["task"] == "generation"

        newest = await conn.request({"type": "predict", "id": 1, "model": "custom", "inputs": [[1, 2, 3]]})
        assert (newest["version"], newest["outputs"]) == ("2", [[3.0]])  # weights [0.5, 0.5, 0.5]
        pinned = await conn.request({"type": "predict", "id": 2, "model": "custom", "version": 1, "inputs": [[1, 2, 3]]})
        assert (pinned["version"], pinned["outputs"]) == ("1", [[14.0]])  # weights [1, 2, 3]

        bigram = _load(REPOSITORY / "bigram" / "1" / "model.py", "bigram_example").Model(REPOSITORY / "bigram" / "1")
        prompt, n = "the dog ", 30
        context = bigram.encode(prompt)[-1]
        expected = ""
        for _ in range(n):  # greedy decoding by hand: the most likely character after the last one
            context = int(np.argmax(bigram.table[context]))
            expected += bigram.vocabulary[context]
        await conn.send({"type": "generate", "id": 3, "model": "bigram", "prompt": prompt, "max_tokens": n})
        frames, done = await conn.until_terminal(3)
        assert done["type"] == "done" and done["reason"] == "length" and done["version"] == "1", done
        assert "".join(f["text"] for f in frames if f["type"] == "token") == expected

        await conn.send({"type": "generate", "id": 4, "model": "bigram", "prompt": "", "max_tokens": 50,
                         "temperature": 1.0, "seed": 7})
        frames, done = await conn.until_terminal(4)
        sampled = "".join(f["text"] for f in frames if f["type"] == "token")
        assert done["tokens"] == 50 and set(sampled) <= set(bigram.vocabulary)
        await conn.ws.close()
    finally:
        server.stop()


async def test_admin_operations_as_docs_show_them_on_a_copy_of_the_example_repository(tmp_path: Path,
                                                                                        model_cache: Path) -> None:
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(REPOSITORY, repo, ignore=shutil.ignore_patterns("__pycache__"))
    server = ServerProcess("--models", "none", "--model-repository", str(repo), "--admin-key", "adm1n",
                           cache_dir=model_cache)
    try:
        conn = await Conn.open(server.url)
        refused = await conn.request({"type": "unload", "id": 1, "model": "custom", "version": "1"})
        assert refused["code"] == "forbidden" and "--admin-key" in refused["message"]
        assert (await conn.request({"type": "auth", "id": 2, "token": "adm1n"}))["ok"] is True
        unloaded = await conn.request({"type": "unload", "id": 3, "model": "custom", "version": 1})
        assert unloaded["ok"] is True and ("2", "ready") in _states(unloaded["versions"])
        gone = await conn.request({"type": "predict", "id": 4, "model": "custom", "version": 1, "inputs": [[1, 2, 3]]})
        assert gone["code"] == "unknown_model" and "'1'" in gone["message"]
        loaded = await conn.request({"type": "load", "id": 5, "model": "custom", "version": "1"})
        assert {k: loaded[k] for k in ("type", "id", "ok", "model")} == {"type": "load", "id": 5, "ok": True, "model": "custom"}
        assert _states(loaded["versions"]) == [("1", "ready"), ("2", "ready")]
        back = await conn.request({"type": "predict", "id": 6, "model": "custom", "version": 1, "inputs": [[1, 2, 3]]})
        assert back["outputs"] == [[14.0]]
        await conn.ws.close()
    finally:
        server.stop()


@pytest.mark.parametrize("relative", ["custom/config.toml", "custom/1/model.py", "bigram/1/model.py", "bigram/config.toml"])
def test_docs_show_the_example_repository_files_as_they_are(relative: str) -> None:
    """docs/repository.md quotes these files whole: a change to one must show in the other."""
    text = (REPOSITORY / relative).read_text()
    assert text in (ROOT / "docs" / "repository.md").read_text(), f"docs/repository.md does not show examples/repository/{relative}"


def test_the_example_versions_are_the_same_code() -> None:
    """docs/repository.md says the example's version 2 is version 1's code with other weights."""
    assert (REPOSITORY / "custom/2/model.py").read_text() == (REPOSITORY / "custom/1/model.py").read_text()
    assert (REPOSITORY / "custom/2/weights.json").read_text() != (REPOSITORY / "custom/1/weights.json").read_text()
