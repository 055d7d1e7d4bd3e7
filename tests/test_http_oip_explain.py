"""Explanations on Open Inference Protocol inference, with ``tritonclient[http]``: request parameter
``"explain": true`` answers ``output_attributions`` (FP64, ``[n, d]``) and ``explain_*`` response
parameters.  The attributions are the WebSocket's for the same rows, bit for bit (mlp: integrated
gradients; linear: exact ``w * (x - 0)``), complete within the stated tolerance, in JSON or binary
form; refusals are the WebSocket's messages in the OIP error shape."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.repo_models import NAMED_CONFIG, NAMED_PY, write_py
from tests.support import Conn, RawHttp, ServerProcess
from wsserve.explain import COMPLETENESS_TOLERANCE, DEFAULT_STEPS
from wsserve.models.mlp import make_mlp_data

tritonclient_http = pytest.importorskip("tritonclient.http")  # the test extra installs it
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_EXPLAIN_ROWS = 30

OPAQUE = '''
import numpy as np

class Model:
    def __init__(self, version_dir):
        pass
    def predict(self, x):
        return np.sin(x).sum(axis=1, keepdims=True)
'''

IG = {"explain": True, "explain_method": "integrated-gradients", "explain_baseline": "zeros",
      "explain_target": "argmax", "explain_steps": DEFAULT_STEPS}
EXACT = {"explain": True, "explain_method": "linear-exact", "explain_baseline": "zeros", "explain_target": "argmax",
         "explain_steps": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path):
    """The default models, model.py models without input_gradient (one with named tensors), and a
    low --max-explain-rows."""
    root = tmp_path_factory.mktemp("repo")
    write_py(root / "named" / "1", NAMED_PY)
    (root / "named" / "config.toml").write_text(NAMED_CONFIG)
    (root / "opaque" / "1").mkdir(parents=True)
    (root / "opaque" / "1" / "model.py").write_text(textwrap.dedent(OPAQUE))
    (root / "opaque" / "config.toml").write_text("input_shape = [4]\noutput_shape = [1]\nflops_per_row = 10\n")
    proc = ServerProcess("--model-repository", str(root), "--max-explain-rows", str(MAX_EXPLAIN_ROWS),
                         cache_dir=model_cache)
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServerProcess):
    c = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    """Held-out mlp rows (the completeness bound is stated for the model's data distribution)."""
    return make_mlp_data(0)[1][0][:MAX_EXPLAIN_ROWS].astype(np.float32)


async def _ws(server: ServerProcess, model: str, x: np.ndarray) -> dict:
    conn = await Conn.open(server.url)
    answer = await conn.request({"type": "predict", "id": "w", "model": model, "inputs": x.astype(np.float64).tolist(),
                                 "explain": True}, timeout=60)
    await conn.close()
    assert answer["type"] == "result", answer
    return answer


def _infer(client, model: str, x: np.ndarray, dtype: str, *, binary_in: bool = False, outputs=None, **kw):
    inp = tritonclient_http.InferInput("input", list(x.shape), dtype)
    inp.set_data_from_numpy(x, binary_data=binary_in)
    return client.infer(model, [inp], outputs=outputs, **kw)


def test_model_metadata_says_how_each_model_is_explained(client) -> None:
    assert client.get_model_metadata("mlp")["parameters"] == IG
    assert client.get_model_metadata("linear", model_version="1")["parameters"] == EXACT
    assert client.get_model_metadata("opaque")["parameters"] == {"explain": False}
    assert client.get_model_metadata("charlm")["parameters"] == {"explain": False}
    assert client.get_model_metadata("named")["parameters"] == {"explain": False}


@pytest.mark.parametrize("form", ["json", "binary"])
async def test_mlp_attributions_are_the_websockets_and_complete(server, client, rows: np.ndarray, form: str) -> None:
    binary = form == "binary"
    out = tritonclient_http.InferRequestedOutput("output", binary_data=binary)
    result = _infer(client, "mlp", rows, "FP32", binary_in=binary, outputs=[out], parameters={"explain": True},
                    request_id="x1")
    response = result.get_response()
    assert response["parameters"] == IG and response["id"] == "x1"
    # the attributions follow their output, in its form
    described = [(o["name"], o["datatype"], o["shape"], "parameters" in o) for o in response["outputs"]]
    n = len(rows)
    assert described == [("output", "FP64", [n, 10], binary), ("output_attributions", "FP64", [n, 32], binary)]
    if binary:
        assert response["outputs"][1]["parameters"] == {"binary_data_size": n * 32 * 8}
    outputs, attributions = result.as_numpy("output"), result.as_numpy("output_attributions")
    assert attributions.dtype == np.float64 and attributions.shape == rows.shape
    ws = await _ws(server, "mlp", rows)
    assert np.array_equal(attributions, np.array(ws["attributions"]))  # bit for bit (JSON doubles round-trip)
    assert np.array_equal(outputs, np.array(ws["outputs"]))
    assert response["parameters"] == {"explain": True, **{f"explain_{k}": v for k, v in ws["explanation"].items()}}
    # completeness: each row's attributions add up to f(x) - f(0) for its predicted class
    base = _infer(client, "mlp", np.zeros((1, 32), np.float32), "FP32").as_numpy("output")[0]
    target = outputs.argmax(axis=1)
    gap = attributions.sum(axis=1) - (outputs[np.arange(n), target] - base[target])
    assert np.abs(gap).max() <= COMPLETENESS_TOLERANCE, gap


async def test_linear_is_exact_and_the_attributions_tensor_can_be_asked_for_by_name(server, client) -> None:
    x = np.array([[0.5], [-2.0], [3.25], [0.0]])
    # named explicitly: binary, while the output stays JSON
    wanted = [tritonclient_http.InferRequestedOutput("output_attributions", binary_data=True),
              tritonclient_http.InferRequestedOutput("output", binary_data=False)]
    result = _infer(client, "linear", x, "FP64", outputs=wanted, parameters={"explain": True})
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["output_attributions", "output"]
    assert response["outputs"][0]["parameters"] == {"binary_data_size": 4 * 8} and "data" in response["outputs"][1]
    assert response["parameters"] == EXACT
    f0, f1 = _infer(client, "linear", np.array([[0.0], [1.0]]), "FP64").as_numpy("output")[:, 0]
    attributions = result.as_numpy("output_attributions")
    assert attributions.shape == (4, 1)
    np.testing.assert_allclose(attributions, (f1 - f0) * x, rtol=1e-12, atol=1e-15)  # w * (x - 0)
    np.testing.assert_allclose(attributions.sum(axis=1), result.as_numpy("output")[:, 0] - f0, rtol=0, atol=1e-12)
    assert np.array_equal(attributions, np.array((await _ws(server, "linear", x))["attributions"]))


def test_without_explain_nothing_changes(client) -> None:
    """tritonclient's defaults (binary outputs, no outputs named): one tensor and no parameters."""
    response = _infer(client, "mlp", np.zeros((2, 32), np.float32), "FP32").get_response()
    assert [o["name"] for o in response["outputs"]] == ["output"] and "parameters" not in response
    response = _infer(client, "mlp", np.zeros((2, 32), np.float32), "FP32",
                      parameters={"explain": False}).get_response()
    assert [o["name"] for o in response["outputs"]] == ["output"] and "parameters" not in response


@pytest.mark.parametrize(
    "model, shape, dtype, params, outputs, text",
    [
        ("opaque", [2, 4], "FP64", {"explain": True}, None,
         ("model 'opaque' version 1 cannot be explained: its python backend provides no input gradient "
          "(explanations: linear, mlp and its int8/sparse versions, and model.py models that define "
          "input_gradient(x, target))")),
        ("named", [1, 2], "FP64", {"explain": True}, None,
         ("model 'named' version 1 cannot be explained: explanations need one float input, it takes a (float64), "
          "b (float64)")),
        ("charlm", [1, 4], "FP64", {"explain": True}, None, "model 'charlm' generates text: use POST /v1/completions"),
        ("mlp", [MAX_EXPLAIN_ROWS + 1, 32], "FP32", {"explain": True}, None,
         (f"'inputs' has {MAX_EXPLAIN_ROWS + 1} rows; explain takes at most {MAX_EXPLAIN_ROWS} rows per request "
          "(max_explain_rows)")),
        ("mlp", [1, 32], "FP32", {"explain": "yes"}, None, "parameter 'explain' must be a boolean, got string"),
        ("mlp", [1, 32], "FP32", {}, ["output_attributions"],
         "output 'output_attributions' is only answered with parameter 'explain': true"),
    ],
    ids=["not-explainable", "named-inputs", "generative", "over-max-explain-rows", "not-a-boolean", "attributions-without-explain"],
)
def test_refusals_are_the_websockets_in_the_oip_error_shape(server, client, model, shape, dtype, params, outputs,
                                                             text) -> None:
    batches = server.metrics().sum("wsserve_batch_size_count", model=model)
    wanted = None if outputs is None else [tritonclient_http.InferRequestedOutput(o) for o in outputs]
    x = np.zeros(shape, np.float32 if dtype == "FP32" else np.float64)
    with pytest.raises(InferenceServerException) as info:
        _infer(client, model, x, dtype, outputs=wanted, parameters=params)
    assert info.value.status() == "400" and info.value.message() == text
    assert server.metrics().sum("wsserve_batch_size_count", model=model) == batches  # never queued


def test_raw_http_body(server) -> None:
    """The wire form without a client library: JSON in, JSON out, the attributions after the output."""
    body = json.dumps({"parameters": {"explain": True},
                       "inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP64", "data": [2.0]}]}).encode()
    with RawHttp(server.port) as c:
        answer = c.request("POST", "/v2/models/linear/infer", body, {"Content-Type": "application/json"})
    assert answer.status == 200, answer.body
    doc = json.loads(answer.body)
    assert doc["parameters"] == EXACT
    assert [(o["name"], o["shape"]) for o in doc["outputs"]] == [("output", [1, 1]), ("output_attributions", [1, 1])]
