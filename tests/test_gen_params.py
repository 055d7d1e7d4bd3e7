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


def test_stop_controls_default_off_and_min_tokens_is_bounded_by_max_tokens() -> None:
    p = GenerationParams(prompt="x")
    assert (p.stop_token_ids, p.min_tokens, p.include_stop_str_in_output) == ((), 0, False)
    assert GenerationParams(prompt="x", max_tokens=5, min_tokens=5, stop_token_ids=(0, 0, 95)).min_tokens == 5
    with pytest.raises(BadRequest, match=r"'min_tokens' must be an integer in \[0, max_tokens\] \(\[0, 5\] here\), got 6"):
        GenerationParams(prompt="x", max_tokens=5, min_tokens=6)


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
        ("stop_token_ids", [1]), ("stop_token_ids", (-1,)), ("stop_token_ids", (True,)), ("stop_token_ids", (1.0,)),
        ("stop_token_ids", tuple(range(65))), ("min_tokens", -1), ("min_tokens", 65), ("min_tokens", True),
        ("min_tokens", None), ("include_stop_str_in_output", 1), ("include_stop_str_in_output", None),
    ],
)
def test_bad_fields_are_bad_requests(field: str, value: object) -> None:
    kwargs = {"prompt": "x", field: value}
    with pytest.raises(BadRequest, match=field):
        GenerationParams(**kwargs)  # type: ignore[arg-type]
