"""Token-bucket rate limiting (sans-I/O: the caller passes ``now``)."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate_per_s`` tokens per second, holding at most ``burst``; starts full.

    :meth:`take` spends one token and returns 0.0, or, when none is left,
    spends nothing and returns the seconds until one will be.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if not burst >= 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0.0 if one is now); spends nothing."""
        tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, now: float) -> float:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
