"""GenerationParams validation: every bad field is a BadRequest naming it."""

from __future__ import annotations

import math

import pytest

from wsserve.errors import BadRequest
from wsserve.generation import GenerationParams


def test_defaults_follow_the_protocol() -> None:
    p = GenerationParams(prompt="x")
    assert (p.max_tokens, p.temperature, p.top_k, p.seed, p.stop, p.priority) == (64, 0.0, 0, None, (), 0)
    assert p.greedy and not GenerationParams(prompt="x", temperature=0.5).greedy


def test_frozen_and_keyword_only() -> None:
    p = GenerationParams(prompt="x")
    with pytest.raises(AttributeError):
        p.max_tokens = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        GenerationParams("x")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", None), ("prompt", b"bytes"),
        ("max_tokens", 0), ("max_tokens", -1), ("max_tokens", 2.0), ("max_tokens", True),
        ("temperature", -0.1), ("temperature", math.inf), ("temperature", math.nan), ("temperature", "1"),
        ("top_k", -1), ("top_k", 1.5),
        ("seed", 1.0), ("seed", "7"),
        ("stop", ("",)), ("stop", ["x"]), ("stop", ("ok", 3)),
        ("priority", 2), ("priority", -1), ("priority", True),
        ("top_k", 2**31), ("top_k", 2**63), ("temperature", 100.5), ("stop", ("x",) * 17), ("stop", ("x" * 257,)),
    ],
)
def test_bad_fields_are_bad_requests(field: str, value: object) -> None:
    kwargs = {"prompt": "x", field: value}
    with pytest.raises(BadRequest, match=field):
        GenerationParams(**kwargs)  # type: ignore[arg-type]
