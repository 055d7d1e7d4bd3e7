"""HTTP routes over the model repository: versions on every route, named tensors of any dtype, and
Triton's model repository extension (index, load, unload), with clients we did not write.

The server serves a copy of examples/repository (``custom``: a ``model.py`` with versions 1 and
2, ``bigram``: a generative ``model.py``) plus ``mixed``, a ``model.py`` with several named
inputs and outputs in every dtype wsserve moves (int32, int64, bool, float32, float64).  OIP
answers are compared with what the WebSocket gives for the same rows.  Admin operations follow
the WebSocket rule: loopback without keys, the admin key with keys, refused under --workers
(tests/test_workers.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.repo_models import AFFINE_CONFIG, RAISES_PY, write_affine, write_py
from tests.repo_wire import models_http, predict, states, wait_models
from tests.support import ROOT, Conn, RawHttp, ServerProcess

tritonclient_http = pytest.importorskip("tritonclient.http")  # the test-http extra installs it
from tritonclient.utils import InferenceServerException  # noqa: E402

ADMIN = "admin-key-0123456789"
API = "api-key-9876543210"
FORBIDDEN = "{op} needs the admin key (--admin-key), or loopback when no keys are configured"

MIXED_CONFIG = """
[[inputs]]
name = "ids"
shape = [3]
dtype = "int64"

[[inputs]]
name = "mask"
shape = [3]
dtype = "bool"

[[inputs]]
name = "scale"
shape = [1]
dtype = "float32"

[[inputs]]
name = "offset"
shape = [1]
dtype = "int32"

[[inputs]]
name = "weights"
shape = [3]
dtype = "float64"

[[outputs]]
name = "kept"
shape = [3]
dtype = "int64"

[[outputs]]
name = "any"
shape = [1]
dtype = "bool"

[[outputs]]
name = "scaled"
shape = [1]
dtype = "float32"

[[outputs]]
name = "shifted"
shape = [1]
dtype = "int32"

[[outputs]]
name = "dot"
shape = [1]
dtype = "float64"
"""

MIXED_PY = """
import numpy as np


class Model:
    def __init__(self, version_dir):
        pass

    def predict(self, batch):
        ids, mask = batch["ids"], batch["mask"]
        return {
            "kept": np.where(mask, ids, 0).astype(np.int64),
            "any": mask.any(axis=1, keepdims=True),
            "scaled": (batch["scale"] * 2).astype(np.float32),
            "shifted": (batch["offset"] + 7).astype(np.int32),
            "dot": (batch["weights"] * ids).sum(axis=1, keepdims=True),
        }

    def flops_per_row(self):
        return 10
"""

#: OIP datatype of each dtype the repository moves.
OIP = {"int32": "INT32", "int64": "INT64", "bool": "BOOL", "float32": "FP32", "float64": "FP64"}


def make_repo(root: Path) -> Path:
    shutil.copytree(ROOT / "examples" / "repository", root)
    (root / "mixed").mkdir()
    (root / "mixed" / "config.toml").write_text(MIXED_CONFIG)
    write_py(root / "mixed" / "1", MIXED_PY)
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("http-repo") / "repository")


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    """No keys: admin operations from loopback."""
    with ServerProcess("--models", "none", "--model-repository", str(repo)) as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess("--models", "none", "--model-repository", str(repo), "--api-key", API,
                       "--admin-key", ADMIN) as srv:
        yield srv


def triton(server: ServerProcess) -> Any:
    return tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.port}")


def index(client: Any, **kwargs: Any) -> dict[tuple[str, str], tuple[str, str]]:
    """``get_model_repository_index`` as ``{(name, version): (state, reason)}``."""
    return {(m["name"], m.get("version", "")): (m["state"], m.get("reason", ""))
            for m in client.get_model_repository_index(**kwargs)}


def raw_post(server: ServerProcess, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    with RawHttp(server.port) as c:
        return c.request("POST", path, body, headers=headers)


def infer_custom(client: Any, rows: np.ndarray, version: str = "") -> Any:
    inp = tritonclient_http.InferInput("input", list(rows.shape), "FP64")
    inp.set_data_from_numpy(rows)
    return client.infer("custom", [inp], model_version=version)


ROWS = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
WEIGHTS = {"1": np.array([1.0, 2.0, 3.0]), "2": np.array([0.5, 0.5, 0.5])}


# --------------------------------------------------------------------------- versions on the OIP routes


def test_metadata_and_readiness_per_version(server: ServerProcess) -> None:
    client = triton(server)
    meta = client.get_model_metadata("custom")
    assert meta["name"] == "custom" and meta["versions"] == ["1", "2"] and meta["platform"] == "python"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 3]}]
    assert client.get_model_metadata("custom", model_version="1")["versions"] == ["1", "2"]
    assert client.is_model_ready("custom", "1") and client.is_model_ready("custom", "2")
    assert not client.is_model_ready("custom", "9")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("custom", model_version="9")
    assert info.value.status() == "404" and "model 'custom' has no version '9'; available: 1, 2" in info.value.message()


@pytest.mark.parametrize("version", ["1", "2", ""])
async def test_infer_pins_a_version_and_the_result_names_it(server: ServerProcess, version: str) -> None:
    result = infer_custom(triton(server), ROWS, version)  # tritonclient (gevent) stays on this thread
    served = version or "2"  # the default is the highest ready version
    assert result.get_response()["model_version"] == served
    np.testing.assert_allclose(result.as_numpy("output")[:, 0], ROWS @ WEIGHTS[served])
    conn = await Conn.open(server.url)
    ws = await predict(conn, 1, "custom", ROWS.tolist(), **({"version": version} if version else {}))
    await conn.close()
    assert ws["version"] == served and np.array_equal(np.array(ws["outputs"]), result.as_numpy("output"))


def test_an_unknown_version_is_404_with_the_oip_error(server: ServerProcess) -> None:
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}).encode()
    for path in ("/v2/models/custom/versions/9/infer", "/v2/models/custom/versions/9", "/v2/models/custom/versions/9/ready"):
        method = "POST" if path.endswith("infer") else "GET"
        with RawHttp(server.port) as c:
            a = c.request(method, path, body if method == "POST" else None)
        assert a.status == 404, (path, a.status, a.body)
        assert json.loads(a.body) == {"error": "model 'custom' has no version '9'; available: 1, 2"}


async def test_post_predict_takes_a_version(server: ServerProcess) -> None:
    for version, served in ((1, "1"), ("2", "2"), (None, "2")):
        body = {"model": "custom", "inputs": ROWS.tolist(), **({"version": version} if version is not None else {})}
        a = await asyncio.to_thread(raw_post, server, "/predict", json.dumps(body).encode())
        answer = json.loads(a.body)
        assert a.status == 200 and answer["version"] == served
        np.testing.assert_allclose(np.array(answer["outputs"])[:, 0], ROWS @ WEIGHTS[served])
    a = await asyncio.to_thread(raw_post, server, "/predict", b'{"model": "custom", "version": 7, "inputs": [[1, 2, 3]]}')
    assert (a.status, json.loads(a.body)["error"]["code"]) == (404, "unknown_model")


# --------------------------------------------------------------------------- named tensors of every dtype


def _mixed_rows(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        "ids": rng.integers(-(2**40), 2**40, size=(n, 3), dtype=np.int64),
        "mask": rng.integers(0, 2, size=(n, 3)).astype(bool),
        "scale": rng.normal(size=(n, 1)).astype(np.float32),
        "offset": rng.integers(-1000, 1000, size=(n, 1), dtype=np.int32),
        "weights": rng.normal(size=(n, 3)),
    }


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
async def test_named_tensors_map_by_name_with_their_datatypes(server: ServerProcess, binary: bool) -> None:
    client = triton(server)
    meta = client.get_model_metadata("mixed")
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [
        ("ids", "INT64"), ("mask", "BOOL"), ("scale", "FP32"), ("offset", "INT32"), ("weights", "FP64")]
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [
        ("kept", "INT64"), ("any", "BOOL"), ("scaled", "FP32"), ("shifted", "INT32"), ("dot", "FP64")]
    rows = _mixed_rows(4)
    inputs = []
    for name in ("weights", "offset", "ids", "scale", "mask"):  # any order: matched by name
        inp = tritonclient_http.InferInput(name, list(rows[name].shape), OIP[str(rows[name].dtype)])
        inp.set_data_from_numpy(rows[name], binary_data=binary)
        inputs.append(inp)
    wanted = [tritonclient_http.InferRequestedOutput(n, binary_data=binary) for n in ("dot", "kept", "any")]
    result = client.infer("mixed", inputs, outputs=wanted)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["dot", "kept", "any"]
    conn = await Conn.open(server.url)
    ws = await predict(conn, 1, "mixed", {k: v.tolist() for k, v in rows.items()})
    await conn.close()
    for name, dtype in (("dot", np.float64), ("kept", np.int64), ("any", np.bool_)):
        got = result.as_numpy(name)
        assert got.dtype == dtype and got.shape[0] == 4
        assert np.array_equal(got, np.array(ws["outputs"][name], dtype=dtype)), name
    # All outputs by default, each in its declared datatype.
    every = client.infer("mixed", inputs)
    assert {o["name"]: o["datatype"] for o in every.get_response()["outputs"]} == {
        "kept": "INT64", "any": "BOOL", "scaled": "FP32", "shifted": "INT32", "dot": "FP64"}
    assert np.array_equal(every.as_numpy("shifted"), rows["offset"] + 7)


def test_a_wrong_datatype_or_a_missing_input_names_the_tensor(server: ServerProcess) -> None:
    client = triton(server)
    rows = _mixed_rows(1)
    inputs = []
    for name, value in rows.items():
        dtype = "INT32" if name == "ids" else OIP[str(value.dtype)]  # ids is INT64
        inp = tritonclient_http.InferInput(name, list(value.shape), dtype)
        inp.set_data_from_numpy(value.astype(np.int32) if name == "ids" else value, binary_data=False)
        inputs.append(inp)
    with pytest.raises(InferenceServerException) as info:
        client.infer("mixed", inputs)
    assert info.value.status() == "400" and "input 'ids' is INT64; got INT32" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("mixed", inputs[1:])
    assert info.value.status() == "400" and "missing input 'ids'" in info.value.message()


# --------------------------------------------------------------------------- the repository extension


def test_server_metadata_announces_the_repository_extension(server: ServerProcess) -> None:
    assert triton(server).get_server_metadata()["extensions"] == ["binary_tensor_data", "model_configuration", "statistics",
                                                                  "model_repository", "system_shared_memory", "logging", "trace"]


def test_index_lists_every_version_with_its_state(server: ServerProcess) -> None:
    client = triton(server)
    listed = index(client)
    assert listed[("custom", "1")] == ("READY", "") and listed[("custom", "2")] == ("READY", "")
    assert listed[("bigram", "1")] == ("READY", "") and listed[("mixed", "1")] == ("READY", "")
    rows = client.get_model_repository_index()
    assert len(rows) == len(listed)  # one row per version, by name then version
    assert list(listed) == [("bigram", "1"), ("custom", "1"), ("custom", "2"), ("mixed", "1")]


def test_unload_and_load_a_model_with_tritonclient(server: ServerProcess) -> None:
    client = triton(server)
    client.unload_model("bigram")
    wait_models(server, "bigram", "unloaded", lambda e: e is None)
    assert index(client)[("bigram", "")] == ("UNAVAILABLE", "unloaded")
    assert not client.is_model_ready("bigram")
    raw = raw_post(server, "/v2/repository/index", b'{"ready": true}')
    assert raw.status == 200 and "bigram" not in {m["name"] for m in json.loads(raw.body)}
    client.load_model("bigram")
    assert client.is_model_ready("bigram") and index(client)[("bigram", "1")] == ("READY", "")
    assert states(models_http(server)["bigram"]) == {"1": "ready"}


def test_unload_and_load_one_version_with_the_version_parameter(server: ServerProcess) -> None:
    client = triton(server)
    a = raw_post(server, "/v2/repository/models/custom/unload", b'{"parameters": {"version": "1"}}')
    assert a.status == 200, a.body
    wait_models(server, "custom", "version 1 unloaded", lambda e: states(e) == {"2": "ready"})
    assert ("custom", "1") not in index(client) and index(client)[("custom", "2")] == ("READY", "")
    assert not client.is_model_ready("custom", "1") and client.is_model_ready("custom", "2")
    a = raw_post(server, "/v2/repository/models/custom/load", b'{"parameters": {"version": 1}}')
    assert a.status == 200 and {v["version"]: v["state"] for v in json.loads(a.body)["versions"]} == {
        "1": "ready", "2": "ready"}
    assert client.is_model_ready("custom", "1")


@pytest.mark.parametrize("path, body, status, message", [
    ("/v2/repository/models/zzz/load", b"", 404, "no model named 'zzz' in the model repository"),
    ("/v2/repository/models/custom/load", b'{"parameters": {"version": 9}}', 404,
     "model 'custom' has no version '9' in the repository"),
    ("/v2/repository/models/zzz/unload", b"", 404, "no model named 'zzz' is loaded"),
    ("/v2/repository/models/custom/unload", b'{"parameters": {"config": "{}"}}', 400,
     "parameter 'config' is for load only, not unload"),
    ("/v2/repository/models/custom/load", b'{"parameters": {"version": 0}}', 400,
     "parameter 'version' must be a positive integer or a string of at most 64 characters"),
    ("/v2/repository/models/custom/unload", b"[1]", 400, "the request body must be a JSON object"),
])
def test_repository_errors_are_oip_errors(server: ServerProcess, path: str, body: bytes, status: int,
                                          message: str) -> None:
    a = raw_post(server, path, body)
    assert (a.status, json.loads(a.body)) == (status, {"error": message})
    assert states(models_http(server)["custom"]) == {"1": "ready", "2": "ready"}  # nothing changed


def test_with_keys_only_the_admin_key_may_load_and_unload(keyed: ServerProcess) -> None:
    client = triton(keyed)
    for op, call in (("load", client.load_model), ("unload", client.unload_model)):
        with pytest.raises(InferenceServerException) as info:
            call("custom", headers={"Authorization": f"Bearer {API}"})
        assert (info.value.status(), info.value.message()) == ("403", FORBIDDEN.format(op=op))
        with pytest.raises(InferenceServerException) as info:
            call("custom")
        assert info.value.status() == "401"
    assert index(client, headers={"Authorization": f"Bearer {API}"})[("custom", "2")] == ("READY", "")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_repository_index()
    assert info.value.status() == "401"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    client.unload_model("custom", headers=admin)
    wait_models(keyed, "custom", "unloaded", lambda e: e is None, key=API)
    client.load_model("custom", headers=admin)
    assert client.is_model_ready("custom", "2", headers=admin)
    assert states(models_http(keyed, API)["custom"]) == {"1": "ready", "2": "ready"}


@pytest.fixture(scope="module")
def half_broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A repository whose model ``half`` has a good version 1 and a version 2 that fails to load."""
    root = tmp_path_factory.mktemp("half-broken") / "repository"
    (root / "half").mkdir(parents=True)
    (root / "half" / "config.toml").write_text(AFFINE_CONFIG)
    write_affine(root / "half" / "1", bias=1.0)
    write_py(root / "half" / "2", RAISES_PY)
    with ServerProcess("--models", "none", "--model-repository", str(root)) as srv:
        yield srv


def test_a_load_that_leaves_a_version_failed_is_an_error_as_tritons(half_broken: ServerProcess) -> None:
    # The load answered 200 with the failed version in its body, so tritonclient's load_model
    # returned as if the model had loaded; Triton answers 400 naming the version that failed.
    client = triton(half_broken)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("half")
    assert info.value.status() == "400"
    assert info.value.message().startswith("load failed for model 'half': version 2: ")
    assert "weights.bin is missing" in info.value.message()
    assert client.is_model_ready("half", "1") and not client.is_model_ready("half", "2")  # version 1 serves
    assert index(client)[("half", "2")][0] == "UNAVAILABLE"
    # Loading the good version alone succeeds; the failed one alone fails again.
    a = raw_post(half_broken, "/v2/repository/models/half/load", b'{"parameters": {"version": 1}}')
    assert a.status == 200 and json.loads(a.body)["versions"][0] == {"version": "1", "state": "ready"}
    a = raw_post(half_broken, "/v2/repository/models/half/load", b'{"parameters": {"version": "2"}}')
    assert a.status == 400 and json.loads(a.body)["error"].startswith("load failed for model 'half': version 2: ")


def test_without_keys_a_repeated_authorization_header_is_not_looked_at(server: ServerProcess) -> None:
    """Without keys the admin rule is the address's: the Authorization header is not read, nor is a
    repeated one refused, as before the rule moved to rest/modelrepo.py (it was 400 there)."""
    a = raw_post(server, "/v2/repository/models/zzz/load", headers={"Authorization": "Bearer a",
                                                                     "authorization": "Bearer b"})
    assert (a.status, json.loads(a.body)) == (404, {"error": "no model named 'zzz' in the model repository"})


def test_a_model_name_no_directory_can_have_is_an_unknown_model(server: ServerProcess) -> None:
    """A path segment of 256 characters (the longest routed) names no model: 404, not 500 ("File
    name too long" from looking for its directory)."""
    name = "x" * 256
    a = raw_post(server, f"/v2/repository/models/{name}/load")
    assert (a.status, json.loads(a.body)) == (404, {"error": f"no model named {name!r} in the model repository"})
