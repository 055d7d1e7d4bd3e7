"""KServe's V1 protocol (TensorFlow Serving's REST predict API) on a real server.

``POST /v1/models/{name}[/versions/{v}]:predict`` and ``:explain`` answer what a WebSocket
``predict`` (with ``"explain": true``) answers for the same rows, in KServe's shapes; ``GET
/v1/models/{name}`` is KServe's model-ready answer and OpenAI's model object at once (read here
with the openai SDK too).  The repository model ``named`` (tests/repo_models.py ``NAMED_PY``) has
named inputs ``a`` [2], ``b`` [1] and outputs ``sum``, ``scaled``.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.repo_models import NAMED_CONFIG, NAMED_PY, RAISES_PY, write_py
from tests.support import Conn, ServerProcess, scrape_metrics, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_transport: str, model_cache: Path) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("repository")
    (root / "named").mkdir()
    (root / "named" / "config.toml").write_text(NAMED_CONFIG)
    write_py(root / "named" / "1", NAMED_PY)
    write_py(root / "named" / "2", RAISES_PY)  # failed: version 1 stays the default
    (root / "broken").mkdir()
    (root / "broken" / "config.toml").write_text(NAMED_CONFIG)
    write_py(root / "broken" / "1", RAISES_PY)  # a model with no ready version
    with ServerProcess("--model-repository", str(root), "--max-explain-rows", "4", "--max-rows", "64", cache_dir=model_cache,
                       transport=module_transport) as srv:
        yield srv


def call(server: ServerProcess, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """``method path`` with a JSON body -> ``(status, decoded JSON answer)``."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.http + path, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def ws_predict(server: ServerProcess, **fields: Any) -> dict[str, Any]:
    conn = await Conn.open(server.url)
    reply = await conn.request({"type": "predict", "id": 1, **fields})
    await conn.close()
    assert reply["type"] == "result", reply
    return reply


ROWS = [[0.25], [0.5], [-3.0]]
NAMED_INPUTS = {"a": [[1.0, 2.0], [3.0, -4.0]], "b": [[10.0], [0.5]]}


async def test_predict_answers_the_websocket_predicts_rows(server) -> None:
    expected = (await ws_predict(server, model="linear", inputs=ROWS))["outputs"]
    assert call(server, "POST", "/v1/models/linear:predict", {"instances": ROWS}) == (200, {"predictions": expected})
    # a pinned version (TensorFlow Serving's path), and the columnar form
    assert call(server, "POST", "/v1/models/linear/versions/1:predict", {"inputs": ROWS}) == (200, {"outputs": expected})
    # an instance may name the model's only input
    named = [{"input": row} for row in ROWS]
    assert call(server, "POST", "/v1/models/linear:predict", {"instances": named}) == (200, {"predictions": expected})
    mlp_rows = [[0.1 * i - 1.0 for i in range(32)], [0.5] * 32]
    expected = (await ws_predict(server, model="mlp", inputs=mlp_rows))["outputs"]
    assert call(server, "POST", "/v1/models/mlp:predict", {"instances": mlp_rows}) == (200, {"predictions": expected})


async def test_named_inputs_and_outputs(server) -> None:
    expected = (await ws_predict(server, model="named", inputs=NAMED_INPUTS))["outputs"]
    assert set(expected) == {"sum", "scaled"}
    instances = [{"a": a, "b": b} for a, b in zip(NAMED_INPUTS["a"], NAMED_INPUTS["b"], strict=True)]
    status, body = call(server, "POST", "/v1/models/named:predict", {"instances": instances})
    assert status == 200
    assert body == {"predictions": [{"sum": expected["sum"][i], "scaled": expected["scaled"][i]} for i in range(2)]}
    assert call(server, "POST", "/v1/models/named:predict", {"inputs": NAMED_INPUTS}) == (200, {"outputs": expected})


async def test_explain_answers_the_websocket_attributions(server) -> None:
    for model, rows in (("linear", ROWS), ("mlp", [[0.2] * 32])):
        reply = await ws_predict(server, model=model, inputs=rows, explain=True)
        status, body = call(server, "POST", f"/v1/models/{model}:explain", {"instances": rows})
        assert status == 200
        assert body == {"predictions": reply["outputs"], "explanations": reply["attributions"],
                        "explainer": reply["explanation"]}
    status, body = call(server, "POST", "/v1/models/linear:explain", {"instances": [[1.0]] * 5})
    assert status == 400 and body == {"error": "'instances' has 5 rows; explain takes at most 4 rows per request "
                                               "(max_explain_rows)"}


def test_model_ready_is_also_openais_model_object(server) -> None:
    status, body = call(server, "GET", "/v1/models/mlp")
    assert status == 200 and body["name"] == "mlp" and body["ready"] is True
    assert call(server, "GET", "/v1/models/mlp/versions/1")[1]["ready"] is True
    assert call(server, "GET", "/v1/models/mlp/versions/9") == (404, {"error": "model 'mlp' has no version '9'; "
                                                                               "available: 1"})
    assert call(server, "GET", "/v1/models/nope")[0] == 404
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=server.http + "/v1", api_key="unused", max_retries=0) as client:
        model = client.models.retrieve("charlm")
    assert model.id == "charlm" and model.object == "model" and model.owned_by == "wsserve"


@pytest.mark.parametrize("path,body,status,message", [
    ("/v1/models/linear:predict", {"instances": ROWS, "inputs": ROWS}, 400, "not both"),
    ("/v1/models/linear:predict", {"rows": ROWS}, 400, "missing 'instances'"),
    ("/v1/models/linear:predict", {"instances": []}, 400, "'instances' must be a non-empty array, got an empty one"),
    ("/v1/models/linear:predict", {"instances": "x"}, 400, "'instances' must be a non-empty array, got string"),
    ("/v1/models/linear:predict", {"inputs": 3}, 400, "'inputs' must be an array of rows or an object"),
    ("/v1/models/linear:predict", [1, 2], 400, "the body must be a JSON object"),
    ("/v1/models/linear:predict", {"instances": [[0.5], [1, 2]]}, 400, "'instances' row 1 has 2 values; the model takes 1"),
    ("/v1/models/linear:predict", {"instances": [["x"]]}, 400, "'instances' row 0 holds 'x', which is not a number"),
    ("/v1/models/linear:predict", {"instances": [{"input": [1.0]}, [2.0]]}, 400, "'instances[1]' must be an object"),
    ("/v1/models/named:predict", {"instances": [[1.0, 2.0]]}, 400, "the model takes named inputs (a, b)"),
    ("/v1/models/named:predict", {"instances": [{"a": [1.0, 2.0]}]}, 400, "'instances[0]' is missing input 'b'"),
    ("/v1/models/named:predict", {"instances": [{"a": [1, 2], "b": [1], "c": [1]}]}, 400, "unknown input 'c'"),
    ("/v1/models/named:explain", {"instances": [{"a": [1, 2], "b": [1]}]}, 400, "explain"),
    ("/v1/models/charlm:predict", {"instances": ROWS}, 400, "generates text: use POST /v1/completions"),
    ("/v1/models/nope:predict", {"instances": ROWS}, 404, "no model named 'nope'"),
    ("/v1/models/linear/versions/7:predict", {"instances": ROWS}, 404, "model 'linear' has no version '7'"),
    ("/v1/models/linear:classify", {"instances": ROWS}, 404, "POST /v1/models/NAME:predict (or :explain)"),
])
def test_bad_requests_are_named(server, path: str, body: Any, status: int, message: str) -> None:
    got_status, got = call(server, "POST", path, body)
    assert got_status == status and message in got["error"], got


@pytest.mark.parametrize("path,body,message", [
    # a named input's row in the row format is named by its instance, not by the WebSocket's 'inputs.NAME'
    ("/v1/models/named:predict", {"instances": [{"a": [1, 2], "b": [1]}, {"a": [1, 2], "b": [1, 2]}]},
     "'instances[1].b' has 2 values; the model takes 1"),
    ("/v1/models/named:predict", {"instances": [{"a": [1, "x"], "b": [1]}]},
     "'instances[0].a' holds 'x', which is not a number"),
    ("/v1/models/named:predict", {"instances": [{"a": 3, "b": [1]}]},
     "'instances[0].a' must be an array of 2 numbers, got number"),
    # more instances than --max-rows: counted before named inputs are regrouped, named as sent
    ("/v1/models/named:predict", {"instances": [{"a": [1, 2], "b": [1]}] * 65}, "'instances' has 65 rows; the limit is 64"),
    ("/v1/models/linear:predict", {"instances": [[1.0]] * 65}, "'instances' has 65 rows; the limit is 64"),
    # the columnar form is named 'inputs', also by the explain limit
    ("/v1/models/linear:explain", {"inputs": [[1.0]] * 5},
     "'inputs' has 5 rows; explain takes at most 4 rows per request (max_explain_rows)"),
    ("/v1/models/named:predict", {"inputs": {"a": [[1, 2]], "b": [[1, 2]]}}, "'inputs.b' row 0 has 2 values"),
])
def test_messages_name_the_field_that_was_sent(server, path: str, body: Any, message: str) -> None:
    status, got = call(server, "POST", path, body)
    assert status == 400 and got["error"].startswith(message), got


@pytest.mark.parametrize("method,path,allow", [
    ("GET", "/v1/models/linear:predict", "OPTIONS, POST"),
    ("HEAD", "/v1/models/linear:explain", "OPTIONS, POST"),
    ("PUT", "/v1/models/linear/versions/1:predict", "OPTIONS, POST"),
    ("POST", "/v1/models/linear", "GET, HEAD, OPTIONS"),
    ("DELETE", "/v1/models/linear/versions/1", "GET, HEAD, OPTIONS"),
])
def test_a_method_the_path_does_not_take_is_405_with_its_allow(server, method: str, path: str, allow: str) -> None:
    """``{name}:predict`` takes POST only, ``{name}`` GET only (one route pattern serves both)."""
    url = urlsplit(server.http)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request(method, path, b"{}" if method in ("POST", "PUT") else None, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    assert (resp.status, resp.getheader("Allow")) == (405, allow), raw
    if method != "HEAD":
        assert json.loads(raw) == {"error": f"{method} is not allowed on {path!r}; allowed: {allow}"}
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("OPTIONS", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert (resp.status, resp.getheader("Allow")) == (204, allow)


@pytest.mark.parametrize("path,body,start", [
    ("/v1/models/linear:predict", {"instances": [["x" * 100_000]]}, "'instances' row 0 holds 'xxx"),
    ("/v1/models/named:predict", {"instances": [{"a": [1, [0.5] * 100_000], "b": [1]}]},
     "'instances[0].a' holds [0.5, 0.5"),
])
def test_a_refused_value_is_shown_cut(server, path: str, body: Any, start: str) -> None:
    """The message shows the start of a refused value, not all of it (it may be most of the body)."""
    status, got = call(server, "POST", path, body)
    assert status == 400 and got["error"].startswith(start) and len(got["error"]) < len(start) + 100, got["error"][:300]


@pytest.mark.parametrize("method,path,status,message", [
    ("GET", "/v1/models/broken", 503, "model 'broken' has no ready version (1: failed)"),
    ("POST", "/v1/models/broken:predict", 503, "model 'broken' has no ready version (1: failed)"),
    ("GET", "/v1/models/named/versions/2", 503, "version '2' of model 'named' is failed ("),
    ("POST", "/v1/models/named/versions/2:explain", 503, "version '2' of model 'named' is failed ("),
    ("GET", "/v1/models/named/versions/3", 404, "model 'named' has no version '3'; available: 1, 2"),
    ("POST", "/v1/models/nope:predict", 404, "no model named 'nope'"),
])
def test_a_model_that_is_not_ready_is_503_an_unknown_one_404(server, method: str, path: str, status: int,
                                                             message: str) -> None:
    """As KServe's ModelNotReady: a model (or version) that exists but cannot serve is 503, so a
    probe tells "not ready yet" from "no such model" (404)."""
    got_status, got = call(server, method, path, {"instances": [{"a": [1, 2], "b": [1]}]} if method == "POST" else None)
    assert got_status == status and got["error"].startswith(message), (got_status, got)


@pytest.mark.parametrize("path", ["/v1/models/" + "n" * 300 + ":predict", "/v1/models/linear/extra:predict",
                                  "/v1/models/linear%2Fx:predict"])
def test_a_path_under_v1_models_that_no_route_takes_is_a_kserve_404(server, path: str) -> None:
    """Not OpenAI's envelope (the /v1/completions family's): KServe's ``{"error": "message"}``."""
    status, got = call(server, "POST", path, {"instances": ROWS})
    assert status == 404 and type(got["error"]) is str and got["error"].startswith("no route for"), got


def test_bad_json_and_a_failure_stays_in_its_request(server) -> None:
    status, body = call(server, "POST", "/v1/models/linear:predict", raw=b'{"instances": [[0.5]')
    assert status == 400 and "error" in body
    assert call(server, "POST", "/v1/models/linear:predict", {"instances": [[0.5]]})[0] == 200


def test_requests_are_counted_as_predicts(server) -> None:
    def ok() -> float:
        return scrape_metrics(server.http).get("wsserve_requests_total", code="ok", model="linear", type="predict")

    before = ok()
    call(server, "POST", "/v1/models/linear:predict", {"instances": ROWS})
    wait_until(lambda: ok() == before + 1, 30.0, what="the V1 predict was counted")
