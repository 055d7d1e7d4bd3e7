"""``"explain": true`` over the wire: exact for linear, integrated gradients for mlp (and its int8/sparse
versions, and model.py models with input_gradient) within the stated completeness tolerance, bit-for-bit the
same alone or batched with other connections' rows, streamed too; refusals at admission, naming the model."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.support import Conn, RawHttp, ServerProcess
from wsserve.compression import compress
from wsserve.explain import COMPLETENESS_TOLERANCE, DEFAULT_STEPS
from wsserve.models.mlp import MLPModel, make_mlp_data
from wsserve.repository import write_builtin_version
from wsserve.tensorframe import encode, read_tensors, split, view_tensors
from wsserve.trainer import train_default_models


@pytest.fixture(scope="module")
def mlp(model_cache: Path) -> MLPModel:
    model = train_default_models(names=["mlp"], cache_dir=model_cache)["mlp"]
    assert isinstance(model, MLPModel)
    return model


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    """Held-out mlp rows, as the float32 values the served mlp computes on."""
    return make_mlp_data(0)[1][0][:24].astype(np.float32).astype(np.float64)


QUADRATIC = '''
import numpy as np

class Model:
    """f(x) = sum(x**2): integrated gradients from 0 give exactly x**2 per feature."""
    def __init__(self, version_dir):
        pass
    def predict(self, x):
        return (x * x).sum(axis=1, keepdims=True)
    def input_gradient(self, x, target):
        return 2 * x
'''

OPAQUE = '''
import numpy as np

class Model:
    def __init__(self, version_dir):
        pass
    def predict(self, x):
        return np.sin(x).sum(axis=1, keepdims=True)
'''


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, mlp: MLPModel) -> Path:
    """mlpc 1 (fp32 mlp) 2 (int8) 3 (50% pruned); quad and opaque (model.py, with and without input_gradient);
    quadn: quad with named tensors (input x, output y)."""
    root = tmp_path_factory.mktemp("repo")
    write_builtin_version(root, "mlpc", mlp, 1)
    compress(root / "mlpc" / "1", root / "mlpc" / "2", method="int8", latency_runs=1)
    compress(root / "mlpc" / "1", root / "mlpc" / "3", method="prune", fraction=0.5, latency_runs=1)
    for name, source in (("quad", QUADRATIC), ("opaque", OPAQUE)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(textwrap.dedent(source))
        (root / name / "config.toml").write_text("input_shape = [4]\noutput_shape = [1]\nflops_per_row = 10\n")
    (root / "quadn" / "1").mkdir(parents=True)
    (root / "quadn" / "1" / "model.py").write_text(textwrap.dedent(QUADRATIC))
    (root / "quadn" / "config.toml").write_text('[[inputs]]\nname = "x"\nshape = [4]\n\n'
                                               '[[outputs]]\nname = "y"\nshape = [1]\n')
    return root


@pytest.fixture(scope="module")
def server(repo: Path, model_cache: Path, module_transport: str):
    """The default models plus the repository, on each transport."""
    proc = ServerProcess("--model-repository", str(repo), "--max-explain-rows", "40", cache_dir=model_cache,
                         transport=module_transport)
    yield proc
    proc.stop()


async def _predict(conn: Conn, rid: str, model: str, x: np.ndarray, **extra: object) -> dict:
    return await conn.request({"type": "predict", "id": rid, "model": model, "inputs": x.tolist(), **extra}, timeout=60)


async def test_linear_is_exact(server: ServerProcess) -> None:
    conn = await Conn.open(server.url)
    x = np.array([[0.5], [-2.0], [3.25], [0.0]])
    r = await _predict(conn, "a", "linear", x, explain=True)
    assert r["type"] == "result" and r["explanation"] == {"method": "linear-exact", "baseline": "zeros",
                                                          "target": "argmax", "steps": 0}
    f0, f1 = (await _predict(conn, "b", "linear", np.array([[0.0], [1.0]])))["outputs"]
    weight = f1[0] - f0[0]
    attributions = np.array(r["attributions"])
    assert attributions.shape == (4, 1)
    np.testing.assert_allclose(attributions, weight * x, rtol=1e-12, atol=1e-15)  # w * (x - 0)
    # completeness holds exactly (float rounding): sum = f(x) - f(0)
    np.testing.assert_allclose(attributions.sum(axis=1), np.array(r["outputs"])[:, 0] - f0[0], rtol=0, atol=1e-12)
    assert attributions[3, 0] == 0.0
    await conn.close()


@pytest.mark.parametrize("version", [None, 1, 2, 3], ids=["builtin", "repository", "int8", "sparse"])
async def test_mlp_completeness_within_the_stated_tolerance(server: ServerProcess, rows: np.ndarray,
                                                            version: int | None) -> None:
    conn = await Conn.open(server.url)
    model, extra = ("mlp", {}) if version is None else ("mlpc", {"version": version})
    r = await _predict(conn, "e", model, rows, explain=True, **extra)
    assert r["type"] == "result", r
    assert r["explanation"] == {"method": "integrated-gradients", "baseline": "zeros", "target": "argmax",
                                "steps": DEFAULT_STEPS}
    outputs, attributions = np.array(r["outputs"]), np.array(r["attributions"])
    assert attributions.shape == rows.shape
    base = np.array((await _predict(conn, "z", model, np.zeros((1, 32)), **extra))["outputs"][0])
    target = outputs.argmax(axis=1)
    gap = attributions.sum(axis=1) - (outputs[np.arange(len(rows)), target] - base[target])
    assert np.abs(gap).max() <= COMPLETENESS_TOLERANCE, gap
    # the same outputs as a plain predict: explaining changes nothing else
    plain = await _predict(conn, "p", model, rows, **extra)
    assert plain["outputs"] == r["outputs"] and "attributions" not in plain
    await conn.close()


async def test_same_attributions_alone_or_batched_with_other_connections(start_server, rows: np.ndarray) -> None:
    """A long batching window (2 s) that a full batch ends at once: every row of an explain request costs 32
    units of the 256-unit batch, so 3 + 2 rows to explain and 96 plain rows fill it exactly - the batch is
    formed when (and only when) all three requests are queued, whatever the machine's speed."""
    server = start_server("--models", "mlp", "--max-delay-ms", "2000")
    a, b, c = await Conn.open(server.url), await Conn.open(server.url), await Conn.open(server.url)
    mine = rows[:3]
    alone = await _predict(a, "alone", "mlp", mine, explain=True)
    assert alone["type"] == "result" and alone["timing"]["batch_size"] == 3
    noise = np.random.default_rng(5).standard_normal((96, 32))
    await b.send({"type": "predict", "id": "plain", "model": "mlp", "inputs": noise.tolist()})
    await c.send({"type": "predict", "id": "other", "model": "mlp", "inputs": rows[10:12].tolist(), "explain": True})
    await a.send({"type": "predict", "id": "mine", "model": "mlp", "inputs": mine.tolist(), "explain": True})
    (_, together), (_, plain), (_, other) = await asyncio.gather(
        a.until_terminal("mine", 60), b.until_terminal("plain", 60), c.until_terminal("other", 60))
    assert together["type"] == plain["type"] == other["type"] == "result"
    # computed in one batch with the other connections' rows
    assert together["timing"]["batch_size"] == plain["timing"]["batch_size"] == 101
    assert together["attributions"] == alone["attributions"]  # bit for bit (JSON floats round-trip)
    assert together["outputs"] == alone["outputs"]
    assert "attributions" not in plain and len(other["attributions"]) == 2
    for conn in (a, b, c):
        await conn.close()


async def test_streamed_chunks_carry_their_rows_attributions(server: ServerProcess, rows: np.ndarray) -> None:
    conn = await Conn.open(server.url)
    whole = await _predict(conn, "w", "mlp", rows[:11], explain=True)
    await conn.send({"type": "predict", "id": "s", "model": "mlp", "inputs": rows[:11].tolist(), "explain": True,
                     "stream": True, "chunk_rows": 4})
    chunks, done = await conn.until_terminal("s", 60)
    assert [(c["offset"], len(c["outputs"]), len(c["attributions"])) for c in chunks] == [(0, 4, 4), (4, 4, 4),
                                                                                          (8, 3, 3)]
    assert [a for c in chunks for a in c["attributions"]] == whole["attributions"]
    assert done["type"] == "done" and done["explanation"]["method"] == "integrated-gradients"
    await conn.close()


async def test_model_py_with_input_gradient_is_explained(server: ServerProcess) -> None:
    conn = await Conn.open(server.url)
    x = np.random.default_rng(1).standard_normal((5, 4))
    r = await _predict(conn, "q", "quad", x, explain=True)
    assert r["type"] == "result", r
    # the midpoint rule is exact for a linear gradient: attribution_j = x_j**2
    np.testing.assert_allclose(r["attributions"], x * x, rtol=1e-12)
    await conn.close()


async def test_refusals_name_the_model_at_admission(server: ServerProcess) -> None:
    conn = await Conn.open(server.url)
    batches_before = server.metrics().sum("wsserve_batch_size_count", model="opaque")
    r = await _predict(conn, "o", "opaque", np.zeros((2, 4)), explain=True)
    assert r["type"] == "error" and r["code"] == "bad_request" and r["id"] == "o"
    assert r["message"] == ("model 'opaque' version 1 cannot be explained: its python backend provides no input "
                            "gradient (explanations: linear, mlp and its int8/sparse versions, and model.py models "
                            "that define input_gradient(x, target))")
    r = await _predict(conn, "g", "charlm", np.zeros((1, 4)), explain=True)
    assert r["type"] == "error" and r["code"] == "bad_request" and "'charlm'" in r["message"]
    assert server.metrics().sum("wsserve_batch_size_count", model="opaque") == batches_before  # never queued
    # the same request without explain is served
    r = await _predict(conn, "o2", "opaque", np.zeros((2, 4)))
    assert r["type"] == "result"
    # the limit on rows to explain, and the field's type
    r = await _predict(conn, "big", "mlp", np.zeros((41, 32)), explain=True)
    assert r["type"] == "error" and r["code"] == "invalid_input"
    assert r["message"] == "'inputs' has 41 rows; explain takes at most 40 rows per request (max_explain_rows)"
    r = await _predict(conn, "t", "mlp", np.zeros((1, 32)), explain="yes")
    assert r["type"] == "error" and r["code"] == "bad_request"
    assert r["message"] == "field 'explain' must be a boolean, got string"
    assert conn.hello["limits"]["max_explain_rows"] == 40
    models = {m["name"]: m for m in (await conn.request({"type": "models"}))["models"]}
    assert models["opaque"]["explain"] is None and models["quad"]["explain"]["method"] == "integrated-gradients"
    assert models["linear"]["explain"]["method"] == "linear-exact"
    await conn.close()


# --------------------------------------------------------------------------- binary tensor frames


def _binary(rid: str, model: str, x: np.ndarray, **fields: object) -> bytes:
    return encode({"type": "predict", "id": rid, "model": model, **fields}, x, key="inputs")


def _unpack(message: str | bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """A binary answer's header and its tensors by name (the named form)."""
    assert isinstance(message, bytes), message
    header, payload = split(message)
    descs = read_tensors(header, len(payload), max_rows=1 << 20, key="outputs")
    return header, {d.name: a for d, a in zip(descs, view_tensors(payload, descs), strict=True)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
async def test_binary_explain_gives_the_json_attributions_bit_for_bit(server: ServerProcess, rows: np.ndarray,
                                                                     dtype: type) -> None:
    conn = await Conn.open(server.url)
    x = rows[:9]
    want = await _predict(conn, "j", "mlp", x, explain=True)
    await conn.send(_binary("b", "mlp", x.astype(dtype), binary_outputs=True, explain=True))
    header, tensors = _unpack(await asyncio.wait_for(conn.ws.recv(), 60))
    assert (header["type"], header["id"], header["model"], header["version"]) == ("result", "b", "mlp", want["version"])
    assert header["explanation"] == want["explanation"]
    assert header["timing"]["batch_size"] == want["timing"]["batch_size"] == 8  # 32 units a row: split as JSON is
    assert [(t["name"], t["shape"]) for t in header["outputs"]] == [("output", [9, 10]),
                                                                    ("output_attributions", [9, 32])]
    assert header["outputs"][1]["dtype"] == "float64"
    attributions = tensors["output_attributions"]
    assert attributions.dtype == np.float64
    assert np.array_equal(attributions, np.array(want["attributions"]))  # bit for bit: JSON floats round-trip
    out = tensors["output"]
    assert np.array_equal(out, np.array(want["outputs"], dtype=out.dtype))
    await conn.close()


async def test_binary_request_without_binary_outputs_answers_json_with_attributions(server: ServerProcess,
                                                                                     rows: np.ndarray) -> None:
    conn = await Conn.open(server.url)
    want = await _predict(conn, "j", "mlp", rows[:5], explain=True)
    await conn.send(_binary("b", "mlp", rows[:5], explain=True))
    got = await conn.recv(60)
    assert got["type"] == "result" and got["id"] == "b"
    assert got["attributions"] == want["attributions"] and got["explanation"] == want["explanation"]
    assert got["outputs"] == want["outputs"]
    await conn.close()


async def test_binary_streamed_explain_chunks_concatenate_to_the_json_attributions(server: ServerProcess,
                                                                                    rows: np.ndarray) -> None:
    conn = await Conn.open(server.url)
    whole = await _predict(conn, "w", "mlp", rows[:11], explain=True)
    await conn.send(_binary("s", "mlp", rows[:11], explain=True, stream=True, chunk_rows=4, binary_outputs=True))
    chunks = []
    while isinstance(message := await asyncio.wait_for(conn.ws.recv(), 60), bytes):
        chunks.append(_unpack(message))
    done = orjson.loads(message)
    assert [(h["type"], h["seq"], h["offset"]) for h, _ in chunks] == [("chunk", 0, 0), ("chunk", 1, 4),
                                                                       ("chunk", 2, 8)]
    assert [[t["name"] for t in h["outputs"]] for h, _ in chunks] == [["output", "output_attributions"]] * 3
    attributions = np.concatenate([t["output_attributions"] for _, t in chunks])
    assert np.array_equal(attributions, np.array(whole["attributions"]))
    assert done == {**done, "type": "done", "id": "s", "rows": 11, "explanation": whole["explanation"]}
    await conn.close()


async def test_binary_explain_names_tensors_as_the_oip_does(server: ServerProcess) -> None:
    """A model with a named output: its name, and ``<name>_attributions``, on both protocols."""
    conn = await Conn.open(server.url)
    x = np.random.default_rng(2).standard_normal((3, 4))
    await conn.send(_binary("n", "quadn", x, binary_outputs=True, explain=True))
    header, tensors = _unpack(await asyncio.wait_for(conn.ws.recv(), 60))
    assert [t["name"] for t in header["outputs"]] == ["y", "y_attributions"]
    np.testing.assert_allclose(tensors["y_attributions"], x * x, rtol=1e-12)
    np.testing.assert_allclose(tensors["y"][:, 0], (x * x).sum(axis=1), rtol=1e-12)
    await conn.close()
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP64", "data": x.ravel().tolist()}],
                         "parameters": {"explain": True}})
    with RawHttp(server.port) as http:
        answer = http.request("POST", "/v2/models/quadn/infer", body, {"Content-Type": "application/json"})
    assert answer.status == 200, answer.body
    oip = orjson.loads(answer.body)
    assert [o["name"] for o in oip["outputs"]] == ["y", "y_attributions"]
    assert np.array_equal(np.array(oip["outputs"][1]["data"]).reshape(3, 4), tensors["y_attributions"])


async def test_binary_explain_refusals_are_the_json_ones(server: ServerProcess) -> None:
    conn = await Conn.open(server.url)
    for rid, model, x in (("o", "opaque", np.zeros((2, 4))), ("big", "mlp", np.zeros((41, 32)))):
        want = await _predict(conn, rid, model, x, explain=True)
        for fields in ({}, {"binary_outputs": True}):
            await conn.send(_binary(rid, model, x, explain=True, **fields))
            got = await conn.recv()
            assert got == want, (fields, got)
    assert want["code"] == "invalid_input" and "(max_explain_rows)" in want["message"]
    # a generative model has no predict to explain
    got = await conn.request({"type": "predict", "id": "g", "model": "charlm", "inputs": [[0.0]], "explain": True,
                              "binary_outputs": True})
    assert got["type"] == "error" and got["code"] == "bad_request" and "'charlm'" in got["message"]
    # the same binary request without explain is served
    await conn.send(_binary("o2", "opaque", np.zeros((2, 4)), binary_outputs=True))
    header, tensors = _unpack(await asyncio.wait_for(conn.ws.recv(), 60))
    assert header["type"] == "result" and header["shape"] == [2, 1] and "explanation" not in header
    await conn.close()
