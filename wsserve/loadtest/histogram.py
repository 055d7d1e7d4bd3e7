"""Latency histograms: an HDR histogram in microseconds, mergeable across processes.

Values are recorded in whole microseconds between 1 µs and one hour with three
significant figures (the relative error of any reported percentile is below
0.1 %).  A histogram travels between processes as the ``str`` produced by
:meth:`LatencyHistogram.encode` (HdrHistogram's standard compressed base64
form, readable by every HdrHistogram implementation) and is rebuilt with
:meth:`LatencyHistogram.decode`; :meth:`LatencyHistogram.merge` adds counts, so
merging the per-process histograms gives exactly the histogram of the union of
their samples.
"""

from __future__ import annotations

from typing import Final

from hdrh.histogram import HdrHistogram

__all__ = ["HIGHEST_US", "LOWEST_US", "PERCENTILES", "SIGNIFICANT_FIGURES", "LatencyHistogram"]

LOWEST_US: Final = 1
HIGHEST_US: Final = 3_600_000_000
SIGNIFICANT_FIGURES: Final = 3
#: The percentiles every summary reports, as (label, percentile) pairs.
PERCENTILES: Final = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


class LatencyHistogram:
    """A latency distribution; record seconds, read milliseconds."""

    __slots__ = ("_h",)

    def __init__(self, _hdr: HdrHistogram | None = None) -> None:
        self._h = _hdr if _hdr is not None else HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)

    # -- recording ---------------------------------------------------------
    def record_s(self, seconds: float) -> None:
        """Record one sample given in seconds (clamped into the trackable range)."""
        us = int(seconds * 1_000_000.0)
        if us < LOWEST_US:
            us = LOWEST_US
        elif us > HIGHEST_US:
            us = HIGHEST_US
        self._h.record_value(us)

    def merge(self, other: LatencyHistogram) -> None:
        """Add every sample of ``other`` to this histogram."""
        if other.count:
            self._h.add(other._h)

    # -- transport ---------------------------------------------------------
    def encode(self) -> str:
        """The compressed base64 form (ASCII ``str``) for another process or a report."""
        encoded: bytes = self._h.encode()
        return encoded.decode("ascii")

    @classmethod
    def decode(cls, text: str) -> LatencyHistogram:
        """Rebuild a histogram from :meth:`encode` output.  Raises ``ValueError`` if corrupt."""
        try:
            hdr = HdrHistogram.decode(text.encode("ascii"))
        except Exception as exc:  # hdrh raises assorted types on bad input
            raise ValueError(f"not an encoded HDR histogram: {exc}") from exc
        if hdr is None:
            raise ValueError("not an encoded HDR histogram")
        return cls(hdr)

    # -- reading -----------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def value_at_ms(self, percentile: float) -> float:
        """The value at ``percentile`` (0-100) in ms; 0.0 when empty."""
        if not self.count:
            return 0.0
        return float(self._h.get_value_at_percentile(percentile)) / 1000.0

    @property
    def max_ms(self) -> float:
        return self._h.get_max_value() / 1000.0 if self.count else 0.0

    @property
    def min_ms(self) -> float:
        return self._h.get_min_value() / 1000.0 if self.count else 0.0

    @property
    def mean_ms(self) -> float:
        return self._h.get_mean_value() / 1000.0 if self.count else 0.0

    def summary_ms(self) -> dict[str, float | int]:
        """``{"count", "min", "mean", "p50", "p90", "p99", "p99.9", "max"}``; times in ms."""
        out: dict[str, float | int] = {
            "count": self.count,
            "min": round(self.min_ms, 3),
            "mean": round(self.mean_ms, 3),
        }
        for label, pct in PERCENTILES:
            out[label] = round(self.value_at_ms(pct), 3)
        out["max"] = round(self.max_ms, 3)
        return out
