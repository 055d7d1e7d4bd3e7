"""The binary tensor frame codec (wsserve.tensorframe) and decode_binary: bytes only, no sockets."""

from __future__ import annotations

import tracemalloc
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wsserve.dtypes import DTYPES
from wsserve.errors import BadRequest, InvalidInput, WsserveError
from wsserve.protocol import MAX_ID_LENGTH, Predict, decode_binary
from wsserve.tensorframe import (
    MAX_HEADER_BYTES,
    conform,
    encode,
    header_length,
    read_tensors,
    split,
    view_tensors,
)

MAX_ROWS = 1000


@dataclass(frozen=True)
class Spec:
    name: str
    shape: tuple[int, ...]
    dtype: str


def frame(header: dict, payload: bytes) -> bytes:
    head = orjson.dumps(header)
    return len(head).to_bytes(4, "little") + head + payload


def decode_all(data: bytes, key: str = "inputs", max_rows: int = MAX_ROWS) -> tuple[dict, list[np.ndarray]]:
    header, payload = split(data)
    descs = read_tensors(header, len(payload), max_rows=max_rows, key=key)
    return header, view_tensors(payload, descs)


def bfloat16_arrays(shape: Any) -> st.SearchStrategy[np.ndarray]:
    """bfloat16 arrays (hypothesis knows no ml_dtypes type): finite float32 values within its range, narrowed."""
    finite = st.floats(-1e6, 1e6, width=32)
    return hnp.arrays(np.float32, shape, elements=finite).map(lambda a: a.astype(DTYPES["bfloat16"]))


def arrays_of(dtype: str, max_rows: int = 5) -> st.SearchStrategy[np.ndarray]:
    shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=max_rows)
    if dtype == "bfloat16":  # (hypothesis knows no ml_dtypes type: float32 values within its range, narrowed)
        return bfloat16_arrays(shapes)
    width = {"float16": 16, "float32": 32}.get(dtype, 64)
    elements = st.floats(allow_nan=False, allow_infinity=False, width=width) if dtype.startswith("float") else None
    return hnp.arrays(DTYPES[dtype], shapes, elements=elements)


dtypes = st.sampled_from(sorted(DTYPES))
any_array = dtypes.flatmap(arrays_of)


# --------------------------------------------------------------------------- round trips


@given(arr=any_array, rid=st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20)))
def test_one_tensor_round_trips_with_an_aligned_payload(arr: np.ndarray, rid: object) -> None:
    data = encode({"type": "predict", "id": rid, "model": "m"}, arr, key="inputs")
    n = int.from_bytes(data[:4], "little")
    assert (4 + n) % 8 == 0 and n == header_length(n)
    header, (back,) = decode_all(data)
    assert header["id"] == rid and header["dtype"] == arr.dtype.name
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert back.flags.writeable and back.flags.c_contiguous and back.flags.aligned
    assert back.base is None or back.base.flags.owndata  # a copy: the message's bytes can go


@given(n=st.integers(1, 4), specs=st.lists(st.tuples(dtypes, st.lists(st.integers(1, 3), max_size=2)), min_size=1,
                                           max_size=4), data=st.data())
def test_named_tensors_round_trip_in_order(n: int, specs: list, data: st.DataObject) -> None:
    tensors = {}
    for i, (dtype, rest) in enumerate(specs):
        elements = (st.floats(-6e4, 6e4, width=16) if dtype == "float16" else
                    st.floats(-1e6, 1e6, width=32) if dtype.startswith("float") else None)
        tensors[f"t{i}"] = data.draw(bfloat16_arrays((n, *rest)) if dtype == "bfloat16" else
                                     hnp.arrays(DTYPES[dtype], (n, *rest), elements=elements))
    blob = encode({"type": "result", "id": 1}, tensors)
    header, arrays = decode_all(blob, key="outputs")
    assert [t["name"] for t in header["outputs"]] == list(tensors)
    for back, arr in zip(arrays, tensors.values()):
        np.testing.assert_array_equal(back, arr)
        assert back.dtype == arr.dtype


def test_byte_level_example_from_the_docs() -> None:
    """The hex example in docs/PROTOCOL.md, byte for byte."""
    x = np.array([[0.5, 1.0]], dtype=np.float32)
    data = encode({"type": "predict", "id": 1, "model": "m"}, x, key="inputs")
    head = b'{"type":"predict","id":1,"model":"m","dtype":"float32","shape":[1,2]}'
    assert len(head) == 69 and header_length(69) == 76  # 4 + 76 = 80: the payload starts 8-byte aligned
    assert data == (76).to_bytes(4, "little") + head + b" " * 7 + bytes.fromhex("0000003f 0000803f")
    assert data[:4].hex() == "4c000000"


def test_outputs_keep_their_dtype_and_others_are_widened() -> None:
    blob = encode({"type": "result"}, np.array([[1.5]], dtype=np.float16))
    header, (back,) = decode_all(blob, key="outputs")
    assert header["dtype"] == "float16" and back.dtype == np.float16 and back[0, 0] == 1.5
    header, (back,) = decode_all(encode({}, np.array([7, 255], dtype=np.uint8)), key="outputs")
    assert header["dtype"] == "uint8" and back.tolist() == [7, 255]
    header, (back,) = decode_all(encode({}, np.array([2**64 - 1], dtype=">u8")), key="outputs")
    assert header["dtype"] == "uint64" and back.tolist() == [2**64 - 1]
    header, (back,) = decode_all(encode({}, np.array([0.25], dtype=np.longdouble)), key="outputs")
    assert header["dtype"] == "float64" and back[0] == 0.25  # float128 (x86) or float64 itself
    # Fortran order and big-endian inputs come out C-ordered and little-endian
    f = np.asfortranarray(np.arange(6, dtype=">f8").reshape(2, 3))
    _, (back,) = decode_all(encode({}, f), key="outputs")
    np.testing.assert_array_equal(back, f)


# --------------------------------------------------------------------------- refusals


def refused(data: bytes, **kw: object) -> WsserveError:
    with pytest.raises((BadRequest, InvalidInput)) as info:
        header, arrays = decode_all(data, **kw)  # type: ignore[arg-type]
    return info.value


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(arr=any_array, data=st.data())
def test_every_truncation_and_every_extra_byte_is_refused(arr: np.ndarray, data: st.DataObject) -> None:
    blob = encode({"type": "predict", "id": 1, "model": "m"}, arr, key="inputs")
    cut = data.draw(st.integers(0, len(blob) - 1))
    refused(blob[:cut])
    refused(blob + data.draw(st.binary(min_size=1, max_size=9)))


@given(arr=any_array, delta=st.integers(-3, 3).filter(bool), dim=st.integers(0, 2))
def test_a_shape_that_does_not_match_the_payload_is_invalid_input(arr: np.ndarray, delta: int, dim: int) -> None:
    shape = list(arr.shape)
    dim %= len(shape)
    shape[dim] += delta
    if shape[dim] < 1:
        shape[dim] = arr.shape[dim] + 1
    exc = refused(frame({"dtype": arr.dtype.name, "shape": shape}, arr.tobytes()))
    assert exc.code == "invalid_input"


@given(shape=st.lists(st.integers(1, 2**62), min_size=1, max_size=9), dtype=dtypes,
       payload=st.integers(0, 64))
def test_huge_shapes_are_refused_before_anything_is_allocated(shape: list[int], dtype: str, payload: int) -> None:
    shape[0] = min(shape[0], MAX_ROWS)
    if int(np.prod(np.array(shape, dtype=object))) * DTYPES[dtype].itemsize == payload:
        return
    data = frame({"dtype": dtype, "shape": shape}, b"\0" * payload)
    tracemalloc.start()
    try:
        refused(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak


def test_rows_are_bounded_by_max_rows() -> None:
    x = np.zeros((11, 1))
    blob = encode({}, x, key="inputs")
    exc = refused(blob, max_rows=10)
    assert exc.code == "invalid_input" and "11 rows; the limit is 10" in exc.message
    decode_all(blob, max_rows=11)


@pytest.mark.parametrize(("data", "words"), [
    (b"", "4-byte header length"),
    (b"\x02\x00", "4-byte header length"),
    ((MAX_HEADER_BYTES + 1).to_bytes(4, "little") + b" " * (MAX_HEADER_BYTES + 1), "limit is 4096"),
    ((10).to_bytes(4, "little") + b"{}", "exceeds the 2 bytes"),
    ((2).to_bytes(4, "little") + b"{x", "not valid UTF-8 JSON"),
    ((2).to_bytes(4, "little") + b"\xff\xfe", "not valid UTF-8 JSON"),
    ((2).to_bytes(4, "little") + b"[]", "must be a JSON object"),
    (frame({"shape": [1]}, b""), "needs 'dtype' and 'shape'"),
    (frame({"dtype": "bfloat8", "shape": [1]}, b"\0\0"), "unknown dtype 'bfloat8'"),
    (frame({"dtype": 4, "shape": [1]}, b"\0" * 4), "'dtype' must be a string"),
    (frame({"dtype": "int32", "shape": "1"}, b"\0" * 4), "'shape' must be an array"),
    (frame({"dtype": "int32", "shape": []}, b""), "'shape' must be an array"),
    (frame({"dtype": "int32", "shape": [1.0]}, b"\0" * 4), "'shape' must hold integers"),
    (frame({"dtype": "int32", "shape": [True]}, b"\0" * 4), "'shape' must hold integers"),
    (frame({"dtype": "int32", "shape": [1] * 10}, b"\0" * 4), "1 to 9 integers"),
    (frame({"inputs": {"a": 1}}, b""), "'inputs' must be an array"),
    (frame({"inputs": [{"name": "a", "dtype": "int32", "shape": [1]}] * 2}, b"\0" * 8), "names 'a' twice"),
    (frame({"inputs": [{"dtype": "int32", "shape": [1]}]}, b"\0" * 4), "'name' must be a string"),
    # the bounds docs/PROTOCOL.md states: 64 tensors, names of 1 to 256 characters
    (frame({"inputs": [{"name": f"t{i}", "dtype": "bool", "shape": [1]} for i in range(65)]}, b"\0" * 65),
     "1 to 64 objects"),
    (frame({"inputs": [{"name": "a" * 257, "dtype": "bool", "shape": [1]}]}, b"\0"), "1 to 256 characters"),
    (frame({"inputs": [], "dtype": "int32", "shape": [1]}, b"\0" * 4), "use one form"),
])
def test_malformed_frames_are_bad_request(data: bytes, words: str) -> None:
    exc = refused(data)
    assert exc.code == "bad_request" and words in exc.message, exc.message


@pytest.mark.parametrize(("header", "payload", "words"), [
    ({"dtype": "int32", "shape": [0, 1]}, b"", "every dimension must be >= 1"),
    ({"dtype": "int32", "shape": [1, -1]}, b"", "every dimension must be >= 1"),
    ({"dtype": "int32", "shape": [2]}, b"\0" * 4, "needs more than the 4 payload bytes"),
    ({"dtype": "int32", "shape": [1]}, b"\0" * 5, "payload has 5 bytes; the header's tensors need 4"),
    ({"inputs": [{"name": "a", "dtype": "int32", "shape": [1]}, {"name": "b", "dtype": "int32", "shape": [2]}]},
     b"\0" * 12, "tensor 'b' has 2 rows but the first tensor has 1"),
])
def test_size_problems_are_invalid_input(header: dict, payload: bytes, words: str) -> None:
    exc = refused(frame(header, payload))
    assert exc.code == "invalid_input" and words in exc.message, exc.message


@given(dtype=st.sampled_from(["float32", "float64"]), rows=st.integers(1, 6), width=st.integers(1, 6),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), data=st.data())
def test_non_finite_values_are_refused_naming_the_row(dtype: str, rows: int, width: int, bad: float,
                                                      data: st.DataObject) -> None:
    x = np.ones((rows, width), dtype=DTYPES[dtype])
    i, j = data.draw(st.integers(0, rows - 1)), data.draw(st.integers(0, width - 1))
    x[i, j] = bad
    exc = refused(encode({}, x, key="inputs"))
    assert exc.code == "invalid_input" and f"row {i}[{j}] holds a value that is not finite" in exc.message


def test_bool_bytes_other_than_0_or_1_are_refused() -> None:
    exc = refused(frame({"dtype": "bool", "shape": [3]}, b"\x01\x00\x02"))
    assert exc.code == "invalid_input" and "row 2" in exc.message
    _, (ok,) = decode_all(frame({"dtype": "bool", "shape": [3]}, b"\x01\x00\x01"))
    assert ok.tolist() == [True, False, True]


# --------------------------------------------------------------------------- conform (model specs)


def fit(arr: np.ndarray, *specs: Spec) -> tuple[object, int, int]:
    header, payload = split(encode({}, arr, key="inputs"))
    descs = read_tensors(header, len(payload), max_rows=MAX_ROWS)
    return conform(view_tensors(payload, descs), descs, specs)


def test_conform_casts_as_the_json_path_does() -> None:
    out, n, nbytes = fit(np.array([[1, 2]], dtype=np.int32), Spec("x", (2,), "float64"))
    assert n == 1 and out.dtype == np.float64 and nbytes == 16 and out.tolist() == [[1.0, 2.0]]
    out, _, _ = fit(np.array([[1.0, -2.0]]), Spec("x", (2,), "int32"))
    assert out.dtype == np.int32 and out.tolist() == [[1, -2]]
    out, _, _ = fit(np.array([[1e30]]), Spec("x", (1,), "float32"))
    assert out.dtype == np.float32
    # the ends of the integer ranges that floats hold exactly are taken, as JSON takes them
    out, _, _ = fit(np.array([[-(2.0**63), 2.0**62]]), Spec("x", (2,), "int64"))
    assert out.tolist() == [[-(2**63), 2**62]]
    out, _, _ = fit(np.array([[-(2.0**31), 2.0**31 - 1]]), Spec("x", (2,), "int32"))
    assert out.tolist() == [[-(2**31), 2**31 - 1]]


@pytest.mark.parametrize(("arr", "spec", "words"), [
    (np.zeros((2, 3)), Spec("x", (4,), "float64"), "has shape [2, 3]; the model takes [n, 4]"),
    (np.zeros((2, 3)), Spec("x", (3, 1), "float64"), "the model takes [n, 3, 1]"),
    (np.array([[1e300]]), Spec("x", (1,), "float32"), "beyond float32's range"),
    (np.array([[1.5]]), Spec("x", (1,), "int64"), "row 0[0] holds a value that is not an integer"),
    (np.array([[2.0**40]]), Spec("x", (1,), "int32"), "not an integer in input 'x''s int32 range"),
    (np.array([[2**40]], dtype=np.int64), Spec("x", (1,), "int32"), "beyond int32's range"),
    # one past the top of the range, where the bound itself rounds up to it as a float (numpy would wrap)
    (np.array([[2.0**63]]), Spec("x", (1,), "int64"), "not an integer in input 'x''s int64 range"),
    (np.array([[2.0**63]], dtype=np.float32), Spec("x", (1,), "int64"), "int64 range"),
    (np.array([[2.0**31]], dtype=np.float32), Spec("x", (1,), "int32"), "int32 range"),
    (np.array([[-(2.0**63) - 2048]]), Spec("x", (1,), "int64"), "int64 range"),
    (np.array([[True]]), Spec("x", (1,), "float32"), "is bool; input 'x' takes float32"),
    (np.array([[1]], dtype=np.int32), Spec("x", (1,), "bool"), "true/false only"),
])
def test_conform_refuses_what_json_refuses(arr: np.ndarray, spec: Spec, words: str) -> None:
    with pytest.raises(InvalidInput) as info:
        fit(arr, spec)
    assert words in info.value.message, info.value.message


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"])
def test_float16_into_an_integer_input_is_range_checked_without_overflowing_float16(dtype: str) -> None:
    """The bounds of uint16 and wider types (65536.0, 2.0**31 ...) were compared in float16 (numpy
    casts a Python float to the array's type), overflowing it: a RuntimeWarning on every server that
    took such a frame (an error under ``-W error``), and a check against infinity."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, _, _ = fit(np.array([[100.0, 0.0, 127.0]], np.float16), Spec("x", (3,), dtype))
        assert out.dtype == DTYPES[dtype] and out.tolist() == [[100, 0, 127]]
        with pytest.raises(InvalidInput, match=f"not an integer in input 'x''s {dtype} range"):
            fit(np.array([[1.0, 0.5, 0.0]], np.float16), Spec("x", (3,), dtype))


def test_conform_named_inputs() -> None:
    a, b = np.zeros((2, 1), np.float32), np.ones((2, 3), np.int64)
    header, payload = split(encode({}, {"b": b, "a": a}, key="inputs"))
    descs = read_tensors(header, len(payload), max_rows=MAX_ROWS)
    specs = (Spec("a", (1,), "float32"), Spec("b", (3,), "int64"))
    out, n, nbytes = conform(view_tensors(payload, descs), descs, specs)
    assert n == 2 and set(out) == {"a", "b"} and nbytes == a.nbytes + b.nbytes
    with pytest.raises(InvalidInput, match="missing input 'b'"):
        conform(view_tensors(payload, descs)[:1], descs[1:], specs)
    with pytest.raises(InvalidInput, match="list them in 'inputs'"):
        fit(a, *specs)
    header, payload = split(encode({}, {"c": a}, key="inputs"))
    descs = read_tensors(header, len(payload), max_rows=MAX_ROWS)
    with pytest.raises(InvalidInput, match="unknown input 'c'"):
        conform(view_tensors(payload, descs), descs, specs)


# --------------------------------------------------------------------------- decode_binary (protocol)


def test_decode_binary_reads_every_predict_field() -> None:
    x = np.zeros((2, 1), np.float32)
    req = decode_binary(encode({"type": "predict", "id": "a", "model": "linear", "version": 3, "stream": True,
                                "chunk_rows": 1, "timeout_ms": 50, "priority": 1, "binary_outputs": True,
                                "explain": True}, x, key="inputs"), max_rows=10)
    assert isinstance(req, Predict) and req.inputs is None and req.tensors is not None
    assert (req.id, req.model, req.version, req.stream, req.chunk_rows, req.timeout_ms, req.priority,
            req.binary_outputs, req.explain) == ("a", "linear", "3", True, 1, 50.0, 1, True, True)
    assert req.tensors.descs[0].shape == (2, 1) and req.tensors.nbytes == 8


@pytest.mark.parametrize(("header", "code", "rid", "words"), [
    ({"type": "ping", "id": 1}, "bad_request", 1, "only predict requests"),
    ({"id": 1}, "bad_request", 1, "missing field 'type'"),
    ({"type": "predict", "model": "m"}, "bad_request", None, "missing field 'id'"),
    ({"type": "predict", "id": "x" * (MAX_ID_LENGTH + 1), "model": "m"}, "bad_request", None, "max_id_length"),
    ({"type": "predict", "id": 2}, "bad_request", 2, "missing field 'model'"),
    ({"type": "predict", "id": 2, "model": "m", "stream": 1}, "bad_request", 2, "'stream' must be a boolean"),
    ({"type": "predict", "id": 2, "model": "m", "binary_outputs": "yes"}, "bad_request", 2, "'binary_outputs'"),
    ({"type": "predict", "id": 2, "model": "m", "explain": 1}, "bad_request", 2, "'explain' must be a boolean"),
    ({"type": "predict", "id": 2, "model": "m", "priority": -1}, "bad_request", 2, "'priority'"),  # a level's range: per model
    ({"type": "predict", "id": 3, "model": "m", "shape": [2, 1]}, "invalid_input", 3, "needs more than"),
])
def test_decode_binary_refusals_carry_the_id(header: dict, code: str, rid: object, words: str) -> None:
    header = {"dtype": "float32", "shape": [1, 1], **header}
    with pytest.raises(WsserveError) as info:
        decode_binary(frame(header, b"\0" * 4), max_rows=10)
    assert info.value.code == code and info.value.request_id == rid and words in info.value.message


@given(data=st.binary(max_size=200))
def test_decode_binary_never_raises_anything_but_wire_errors(data: bytes) -> None:
    try:
        decode_binary(data, max_rows=10)
    except (BadRequest, InvalidInput):
        pass
