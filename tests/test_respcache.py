"""Unit tests of :mod:`wsserve.respcache` (sans-I/O: no loop, no sockets)."""

from __future__ import annotations

import sys
import tracemalloc

import numpy as np
import pytest

from wsserve.respcache import ENTRY_OVERHEAD_BYTES, ResponseCache, request_key

X = np.arange(6, dtype=np.float64).reshape(3, 2)


def _cache(max_bytes: int = 1 << 20) -> tuple[ResponseCache, object]:
    cache = ResponseCache(max_bytes=max_bytes)
    return cache, cache.open_scope("m", "1")


def test_a_stored_response_is_found_by_equal_inputs_as_a_read_only_copy() -> None:
    cache, scope = _cache()
    key = request_key(scope, X)
    y = X * 2
    assert cache.get(key) is None
    assert cache.put(scope, key, y)
    y[0, 0] = 99.0  # the caller's array may change: the cache kept a copy
    got = cache.get(request_key(scope, X.copy()))
    np.testing.assert_array_equal(got, X * 2)
    assert not got.flags.writeable


@pytest.mark.parametrize("other", [
    X + 1,  # values
    X.astype(np.float32),  # dtype
    X.reshape(2, 3),  # shape
    {"": X},  # a named input is not the lone array
    {"a": X},
])
def test_keys_differ_by_values_dtype_shape_and_names(other: object) -> None:
    _, scope = _cache()
    assert request_key(scope, X) != request_key(scope, other)


def test_keys_differ_by_model_version_and_scope() -> None:
    cache = ResponseCache(max_bytes=1 << 20)
    a, b, c, again = (cache.open_scope("m", "1"), cache.open_scope("m", "2"), cache.open_scope("n", "1"),
                      cache.open_scope("m", "1"))
    keys = {request_key(s, X) for s in (a, b, c, again)}
    assert len(keys) == 4


def test_named_inputs_are_keyed_in_name_order_and_json_rows_as_float64() -> None:
    _, scope = _cache()
    a, b = np.ones((2, 1), np.int64), np.zeros((2, 3), np.float32)
    assert request_key(scope, {"a": a, "b": b}) == request_key(scope, {"b": b, "a": a})
    assert request_key(scope, [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]) == request_key(scope, X)
    assert request_key(scope, X[:, ::-1]) == request_key(scope, np.ascontiguousarray(X[:, ::-1]))


def test_bytes_tensors_are_keyed_by_their_elements_and_other_objects_are_not_keyed() -> None:
    _, scope = _cache()
    s1 = np.array([b"ab", b"c"], dtype=object)
    s2 = np.array([b"a", b"bc"], dtype=object)
    assert request_key(scope, {"t": s1}) != request_key(scope, {"t": s2})
    assert request_key(scope, {"t": np.array([object()], dtype=object)}) is None


def test_the_lru_entry_goes_first_and_the_byte_budget_holds() -> None:
    y = np.zeros((1, 16), np.float64)  # 128 bytes
    entry = 32 + sys.getsizeof(y) + ENTRY_OVERHEAD_BYTES  # the array's header and data
    cache, scope = _cache(max_bytes=4 * entry)  # at most 4 entries; one is at the 1/4 limit
    keys = [request_key(scope, np.full((1, 1), float(i))) for i in range(5)]
    for k in keys[:4]:
        assert cache.put(scope, k, y)
    assert cache.get(keys[0]) is not None  # keys[0] is now the most recently used
    assert cache.put(scope, keys[4], y)
    assert cache.get(keys[1]) is None  # the least recently used was evicted
    assert all(cache.get(k) is not None for k in (keys[0], keys[2], keys[3], keys[4]))
    stats = cache.statistics()
    assert (stats.entries, stats.bytes, stats.evicted) == (4, 4 * entry, 1)
    assert stats.bytes <= stats.max_bytes


def test_an_entry_over_the_fraction_of_the_budget_is_not_stored() -> None:
    cache, scope = _cache(max_bytes=8192)
    key = request_key(scope, X)
    assert not cache.put(scope, key, np.zeros(256, np.float64))  # 2 KiB + key + overhead > 8 KiB / 4
    assert cache.get(key) is None
    assert cache.statistics().refused == 1 and len(cache) == 0


def test_closing_a_scope_drops_its_entries_and_refuses_stores() -> None:
    cache = ResponseCache(max_bytes=1 << 20)
    old, other = cache.open_scope("m", "1"), cache.open_scope("m", "2")
    k_old, k_other = request_key(old, X), request_key(other, X)
    cache.put(old, k_old, X)
    cache.put(other, k_other, X)
    assert cache.close_scope(old) == 1
    assert cache.get(k_old) is None and cache.get(k_other) is not None
    assert not cache.put(old, k_old, X)  # a request still computing on the old weights
    assert len(cache) == 1 and cache.statistics().bytes == 32 + sys.getsizeof(X.copy()) + ENTRY_OVERHEAD_BYTES
    assert cache.close_scope(old) == 0  # idempotent


def test_named_outputs_are_stored_and_non_numeric_outputs_are_not() -> None:
    cache, scope = _cache()
    key = request_key(scope, X)
    out = {"a": X, "b": X[:, :1].astype(np.int32)}
    assert cache.put(scope, key, out)
    got = cache.get(key)
    assert set(got) == {"a", "b"} and got["b"].dtype == np.int32
    assert not cache.put(scope, request_key(scope, X + 1), np.array([b"x"], dtype=object))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_a_bad_budget_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        ResponseCache(max_bytes=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("outputs", [1, 4, 16])
def test_the_counted_bytes_cover_the_memory_entries_really_hold(outputs: int) -> None:
    """The budget bounds the memory: each entry counts at least what storing it allocates (the
    arrays' headers and a model's several output names, not only their data)."""
    cache, scope = _cache(max_bytes=1 << 40)
    keys = [request_key(scope, np.full((1, 1), float(i))) for i in range(2000)]
    y = {f"output_{j}": np.zeros((1, 1), np.float32) for j in range(outputs)}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:
            assert cache.put(scope, key, y)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= cache.statistics().bytes, f"{held} bytes held, {cache.statistics().bytes} counted"


def test_keying_a_request_does_not_copy_its_inputs() -> None:
    """The key hashes the inputs' memory in place (on the event loop, for every request): no
    transient copy the size of the request."""
    _, scope = _cache()
    big = np.ones((1024, 1024), np.float64)  # 8 MiB
    expected = request_key(scope, big.copy())
    tracemalloc.start()
    try:
        key = request_key(scope, {"x": big, "y": big[:, :512]})  # y is not contiguous: copied, 4 MiB
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < big.nbytes * 3 // 4, f"{peak} bytes allocated to key an {big.nbytes}-byte input"
    assert key != expected and request_key(scope, big) == expected
