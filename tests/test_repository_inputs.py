"""Request inputs -> arrays (wsserve.repository.inputs.convert_inputs).

The single-input float64 case must agree with :func:`wsserve.protocol.validate_inputs`
(same accepted values, same messages) so the server can switch to it unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsserve.errors import InvalidInput
from wsserve.protocol import validate_inputs
from wsserve.repository import TensorSpec, batch_rows, check_inputs, convert_inputs


def _spec(shape: tuple[int, ...], dtype: str = "float64", name: str = "x") -> list[TensorSpec]:
    return [TensorSpec(name, shape, dtype)]


def _fails(inputs: Any, specs: list[TensorSpec], max_rows: int = 100, max_elements: int = 10_000) -> str:
    with pytest.raises(InvalidInput) as info:
        convert_inputs(inputs, specs, max_rows=max_rows, max_elements=max_elements)
    assert info.value.code == "invalid_input"
    return info.value.message


# --------------------------------------------------------------------------- parity with validate_inputs

PROTOCOL_CASES = [
    (None, 1), (5, 1), ("abc", 1), ({"a": [1]}, 1), ([], 1), ([0.5, 1.0], 1), ([[0.5], 1.0], 1), ([[[0.5]]], 1),
    ([[0.5], ["1.0"]], 1), ([[True]], 1), ([[False]], 1), ([[None]], 1), ([[{"v": 1}]], 1),
    ([[1.0], [1.0, 2.0]], 1), ([[1.0, 2.0], [1.0]], 2), ([[1.0, 2.0]], 1), ([[]], 1), ([[0.0]] * 11, 1),
]


@pytest.mark.parametrize("inputs, width", PROTOCOL_CASES)
def test_same_refusals_and_messages_as_validate_inputs(inputs: Any, width: int) -> None:
    with pytest.raises(InvalidInput) as old:
        validate_inputs(inputs, width, 10)
    spec = _spec((width,))
    if isinstance(inputs, dict):  # an object names inputs here: the message says which are known
        assert "'a'" in _fails(inputs, spec, max_rows=10) and "'x'" in _fails(inputs, spec, max_rows=10)
    else:
        assert _fails(inputs, spec, max_rows=10) == old.value.message


def test_valid_inputs_convert_to_float64() -> None:
    rows = [[0.5, 1], [-2.0, 1.8446744073709552e19]]
    out = convert_inputs(rows, _spec((2,)), max_rows=2, max_elements=4)
    assert out.dtype == np.float64 and out.shape == (2, 2)
    assert out.tolist() == [[0.5, 1.0], [-2.0, 1.8446744073709552e19]]


numbers = st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 4), data=st.data())
def test_agrees_with_validate_inputs_then_np_array(width: int, data: st.DataObject) -> None:
    rows = data.draw(st.lists(st.lists(numbers, min_size=width, max_size=width), min_size=1, max_size=6))
    rows = orjson.loads(orjson.dumps(rows))  # exactly what the decoder hands over
    expected = np.array(validate_inputs(rows, width, 6), dtype=np.float64)
    got = convert_inputs(rows, _spec((width,)), max_rows=6, max_elements=24)
    assert got.dtype == np.float64 and np.array_equal(got, expected)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3)),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["x", "a", "b"]), c, max_size=2),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None)
@given(value=json_values, shape=st.sampled_from([(), (1,), (2,), (2, 1)]), dtype=st.sampled_from(["float64", "float32", "int32", "int64", "bool"]))
def test_any_json_value_converts_or_is_invalid_input(value: Any, shape: tuple[int, ...], dtype: str) -> None:
    spec = _spec(shape, dtype)
    try:
        out = convert_inputs(value, spec, max_rows=4, max_elements=16)
    except InvalidInput as exc:
        assert exc.message
        with pytest.raises(InvalidInput) as info:  # check_inputs refuses the same, with the same message
            check_inputs(value, spec, max_rows=4, max_elements=16)
        assert info.value.message == exc.message
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.dtype(dtype)
    assert out.shape[1:] == shape and 1 <= len(out) <= 4
    if dtype.startswith("float"):
        assert np.isfinite(out).all()
    assert check_inputs(value, spec, max_rows=4, max_elements=16) is value
    rows = value["x"] if isinstance(value, dict) else value
    again = np.array(rows, dtype=np.dtype(dtype))  # what a pool does with checked rows
    assert again.dtype == out.dtype and np.array_equal(again, out)


numeric_rows = st.integers(1, 4).flatmap(
    lambda w: st.lists(st.lists(st.one_of(st.integers(-(2**64), 2**64), st.floats(allow_nan=False, allow_infinity=False),
                                          st.integers(-(2**40), 2**40).map(float)), min_size=w, max_size=w),
                       min_size=1, max_size=5)
)


@settings(max_examples=300, deadline=None)
@given(rows=numeric_rows, dtype=st.sampled_from(["float64", "float32", "int32", "int64"]))
def test_checked_rows_convert_exactly_like_convert_inputs(rows: list[list[Any]], dtype: str) -> None:
    spec = _spec((len(rows[0]),), dtype)
    try:
        out = convert_inputs(rows, spec, max_rows=5, max_elements=20)
    except InvalidInput as exc:
        with pytest.raises(InvalidInput) as info:
            check_inputs(rows, spec, max_rows=5, max_elements=20)
        assert info.value.message == exc.message
        return
    assert check_inputs(rows, spec, max_rows=5, max_elements=20) is rows
    again = np.array(rows, dtype=np.dtype(dtype))
    assert again.dtype == out.dtype and np.array_equal(again, out)


# --------------------------------------------------------------------------- bounds

def test_row_and_element_limits_come_before_allocation() -> None:
    assert _fails([[0.0]] * 5, _spec((1,)), max_rows=4) == "'inputs' has 5 rows; the limit is 4"
    msg = _fails([[0.0] * 3] * 4, _spec((3,)), max_rows=100, max_elements=11)
    assert msg == "'inputs' has 4 rows of 3 values; the limit is 11 values"
    # the limit is checked on len() alone: rows are never looked at
    huge = [None] * 1000
    assert "1000 rows" in _fails(huge, _spec((4096,)), max_rows=10_000, max_elements=1 << 20)
    assert convert_inputs([[0.0] * 3] * 4, _spec((3,)), max_rows=4, max_elements=12).shape == (4, 3)


def test_named_inputs_share_the_element_budget() -> None:
    specs = [TensorSpec("a", (3,), "float32"), TensorSpec("b", (2,), "int64")]
    value = {"a": [[0, 0, 0]] * 3, "b": [[1, 2]] * 3}
    assert "3 rows of 5 values; the limit is 14" in _fails(value, specs, max_elements=14)
    out = convert_inputs(value, specs, max_rows=3, max_elements=15)
    assert out["a"].dtype == np.float32 and out["b"].dtype == np.int64 and batch_rows(out) == 3


# --------------------------------------------------------------------------- dtypes

def test_float32_casts_and_refuses_out_of_range() -> None:
    out = convert_inputs([[1, 0.1]], _spec((2,), "float32"), max_rows=1, max_elements=2)
    assert out.dtype == np.float32 and out.tolist() == [[1.0, np.float32(0.1)]]
    msg = _fails([[1.0, 2.0], [3.0, -1e39]], _spec((2,), "float32", "feat"))
    assert msg == "'inputs' row 1 holds -1e+39, which does not fit input 'feat' of dtype float32"


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integers_take_ints_and_integral_floats(dtype: str) -> None:
    out = convert_inputs([[1, -2], [3.0, 2**31 - 1]], _spec((2,), dtype), max_rows=2, max_elements=4)
    assert out.dtype == np.dtype(dtype) and out.tolist() == [[1, -2], [3, 2**31 - 1]]


def test_int64_keeps_exact_large_integers() -> None:
    big = 2**62 + 1  # not representable in float64
    assert convert_inputs([[big, 1.0]], _spec((2,), "int64"), max_rows=1, max_elements=2).tolist() == [[big, 1]]


@pytest.mark.parametrize(
    "rows, dtype, expected",
    [
        ([[1, 2], [3, 1.5]], "int64", "'inputs' row 1 holds 1.5, which does not fit input 'ids' of dtype int64 (integers only)"),
        ([[1, 2], [3, 1.5]], "int32", "'inputs' row 1 holds 1.5, which does not fit input 'ids' of dtype int32 (integers only)"),
        ([[2**63, 0]], "int64", "'inputs' row 0 holds 9223372036854775808, which does not fit input 'ids' of dtype int64 (range [-9223372036854775808, 9223372036854775807])"),
        ([[0, -(2**31) - 1]], "int32", "'inputs' row 0 holds -2147483649, which does not fit input 'ids' of dtype int32 (range [-2147483648, 2147483647])"),
        ([[0.0, 1e19]], "int64", "'inputs' row 0 holds 1e+19, which does not fit input 'ids' of dtype int64 (range [-9223372036854775808, 9223372036854775807])"),
        ([[0, True]], "int64", "'inputs' row 0 holds true, which is not a number"),
        ([[0, "1"]], "int32", "'inputs' row 0 holds '1', which is not a number"),
    ],
)
def test_integer_inputs_refuse_what_does_not_fit(rows: Any, dtype: str, expected: str) -> None:
    assert _fails(rows, _spec((2,), dtype, "ids")) == expected


def test_bool_inputs_take_only_booleans() -> None:
    out = convert_inputs([[True, False]], _spec((2,), "bool", "mask"), max_rows=1, max_elements=2)
    assert out.dtype == np.bool_ and out.tolist() == [[True, False]]
    assert _fails([[True, 1]], _spec((2,), "bool", "mask")) == "'inputs' row 0 holds 1; input 'mask' takes true/false"


def test_non_finite_python_floats_are_refused() -> None:
    # JSON cannot carry them, but an in-process caller can
    assert _fails([[1.0], [float("inf")]], _spec((1,))) == "'inputs' row 1 holds inf, which is not finite"
    assert _fails([[float("nan")]], _spec((1,), "float32")) == "'inputs' row 0 holds nan, which is not finite"
    assert "not finite" in _fails([[10**400]], _spec((1,)))


# --------------------------------------------------------------------------- shapes

def test_nested_rows() -> None:
    spec = _spec((2, 3))
    out = convert_inputs([[[1, 2, 3], [4, 5, 6]]] * 2, spec, max_rows=2, max_elements=12)
    assert out.shape == (2, 2, 3)
    assert _fails([[[1, 2, 3], [4, 5]]], spec) == "'inputs' row 0[1] has 2 values; the model takes 3"
    assert _fails([[[1, 2, 3], 4]], spec) == "'inputs' row 0[1] must be an array of 3 values, got number"
    assert _fails([[1, 2]], spec) == "'inputs' row 0[0] must be an array of 3 values, got number"
    assert _fails([[1, 2, 3]], spec) == "'inputs' row 0 has 3 values; the model takes 2"
    assert _fails([5], spec) == "'inputs' row 0 must be nested arrays of shape [2, 3], got number"
    assert _fails([[[1, 2, 3]]], spec) == "'inputs' row 0 has 1 values; the model takes 2"
    assert _fails([[[1, 2, 3], [4, None, 6]]], spec) == "'inputs' row 0[1] holds null, which is not a number"
    msg = _fails([[[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 5, 1.5]]], _spec((2, 3), "int64", "grid"))
    assert msg == "'inputs' row 1[1] holds 1.5, which does not fit input 'grid' of dtype int64 (integers only)"


def test_scalar_rows() -> None:
    out = convert_inputs([1, 2.5], _spec((), "float32"), max_rows=2, max_elements=2)
    assert out.shape == (2,) and out.dtype == np.float32
    assert _fails([1, [2]], _spec(())) == "'inputs' row 1 holds [2], which is not a number"


# --------------------------------------------------------------------------- named inputs

TWO = [TensorSpec("a", (2,), "float32"), TensorSpec("b", (1,), "int64")]


def test_named_inputs() -> None:
    out = convert_inputs({"b": [[1], [2]], "a": [[0.5, 1], [2, 3]]}, TWO, max_rows=2, max_elements=100)
    assert set(out) == {"a", "b"}
    assert out["a"].dtype == np.float32 and out["a"].shape == (2, 2)
    assert out["b"].dtype == np.int64 and out["b"].tolist() == [[1], [2]]


@pytest.mark.parametrize(
    "value, expected",
    [
        ([[0.5, 1]], "'inputs' must be an object {name: rows} with the inputs 'a', 'b', got array"),
        ({"a": [[0.5, 1]]}, "'inputs' is missing input 'b'; the model takes 'a', 'b'"),
        ({"a": [[0.5, 1]], "b": [[1]], "c": [[1]]}, "'inputs' names unknown input 'c'; the model takes 'a', 'b'"),
        ({"a": [[0.5, 1]], "b": [[1], [2]]}, "'inputs.b' has 2 rows but 'inputs.a' has 1; every input needs the same rows"),
        ({"a": [[0.5, 1]], "b": [[1.5]]}, "'inputs.b' row 0 holds 1.5, which does not fit input 'b' of dtype int64 (integers only)"),
        ({"a": [[0.5]], "b": [[1]]}, "'inputs.a' row 0 has 1 values; the model takes 2"),
        ({"a": 3, "b": [[1]]}, "'inputs.a' must be an array of rows, got number"),
        ({"a": [], "b": []}, "'inputs.a' has no rows"),
    ],
)
def test_named_input_errors(value: Any, expected: str) -> None:
    assert _fails(value, TWO) == expected


def test_single_input_also_accepts_its_name() -> None:
    spec = _spec((1,), name="x")
    assert convert_inputs({"x": [[1.0]]}, spec, max_rows=1, max_elements=1).tolist() == [[1.0]]
    assert _fails({"y": [[1.0]]}, spec) == "'inputs' names unknown input 'y'; the model takes 'x'"
    assert _fails({"x": [[1.0, 2.0]]}, spec) == "'inputs.x' row 0 has 2 values; the model takes 1"
