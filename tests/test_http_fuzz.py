"""Property-based fuzzing of the HTTP codecs: any body yields a value or a wire error, never a crash.

``oip.parse_infer`` (JSON and binary bodies), ``openai.parse_completion`` and
``protocol.decode_predict_body`` are fed JSON-shaped values with every field of
the real shapes replaced by arbitrary values, and raw bytes; they return or
raise a :class:`~wsserve.errors.WsserveError` carrying a wire code.  Then a real
server gets a few hundred such bodies on one keep-alive connection and answers
each with a JSON error or a 200, staying on the connection, logging no
internal error.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import RawHttp
from wsserve.errors import ERROR_CODES, WsserveError
from wsserve.protocol import decode_predict_body
from wsserve.rest import oip
from wsserve.rest.openai import parse_completion

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=20)
numbers = st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-5, 5)),
                   min_size=0, max_size=70)

tensor = st.fixed_dictionaries(
    {"name": st.one_of(st.just("input"), values), "shape": st.one_of(st.lists(st.integers(-2, 70), max_size=3), values),
     "datatype": st.one_of(st.sampled_from(sorted(oip.DATATYPES) + ["BYTES"]), values),
     "data": st.one_of(numbers, values)},
    optional={"parameters": st.one_of(st.fixed_dictionaries({"binary_data_size": st.integers(-4, 300)}), values)},
)
infer_bodies = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensor, max_size=3), values)},
    optional={"id": values, "parameters": st.one_of(st.dictionaries(
        st.sampled_from(["priority", "timeout", "binary_data_output", "x"]), values, max_size=3), values),
        "outputs": st.one_of(st.lists(st.fixed_dictionaries({"name": st.one_of(st.just("output"), values)}), max_size=3),
                             values)},
)
completion_bodies = st.fixed_dictionaries(
    {"model": st.one_of(st.just("charlm"), values),
     "prompt": st.one_of(st.text(max_size=10), st.lists(st.text(max_size=20), min_size=1, max_size=4), values,
                         # token-id prompts: ids in and past charlm's 96-token vocabulary, one prompt or several
                         st.lists(st.integers(-2, 100), min_size=1, max_size=20),
                         st.lists(st.lists(st.integers(0, 97), max_size=20), min_size=1, max_size=3))},
    optional={**{k: values for k in ("temperature", "top_p", "top_k", "seed", "stop", "stream_options", "logit_bias",
                                     "suffix")},
              # the fields of several choices, logprobs and echo: often in range, so they meet
              "max_tokens": st.one_of(st.integers(0, 6), values), "stream": st.one_of(st.booleans(), values),
              "n": st.one_of(st.integers(0, 4), values), "best_of": st.one_of(st.integers(0, 4), values),
              "logprobs": st.one_of(st.integers(-1, 21), values), "echo": st.one_of(st.booleans(), values),
              "repetition_penalty": st.one_of(st.floats(0, 2.5), values)},
)
predict_bodies = st.one_of(
    st.fixed_dictionaries({"x": st.one_of(numbers, values)}),
    st.fixed_dictionaries({"model": st.one_of(st.just("linear"), values), "inputs": st.one_of(
        st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=2), max_size=3), values)},
        optional={k: values for k in ("version", "timeout_ms", "priority", "stream", "chunk_rows")}),
    values,
)

INPUTS = (oip.Tensor("input", "FP64", (2,)),)
OUTPUTS = (oip.Tensor("output", "FP64", (1,)),)


def _dumps(value: Any) -> bytes:
    """JSON text (stdlib: integers past 64 bits included, which the server's parser refuses)."""
    return json.dumps(value).encode()


def _wire_error(exc: WsserveError) -> None:
    assert exc.code in ERROR_CODES and exc.message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(infer_bodies, values), binary=st.one_of(st.none(), st.binary(max_size=64)))
def test_parse_infer_never_crashes(body: Any, binary: bytes | None) -> None:
    text = _dumps(body)
    raw, header = (text, None) if binary is None else (text + binary, len(text))
    try:
        req = oip.parse_infer(raw, header, INPUTS, OUTPUTS, max_rows=64)
    except WsserveError as exc:
        _wire_error(exc)
    else:
        array = req.arrays["input"]
        assert array.dtype.name == "float64" and array.shape == (req.rows, 2) and 1 <= req.rows <= 64


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64), header=st.one_of(st.none(), st.integers(-3, 80)))
def test_parse_infer_raw_bytes(raw: bytes, header: int | None) -> None:
    try:
        oip.parse_infer(raw, header, INPUTS, OUTPUTS, max_rows=64)
    except WsserveError as exc:
        _wire_error(exc)


@settings(max_examples=400, deadline=None)
@given(body=st.one_of(completion_bodies, values))
def test_parse_completion_never_crashes(body: Any) -> None:
    try:
        c = parse_completion(body, max_tokens_limit=100)
    except WsserveError as exc:
        _wire_error(exc)
    else:
        assert 1 <= c.params.max_tokens <= 100


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(predict_bodies.map(_dumps), st.binary(max_size=40)))
def test_decode_predict_body_never_crashes(body: bytes) -> None:
    try:
        decode_predict_body(body)
    except WsserveError as exc:
        _wire_error(exc)


@pytest.mark.parametrize("route", ["/predict", "/v2/models/linear/infer", "/v1/completions"])
def test_a_real_server_answers_every_fuzzed_body_on_one_connection(start_server, route: str) -> None:
    server = start_server("--models", "linear,charlm", "--max-tokens", "50")
    strategy = {"/predict": predict_bodies, "/v2/models/linear/infer": infer_bodies,
                "/v1/completions": completion_bodies}[route]
    bodies: list[bytes] = []

    @settings(max_examples=150, deadline=None, database=None)
    @given(body=strategy)
    def collect(body: Any) -> None:
        bodies.append(_dumps(body))

    collect()
    with RawHttp(server.port) as c:
        for body in bodies:
            a = c.request("POST", route, body)
            assert a.status in (200, 400, 404, 504), (body, a.status, a.body)
            if a.status != 200:
                error = json.loads(a.body)["error"]
                assert isinstance(error, str) or error["code"] in ERROR_CODES
        assert c.request("GET", "/healthz").status == 200
    assert "Traceback" not in server.stderr_text() and "internal error" not in server.stderr_text()


#: A value nested as deeply as the server's JSON parser takes (orjson: 1,024 levels): too deep for
#: Python's ``repr``, which an error message naming the refused value must not call.
DEEP = b"[" * 1000 + b"]" * 1000
_ONE_ROW = b'"inputs":[{"name":"input","shape":[1,1],"datatype":"FP64","data":[1]}]'


@pytest.mark.parametrize(("route", "body", "message"), [
    ("/v2/models/linear/infer", b'{"inputs":[{"name":"input","shape":[1,1],"datatype":@,"data":[1]}]}',
     "input 'input': unsupported datatype (array nested too deeply to show)"),
    ("/v2/models/linear/infer", b'{"parameters":{"priority":@},' + _ONE_ROW + b"}",
     "parameter 'priority' must be an integer >= 0, got (array nested too deeply to show)"),
    ("/v2/models/linear/infer", b'{"parameters":{"timeout":@},' + _ONE_ROW + b"}",
     "parameter 'timeout' (microseconds) must be an integer in"),
    ("/v1/completions", b'{"model":"charlm","prompt":"a","temperature":@}',
     "'temperature' must be a number in [0, 100], got (array nested too deeply to show)"),
    ("/v2/systemsharedmemory/region/r/register", b'{"key":"/wsserve-none","offset":0,"byte_size":@}',
     "'byte_size' must be an integer in"),
])
def test_a_value_nested_too_deeply_to_show_is_refused_with_its_precise_400(start_server, route: str, body: bytes,
                                                                           message: str) -> None:
    """Each of these fields was a 500 ``internal error`` (``repr`` raised RecursionError formatting
    the refusal): now the 400 naming the field, the value described, the connection kept."""
    server = start_server("--models", "linear,charlm")
    with RawHttp(server.port) as c:
        a = c.request("POST", route, body.replace(b"@", DEEP))
        assert a.status == 400, (a.status, a.body)
        error = json.loads(a.body)["error"]
        text = error if isinstance(error, str) else error["message"]
        assert message in text and "nested too deeply to show" in text, text
        assert c.request("GET", "/healthz").status == 200
    assert "Traceback" not in server.stderr_text()
