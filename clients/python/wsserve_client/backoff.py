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
    The server's ``retry_after`` is always honoured (never shortened), even above
    ``max_delay``. Only refusals are retried — they come before any work is done, so a retry
    never repeats work; for streams only before the first chunk/token.
    """

    max_attempts: int = 4
    base_delay: float = 0.05
    max_delay: float = 2.0
    jitter: float = 0.5
    codes: frozenset[str] = field(default=RETRYABLE_CODES)

    def __post_init__(self) -> None:
        _check(self.max_attempts, self.base_delay, self.max_delay, self.jitter)
        object.__setattr__(self, "codes", frozenset(self.codes))

    def should_retry(self, code: str | None, attempt: int) -> bool:
        """Whether failed try ``attempt`` (0-based) with wire ``code`` gets another try."""
        return code in self.codes and attempt + 1 < self.max_attempts

    def delay(self, attempt: int, retry_after: float | None, rand: float) -> float:
        """Seconds to wait after failed try ``attempt`` (0-based); ``rand`` in ``[0, 1)``."""
        backoff = min(self.max_delay, self.base_delay * (2.0 ** attempt))
        floor = max(backoff, retry_after or 0.0)
        return floor * (1.0 + self.jitter * rand)
