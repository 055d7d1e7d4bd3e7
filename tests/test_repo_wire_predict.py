"""The model repository over the wire: ONNX and model.py models, versions, ``models``, start-up failures.

One server (``--models none --model-repository REPO``) serves a repository this module builds
offline: ONNX graphs made with the ``onnx`` helper API (a linear layer in versions 1, 2, 10
and a corrupt 3, an MLP with two named inputs, an int64-input model), a scikit-learn pipeline
converted with skl2onnx, a model.py, and one model per start-up failure mode, each with a good
version 1 next to its broken version 2.  Every answer is compared with a reference computed
here (numpy, or scikit-learn itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests import onnx_builders as ob  # noqa: E402
from tests.repo_models import (  # noqa: E402
    AFFINE_CONFIG,
    AFFINE_PY,
    RAISES_PY,
    SYNTAX_ERROR_PY,
    WARMUP_FAILS_PY,
    affine,
    write_affine,
    write_py,
)
from tests.repo_wire import models_http, predict, states  # noqa: E402
from tests.support import Conn, ServerProcess  # noqa: E402

RNG = np.random.default_rng(5)
LIN_VERSIONS = {1: 1, 2: 2, 10: 10}  # version -> seed of its weights


def _sklearn_pipeline() -> tuple[Any, Any, np.ndarray]:
    skl2onnx = pytest.importorskip("skl2onnx")
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scale = np.array([1, 10, 100, 0.1], dtype=np.float32)
    x = RNG.standard_normal((400, 4)).astype(np.float32) * scale
    y = ((x[:, 0] + x[:, 1] / 10 - x[:, 2] / 100) > 0.1 * x[:, 3]).astype(np.int64)
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    graph = skl2onnx.to_onnx(pipe, x[:1], options={"zipmap": False}, target_opset=17)
    x_test = RNG.standard_normal((64, 4)).astype(np.float32) * scale
    return pipe, graph, x_test


class Repo:
    """The repository this module serves, with the references to check answers against."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lin = {}
        for version, seed in LIN_VERSIONS.items():
            graph, ref = ob.linear_layer(3, 2, seed=seed)
            ob.save(graph, root / "lin" / str(version))
            self.lin[version] = ref
        (root / "lin" / "3").mkdir()
        (root / "lin" / "3" / "model.onnx").write_bytes(b"\x08\x07 not an ONNX protobuf")
        ob.save(ob.linear_layer(3, 2, seed=99)[0], root / "lin" / ".11.tmp")  # hidden: not a version
        (root / "lin" / "notes.txt").write_text("not a version either")

        graph, self.mlp2 = ob.mlp_two_inputs(seed=3)
        ob.save(graph, root / "mlp2" / "1")
        graph, self.ids = ob.int64_embedding(vocab=10, dim=3, seed=4)
        ob.save(graph, root / "ids" / "1")
        self.pipe, graph, self.x_test = _sklearn_pipeline()
        ob.save(graph, root / "skl" / "1")
        (root / "skl" / "config.toml").write_text('task = "classification"\n')

        (root / "py").mkdir()
        (root / "py" / "config.toml").write_text(AFFINE_CONFIG)
        write_affine(root / "py" / "1", bias=0.5)
        (root / "greedy").mkdir()  # max_delay_ms = 0 is in bounds: greedy batching (it used to stop the server)
        (root / "greedy" / "config.toml").write_text(AFFINE_CONFIG + "max_delay_ms = 0\n")
        write_affine(root / "greedy" / "1", bias=0.25)

        # Start-up failures: a good version 1 keeps serving next to a broken version 2.
        ob.save(ob.linear_layer(3, 2)[0], root / "f_file" / "1")
        (root / "f_file" / "2").mkdir()
        (root / "f_file" / "2" / "model.onnx").write_bytes(b"garbage")
        for name, broken in (("f_init", RAISES_PY), ("f_warm", WARMUP_FAILS_PY), ("f_syntax", SYNTAX_ERROR_PY)):
            (root / name).mkdir()
            (root / name / "config.toml").write_text(AFFINE_CONFIG)
            write_affine(root / name / "1", bias=1.0)
            write_py(root / name / "2", broken)
        (root / "f_shape").mkdir()
        (root / "f_shape" / "config.toml").write_text("input_shape = [3]\n")
        ob.save(ob.linear_layer(3, 2)[0], root / "f_shape" / "1")
        ob.save(ob.linear_layer(4, 2)[0], root / "f_shape" / "2")
        (root / "f_cfg").mkdir()
        (root / "f_cfg" / "config.toml").write_text("max_batch_size = -4\n")
        ob.save(ob.linear_layer(3, 2)[0], root / "f_cfg" / "1")
        # Nesting deeper than the parsers recurse (used to stop the server from starting at all).
        ob.save(ob.linear_layer(3, 2)[0], root / "f_npz" / "1")
        (root / "f_npz" / "2").mkdir()
        deep = np.frombuffer(b"[" * 400_000 + b"]" * 400_000, dtype=np.uint8)
        np.savez(root / "f_npz" / "2" / "model.npz", allow_pickle=False, __meta__=deep,
                 weight=np.ones(1), bias=np.zeros(1))
        # Metrics `models` cannot serialise (used to break GET /v1/models for every model).
        (root / "f_meta").mkdir()
        (root / "f_meta" / "config.toml").write_text(AFFINE_CONFIG)
        write_affine(root / "f_meta" / "1", bias=1.0)
        write_affine(root / "f_meta" / "2", bias=2.0, source=AFFINE_PY.replace(
            'self.metrics = {"bias": self.bias}', "self.metrics = {1: {2, 3}}"))
        (root / "f_deep").mkdir()
        (root / "f_deep" / "config.toml").write_text("a = " + "[" * 30000 + "]" * 30000 + "\n")
        ob.save(ob.linear_layer(3, 2)[0], root / "f_deep" / "1")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return Repo(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="module")
def server(repo: Repo, module_transport: str) -> Iterator[ServerProcess]:
    with ServerProcess("--models", "none", "--model-repository", str(repo.root), transport=module_transport) as srv:
        yield srv


@pytest.fixture
async def conn(server: ServerProcess) -> Any:
    c = await Conn.open(server.url)
    yield c
    await c.close()


def close(outputs: Any, expected: Any) -> None:
    np.testing.assert_allclose(np.asarray(outputs, dtype=np.float64), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- models


async def test_models_has_one_entry_per_model_with_its_versions_and_states(server: ServerProcess, repo: Repo,
                                                                           conn: Conn) -> None:
    listed = models_http(server)
    ws = await conn.request({"type": "models", "id": "m"})
    assert ws["type"] == "models" and ws["id"] == "m"
    assert orjson.loads(orjson.dumps(ws["models"])) == list(listed.values())  # WS and HTTP agree
    assert sorted(listed) == ["f_file", "f_init", "f_meta", "f_npz", "f_shape", "f_syntax", "f_warm", "greedy", "ids", "lin", "mlp2", "py", "skl"]
    assert conn.hello["models"] == sorted(listed)
    lin = listed["lin"]
    assert lin["version"] == "10"  # the highest ready version, compared as a number
    assert [v["version"] for v in lin["versions"]] == ["1", "2", "3", "10"]  # hidden .11.tmp and notes.txt ignored
    assert states(lin) == {"1": "ready", "2": "ready", "3": "failed", "10": "ready"}
    (failed,) = [v for v in lin["versions"] if v["state"] == "failed"]
    assert failed["reason"].startswith(f"{repo.root / 'lin' / '3' / 'model.onnx'}: ONNX Runtime cannot load it: ")
    assert all("reason" not in v for v in lin["versions"] if v["state"] == "ready")
    assert (lin["input_shape"], lin["output_shape"], lin["backend"], lin["parameters"]) == ([3], [2], "onnx", 8)
    assert lin["inputs"] == [{"name": "x", "shape": [3], "dtype": "float32"}]
    assert listed["mlp2"]["outputs"] == [{"name": "logits", "shape": [4], "dtype": "float32"},
                                         {"name": "probs", "shape": [4], "dtype": "float32"}]
    assert listed["ids"]["inputs"] == [{"name": "ids", "shape": [2], "dtype": "int64"}]
    assert listed["skl"]["task"] == "classification"
    py = listed["py"]
    assert (py["backend"], py["task"], py["parameters"], py["metrics"]) == ("python", "regression", 4, {"bias": 0.5})


# --------------------------------------------------------------------------- versions


async def test_default_version_is_the_highest_ready_one(repo: Repo, conn: Conn) -> None:
    rows = RNG.standard_normal((4, 3)).tolist()
    r = await predict(conn, 1, "lin", rows)
    assert r["type"] == "result" and r["model"] == "lin" and r["version"] == "10"
    close(r["outputs"], repo.lin[10](np.array(rows)))


@pytest.mark.parametrize("pin, version", [("2", 2), (2, 2), ("1", 1), (1, 1), ("10", 10), (10, 10)])
async def test_a_request_pins_a_version_as_a_string_or_an_integer(repo: Repo, conn: Conn, pin: Any, version: int) -> None:
    rows = RNG.standard_normal((3, 3)).tolist()
    r = await predict(conn, "p", "lin", rows, version=pin)
    assert r["type"] == "result" and r["version"] == str(version)
    close(r["outputs"], repo.lin[version](np.array(rows)))


@pytest.mark.parametrize("pin, message", [
    ("4", "model 'lin' has no version '4'; available: 1, 2, 3, 10"),
    (4, "model 'lin' has no version '4'; available: 1, 2, 3, 10"),
    ("01", "model 'lin' has no version '01'; available: 1, 2, 3, 10"),
    ("11", "model 'lin' has no version '11'; available: 1, 2, 3, 10"),  # the hidden .11.tmp is no version
])
async def test_an_unknown_version_is_unknown_model_naming_it(conn: Conn, pin: Any, message: str) -> None:
    r = await predict(conn, "u", "lin", [[1, 2, 3]], version=pin)
    assert (r["type"], r["id"], r["code"], r["message"]) == ("error", "u", "unknown_model", message)
    ok = await predict(conn, "after", "lin", [[1, 2, 3]])  # the connection serves on
    assert ok["type"] == "result" and ok["version"] == "10"


async def test_a_version_that_is_not_ready_is_unknown_model_naming_it_and_why(repo: Repo, conn: Conn) -> None:
    for pin in ("3", 3):
        r = await predict(conn, "f", "lin", [[1, 2, 3]], version=pin)
        assert r["code"] == "unknown_model"
        assert r["message"].startswith(
            f"version '3' of model 'lin' is failed ({repo.root / 'lin' / '3' / 'model.onnx'}: ONNX Runtime cannot load it: ")
    gen = await predict(conn, "g", "nope", [[1]], version=1)
    assert gen["code"] == "unknown_model" and gen["message"].startswith("no model named 'nope'; known: f_file, ")


async def test_every_result_and_streamed_done_says_which_version_computed_it(repo: Repo, conn: Conn) -> None:
    rows = RNG.standard_normal((7, 3)).tolist()
    for pin, version in ((None, "10"), (2, "2")):
        extra = {} if pin is None else {"version": pin}
        await conn.send({"type": "predict", "id": "s", "model": "lin", "inputs": rows, "stream": True,
                         "chunk_rows": 3, **extra})
        chunks, done = await conn.until_terminal("s")
        assert [c["offset"] for c in chunks] == [0, 3, 6]
        assert done == {**done, "type": "done", "reason": "complete", "rows": 7, "version": version}
        close([row for c in chunks for row in c["outputs"]], repo.lin[int(version)](np.array(rows)))
    for model, inputs in (("py", [[1, 1, 1]]), ("ids", [[1, 2]]), ("mlp2", {"a": [[0, 0, 0]], "b": [[0, 0]]})):
        r = await predict(conn, model, model, inputs)
        assert r["type"] == "result" and r["version"] == "1", r


# --------------------------------------------------------------------------- ONNX models


async def test_linear_layer_answers_like_numpy(repo: Repo, conn: Conn) -> None:
    rows = (RNG.standard_normal((300, 3)) * 10).tolist()
    r = await predict(conn, "l", "lin", rows, version=1)
    close(r["outputs"], repo.lin[1](np.array(rows)))
    assert r["timing"]["batch_size"] >= 1


async def test_mlp_with_two_named_inputs_answers_outputs_by_name(repo: Repo, conn: Conn) -> None:
    a, b = RNG.standard_normal((5, 3)), RNG.standard_normal((5, 2))
    r = await predict(conn, "n", "mlp2", {"a": a.tolist(), "b": b.tolist()})
    assert r["type"] == "result" and set(r["outputs"]) == {"logits", "probs"}
    expected = repo.mlp2(a.astype(np.float32), b.astype(np.float32))
    for name in ("logits", "probs"):
        close(r["outputs"][name], expected[name])
    # streamed: each chunk holds every output, by name, for its rows
    await conn.send({"type": "predict", "id": "ns", "model": "mlp2", "inputs": {"a": a.tolist(), "b": b.tolist()},
                     "stream": True, "chunk_rows": 2})
    chunks, done = await conn.until_terminal("ns")
    assert done["type"] == "done" and done["rows"] == 5
    close([row for c in chunks for row in c["outputs"]["probs"]], expected["probs"])


@pytest.mark.parametrize("inputs, message", [
    ([[1, 2, 3]], "'inputs' must be an object {name: rows} with the inputs 'a', 'b', got array"),
    ({"a": [[1, 2, 3]]}, "'inputs' is missing input 'b'; the model takes 'a', 'b'"),
    ({"a": [[1, 2, 3]], "b": [[1, 2]], "c": [[1]]}, "'inputs' names unknown input 'c'; the model takes 'a', 'b'"),
    ({"a": [[1, 2, 3]], "b": [[1, 2], [3, 4]]}, "'inputs.b' has 2 rows but 'inputs.a' has 1; every input needs the same rows"),
    ({"a": [[1, 2, 3]], "b": [[1, 2, 3]]}, "'inputs.b' row 0 has 3 values; the model takes 2"),
    ({"a": [[1, 2, 3]], "b": [[1, "x"]]}, "'inputs.b' row 0 holds 'x', which is not a number"),
])
async def test_named_inputs_that_do_not_fit_are_invalid_input(conn: Conn, inputs: Any, message: str) -> None:
    r = await predict(conn, "bad", "mlp2", inputs)
    assert (r["type"], r["code"], r["message"]) == ("error", "invalid_input", message)


async def test_int64_input_takes_integers_and_refuses_one_and_a_half(repo: Repo, conn: Conn) -> None:
    r = await predict(conn, "i", "ids", [[1, 2], [9, 0.0], [3, 7]])
    assert r["type"] == "result" and r["version"] == "1"
    close(r["outputs"], repo.ids(np.array([[1, 2], [9, 0], [3, 7]])))
    bad = await predict(conn, "i", "ids", [[1, 2], [3, 1.5]])
    assert (bad["code"], bad["message"]) == (
        "invalid_input", "'inputs' row 1 holds 1.5, which does not fit input 'ids' of dtype int64 (integers only)")
    for text, shown in (("9223372036854775808", "9223372036854775808"), ("1180591620717411303424", "1.1805916207174113e+21")):
        await conn.send(f'{{"type":"predict","id":"big","model":"ids","inputs":[[1,2],[3,{text}]]}}')
        _, huge = await conn.until_terminal("big")
        assert huge["code"] == "invalid_input", huge
        assert huge["message"] == (f"'inputs' row 1 holds {shown}, which does not fit input 'ids' of dtype int64 "
                                   "(range [-9223372036854775808, 9223372036854775807])")


async def test_float32_input_refuses_a_value_beyond_float32s_range(conn: Conn) -> None:
    for value in (1e39, -3.5e38):
        r = await predict(conn, "f", "lin", [[1, 2, 3], [0, value, 0]])
        assert (r["code"], r["message"]) == ("invalid_input", "'inputs' row 1 holds a value beyond float32's range")
        named = await predict(conn, "n", "mlp2", {"a": [[1, 2, 3]], "b": [[value, 0]]})
        assert named["code"] == "invalid_input"
        assert named["message"] == f"'inputs.b' row 0 holds {value:g}, which does not fit input 'b' of dtype float32"
    ok = await predict(conn, "ok", "lin", [[3.4e38, 0, 0]], version=1)  # just inside the range is served
    assert ok["type"] == "result"


async def test_scikit_learn_pipeline_answers_exactly_what_scikit_learn_predicts(repo: Repo, conn: Conn) -> None:
    rows = repo.x_test.tolist()  # float32 values, sent as JSON numbers and cast back to float32
    r = await predict(conn, "skl", "skl", rows)
    assert r["type"] == "result" and set(r["outputs"]) == {"label", "probabilities"}
    assert r["outputs"]["label"] == repo.pipe.predict(repo.x_test).tolist()
    np.testing.assert_allclose(r["outputs"]["probabilities"], repo.pipe.predict_proba(repo.x_test), atol=1e-5)
    assert len(set(r["outputs"]["label"])) == 2  # both classes occur: the comparison means something


# --------------------------------------------------------------------------- model.py


async def test_a_zero_batching_window_in_config_toml_is_greedy_batching(conn: Conn) -> None:
    r = await predict(conn, "g", "greedy", [[1, 2, 3], [4, 5, 6]])
    assert (r["type"], r["version"]) == ("result", "1"), r
    close(r["outputs"], affine([[1, 2, 3], [4, 5, 6]], 0.25))


async def test_model_py_predicts_with_its_own_code(conn: Conn) -> None:
    rows = RNG.standard_normal((9, 3)).tolist()
    r = await predict(conn, "py", "py", rows)
    assert r["type"] == "result" and r["model"] == "py" and r["version"] == "1"
    close(r["outputs"], affine(rows, 0.5))
    wrong = await predict(conn, "py", "py", [[1, 2]])
    assert wrong["code"] == "invalid_input"


# --------------------------------------------------------------------------- start-up failures


FAILURES = {
    "f_file": "{dir}/2/model.onnx: ONNX Runtime cannot load it: ",
    "f_init": "{dir}/2/model.py: Model('{dir}/2') raised RuntimeError: weights.bin is missing",
    "f_warm": "{dir}/2/model.py: warm-up failed: ValueError: an all-zero batch is not a valid input",
    "f_syntax": "{dir}/2/model.py: SyntaxError: expected ':' (line 2)",
    "f_shape": "{dir}/2/model.onnx: config.toml says input 'x' has shape [3]; the model's is [4]",
    "f_npz": "{dir}/2/model.npz: __meta__ is not UTF-8 JSON (arrays or objects nested too deeply)",
    "f_meta": "{dir}/2/model.py: its metrics or figures are not JSON (Dict key must be str)",
}


@pytest.mark.parametrize("name", sorted(FAILURES))
async def test_a_version_that_fails_at_start_up_is_failed_with_its_reason_and_the_model_serves_on(
        server: ServerProcess, repo: Repo, conn: Conn, name: str) -> None:
    expected = FAILURES[name].format(dir=repo.root / name)
    entry = models_http(server)[name]
    assert entry["version"] == "1" and states(entry) == {"1": "ready", "2": "failed"}
    reason = entry["versions"][1]["reason"]
    assert reason.startswith(expected) if expected.endswith(": ") else reason == expected, reason
    await asyncio.to_thread(server.wait_logged, f"model {name!r} version 2 failed to load: {reason}")
    pinned = await predict(conn, "p", name, [[1, 2, 3]], version=2)
    assert (pinned["code"], pinned["message"]) == ("unknown_model", f"version '2' of model {name!r} is failed ({reason})")
    served = await predict(conn, "d", name, [[1, 2, 3]])
    assert served["type"] == "result" and served["version"] == "1"
    if name.startswith("f_") and (repo.root / name / "1" / "model.py").exists():
        close(served["outputs"], affine([[1, 2, 3]], 1.0))


@pytest.mark.parametrize(("name", "problem"), [
    ("f_cfg", "key 'max_batch_size': must be in [0, 65536], got -4"),
    ("f_deep", "is not valid TOML (arrays or tables nested too deeply)"),
])
async def test_a_bad_config_toml_at_start_up_is_logged_naming_file_key_and_problem(
        server: ServerProcess, repo: Repo, conn: Conn, name: str, problem: str) -> None:
    """A bad value and a document nested too deeply alike: an error naming the file, the model
    is not served, every other model is."""
    await asyncio.to_thread(server.wait_logged, f"model {name!r}: {repo.root / name / 'config.toml'}: {problem}")
    assert name not in models_http(server)
    r = await predict(conn, "c", name, [[1, 2, 3]])
    assert r["code"] == "unknown_model" and name in r["message"]
    ok = await predict(conn, "ok", "lin", [[1, 2, 3]])  # every other model serves
    assert ok["type"] == "result"


# --------------------------------------------------------------------------- binary tensor frames


async def test_binary_frames_with_named_inputs_and_named_outputs(repo: Repo, conn: Conn) -> None:
    from wsserve.tensorframe import encode, read_tensors, split, view_tensors

    a, b = RNG.standard_normal((4, 3)).astype(np.float32), RNG.standard_normal((4, 2)).astype(np.float32)
    expected = repo.mlp2(a, b)
    # named inputs in any order; outputs named, in a binary frame
    await conn.ws.send(encode({"type": "predict", "id": "bn", "model": "mlp2", "binary_outputs": True}, {"b": b, "a": a},
                                key="inputs"))
    message = await conn.ws.recv()
    assert isinstance(message, bytes)
    header, payload = split(message)
    descs = read_tensors(header, len(payload), max_rows=100, key="outputs")
    assert [d["name"] for d in header["outputs"]] == [d.name for d in descs] and header["version"] == "1"
    for desc, arr in zip(descs, view_tensors(payload, descs)):
        close(arr, expected[desc.name])
    # a model with several inputs needs them named; a missing one is named
    await conn.ws.send(encode({"type": "predict", "id": "b1", "model": "mlp2"}, a, key="inputs"))
    err = await conn.recv()
    assert err["code"] == "invalid_input" and "list them in 'inputs'" in err["message"]
    await conn.ws.send(encode({"type": "predict", "id": "b2", "model": "mlp2"}, {"a": a}, key="inputs"))
    err = await conn.recv()
    assert err["code"] == "invalid_input" and "missing input 'b'" in err["message"]


async def test_binary_int64_input_takes_integers_and_integral_floats_only(repo: Repo, conn: Conn) -> None:
    from wsserve.tensorframe import encode

    ids = np.array([[1, 2], [9, 0], [3, 7]], dtype=np.int64)
    for x in (ids, ids.astype(np.int32), ids.astype(np.float64)):
        await conn.ws.send(encode({"type": "predict", "id": "i", "model": "ids"}, x, key="inputs"))
        r = await conn.recv()
        assert r["type"] == "result", r
        close(r["outputs"], repo.ids(ids))
    await conn.ws.send(encode({"type": "predict", "id": "h", "model": "ids"}, np.array([[1, 2], [3, 1.5]]), key="inputs"))
    bad = await conn.recv()
    assert bad["code"] == "invalid_input" and "row 1[1]" in bad["message"] and "not an integer" in bad["message"]
    await conn.ws.send(encode({"type": "predict", "id": "t", "model": "ids"}, np.ones((1, 2), bool), key="inputs"))
    bad = await conn.recv()
    assert bad["code"] == "invalid_input" and "is bool; input 'ids' takes int64" in bad["message"]
