"""Sans-I/O timing: the open-loop send schedule and the measurement window.

Nothing here reads a clock or awaits; callers pass ``now`` (seconds on the
monotonic clock, which on Linux is shared by every process of the machine, so
one start time can be handed to all client processes).

Open loop, no coordinated omission: request *n* of the whole run is *intended*
to go out at ``start + n / rate`` whatever happened to earlier requests.  Its
latency is measured from that intended time, so when the server (or the client)
stalls, every request that should have been sent during the stall carries the
stall in its latency instead of being quietly postponed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["OpenLoopSchedule", "Phase", "Window", "split_evenly"]

Phase = Literal["pending", "warmup", "measure", "done"]


@dataclass(frozen=True, slots=True)
class Window:
    """The run's time line: ``start`` → warm-up → measurement → ``end``.

    A request belongs to the measurement when its intended send time ``t``
    satisfies ``measure_start <= t < end``.
    """

    start: float
    warmup_s: float
    duration_s: float

    def __post_init__(self) -> None:
        if self.warmup_s < 0 or self.duration_s <= 0:
            raise ValueError(f"need warmup_s >= 0 and duration_s > 0, got {self.warmup_s}, {self.duration_s}")

    @property
    def measure_start(self) -> float:
        return self.start + self.warmup_s

    @property
    def end(self) -> float:
        return self.start + self.warmup_s + self.duration_s

    def phase(self, now: float) -> Phase:
        if now < self.start:
            return "pending"
        if now < self.measure_start:
            return "warmup"
        if now < self.end:
            return "measure"
        return "done"

    def measured(self, t: float) -> bool:
        """Whether an event at time ``t`` falls in the measurement interval."""
        return self.measure_start <= t < self.end


class OpenLoopSchedule:
    """Intended send times ``start + n / rate_per_s`` for ``n = first, first + stride, ...`` before ``end``.

    With ``P`` client processes, process ``i`` uses ``first=i, stride=P`` and
    ``rate_per_s`` the *total* rate, so the processes interleave into exactly the
    single-process schedule.  Times are computed from the index (no accumulated
    floating-point drift).

    Call :meth:`due` with the current time; it returns (and consumes) every
    intended time ``<= now`` not returned before, in order.  :attr:`next_time`
    is the next intended time (``math.inf`` when the schedule is exhausted).
    """

    __slots__ = ("_end", "_n", "_rate", "_start", "_stride")

    def __init__(self, *, rate_per_s: float, start: float, end: float, first: int = 0, stride: int = 1) -> None:
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError(f"rate_per_s must be a positive finite number, got {rate_per_s!r}")
        if stride < 1 or first < 0:
            raise ValueError(f"need first >= 0 and stride >= 1, got first={first}, stride={stride}")
        self._rate = float(rate_per_s)
        self._start = float(start)
        self._end = float(end)
        self._n = first
        self._stride = stride

    @property
    def next_time(self) -> float:
        t = self._start + self._n / self._rate
        return t if t < self._end else math.inf

    def due(self, now: float, *, limit: int | None = None) -> list[float]:
        """Intended times ``<= now`` not yet returned (at most ``limit`` of them)."""
        out: list[float] = []
        while limit is None or len(out) < limit:
            t = self._start + self._n / self._rate
            if t > now or t >= self._end:
                break
            out.append(t)
            self._n += self._stride
        return out

    def __repr__(self) -> str:
        return f"OpenLoopSchedule(rate_per_s={self._rate}, start={self._start}, end={self._end}, next={self._n})"


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one (larger first)."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
