"""Stop strings with hold-back, as in the OpenAI API (sans-I/O, pure Python).

Generated text is fed one piece at a time.  Text that could still be the start
of a stop string is *held back*; it is released as soon as it cannot be, and
discarded with the stop string when one completes.  So the stream never shows
any part of a stop string, and it shows everything before the first one.

Matching is incremental Knuth-Morris-Pratt per stop string: amortised O(number
of stop strings) work per character, whatever their length, and O(sum of their
lengths) memory.  When several stop strings complete on the same character, the
longest one (the one that started earliest) is the match.
"""

from __future__ import annotations

__all__ = ["StopMatcher"]


def _failure(s: str) -> list[int]:
    """KMP failure function: ``f[i]`` = length of the longest proper border of ``s[:i+1]``."""
    f = [0] * len(s)
    q = 0
    for i in range(1, len(s)):
        while q and s[i] != s[q]:
            q = f[q - 1]
        if s[i] == s[q]:
            q += 1
        f[i] = q
    return f


class StopMatcher:
    """Tracks one generation's stop strings.

    Call order: :meth:`feed` for each generated piece of text, in order; after it
    returns ``stopped=True``, or when generation ends otherwise, :meth:`flush`
    (which returns the held-back text, to be streamed on a ``length`` finish).
    """

    __slots__ = ("_fail", "_first", "_held", "_state", "_stops")

    def __init__(self, stops: tuple[str, ...]) -> None:
        if not stops or not all(stops):
            raise ValueError("stop strings must be a non-empty tuple of non-empty strings")
        self._stops = stops
        self._fail = [_failure(s) for s in stops]
        self._state = [0] * len(stops)  # longest prefix of stop i that is a suffix of the text
        self._held = ""
        self._first = frozenset(s[0] for s in stops)

    @property
    def held(self) -> str:
        """Text generated but not released yet (a possible start of a stop string)."""
        return self._held

    def feed(self, text: str) -> tuple[str, bool]:
        """Add generated ``text``; return ``(released, stopped)``.

        ``released`` is the text that is now safe to stream (possibly empty);
        ``stopped`` is true when a stop string completed inside ``text`` - then
        ``released`` is everything before it and the rest is discarded.
        """
        if not self._held and self._first.isdisjoint(text):
            # Nothing is held (every match state is 0) and no character can start a
            # stop string: the states stay 0 and all of ``text`` is released.
            return text, False
        held = self._held + text
        consumed = len(self._held)
        stops, fail, state = self._stops, self._fail, self._state
        for ch in text:
            consumed += 1
            match = 0
            for i, s in enumerate(stops):
                q = state[i]
                while q and s[q] != ch:
                    q = fail[i][q - 1]
                if s[q] == ch:
                    q += 1
                if q == len(s):
                    match = max(match, q)
                    q = fail[i][q - 1]
                state[i] = q
            if match:
                self._held = ""
                return held[: consumed - match], True
        keep = max(state)
        self._held = held[len(held) - keep:] if keep else ""
        return held[: len(held) - keep], False

    def flush(self) -> str:
        """Return and forget the held-back text."""
        held, self._held = self._held, ""
        return held
