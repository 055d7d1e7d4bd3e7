"""StopMatcher: hold-back and stop semantics, against a brute-force reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsserve.generation import StopMatcher


def reference(text: str, stops: tuple[str, ...]) -> tuple[list[str], str, bool]:
    """Brute force: after each char, what has been released; final output; stopped?"""
    released_after: list[str] = []
    for p in range(1, len(text) + 1):
        prefix = text[:p]
        hits = [s for s in stops if prefix.endswith(s)]
        if hits:
            out = prefix[: p - max(map(len, hits))]
            released_after.append(out)
            return released_after, out, True
        hold = max((n for s in stops for n in range(1, len(s)) if prefix.endswith(s[:n])), default=0)
        released_after.append(prefix[: p - hold])
    return released_after, text, False


def run(text: str, stops: tuple[str, ...]) -> tuple[list[str], str, bool]:
    m = StopMatcher(stops)
    out, released_after = "", []
    for ch in text:
        released, stopped = m.feed(ch)
        out += released
        released_after.append(out)
        if stopped:
            assert m.held == ""
            return released_after, out, True
    return released_after, out + m.flush(), False


@pytest.mark.parametrize(
    ("text", "stops", "released_after", "final", "stopped"),
    [
        # split across tokens: "END" arrives one char at a time and is never shown
        ("abENDcd", ("END",), ["a", "ab", "ab", "ab", "ab"], "ab", True),
        # a false start is released as soon as it cannot be a stop string
        ("aENx", ("END",), ["a", "a", "a", "aENx"], "aENx", False),
        # held-back text is flushed at the end (length finish)
        ("xyEN", ("END",), ["x", "xy", "xy", "xy"], "xyEN", False),
        # overlapping candidates: "aab" contains "ab" after a false start "aa"
        ("aab", ("aab", "ab"), ["", "", ""], "", True),
        ("xab", ("aab", "ab"), ["x", "x", "x"], "x", True),
        # single-character stop string
        ("hello\nworld", ("\n",), ["h", "he", "hel", "hell", "hello", "hello"], "hello", True),
    ],
)
def test_examples(text: str, stops: tuple[str, ...], released_after: list[str], final: str, stopped: bool) -> None:
    assert run(text, stops) == (released_after, final, stopped)
    assert reference(text, stops) == (released_after, final, stopped)


def test_longest_of_simultaneous_matches_wins() -> None:
    m = StopMatcher(("c", "abc"))
    assert m.feed("a") == ("", False)
    assert m.feed("b") == ("", False)
    assert m.feed("c") == ("", True)  # "abc" (started earliest) ends it, so "ab" is not shown


def test_multi_character_feed_stops_inside_the_piece() -> None:
    m = StopMatcher(("STOP",))
    assert m.feed("goST") == ("go", False)
    assert m.feed("OPafter") == ("", True)


def test_rejects_empty_stop_strings() -> None:
    with pytest.raises(ValueError):
        StopMatcher(("ok", ""))
    with pytest.raises(ValueError):
        StopMatcher(())


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab\n", max_size=30),
    stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=5), min_size=1, max_size=4),
)
def test_matches_brute_force_reference(text: str, stops: list[str]) -> None:
    assert run(text, tuple(stops)) == reference(text, tuple(stops))


def test_pathological_stop_strings_stay_linear() -> None:
    """KMP: 'aaaa...ab' against 'aaaa...' costs O(1) amortised per char (no quadratic blow-up)."""
    m = StopMatcher(("a" * 255 + "b",) * 16)
    out = "".join(m.feed("a")[0] for _ in range(5000))
    assert out == "a" * (5000 - 255) and m.held == "a" * 255
