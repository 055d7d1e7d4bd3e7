"""Triton's response cache over the wire: a real server on loopback (``--response-cache-bytes``),
Triton's own clients (``tritonclient.http``, ``tritonclient.grpc``) and the WebSocket client.

The models count their calls and answer the count in an output, so an answer equal to an
earlier one (same count) came from the cache, and a larger count was computed.  Every wait is
a predicate on ``GET /v1/models`` or the log; nothing depends on timing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402

from tests.repo_models import write_py  # noqa: E402
from tests.repo_wire import predict, wait_models, wait_watching  # noqa: E402
from tests.support import Conn, ServerProcess, http_get, wait_until  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402

BUDGET = 16384  # --response-cache-bytes: ~23 one-row entries of COUNTED (688 bytes each), one entry <= 4096

#: ``[n, 3] -> [n, 2]``: ``x @ (1, 2, 3) + bias`` and the number of predict calls so far (warm-up included).
COUNTED_PY = """
from pathlib import Path

import numpy as np


class Model:
    def __init__(self, version_dir):
        bias = Path(version_dir) / "bias.txt"
        self.bias = float(bias.read_text()) if bias.exists() else 0.0
        self.metrics = {"bias": self.bias}
        self.w = np.array([[1.0], [2.0], [3.0]])
        self.calls = 0

    def predict(self, batch):
        self.calls += 1
        return np.hstack([batch @ self.w + self.bias, np.full((len(batch), 1), float(self.calls))])

    def input_gradient(self, x, target):
        return np.tile(self.w[:, 0], (len(x), 1)) * (target == 0)[:, None]
"""
COUNTED_TOML = 'task = "regression"\ninput_shape = [3]\noutput_shape = [2]\nresponse_cache = true\n'

#: A Triton Python backend model counting its execute calls (output CALLS), opting in by config.pbtxt.
COUNTED_TRITON_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.calls = 0

    def execute(self, requests):
        self.calls += 1
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            calls = np.full((len(x), 1), self.calls, np.int64)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2), pb_utils.Tensor("CALLS", calls)]))
        return out
"""
COUNTED_PBTXT = """
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "CALLS" data_type: TYPE_INT64 dims: [ 1 ] } ]
response_cache { enable: true }
"""


def _write_repo(root: Path) -> None:
    for name, toml in (("counted", COUNTED_TOML), ("plain", COUNTED_TOML.replace("response_cache = true\n", "")),
                       ("reloaded", COUNTED_TOML), ("evicted", COUNTED_TOML)):
        (root / name).mkdir(parents=True)
        (root / name / "config.toml").write_text(toml)
        write_py(root / name / "1", COUNTED_PY)
    (root / "pb" / "1").mkdir(parents=True)
    (root / "pb" / "config.pbtxt").write_text(COUNTED_PBTXT)
    (root / "pb" / "1" / "model.py").write_text(COUNTED_TRITON_PY)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Path]]:
    root = tmp_path_factory.mktemp("respcache") / "model_repository"
    _write_repo(root)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root), "--reload",
                         "--response-cache-bytes", str(BUDGET))
    try:
        wait_watching(proc, root)
        yield proc, grpc_address(proc), root
    finally:
        proc.stop()


@pytest.fixture
async def conn(served: tuple[ServerProcess, str, Path]) -> Any:
    c = await Conn.open(served[0].url)
    yield c
    await c.close()


def _stats(proc: ServerProcess, model: str) -> dict[str, Any]:
    status, _, body = http_get(f"{proc.http}/v2/models/{model}/stats")
    assert status == 200, body
    (one,) = json.loads(body)["model_stats"]
    return one


def _cache_counts(proc: ServerProcess, model: str) -> tuple[int, int]:
    s = _stats(proc, model)["inference_stats"]
    return s["cache_hit"]["count"], s["cache_miss"]["count"]


def _metric(proc: ServerProcess, model: str, result: str) -> float:
    return proc.metrics().get("wsserve_response_cache_total", model=model, result=result)


# --------------------------------------------------------------------------- hits and misses


async def test_a_repeated_websocket_predict_is_answered_from_the_cache(served, conn: Conn) -> None:
    proc = served[0]
    hits, misses = _cache_counts(proc, "counted")
    rows = [[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]
    first = await predict(conn, "a", "counted", rows)
    again = await predict(conn, "b", "counted", rows)
    assert first["type"] == again["type"] == "result", (first, again)
    assert again["outputs"] == first["outputs"]  # the same call count: not computed again
    assert (again["timing"]["queue_ms"], again["timing"]["compute_ms"]) == (0, 0)
    assert _cache_counts(proc, "counted") == (hits + 1, misses + 1)
    other = await predict(conn, "c", "counted", [[1.0, 2.0, 3.5]])  # different inputs: computed
    assert other["outputs"][0][1] > first["outputs"][0][1]
    assert _cache_counts(proc, "counted") == (hits + 1, misses + 2)
    s = _stats(proc, "counted")["inference_stats"]
    assert s["cache_hit"]["ns"] > 0 and s["cache_miss"]["ns"] > 0
    m = proc.metrics()
    assert m.get("wsserve_response_cache_total", model="counted", result="hit") >= 1
    assert m.get("wsserve_response_cache_total", model="counted", result="miss") >= 2
    assert 0 < m.value("wsserve_response_cache_bytes") <= BUDGET
    assert m.value("wsserve_response_cache_entries") >= 2


async def test_a_model_that_does_not_opt_in_is_never_cached(served, conn: Conn) -> None:
    proc = served[0]
    first = await predict(conn, "a", "plain", [[4.0, 4.0, 4.0]])
    again = await predict(conn, "b", "plain", [[4.0, 4.0, 4.0]])
    assert again["outputs"][0][1] == first["outputs"][0][1] + 1
    assert _cache_counts(proc, "plain") == (0, 0)
    assert _metric(proc, "plain", "miss") == 0


def test_triton_http_client_hits_and_reads_the_statistics_and_config(served) -> None:
    proc = served[0]
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    x = np.array([[1.5, -2.0], [3.0, 0.25]], np.float32)

    def infer(data: np.ndarray) -> Any:
        inp = thttp.InferInput("X", list(data.shape), "FP32")
        inp.set_data_from_numpy(data)
        return client.infer("pb", [inp])

    before = client.get_inference_statistics("pb")["model_stats"][0]["inference_stats"]
    first, again = infer(x), infer(x)
    np.testing.assert_array_equal(again.as_numpy("Y"), x * 2)
    np.testing.assert_array_equal(again.as_numpy("CALLS"), first.as_numpy("CALLS"))
    third = infer(x + 1)
    assert (third.as_numpy("CALLS") > first.as_numpy("CALLS")).all()
    after = client.get_inference_statistics("pb")["model_stats"][0]["inference_stats"]
    assert after["cache_hit"]["count"] == before["cache_hit"]["count"] + 1
    assert after["cache_miss"]["count"] == before["cache_miss"]["count"] + 2
    assert client.get_model_config("pb")["response_cache"] == {"enable": True}
    assert "response_cache" not in client.get_model_config("plain")


def test_triton_grpc_client_hits_and_reads_the_statistics(served) -> None:
    _, address, _ = served
    client = tgrpc.InferenceServerClient(address)
    try:
        x = np.array([[7.0, 8.0]], np.float32)

        def infer() -> Any:
            inp = tgrpc.InferInput("X", [1, 2], "FP32")
            inp.set_data_from_numpy(x)
            return client.infer("pb", [inp])

        before = client.get_inference_statistics("pb").model_stats[0].inference_stats
        first, again = infer(), infer()
        np.testing.assert_array_equal(again.as_numpy("CALLS"), first.as_numpy("CALLS"))
        after = client.get_inference_statistics("pb").model_stats[0].inference_stats
        assert after.cache_hit.count == before.cache_hit.count + 1
        assert after.cache_miss.count == before.cache_miss.count + 1
        assert client.get_model_config("pb").config.response_cache.enable
    finally:
        client.close()


# --------------------------------------------------------------------------- bypasses


async def test_explain_and_streamed_predicts_bypass_the_cache(served, conn: Conn) -> None:
    proc = served[0]
    rows = [[2.0, 2.0, 2.0]]
    plain = await predict(conn, "p", "counted", rows)
    counts = _cache_counts(proc, "counted")
    explained = await predict(conn, "e", "counted", rows, explain=True)
    assert explained["type"] == "result" and "attributions" in json.dumps(explained), explained
    await conn.send({"type": "predict", "id": "s", "model": "counted", "inputs": rows, "stream": True})
    frames, last = await conn.until_terminal("s")
    assert last["type"] != "error", last
    assert _cache_counts(proc, "counted") == counts  # neither looked up nor stored
    again = await predict(conn, "q", "counted", rows)  # the plain one is still a hit
    assert again["outputs"] == plain["outputs"]


# --------------------------------------------------------------------------- reload and eviction


async def test_a_version_reloaded_with_new_weights_never_answers_from_the_old_ones(served, conn: Conn) -> None:
    proc, _, root = served
    rows = [[1.0, 1.0, 1.0]]
    old = await predict(conn, "a", "reloaded", rows)
    assert (await predict(conn, "b", "reloaded", rows))["outputs"] == old["outputs"]  # cached
    assert old["outputs"][0][0] == 6.0
    (root / "reloaded" / "1" / "bias.txt").write_text("100.0")  # the same version number, new weights
    wait_models(proc, "reloaded", "reloaded with bias 100", lambda e: e is not None and e["metrics"] == {"bias": 100.0})
    new = await predict(conn, "c", "reloaded", rows)
    assert new["version"] == "1" and new["outputs"][0][0] == 106.0, new
    assert (await predict(conn, "d", "reloaded", rows))["outputs"] == new["outputs"]  # the new weights' answer, cached


async def test_the_least_recently_used_entries_are_evicted_within_the_budget(served, conn: Conn) -> None:
    proc = served[0]
    first = await predict(conn, "first", "evicted", [[0.0, 0.0, 0.0]])
    for i in range(1, 40):  # 39 other entries: more than the budget holds
        r = await predict(conn, i, "evicted", [[float(i), 0.0, 0.0]])
        assert r["type"] == "result", r
    assert proc.metrics().value("wsserve_response_cache_bytes") <= BUDGET
    again = await predict(conn, "again", "evicted", [[0.0, 0.0, 0.0]])
    assert again["outputs"][0][1] > first["outputs"][0][1]  # evicted: computed again
    latest = await predict(conn, "latest", "evicted", [[39.0, 0.0, 0.0]])
    hits = _cache_counts(proc, "evicted")[0]
    assert hits == 1 and latest["outputs"][0][0] == 39.0  # the most recent entry stayed


async def test_a_response_over_a_quarter_of_the_budget_is_not_stored(served, conn: Conn) -> None:
    proc = served[0]
    hits, misses = _cache_counts(proc, "counted")
    rows = [[float(i), 1.0, 2.0] for i in range(300)]  # 300 x 2 float64: 4800 bytes > 16384 / 4
    first = await predict(conn, "a", "counted", rows)
    again = await predict(conn, "b", "counted", rows)
    assert again["outputs"][0][1] > first["outputs"][0][1]
    assert _cache_counts(proc, "counted") == (hits, misses + 2)  # looked up twice, never stored


# --------------------------------------------------------------------------- no cache on the server


def test_a_model_enabling_the_cache_on_a_server_without_one_warns_and_runs_uncached(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "counted").mkdir(parents=True)
    (root / "counted" / "config.toml").write_text(COUNTED_TOML)
    write_py(root / "counted" / "1", COUNTED_PY)
    with ServerProcess("--models", "none", "--model-repository", str(root)) as proc:
        wait_until(lambda: "enables the response cache but the server has none" in proc.stderr_text(), 10.0,
                   what="the warning")
        assert proc.stderr_text().count("enables the response cache") == 1
        client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
        name = client.get_model_metadata("counted")["inputs"][0]["name"]
        calls = []
        for _ in range(2):
            inp = thttp.InferInput(name, [1, 3], "FP64")
            inp.set_data_from_numpy(np.ones((1, 3)))
            calls.append(client.infer("counted", [inp]).as_numpy(client.get_model_metadata("counted")["outputs"][0]["name"])[0, 1])
        assert calls[1] == calls[0] + 1
        assert _cache_counts(proc, "counted") == (0, 0)
        assert client.get_model_config("counted")["response_cache"] == {"enable": True}
