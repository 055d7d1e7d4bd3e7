"""The HTTP API's sans-I/O parts: the route table, the OIP and OpenAI codecs, error envelopes. No sockets."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from wsserve.errors import (
    BadJson,
    BadRequest,
    InvalidInput,
    Overloaded,
    RateLimited,
    Unauthorized,
)
from wsserve.repository.tensors import TensorSpec
from wsserve.rest import oip
from wsserve.rest.errors import (
    content_type_note,
    error_response,
    is_json_type,
    plain_error,
)
from wsserve.rest.openai import CompletionEncoder, ParamError, parse_completion
from wsserve.rest.router import Router

# --------------------------------------------------------------------------- router


def test_router_literals_patterns_and_methods() -> None:
    r = Router()
    r.add("GET", "/v2", "meta", auth="key", style="oip")
    r.add("GET", "/v2/models/{name}", "model", auth="key", style="oip")
    r.add("POST", "/v2/models/{name}/versions/{version}/infer", "infer", auth="key", style="oip")
    route, params = r.match("/v2/")  # trailing slash
    assert route.handlers == {"GET": "meta"} and params == {}
    route, params = r.match("/v2/models/my%20model")
    assert route.handlers["GET"] == "model" and params == {"name": "my model"}
    route, params = r.match("/v2/models/a/versions/3/infer")
    assert params == {"name": "a", "version": "3"} and route.allow == "OPTIONS, POST"
    assert r.match("/v2/models/") is None and r.match("/v2/models//versions/3/infer") is None
    assert r.match("/v2/models/a%2Fb") is None and r.match("/v2/models/a%00") is None  # no '/' or NUL once decoded
    assert r.match("/v2/models/" + "x" * 300) is None
    with pytest.raises(ValueError):
        r.add("GET", "/v2", "again", auth="key", style="oip")
    with pytest.raises(ValueError):
        r.add("POST", "/v2", "other-auth", auth="none", style="oip")
    r.add("POST", "/v2", "post", auth="key", style="oip")
    assert r.match("/v2")[0].allow == "GET, HEAD, OPTIONS, POST"


# --------------------------------------------------------------------------- OIP


FP64_IN = (oip.Tensor("input", "FP64", (3,)),)
FP64_OUT = (oip.Tensor("output", "FP64", (2,)),)


def _infer(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def test_float_model_takes_fp16_fp32_fp64_rounded_to_its_type() -> None:
    for dtype in ("FP16", "FP32", "FP64"):
        req = oip.parse_infer(_infer([{"name": "input", "shape": [2, 3], "datatype": dtype, "data": [0.1] * 6}]),
                              None, FP64_IN, FP64_OUT, max_rows=10)
        a = req.arrays["input"]
        assert a.dtype == np.float64 and a.shape == (2, 3) and req.rows == 2
        assert a[0, 0] == float(np.dtype({"FP16": "f2", "FP32": "f4", "FP64": "f8"}[dtype]).type(0.1))
    fp32_model = (oip.Tensor("input", "FP32", (3,)),)
    with pytest.raises(InvalidInput, match="FP32 range"):
        oip.parse_infer(_infer([{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1e300, 0, 0]}]),
                        None, fp32_model, FP64_OUT, max_rows=10)


def test_integer_and_bool_models_take_exactly_their_type_in_range() -> None:
    ints = (oip.Tensor("ids", "INT32", (2,)),)
    req = oip.parse_infer(_infer([{"name": "ids", "shape": [1, 2], "datatype": "INT32", "data": [[1, -2]]}]),
                          None, ints, FP64_OUT, max_rows=10)
    assert req.arrays["ids"].dtype == np.int32 and req.arrays["ids"].tolist() == [[1, -2]]
    for bad, text in ([1, 2**31], "not an integer in"), ([1, 1.5], "not an integer"), ([True, 1], "not an integer"):
        with pytest.raises(InvalidInput, match=text):
            oip.parse_infer(_infer([{"name": "ids", "shape": [1, 2], "datatype": "INT32", "data": bad}]),
                            None, ints, FP64_OUT, max_rows=10)
    with pytest.raises(InvalidInput, match="is INT32; got FP32"):
        oip.parse_infer(_infer([{"name": "ids", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]),
                        None, ints, FP64_OUT, max_rows=10)
    flags = (oip.Tensor("f", "BOOL", ()),)
    req = oip.parse_infer(_infer([{"name": "f", "shape": [2], "datatype": "BOOL", "data": [True, False]}]),
                          None, flags, FP64_OUT, max_rows=10)
    assert req.arrays["f"].tolist() == [True, False]
    with pytest.raises(InvalidInput, match="true or false"):
        oip.parse_infer(_infer([{"name": "f", "shape": [2], "datatype": "BOOL", "data": [1, 0]}]),
                        None, flags, FP64_OUT, max_rows=10)


def test_bounds_on_declared_sizes() -> None:
    def parse(tensor, max_rows=4):
        return oip.parse_infer(_infer([tensor]), None, FP64_IN, FP64_OUT, max_rows=max_rows)

    with pytest.raises(InvalidInput, match="between 1 and 4"):
        parse({"name": "input", "shape": [5, 3], "datatype": "FP64", "data": [0.0] * 15})
    with pytest.raises(InvalidInput, match="between 1 and 4"):  # a huge declared batch never reaches numpy
        parse({"name": "input", "shape": [2**62, 3], "datatype": "FP64", "data": []})
    with pytest.raises(BadRequest, match="1 to 8 non-negative"):
        parse({"name": "input", "shape": [1] * 9, "datatype": "FP64", "data": []})
    with pytest.raises(BadRequest, match="1 to 8 non-negative"):
        parse({"name": "input", "shape": [1, -3], "datatype": "FP64", "data": []})
    with pytest.raises(BadRequest, match="at most 64"):
        oip.parse_infer(_infer([{}] * 65), None, FP64_IN, FP64_OUT, max_rows=4)
    with pytest.raises(BadRequest, match="given twice"):
        oip.parse_infer(_infer([{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [0.0] * 3}] * 2),
                        None, FP64_IN, FP64_OUT, max_rows=4)
    with pytest.raises(BadJson):
        oip.parse_infer(b"{", None, FP64_IN, FP64_OUT, max_rows=4)


def test_binary_inputs_in_order_and_binary_outputs() -> None:
    two = (oip.Tensor("a", "FP32", (1,)), oip.Tensor("b", "INT64", (2,)))
    header = json.dumps({"inputs": [
        {"name": "b", "shape": [1, 2], "datatype": "INT64", "parameters": {"binary_data_size": 16}},
        {"name": "a", "shape": [1, 1], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
    ], "parameters": {"binary_data_output": True}}).encode()
    body = header + struct.pack("<qq", 7, -8) + struct.pack("<f", 1.5)
    req = oip.parse_infer(body, len(header), two, FP64_OUT, max_rows=4)
    assert req.arrays["b"].tolist() == [[7, -8]] and req.arrays["a"].tolist() == [[1.5]]
    # A model gets arrays of its own (writable), as from JSON and WebSocket binary frames: not
    # read-only views of the request body (a model.py that works in place would fail on binary only).
    assert req.arrays["b"].flags.writeable and req.arrays["b"].flags.owndata
    assert req.outputs == [(0, True)]
    out32 = (oip.Tensor("y", "FP32", (2,)),)
    encoded, json_size = oip.encode_infer("m", "1", "r", out32, [(0, True)], [np.array([[1.0, 2.5]])])
    head = json.loads(encoded[:json_size])
    assert head == {"model_name": "m", "model_version": "1", "id": "r",
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]}
    assert encoded[json_size:] == struct.pack("<ff", 1.0, 2.5)
    encoded, json_size = oip.encode_infer("m", "1", None, out32, [(0, False)], [np.array([[1.0, 2.5]])])
    assert json_size is None and json.loads(encoded)["outputs"][0]["data"] == [1.0, 2.5]


def test_explain_parameter_adds_each_outputs_attributions_after_it() -> None:
    row = [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1.0, 2.0, 3.0]}]
    assert oip.attribution_tensors(FP64_IN, FP64_OUT) == (oip.Tensor("output_attributions", "FP64", (3,)),)

    def parse(refusal: str | None = None, **extra: object) -> oip.InferRequest:
        return oip.parse_infer(_infer(row, **extra), None, FP64_IN, FP64_OUT, max_rows=4, explain_refusal=refusal)

    req = parse(parameters={"explain": True, "binary_data_output": True})
    assert req.explain and req.outputs == [(0, True), (1, True)]  # index 1: output 0's attributions
    req = parse(parameters={"explain": True}, outputs=[{"name": "output", "parameters": {"binary_data": True}}])
    assert req.outputs == [(0, True), (1, True)]  # follows its output, in its form
    req = parse(parameters={"explain": True}, outputs=[{"name": "output_attributions"}, {"name": "output"}])
    assert req.outputs == [(1, False), (0, False)]  # named: where and how it is named, once
    assert parse(parameters={"explain": False}).outputs == [(0, False)] and not parse().explain
    with pytest.raises(BadRequest, match="^no gradient here$"):  # before the inputs are read
        oip.parse_infer(_infer([{}], parameters={"explain": True}), None, FP64_IN, FP64_OUT, max_rows=4,
                        explain_refusal="no gradient here")
    with pytest.raises(BadRequest, match="not available for this model"):  # callers opt in
        oip.parse_infer(_infer(row, parameters={"explain": True}), None, FP64_IN, FP64_OUT, max_rows=4)
    with pytest.raises(BadRequest, match="must be a boolean, got number"):
        parse(parameters={"explain": 1})
    with pytest.raises(BadRequest, match="only answered with parameter 'explain': true"):
        parse(outputs=[{"name": "output_attributions"}])
    assert oip.explain_parameters(None) == {"explain": False}
    assert oip.explain_parameters({"method": "linear-exact", "steps": 0}) == {
        "explain": True, "explain_method": "linear-exact", "explain_steps": 0}
    encoded, json_size = oip.encode_infer("m", "1", None, (*FP64_OUT, *oip.attribution_tensors(FP64_IN, FP64_OUT)),
                                          [(0, False), (1, True)], [np.zeros((1, 2)), np.array([[0.5, 1.0, 2.0]])],
                                          {"explain": True})
    head = json.loads(encoded[:json_size])
    assert head["parameters"] == {"explain": True}
    assert head["outputs"][1] == {"name": "output_attributions", "datatype": "FP64", "shape": [1, 3],
                                  "parameters": {"binary_data_size": 24}}
    assert encoded[json_size:] == struct.pack("<3d", 0.5, 1.0, 2.0)


def test_signature_from_repository_specs_and_builtin_defaults() -> None:
    class Repo:
        inputs = (TensorSpec("pixels", (2, 2), "float32"),)
        outputs = (TensorSpec("label", (), "int64"),)

    assert oip.signature(Repo()) == ((oip.Tensor("pixels", "FP32", (2, 2)),), (oip.Tensor("label", "INT64", ()),))
    assert oip.Tensor("pixels", "FP32", (2, 2)).to_json() == {"name": "pixels", "datatype": "FP32", "shape": [-1, 2, 2]}


# --------------------------------------------------------------------------- OpenAI


def test_completion_defaults_are_openais() -> None:
    c = parse_completion({"model": "charlm", "prompt": ["hi"]}, max_tokens_limit=100)
    assert c.params.max_tokens == 16 and c.params.temperature == 1.0 and c.params.prompt == "hi"
    assert not c.stream and not c.include_usage
    c = parse_completion({"model": "m", "prompt": "", "top_k": -1, "seed": -1, "top_p": 1, "n": 1, "echo": False,
                          "logprobs": None, "presence_penalty": 0, "logit_bias": {}, "user": "u", "stream": True,
                          "stream_options": {"include_usage": True}, "stop": "x"}, max_tokens_limit=8)
    assert c.params.top_k == 0 and c.params.seed == 2**64 - 1 and c.params.stop == ("x",) and c.include_usage
    assert parse_completion({"model": "m", "prompt": "a"}, max_tokens_limit=8).params.max_tokens == 8
    c = parse_completion({"model": "m", "prompt": "a", "presence_penalty": -2, "frequency_penalty": 1.5,
                          "repetition_penalty": 1, "min_p": 0.25}, max_tokens_limit=8)
    assert (c.params.presence_penalty, c.params.frequency_penalty, c.params.min_p) == (-2.0, 1.5, 0.25)
    assert c.params.repetition_penalty == 1.0 and type(c.params.repetition_penalty) is float
    assert parse_completion({"model": "m", "prompt": "a", "repetition_penalty": 1.3},
                            max_tokens_limit=8).params.repetition_penalty == 1.3
    c = parse_completion({"model": "m", "prompt": "a", "logit_bias": {"10": 1, "2": -100.0}}, max_tokens_limit=8)
    assert c.params.logit_bias == ((2, -100.0), (10, 1.0))


@pytest.mark.parametrize("body, param", [
    ({"prompt": "a"}, "model"),
    ({"model": "m"}, "prompt"),
    ({"model": "m", "prompt": "a", "stream_options": {}}, "stream_options"),
    ({"model": "m", "prompt": "a", "stream": "yes"}, "stream"),
    ({"model": "m", "prompt": "a", "stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options"),
    ({"model": "m", "prompt": "a", "stream": True, "stream_options": {"include_usage": 1}}, "stream_options"),
    ({"model": "m", "prompt": "a", "seed": 1.5}, "seed"),
    ({"model": "m", "prompt": "a", "stop": [""]}, "stop"),
    ({"model": "m", "prompt": "a", "top_k": 2**40}, "top_k"),
    ({"model": "m", "prompt": "a", "frequency_penalty": 2.5}, "frequency_penalty"),
    ({"model": "m", "prompt": "a", "presence_penalty": "0.5"}, "presence_penalty"),
    ({"model": "m", "prompt": "a", "repetition_penalty": 2.5}, "repetition_penalty"),
    ({"model": "m", "prompt": "a", "repetition_penalty": 0}, "repetition_penalty"),
    ({"model": "m", "prompt": "a", "min_p": 1.1}, "min_p"),
    ({"model": "m", "prompt": "a", "logit_bias": {"1": -101}}, "logit_bias"),
    ({"model": "m", "prompt": "a", "logit_bias": {"one": 1}}, "logit_bias"),
    ({"model": "m", "prompt": "a", "suffix": "z"}, "suffix"),
])
def test_completion_refusals_name_the_field(body: dict, param: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_completion(body, max_tokens_limit=100)
    assert info.value.param == param and info.value.code == "bad_request"


def test_completion_events() -> None:
    enc = CompletionEncoder("cmpl-x", 123, "charlm")
    event = enc.token_event('a"b')
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:])["choices"] == [{"text": 'a"b', "index": 0, "logprobs": None, "finish_reason": None}]
    tail = (enc.choice_end_event("stop") + enc.tail_events(2, 5, True)).split(b"\n\n")
    assert json.loads(tail[0][6:])["choices"][0]["finish_reason"] == "stop"
    assert json.loads(tail[1][6:])["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert tail[2] == b"data: [DONE]" and tail[3] == b""
    assert enc.tail_events(2, 5, False) == b"data: [DONE]\n\n"
    whole = json.loads(enc.response([("hey", "length", None)], 4, 3))
    assert whole["id"] == "cmpl-x" and whole["created"] == 123 and whole["choices"][0]["text"] == "hey"
    assert whole["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    two = json.loads(enc.response([("a", "stop", None), ("b", "length", None)], 4, 3))["choices"]
    assert [(c["index"], c["text"], c["finish_reason"]) for c in two] == [(0, "a", "stop"), (1, "b", "length")]
    assert json.loads(enc.token_event("x", 3)[6:])["choices"][0]["index"] == 3


# --------------------------------------------------------------------------- error envelopes


def test_error_envelopes_and_headers() -> None:
    r = error_response(RateLimited("slow down", retry_after_ms=1500), "wsserve")
    assert r.status == 429 and ("Retry-After", "2") in r.headers and not r.close
    assert json.loads(r.body) == {"error": {"code": "rate_limited", "message": "slow down", "retry_after_ms": 1500}}
    r = error_response(Unauthorized("no key"), "oip")
    assert r.status == 401 and ("WWW-Authenticate", "Bearer") in r.headers and json.loads(r.body) == {"error": "no key"}
    r = error_response(Overloaded("full", retry_after_ms=10), "openai", param=None)
    assert r.status == 503 and json.loads(r.body)["error"]["type"] == "server_error"
    from wsserve.errors import ShuttingDown

    assert error_response(ShuttingDown("bye"), "oip").close
    assert plain_error(404, "no route", None).body == b"no route\n"


@pytest.mark.parametrize("content_type,json_type", [
    ("application/json", True), ("Application/JSON; charset=utf-8", True), ("application/vnd.api+json", True),
    ("application/merge-patch+json ; q=1", True), ("text/x+json", True),
    ("application/x-www-form-urlencoded", False), ("text/plain", False), ("application/octet-stream", False),
    ("application/jsonx", False), ("+json", False), ("/+json", False), ("application/json-seq", False),
])
def test_json_media_types(content_type: str, json_type: bool) -> None:
    assert is_json_type(content_type) is json_type


def test_content_type_note_names_a_type_that_is_not_json_cut() -> None:
    assert content_type_note("application/x-www-form-urlencoded") == (
        " (the request's Content-Type is 'application/x-www-form-urlencoded'; send JSON)")
    assert content_type_note("application/octet-stream", binary=True) == (
        " (the request's Content-Type is 'application/octet-stream'; send JSON, or binary tensors after an "
        "Inference-Header-Content-Length header)")
    for quiet in (None, "", "  ", "application/json", "application/problem+json; charset=utf-8"):
        assert content_type_note(quiet) == ""
    long = content_type_note("text/" + "x" * 10_000)
    assert long.startswith(" (the request's Content-Type is 'text/xxx") and "...; send JSON)" in long
    assert len(long) < 120
