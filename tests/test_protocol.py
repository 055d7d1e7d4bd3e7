"""Sans-I/O tests of the wire codec (:mod:`wsserve.protocol`): no sockets.

Covers every error code :func:`decode` and :func:`validate_inputs` can produce,
the ``request_id`` rule (set whenever the id could be read, else ``None``), the
seed-compatible form, and the exact bytes of encoded frames.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsserve.config import ServerConfig
from wsserve.errors import (
    BadJson,
    BadRequest,
    InvalidInput,
    Overloaded,
    UnknownModel,
    WsserveError,
)
from wsserve.generation.logprobs import TokenLogprobs
from wsserve.protocol import (
    MAX_ID_LENGTH,
    MAX_TOP_K,
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    Auth,
    Cancel,
    Generate,
    GenerationParams,
    Models,
    Ping,
    Predict,
    ResultRows,
    check_rows,
    check_rows_within,
    decode,
    encode_auth_ok,
    encode_chunk,
    encode_draining,
    encode_error,
    encode_generate_done,
    encode_hello,
    encode_models,
    encode_pong,
    encode_predict_done,
    encode_result,
    encode_seed_result,
    encode_token,
    encode_token_logprobs,
    result_head,
    timing_fields,
    token_prefix,
    validate_inputs,
)


def _msg(**fields: object) -> bytes:
    return orjson.dumps(fields)


def _predict(**over: object) -> bytes:
    base: dict[str, object] = {"type": "predict", "id": "a1", "model": "linear", "inputs": [[0.5]]}
    base.update(over)
    return orjson.dumps({k: v for k, v in base.items() if v is not _DROP})


def _generate(**over: object) -> bytes:
    base: dict[str, object] = {"type": "generate", "id": "g1", "model": "charlm", "prompt": "The "}
    base.update(over)
    return orjson.dumps({k: v for k, v in base.items() if v is not _DROP})


_DROP = object()  # marks a field to leave out of the message


def _fails(data: bytes | str, exc_type: type[WsserveError], **kwargs: object) -> WsserveError:
    with pytest.raises(exc_type) as info:
        decode(data, **kwargs)  # type: ignore[arg-type]
    assert type(info.value) is exc_type
    return info.value


# --------------------------------------------------------------------------- valid requests


def test_predict_minimal_with_defaults() -> None:
    req = decode(b'{"type":"predict","id":"a1","model":"linear","inputs":[[0.5],[1.0]]}')
    assert req == Predict(id="a1", model="linear", inputs=[[0.5], [1.0]])
    assert (req.version, req.stream, req.chunk_rows, req.timeout_ms, req.priority, req.seed_form) == (
        None, False, None, None, 0, None,
    )


def test_predict_all_options() -> None:
    req = decode(
        _predict(id=7, version="1", stream=True, chunk_rows=3, timeout_ms=250, priority=1)
    )
    assert isinstance(req, Predict)
    assert req.id == 7
    assert req.version == "1"
    assert req.stream is True
    assert req.chunk_rows == 3
    assert req.timeout_ms == 250.0 and type(req.timeout_ms) is float
    assert req.priority == 1


def test_predict_priority_above_1_is_decoded_for_the_models_levels_to_judge() -> None:
    """A config.pbtxt model may have up to 16 priority levels: the decoder keeps any non-negative
    priority; the model's levels refuse one out of range when it is queued."""
    assert decode(_predict(priority=3)).priority == 3
    assert decode(_predict(priority=2**40)).priority == 2**40


def test_predict_decodes_from_str_as_well_as_bytes() -> None:
    text = '{"type":"predict","id":"é✓","model":"linear","inputs":[[1]]}'
    assert decode(text) == decode(text.encode())
    assert decode(text).id == "é✓"


def test_predict_null_optional_fields_mean_absent() -> None:
    req = decode(_predict(version=None, chunk_rows=None, timeout_ms=None))
    assert (req.version, req.chunk_rows, req.timeout_ms) == (None, None, None)


def test_predict_inputs_are_not_validated_by_decode() -> None:
    # Shape checks need the model's width: they are validate_inputs' job.
    req = decode(_predict(inputs="not rows"))
    assert isinstance(req, Predict) and req.inputs == "not rows"


def test_generate_defaults() -> None:
    req = decode(_generate())
    assert req == Generate(id="g1", model="charlm", params=GenerationParams(prompt="The "))
    p = req.params
    assert (p.max_tokens, p.temperature, p.top_k, p.seed, p.stop, req.timeout_ms, p.priority) == (
        64, 0.0, 0, None, (), None, 0,
    )


def test_generate_all_options() -> None:
    req = decode(
        _generate(
            id=3, max_tokens=100_000, temperature=1, top_k=40, seed=42, stop=["\n", "END"],
            version="1", timeout_ms=1.5, priority=1, prompt="héllo ✓",
        )
    )
    assert isinstance(req, Generate)
    p = req.params
    assert req.id == 3
    assert p.max_tokens == 100_000
    assert p.temperature == 1.0 and type(p.temperature) is float
    assert (p.top_k, p.seed, p.stop, req.version) == (40, 42, ("\n", "END"), "1")
    assert (req.timeout_ms, p.priority, p.prompt) == (1.5, 1, "héllo ✓")


def test_generate_single_stop_string_is_accepted_like_openai() -> None:
    assert decode(_generate(stop="\n")).params.stop == ("\n",)


def test_generate_max_tokens_limit_is_the_callers() -> None:
    assert decode(_generate(max_tokens=10), max_tokens=10).params.max_tokens == 10
    err = _fails(_generate(max_tokens=11), BadRequest, max_tokens=10)
    assert "max_tokens" in err.message


def test_generate_negative_seed_is_folded_to_64_bits() -> None:
    assert decode(_generate(seed=-1)).params.seed == 2**64 - 1
    assert decode(_generate(seed=0)).params.seed == 0


@pytest.mark.parametrize("raw, shown", [
    (b"1.5", "got 1.5"),
    (b"123456789012345678901234567890",  # orjson reads an integer beyond 64 bits as a float
     "got 1.2345678901234568e+29 (a JSON integer beyond 64 bits is read as a floating-point number)"),
    (b'"7"', "got string"),
])
def test_a_seed_that_is_not_an_integer_is_shown(raw: bytes, shown: str) -> None:
    """'must be an integer, got number' for a number the caller believed an integer (a seed of 30
    digits) did not say what was wrong; the number is shown now, and why it is not an integer."""
    frame = b'{"type":"generate","id":1,"model":"charlm","prompt":"a","seed":' + raw + b"}"
    err = _fails(frame, BadRequest)
    assert err.message == f"field 'seed' must be an integer, {shown}"


def test_generate_stop_limits_boundary() -> None:
    assert len(decode(_generate(stop=[str(i) for i in range(16)])).params.stop) == 16
    assert decode(_generate(stop=["x" * 256])).params.stop == ("x" * 256,)


@pytest.mark.parametrize(
    "data, expected",
    [
        (b'{"type":"cancel","id":"g1"}', Cancel("g1")),
        (b'{"type":"cancel","id":0}', Cancel(0)),
        (b'{"type":"ping"}', Ping(None)),
        (b'{"type":"ping","id":8}', Ping(8)),
        (b'{"type":"models"}', Models(None)),
        (b'{"type":"models","id":"m"}', Models("m")),
        (b'{"type":"auth","token":"s3cret"}', Auth("s3cret", None)),
        (b'{"type":"auth","token":"s3cret","id":1}', Auth("s3cret", 1)),
    ],
)
def test_control_messages(data: bytes, expected: object) -> None:
    assert decode(data) == expected


def test_unknown_fields_are_ignored() -> None:
    assert decode(b'{"type":"ping","id":1,"extra":{"a":[1,2]}}') == Ping(1)


def test_largest_integer_ids_are_kept_exactly() -> None:
    assert decode(b'{"type":"ping","id":9223372036854775807}').id == 2**63 - 1
    assert decode(b'{"type":"ping","id":-9223372036854775808}').id == -(2**63)


@pytest.mark.parametrize("rid", ["9223372036854775808", "18446744073709551615"])
def test_integer_ids_beyond_signed_64_bits_are_refused(rid: str) -> None:
    with pytest.raises(BadRequest, match="signed 64-bit") as info:
        decode(b'{"type":"predict","model":"linear","inputs":[[1]],"id":' + rid.encode() + b"}")
    assert info.value.request_id is None


def test_string_ids_are_capped_at_max_id_length() -> None:
    assert decode(orjson.dumps({"type": "ping", "id": "a" * MAX_ID_LENGTH})).id == "a" * MAX_ID_LENGTH
    for kind in ("predict", "generate", "cancel", "ping", "models", "auth"):
        msg = {"type": kind, "id": "a" * (MAX_ID_LENGTH + 1), "model": "m", "inputs": [[1]], "prompt": "", "token": "k"}
        with pytest.raises(BadRequest, match=f"the limit is {MAX_ID_LENGTH}") as info:
            decode(orjson.dumps(msg))
        assert info.value.request_id is None, kind
    # an over-long id is not echoed on an unknown type either
    with pytest.raises(BadRequest) as info:
        decode(orjson.dumps({"type": "nope", "id": "a" * 1000}))
    assert info.value.request_id is None


@pytest.mark.parametrize(
    "field, value",
    [("top_k", 2**63), ("top_k", 2**31), ("timeout_ms", 2**31), ("timeout_ms", 1e300), ("temperature", 1e308),
     ("max_tokens", 2**64 - 1), ("version", "v" * 65), ("model", "m" * 257)],
)
def test_generate_numbers_and_strings_have_upper_bounds(field: str, value: object) -> None:
    msg = {"type": "generate", "id": 1, "model": "charlm", "prompt": "a", field: value}
    with pytest.raises(BadRequest, match=field) as info:
        decode(orjson.dumps(msg))
    assert info.value.request_id == 1


def test_top_k_up_to_its_limit_is_accepted() -> None:
    msg = {"type": "generate", "id": 1, "model": "charlm", "prompt": "a", "top_k": MAX_TOP_K}
    assert decode(orjson.dumps(msg)).params.top_k == MAX_TOP_K


@pytest.mark.parametrize("kind", ["predict", "generate"])
def test_version_may_be_a_positive_integer(kind: str) -> None:
    req = decode(_predict(version=10) if kind == "predict" else _generate(version=10))
    assert req.version == "10"
    for bad in (0, -1, 2**63):
        _fails(_predict(version=bad) if kind == "predict" else _generate(version=bad), BadRequest)


# --------------------------------------------------------------------------- seed-compatible form


def test_seed_form_list() -> None:
    req = decode(b'{"x":[0.5,1.0]}')
    assert req == Predict(id=None, model="linear", inputs=[[0.5], [1.0]], seed_form="list")
    assert validate_inputs(req.inputs, 1, 10).tolist() == [[0.5], [1.0]]


def test_seed_form_scalar() -> None:
    req = decode(b'{"x":0.5}')
    assert req == Predict(id=None, model="linear", inputs=[[0.5]], seed_form="scalar")
    assert decode(b'{"x":3}').inputs == [[3]]


@pytest.mark.parametrize("data", [b'{"x":[]}', b'{"x":"0.5"}', b'{"x":true}', b'{"x":null}', b'{"x":{"a":1}}'])
def test_seed_form_bad_x_is_invalid_input(data: bytes) -> None:
    err = _fails(data, InvalidInput)
    assert "'x'" in err.message
    assert err.request_id is None


@pytest.mark.parametrize("x", [["0.5"], [True], [None], [[0.5]]])
def test_seed_form_bad_elements_fail_validation(x: list[object]) -> None:
    req = decode(orjson.dumps({"x": x}))
    with pytest.raises(InvalidInput):
        validate_inputs(req.inputs, 1, 10)


F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("inputs", [
    [[1, 2.5]], [[F32_MAX, -F32_MAX], [0, -0.0]], [[2**63 - 1, -(2**63)]], [[3.4e38, 1e-45]],
])
def test_rows_within_float32_range_pass_and_count_their_rows(inputs: list) -> None:
    assert check_rows_within(inputs, 2, 4, F32_MAX, "float32") == len(inputs)


@pytest.mark.parametrize("inputs,row", [
    ([[1e39, 0]], 0), ([[0, 0], [0, -3.5e38]], 1), ([[0, 0], [1e300, 0], [-1e300, 0]], 1),
    ([[0, 0], [0, 0], [0, 0], [float(np.nextafter(F32_MAX, np.inf)), 0]], 3),
])
def test_a_float_beyond_float32s_range_names_its_first_row(inputs: list, row: int) -> None:
    with pytest.raises(InvalidInput) as info:
        check_rows_within(inputs, 2, 4, F32_MAX, "float32")
    assert info.value.message == f"'inputs' row {row} holds a value beyond float32's range"


@pytest.mark.parametrize("inputs", [
    "x", [], [[1, 2]] * 5, [[1]], [[1, 2], [1, "2"]], [[1e39, 0], [1, None]], [[1e39, 0], [1]], [[True, 0]],
    [[1, 2], 3],
])
def test_shape_and_type_problems_are_named_as_check_rows_names_them(inputs: object) -> None:
    """Out-of-range rows next to a malformed one: the malformed one is named, with check_rows' words."""
    with pytest.raises(InvalidInput) as expected:
        check_rows(inputs, 2, 4)
    with pytest.raises(InvalidInput) as got:
        check_rows_within(inputs, 2, 4, F32_MAX, "float32")
    assert got.value.message == expected.value.message


# --------------------------------------------------------------------------- bad_json


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b'{"type":"ping",}', id="trailing-comma"),
        pytest.param(b"{'type':'ping'}", id="single-quotes"),
        pytest.param(b'{"type":"ping"} {}', id="two-values"),
        pytest.param(b"1e400", id="overflowing-number"),
        pytest.param(b'{"type":"predict","id":"a","model":"linear","inputs":[[1e400]]}', id="overflow-in-inputs"),
        pytest.param(b'{"type":"predict","id":"a","model":"linear","inputs":[[-1e400]]}', id="negative-overflow"),
        pytest.param(b'{"type":"predict","id":"a","model":"linear","inputs":[[NaN]]}', id="NaN"),
        pytest.param(b'{"type":"predict","id":"a","model":"linear","inputs":[[Infinity]]}', id="Infinity"),
        pytest.param(b'{"type":"ping","id":"\\ud800"}', id="lone-surrogate-escape"),
    ],
)
def test_bad_json(data: bytes) -> None:
    err = _fails(data, BadJson)
    assert err.code == "bad_json"
    assert err.request_id is None  # nothing could be read
    assert "JSON" in err.message
    assert not err.invalid_utf8


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"type":"ping","id":"\xff"}', id="invalid-utf8"),
        pytest.param(b"\xfe\xff\x00{", id="binary-garbage"),
        pytest.param(b'{"type":"ping","id":"\xed\xa0\x80"}', id="encoded-surrogate"),
        pytest.param(b'{"type":"ping", "id": 1, trailing \xc3', id="bad-json-and-truncated-utf8"),
    ],
)
def test_invalid_utf8_is_bad_json_flagged_invalid_utf8(data: bytes) -> None:
    err = _fails(data, BadJson)
    assert err.code == "bad_json" and err.invalid_utf8 and "UTF-8" in err.message


# --------------------------------------------------------------------------- bad_request


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"[1,2]", "array"),
        (b'"predict"', "string"),
        (b"42", "number"),
        (b"null", "null"),
        (b"true", "boolean"),
    ],
)
def test_not_an_object(data: bytes, kind: str) -> None:
    err = _fails(data, BadRequest)
    assert "object" in err.message and kind in err.message
    assert err.request_id is None


def test_unknown_type_names_it_and_keeps_the_id() -> None:
    err = _fails(b'{"type":"predikt","id":"a1"}', BadRequest)
    assert "predikt" in err.message
    assert err.request_id == "a1"


@pytest.mark.parametrize("kind", [5, None, ["predict"], {"t": 1}, "", "PREDICT"])
def test_unknown_or_mistyped_type(kind: object) -> None:
    data = orjson.dumps({"type": kind, "id": 4})
    err = _fails(data, BadRequest)
    assert "type" in err.message
    assert err.request_id == 4


def test_missing_type_keeps_the_id() -> None:
    err = _fails(b'{"id":9,"model":"linear"}', BadRequest)
    assert err.message == "missing field 'type'"
    assert err.request_id == 9


@pytest.mark.parametrize("rid", [True, 1.5, {"a": 1}, [1]])
def test_unknown_type_with_unreadable_id(rid: object) -> None:
    err = _fails(orjson.dumps({"type": "nope", "id": rid}), BadRequest)
    assert err.request_id is None


@pytest.mark.parametrize("make", [_predict, _generate], ids=["predict", "generate"])
def test_missing_id(make) -> None:
    err = _fails(make(id=_DROP), BadRequest)
    assert "'id'" in err.message
    assert err.request_id is None
    err = _fails(make(id=None), BadRequest)
    assert "'id'" in err.message


@pytest.mark.parametrize("make", [_predict, _generate], ids=["predict", "generate"])
@pytest.mark.parametrize(
    "rid, jtype", [(True, "boolean"), (False, "boolean"), (1.5, "number"), (1.0, "number"), ({"a": 1}, "object"), ([1], "array")]
)
def test_mistyped_id(make, rid: object, jtype: str) -> None:
    err = _fails(make(id=rid), BadRequest)
    assert "'id'" in err.message and jtype in err.message
    assert err.request_id is None


@pytest.mark.parametrize("msg_type", ["cancel", "ping", "models"])
@pytest.mark.parametrize("rid", [True, 2.5, {"a": 1}])
def test_control_messages_with_mistyped_id(msg_type: str, rid: object) -> None:
    err = _fails(orjson.dumps({"type": msg_type, "id": rid}), BadRequest)
    assert "'id'" in err.message
    assert err.request_id is None


def test_cancel_needs_an_id() -> None:
    err = _fails(b'{"type":"cancel"}', BadRequest)
    assert "'id'" in err.message and err.request_id is None


@pytest.mark.parametrize("token", [_DROP, None, 5, ["t"]])
def test_auth_needs_a_string_token(token: object) -> None:
    fields = {"type": "auth", "id": "x1"}
    if token is not _DROP:
        fields["token"] = token
    err = _fails(orjson.dumps(fields), BadRequest)
    assert "token" in err.message
    assert err.request_id == "x1"


# Each case: (field, bad value, word the message must contain).  The id is
# readable in all of them, so request_id must be set.
_PREDICT_BAD = [
    ("model", _DROP, "model"),
    ("model", None, "model"),
    ("model", 5, "model"),
    ("model", ["linear"], "model"),
    ("inputs", _DROP, "inputs"),
    ("version", 0, "version"),
    ("version", True, "version"),
    ("stream", "true", "stream"),
    ("stream", 1, "stream"),
    ("chunk_rows", 0, "chunk_rows"),
    ("chunk_rows", -1, "chunk_rows"),
    ("chunk_rows", 1.5, "chunk_rows"),
    ("chunk_rows", True, "chunk_rows"),
    ("chunk_rows", "2", "chunk_rows"),
    ("timeout_ms", 0, "timeout_ms"),
    ("timeout_ms", -5, "timeout_ms"),
    ("timeout_ms", 0.0, "timeout_ms"),
    ("timeout_ms", "100", "timeout_ms"),
    ("timeout_ms", True, "timeout_ms"),
    ("priority", -1, "priority"),  # above 1: the model's levels decide, when it is queued (test_repo_wire_priority.py)
    ("priority", 0.5, "priority"),
    ("priority", "1", "priority"),
    ("priority", True, "priority"),
]


@pytest.mark.parametrize("field, value, word", _PREDICT_BAD, ids=[f"{f}={v!r}" for f, v, _ in _PREDICT_BAD])
def test_predict_bad_request(field: str, value: object, word: str) -> None:
    err = _fails(_predict(**{field: value}), BadRequest)
    assert word in err.message
    assert err.request_id == "a1"


_GENERATE_BAD = [
    ("model", _DROP, "model"),
    ("model", 3, "model"),
    ("prompt", _DROP, "prompt"),
    ("prompt", None, "prompt"),
    ("prompt", ["a"], "prompt"),
    ("prompt", 5, "prompt"),
    ("max_tokens", 0, "max_tokens"),
    ("max_tokens", -3, "max_tokens"),
    ("max_tokens", 100_001, "max_tokens"),
    ("max_tokens", 1.5, "max_tokens"),
    ("max_tokens", "64", "max_tokens"),
    ("max_tokens", True, "max_tokens"),
    ("temperature", -0.1, "temperature"),
    ("temperature", -1, "temperature"),
    ("temperature", "0.5", "temperature"),
    ("temperature", True, "temperature"),
    ("top_k", -1, "top_k"),
    ("top_k", 1.5, "top_k"),
    ("top_k", True, "top_k"),
    ("seed", "1", "seed"),
    ("seed", 1.5, "seed"),
    ("seed", True, "seed"),
    ("stop", "", "stop"),
    ("stop", [""], "stop"),
    ("stop", ["ok", ""], "stop"),
    ("stop", 5, "stop"),
    ("stop", {"s": "x"}, "stop"),
    ("stop", [1], "stop"),
    ("stop", [["a"]], "stop"),
    ("stop", [str(i) for i in range(17)], "stop"),
    ("stop", ["x" * 257], "stop"),
    ("version", 1.5, "version"),
    ("timeout_ms", 0, "timeout_ms"),
    ("timeout_ms", -1.5, "timeout_ms"),
    ("priority", 3, "priority"),
    ("priority", False, "priority"),
]


@pytest.mark.parametrize("field, value, word", _GENERATE_BAD, ids=[f"{f}={v!r}"[:40] for f, v, _ in _GENERATE_BAD])
def test_generate_bad_request(field: str, value: object, word: str) -> None:
    err = _fails(_generate(**{field: value}), BadRequest)
    assert word in err.message
    assert err.request_id == "g1"


def test_generate_with_integer_id_keeps_it_on_errors() -> None:
    err = _fails(_generate(id=0, max_tokens=0), BadRequest)
    assert err.request_id == 0


# --------------------------------------------------------------------------- invalid_input


@pytest.mark.parametrize(
    "inputs, width, words",
    [
        pytest.param(None, 1, ["array", "null"], id="null"),
        pytest.param(5, 1, ["array", "number"], id="number"),
        pytest.param("abc", 1, ["array", "string"], id="string"),
        pytest.param({"a": [1]}, 1, ["array", "object"], id="object"),
        pytest.param([], 1, ["no rows"], id="n=0"),
        pytest.param([0.5, 1.0], 1, ["row 0", "array"], id="1-D"),
        pytest.param([[0.5], 1.0], 1, ["row 1"], id="row-not-array"),
        pytest.param([[[0.5]]], 1, ["row 0", "not a number"], id="nested"),
        pytest.param([[0.5], ["1.0"]], 1, ["row 1", "not a number"], id="string-element"),
        pytest.param([[True]], 1, ["row 0", "not a number"], id="boolean-element"),
        pytest.param([[False]], 1, ["not a number"], id="false-element"),
        pytest.param([[None]], 1, ["row 0", "not a number"], id="null-element"),
        pytest.param([[{"v": 1}]], 1, ["not a number"], id="object-element"),
        pytest.param([[1.0], [1.0, 2.0]], 1, ["row 1", "2 values", "takes 1"], id="ragged-longer"),
        pytest.param([[1.0, 2.0], [1.0]], 2, ["row 1", "1 values", "takes 2"], id="ragged-shorter"),
        pytest.param([[1.0, 2.0]], 1, ["row 0", "takes 1"], id="wrong-width"),
        pytest.param([[]], 1, ["row 0", "0 values"], id="empty-row"),
    ],
)
def test_invalid_input(inputs: object, width: int, words: list[str]) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_inputs(inputs, width, 100)
    assert info.value.code == "invalid_input"
    for word in words:
        assert word in info.value.message


def test_too_many_rows() -> None:
    rows = [[0.0]] * 11
    with pytest.raises(InvalidInput) as info:
        validate_inputs(rows, 1, 10)
    assert "11 rows" in info.value.message and "10" in info.value.message
    assert validate_inputs(rows[:10], 1, 10) is not None  # exactly the limit is fine


def test_valid_inputs_become_a_float64_array_of_the_same_values() -> None:
    rows = [[0.5, 1], [-2.0, 1.8446744073709552e19]]
    x = validate_inputs(rows, 2, 2)
    assert x.dtype == np.float64 and x.shape == (2, 2) and x.tolist() == rows


def test_valid_inputs_decoded_end_to_end_are_finite() -> None:
    req = decode(b'{"type":"predict","id":1,"model":"mlp","inputs":[[1e308,-1e-308,0,-0.0]]}')
    rows = validate_inputs(req.inputs, 4, 1)
    assert all(math.isfinite(v) for v in rows[0])


# --------------------------------------------------------------------------- encoders


def test_small_frames_exact_bytes() -> None:
    assert encode_pong(8) == b'{"type":"pong","id":8}'
    assert encode_pong(None) == b'{"type":"pong","id":null}'
    assert encode_pong("p") == b'{"type":"pong","id":"p"}'
    assert encode_draining(10000) == b'{"type":"draining","deadline_ms":10000}'
    assert encode_auth_ok("a") == b'{"type":"auth","id":"a","ok":true}'
    assert encode_models(7, b'[{"name":"linear"}]') == b'{"type":"models","id":7,"models":[{"name":"linear"}]}'


def test_token_frames_exact_bytes() -> None:
    prefix = token_prefix("g1")
    assert encode_token(prefix, 0, "q") == b'{"type":"token","id":"g1","seq":0,"text":"q"}'
    assert encode_token(token_prefix(5), 12, 'é\n"\\') == '{"type":"token","id":5,"seq":12,"text":"é\\n\\"\\\\"}'.encode()
    assert orjson.loads(encode_token(prefix, 7, 'é\n"\\')) == {"type": "token", "id": "g1", "seq": 7, "text": 'é\n"\\'}


def test_token_frames_with_logprobs_exact_bytes() -> None:
    record = TokenLogprobs(17, "q", -0.25, ((17, "q", -0.25), (3, '"', -1.5)), 1)
    assert encode_token_logprobs(token_prefix("g1"), 2, "q", record) == (
        b'{"type":"token","id":"g1","seq":2,"text":"q","logprob":-0.25,'
        b'"top_logprobs":[{"id":17,"text":"q","logprob":-0.25},{"id":3,"text":"\\"","logprob":-1.5}]}')
    broken = TokenLogprobs(1, "a", float("nan"), (), 0)  # a model whose logits were not finite
    assert orjson.loads(encode_token_logprobs(token_prefix(5), 0, "a", broken)) == {
        "type": "token", "id": 5, "seq": 0, "text": "a", "logprob": None, "top_logprobs": []}


def test_result_frame_exact_bytes() -> None:
    data = encode_result("a1", "linear", "1", np.array([[2.0], [3.5]]), {"queue_ms": 0.21, "compute_ms": 0.04, "batch_size": 37})
    assert data == (
        b'{"type":"result","id":"a1","model":"linear","version":"1","outputs":[[2.0],[3.5]],'
        b'"timing":{"queue_ms":0.21,"compute_ms":0.04,"batch_size":37}}'
    )


def test_result_of_a_non_contiguous_array() -> None:
    outputs = np.arange(6, dtype=np.float64).reshape(2, 3).T  # [3, 2], Fortran order
    assert orjson.loads(encode_result(1, "m", "1", outputs, {}))["outputs"] == outputs.tolist()


def test_chunk_and_done_frames_exact_bytes() -> None:
    assert encode_chunk("a1", 0, 0, np.arange(4, dtype=np.float64).reshape(2, 2)) == (
        b'{"type":"chunk","id":"a1","seq":0,"offset":0,"outputs":[[0.0,1.0],[2.0,3.0]]}'
    )
    assert encode_chunk(5, 3, 12, np.arange(4, dtype=np.float64).reshape(2, 2)[:, :1]) == (
        b'{"type":"chunk","id":5,"seq":3,"offset":12,"outputs":[[0.0],[2.0]]}'
    )
    assert encode_predict_done("a1", 3, {"queue_ms": 1.0}) == (
        b'{"type":"done","id":"a1","reason":"complete","rows":3,"timing":{"queue_ms":1.0}}'
    )
    assert encode_generate_done("g1", "length", 64, {"ttft_ms": 1.9, "total_ms": 40.2}) == (
        b'{"type":"done","id":"g1","reason":"length","tokens":64,"timing":{"ttft_ms":1.9,"total_ms":40.2}}'
    )
    assert encode_generate_done(7, "stop", 2, {}, "1", prompt_tokens=0) == (
        b'{"type":"done","id":7,"reason":"stop","tokens":2,"timing":{},"version":"1","prompt_tokens":0}'
    )


def test_seed_form_replies_exact_bytes() -> None:
    # A number for one input (also [x], as the original design answers), a list for several.
    assert encode_seed_result(np.array([[2.5]]), scalar=True) == b'{"y_pred":2.5}'
    assert encode_seed_result(np.array([[2.5], [3.0]]), scalar=False) == b'{"y_pred":[2.5,3.0]}'


def test_encode_error_exact_bytes() -> None:
    exc = UnknownModel("no model named 'linaer'; known: linear, mlp, charlm")
    assert encode_error(exc, "a1") == (
        b'{"type":"error","id":"a1","code":"unknown_model",'
        b'"message":"no model named \'linaer\'; known: linear, mlp, charlm"}'
    )


def test_encode_error_for_bad_json_has_null_id() -> None:
    with pytest.raises(BadJson) as info:
        decode(b"{")
    data = encode_error(info.value)
    frame = orjson.loads(data)
    assert frame == {"type": "error", "id": None, "code": "bad_json", "message": info.value.message}
    assert data.startswith(b'{"type":"error","id":null,"code":"bad_json","message":"')


def test_encode_error_uses_the_id_read_by_decode() -> None:
    with pytest.raises(BadRequest) as info:
        decode(_predict(id=0, priority=-5))
    frame = orjson.loads(encode_error(info.value))
    assert frame["id"] == 0  # a falsy id is still an id
    assert frame["code"] == "bad_request"
    assert "priority" in frame["message"]


def test_encode_error_argument_overrides_exception_id() -> None:
    exc = BadRequest("x", request_id="from-exc")
    assert orjson.loads(encode_error(exc, 0))["id"] == 0
    assert orjson.loads(encode_error(exc))["id"] == "from-exc"


def test_encode_error_retry_after() -> None:
    data = encode_error(Overloaded("queue full", retry_after_ms=12), 3)
    assert data == b'{"type":"error","id":3,"code":"overloaded","message":"queue full","retry_after_ms":12}'


def test_encode_error_non_ascii_message_is_utf8() -> None:
    data = encode_error(InvalidInput("row 0 holds 'é✓', which is not a number"), "é")
    assert orjson.loads(data.decode("utf-8"))["message"] == "row 0 holds 'é✓', which is not a number"


def test_encode_hello_matches_protocol_example() -> None:
    data = encode_hello(
        version="0.1.0",
        limits=ServerConfig().public_limits(),
        models=["linear", "mlp", "charlm"],
        auth_required=False,
    )
    # Verbatim from PROTOCOL.md "On connect".
    assert data == (
        b'{"type":"hello","server":"wsserve","version":"0.1.0","protocol":1,"limits":{"max_message_bytes":1048576,'
        b'"max_inflight":256,"max_rows":65536,"max_tokens":100000,"max_inflight_bytes":33554432,"max_explain_rows":256,'
        b'"guide_compile_memory_bytes":1073741824,"guide_compile_cpu_s":10,"guide_compile_timeout_s":15.0,'
        b'"max_id_length":128,"max_binary_header_bytes":4096,"max_stop_strings":16,"max_stop_chars":256,'
        b'"max_logit_bias_tokens":300,"max_logprobs":20,"max_stop_token_ids":64,"max_guided_choices":64,'
        b'"max_guided_choice_chars":256,"max_guided_pattern_chars":16384,"max_row_values":4194304},'
        b'"models":["linear","mlp","charlm"],"binary_dtypes":["float32","float64","int32","int64","bool","float16",'
        b'"int8","int16","uint8","uint16","uint32","uint64","bfloat16"]}'
    )


def test_encode_hello_auth_required() -> None:
    frame = orjson.loads(encode_hello(version="9", limits={"max_rows": 1}, models=[], auth_required=True))
    assert frame == {
        "type": "hello", "server": "wsserve", "version": "9", "protocol": 1,
        "limits": {"max_rows": 1, "max_id_length": 128, "max_binary_header_bytes": 4096, "max_stop_strings": 16,
                   "max_stop_chars": 256, "max_logit_bias_tokens": 300, "max_logprobs": 20,
                   "max_stop_token_ids": 64, "max_guided_choices": 64, "max_guided_choice_chars": 256,
                   "max_guided_pattern_chars": 16384, "max_row_values": 4194304}, "models": [],
        "binary_dtypes": ["float32", "float64", "int32", "int64", "bool", "float16", "int8", "int16", "uint8",
                          "uint16", "uint32", "uint64", "bfloat16"],
        "auth_required": True,
    }


def test_protocol_constants() -> None:
    assert PROTOCOL_VERSION == 1
    assert SUBPROTOCOL == "wsserve.v1"


# --------------------------------------------------------------------------- ResultRows


_RESULT_DTYPES = ["float64", "float32", "float16", "int64", "int8", "uint8", "bool"]


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from(_RESULT_DTYPES),
    n=st.integers(1, 8),
    c=st.integers(1, 6),
    rid=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=12)),
    model=st.text(min_size=1, max_size=10),
    version=st.text(min_size=1, max_size=6),
    queue_s=st.one_of(st.just(0.0), st.floats(-1.0, 10.0, allow_nan=False)),
    compute_s=st.one_of(st.just(0.0), st.floats(-1.0, 10.0, allow_nan=False)),
)
def test_result_rows_frames_are_encode_results_bytes(
    data: Any, dtype: str, n: int, c: int, rid: Any, model: str, version: str, queue_s: float, compute_s: float,
) -> None:
    """One encoding of a batch's [n, c] outputs gives, for any row range, the exact bytes of
    encode_result for those rows (the worker's shared path and the per-request path agree)."""
    info = np.finfo(dtype) if dtype.startswith("float") else None
    if dtype == "bool":
        elements = st.booleans()
    elif info is not None:
        elements = st.floats(float(info.min), float(info.max), allow_nan=False, allow_infinity=False,
                             width=info.bits)
    else:
        ii = np.iinfo(dtype)
        elements = st.integers(int(ii.min), int(ii.max))
    values = data.draw(st.lists(elements, min_size=n * c, max_size=n * c))
    y = np.array(values, dtype=dtype).reshape(n, c)
    a = data.draw(st.integers(0, n - 1))
    b = data.draw(st.integers(a + 1, n))
    rows = ResultRows(y, compute_s, n)
    frame = rows.frame(rid, result_head(model, version), a, b, queue_s)
    assert frame == encode_result(rid, model, version, y[a:b], timing_fields(queue_s, compute_s, n))
    # and the numbers read back as the rows (float32/float16 are written at their own precision)
    np.testing.assert_array_equal(np.array(orjson.loads(frame)["outputs"], dtype=dtype), y[a:b])


@pytest.mark.parametrize("shape", [(3,), (3, 0), (0, 2), (2, 2, 2)])
def test_result_rows_refuses_what_is_not_rows_of_numbers(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="ResultRows needs"):
        ResultRows(np.zeros(shape), 0.001, 3)


def test_a_load_carries_its_config_as_json_text() -> None:
    """The WebSocket ``load``'s ``config`` (Triton's JSON model configuration): an object (its
    compact JSON) or a string, 1 to MAX_CONFIG_PARAM_CHARS characters; ``unload``/``reload``
    refuse it, as HTTP's ``config`` parameter is refused on unload."""
    from wsserve.protocol import MAX_CONFIG_PARAM_CHARS, Admin, decode
    from wsserve.repository.config import MAX_CONFIG_BYTES

    assert MAX_CONFIG_PARAM_CHARS == MAX_CONFIG_BYTES  # one bound: a config file's
    config = {"name": "m", "max_batch_size": 4}
    assert decode(orjson.dumps({"type": "load", "id": 1, "model": "m", "config": config})) == \
        Admin("load", "m", None, 1, '{"name":"m","max_batch_size":4}')
    assert decode(orjson.dumps({"type": "load", "model": "m", "version": 2, "config": "{}"})) == \
        Admin("load", "m", "2", None, "{}")
    assert decode(orjson.dumps({"type": "load", "model": "m", "config": "x" * MAX_CONFIG_PARAM_CHARS})).config \
        == "x" * MAX_CONFIG_PARAM_CHARS
    for frame, says in [
        ({"type": "load", "id": 3, "model": "m", "config": "x" * (MAX_CONFIG_PARAM_CHARS + 1)}, "it has 65537 characters"),
        ({"type": "load", "id": 3, "model": "m", "config": {"p": "x" * MAX_CONFIG_PARAM_CHARS}}, "it has 65544 characters"),
        ({"type": "load", "id": 3, "model": "m", "config": ""}, "it has 0 characters"),
        ({"type": "load", "id": 3, "model": "m", "config": [1]}, "(an object, or a string of 1 to 65536 characters), got "
                                                                 "array"),
        ({"type": "unload", "id": 3, "model": "m", "config": {}}, "field 'config' is for load only, not unload"),
        ({"type": "reload", "id": 3, "model": "m", "config": "{}"}, "field 'config' is for load only, not reload"),
    ]:
        with pytest.raises(BadRequest) as info:
            decode(orjson.dumps(frame))
        assert says in info.value.message and info.value.request_id == 3


def test_a_load_config_nested_past_what_can_be_written_back_is_a_bad_request() -> None:
    """A ``config`` object is passed on as its JSON text: one nested deeper than orjson writes (254
    levels) is refused as a bad field, with the load's id, not raised as an internal error."""
    from wsserve.protocol import decode

    def frame(depth: int) -> str:
        return '{"type":"load","id":3,"model":"m","config":' + '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1) + "}"

    assert decode(frame(254)).config == '{"a":' * 253 + "{}" + "}" * 253
    with pytest.raises(BadRequest) as info:
        decode(frame(255))
    assert "field 'config' nests too deeply" in info.value.message and info.value.request_id == 3
