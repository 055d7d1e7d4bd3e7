"""Tests of the exception tree (:mod:`wsserve.errors`): one class per wire code."""

from __future__ import annotations

import inspect

import pytest

import wsserve.errors as errors
from wsserve.errors import ERROR_CODES, Internal, WsserveError, error_for_code

# The `code` list of PROTOCOL.md ("error"), in its order: the wire contract.
PROTOCOL_CODES = (
    "bad_json",
    "bad_request",
    "unknown_model",
    "duplicate_id",
    "invalid_input",
    "overloaded",
    "rate_limited",
    "deadline_exceeded",
    "cancelled",
    "unauthorized",
    "shutting_down",
    "internal",
    "forbidden",  # an extension announced by the contract (admin operations)
)


def _error_classes() -> list[type[WsserveError]]:
    """Every concrete error class the module defines (the root excluded)."""
    return [
        obj for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, WsserveError) and obj is not WsserveError and obj.__module__ == errors.__name__
    ]


def test_error_codes_are_the_protocol_codes_in_order() -> None:
    assert ERROR_CODES == PROTOCOL_CODES


def test_codes_are_unique() -> None:
    assert len(set(ERROR_CODES)) == len(ERROR_CODES)
    codes = [cls.code for cls in _error_classes()]
    assert len(set(codes)) == len(codes), "two classes share a code"


def test_every_code_has_exactly_one_class() -> None:
    by_code: dict[str, list[str]] = {}
    for cls in _error_classes():
        by_code.setdefault(cls.code, []).append(cls.__name__)
    assert set(by_code) == set(PROTOCOL_CODES)
    assert all(len(names) == 1 for names in by_code.values()), by_code


def test_every_class_is_exported() -> None:
    for cls in _error_classes():
        assert cls.__name__ in errors.__all__


@pytest.mark.parametrize("code", PROTOCOL_CODES)
def test_error_for_code(code: str) -> None:
    cls = error_for_code(code)
    assert issubclass(cls, WsserveError) and cls is not WsserveError
    assert cls.code == code
    exc = cls("something went wrong")
    assert exc.code == code
    assert isinstance(exc, Exception)


@pytest.mark.parametrize("code", ["", "nope", "BAD_JSON", "internal_error"])
def test_unknown_code_maps_to_internal(code: str) -> None:
    assert error_for_code(code) is Internal


def test_fields_and_defaults() -> None:
    exc = errors.Overloaded("queue full", retry_after_ms=25, request_id="a1")
    assert (exc.code, exc.message, exc.retry_after_ms, exc.request_id) == ("overloaded", "queue full", 25, "a1")
    assert str(exc) == "queue full"
    assert repr(exc) == "Overloaded('queue full')"
    plain = errors.BadRequest("bad")
    assert plain.retry_after_ms is None and plain.request_id is None


def test_request_id_can_be_set_later() -> None:
    exc = errors.BadRequest("bad")
    exc.request_id = 0
    assert exc.request_id == 0


def test_one_except_clause_catches_them_all() -> None:
    for cls in _error_classes():
        with pytest.raises(WsserveError):
            raise cls("x")


def test_retry_after_and_request_id_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        errors.Overloaded("x", 25)  # type: ignore[misc]


def test_a_message_is_cut_to_a_bound_saying_how_much_was_left_out() -> None:
    from wsserve.jsontypes import MAX_MESSAGE_CHARS, frame_text

    short = "model 'm': predict() raised RuntimeError: no"
    assert Internal(short).message == short
    long = Internal("x" * 10_000).message
    assert len(long) <= MAX_MESSAGE_CHARS and long == "x" * (MAX_MESSAGE_CHARS - 40) + \
        f"... ({10_000 - MAX_MESSAGE_CHARS + 40} more characters)"
    assert frame_text("a" * 5000, limit=100) == "a" * 60 + "... (4940 more characters)"
    assert frame_text("path \udcff") == "path \\udcff"  # still fit for JSON
