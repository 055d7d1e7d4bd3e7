"""Retry and reconnect policies: pure delay arithmetic, no sleeping here.

``delay()`` takes the random draw as an argument so tests are deterministic; the client passes
``random.random()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Backoff", "RetryPolicy", "RETRYABLE_CODES"]

#: Wire codes that mean "try again later" (they carry ``retry_after_ms``).
RETRYABLE_CODES: frozenset[str] = frozenset({"overloaded", "rate_limited"})


def _check(max_attempts: int, base_delay: float, max_delay: float, jitter: float) -> None:
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    if base_delay < 0 or max_delay < 0 or base_delay > max_delay:
        raise ValueError(f"need 0 <= base_delay <= max_delay, got {base_delay!r}, {max_delay!r}")
    if not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be within [0, 1], got {jitter!r}")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff for (re)connecting: at most ``max_attempts`` tries in total.

    The wait after failed try ``attempt`` (0-based) is
    ``min(max_delay, base_delay * 2**attempt)`` scaled by a factor drawn uniformly from
    ``[1 - jitter, 1]`` ("equal jitter" when ``jitter`` is 0.5).
    """

    max_attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        _check(self.max_attempts, self.base_delay, self.max_delay, self.jitter)

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed try ``attempt`` (0-based); ``rand`` in ``[0, 1)``."""
        raw = min(self.max_delay, self.base_delay * (2.0 ** attempt))
        return raw * (1.0 - self.jitter * rand)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Opt-in retry of requests the server refused with a code in ``codes``.

    ``max_attempts`` counts every try (so 1 means no retry). The wait before a retry is the
    exponential backoff ``min(max_delay, base_delay * 2**attempt)`` or the server's
    ``retry_after`` if that is longer, then stretched by a factor drawn uniformly from
    ``[1, 1 + jitter]`` so clients refused together do not all come back at the same instant.
    The server's ``retry_after`` is honoured (never shortened), even above ``max_delay``, up
    to ``max_retry_after`` seconds (default 60): a longer one is cut to it, and the jitter never
    stretches a wait the server asked for past it, so a hostile or buggy server cannot park
    the client for hours. Only refusals are retried — they come before any work is done, so a retry
    never repeats work; for streams only before the first chunk/token.
    """

    max_attempts: int = 4
    base_delay: float = 0.05
    max_delay: float = 2.0
    jitter: float = 0.5
    codes: frozenset[str] = field(default=RETRYABLE_CODES)
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        _check(self.max_attempts, self.base_delay, self.max_delay, self.jitter)
        if not (isinstance(self.max_retry_after, (int, float)) and 0 <= self.max_retry_after < float("inf")):
            raise ValueError(f"max_retry_after must be a finite number of seconds >= 0, got {self.max_retry_after!r}")
        object.__setattr__(self, "codes", frozenset(self.codes))

    def should_retry(self, code: str | None, attempt: int) -> bool:
        """Whether failed try ``attempt`` (0-based) with wire ``code`` gets another try."""
        return code in self.codes and attempt + 1 < self.max_attempts

    def delay(self, attempt: int, retry_after: float | None, rand: float) -> float:
        """Seconds to wait after failed try ``attempt`` (0-based); ``rand`` in ``[0, 1)``.
        ``retry_after`` (the server's, seconds) counts up to ``max_retry_after``."""
        backoff = min(self.max_delay, self.base_delay * (2.0 ** attempt))
        stretch = 1.0 + self.jitter * rand
        if retry_after is None or not retry_after > 0:  # also NaN
            return backoff * stretch
        floor = max(backoff, min(retry_after, self.max_retry_after))
        # The jitter never takes a wait the server asked for past max_retry_after.
        return min(floor * stretch, max(self.max_retry_after, backoff * stretch))
