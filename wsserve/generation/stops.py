"""One generation's stop conditions, with hold-back, as in the OpenAI API and vLLM (sans-I/O,
pure Python).

Generated text is fed one token at a time.  Text that could still be the start
of a stop string is *held back*; it is released as soon as it cannot be, and
discarded with the stop string when one completes.  So the stream never shows
any part of a stop string, and it shows everything before the first one.

vLLM's stop controls:

- ``stop_token_ids``: a token whose id is one of them ends the generation; its text is
  not released (the held-back text before it is: it did not become a stop string).
- ``include_stop_str_in_output``: the stop string, or the stop token's text, is released,
  and nothing after it; no text is held back then (nothing shown needs taking back).
- ``min_tokens``: within the first ``min_tokens`` tokens nothing stops: a stop string that
  ends in one of them is ordinary text (one that begins there and ends later counts), and a
  stop token there is ordinary text (the engine also keeps those tokens from being sampled
  then, as vLLM does; see :class:`~wsserve.generation.sampling.TokenBan`).

Matching is incremental Knuth-Morris-Pratt per stop string: amortised O(number
of stop strings) work per character, whatever their length, and O(sum of their
lengths) memory.  When several stop strings complete on the same character, the
longest one (the one that started earliest) is the match.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["STOPPED", "STOPPED_ON_TOKEN", "StopMatcher"]

#: :meth:`StopMatcher.feed`'s ``stopped``: a stop string completed (or a stop token whose text
#: is released, with ``include_stop_str_in_output``): ``released`` ends the output.
STOPPED = 1
#: :meth:`StopMatcher.feed`'s ``stopped``: a stop token whose text is not output; ``released`` is
#: the text held before it, and the token itself is not streamed.
STOPPED_ON_TOKEN = 2


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
    """Tracks one generation's stop strings and stop token ids.

    Call order: :meth:`feed` for each generated token's text, in order; after it
    returns a true ``stopped``, or when generation ends otherwise, :meth:`flush`
    (which returns the held-back text, to be streamed on a ``length`` finish).
    Raises ``ValueError`` when there is nothing to stop on (no stop string, no
    stop token id), for an empty stop string or a negative ``min_tokens``.
    """

    __slots__ = ("_fail", "_first", "_held", "_include", "_live", "_min", "_n", "_state", "_stops", "_token_ids")

    def __init__(self, stops: tuple[str, ...] = (), *, token_ids: Iterable[int] = (), min_tokens: int = 0,
                 include: bool = False) -> None:
        token_ids = frozenset(token_ids)
        if not (stops or token_ids) or not all(stops):
            raise ValueError("stop strings must be non-empty strings, and there must be a stop string or a "
                             "stop token id")
        if min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {min_tokens}")
        self._stops = stops
        self._fail = [_failure(s) for s in stops]
        self._state = [0] * len(stops)  # longest prefix of stop i that is a suffix of the text
        self._live = False  # some state is not 0
        self._held = ""
        self._first = frozenset(s[0] for s in stops)
        self._token_ids = token_ids
        self._min = min_tokens
        self._include = include
        self._n = 0  # tokens fed

    @property
    def held(self) -> str:
        """Text generated but not released yet (a possible start of a stop string)."""
        return self._held

    def feed(self, text: str, token: int = -1) -> tuple[str, int]:
        """Add generated token ``token``'s ``text``; return ``(released, stopped)``.

        ``released`` is the text that is now safe to stream (possibly empty);
        ``stopped`` is 0 while the generation goes on, else :data:`STOPPED` (a stop string
        completed inside ``text``, or ``token`` is a stop token whose text is kept:
        ``released`` is everything up to the stop string's start, or its end with
        ``include_stop_str_in_output``; the rest is discarded) or :data:`STOPPED_ON_TOKEN`
        (``token`` is a stop token: ``released`` is the text held before it, its own text
        is discarded).  Within the first ``min_tokens`` calls nothing stops.
        """
        self._n += 1
        armed = self._n > self._min
        if armed and token in self._token_ids:
            if not self._include:
                return self.flush(), STOPPED_ON_TOKEN
            released, _ = self._match(text, True)
            self._held = ""
            return released, STOPPED
        return self._match(text, armed)

    def _match(self, text: str, armed: bool) -> tuple[str, int]:
        """Run the stop strings over ``text``; a completed one stops when ``armed``."""
        if not self._live and self._first.isdisjoint(text):
            # Every match state is 0 (nothing is held) and no character can start a stop
            # string: the states stay 0 and all of ``text`` is released.
            return text, 0
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
            if match and armed:
                self._held = ""
                return held[: consumed - (0 if self._include else match)], STOPPED
        keep = max(state)
        self._live = keep > 0
        if self._include:  # nothing shown needs taking back: release it all
            self._held = ""
            return held, 0
        self._held = held[len(held) - keep:] if keep else ""
        return held[: len(held) - keep], 0

    def flush(self) -> str:
        """Return and forget the held-back text."""
        held, self._held = self._held, ""
        return held
