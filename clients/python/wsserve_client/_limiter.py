"""A FIFO semaphore whose capacity can change (the server's ``max_inflight`` may differ after a
reconnect). ``None`` capacity means unlimited."""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Limiter"]


class Limiter:
    """Counts held slots; ``acquire`` waits (FIFO) while ``used >= capacity``.

    Contract: every successful ``acquire()`` is matched by exactly one ``release()``.
    A waiter cancelled while waiting holds no slot afterwards.
    """

    __slots__ = ("_capacity", "_used", "_waiters")

    def __init__(self, capacity: int | None = None) -> None:
        self._capacity = capacity
        self._used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def capacity(self) -> int | None:
        return self._capacity

    @property
    def used(self) -> int:
        return self._used

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def _free(self) -> bool:
        return self._capacity is None or self._used < self._capacity

    def try_acquire(self) -> bool:
        """Take a free slot at once if there is one and nobody is waiting; else False."""
        if not self._waiters and (self._capacity is None or self._used < self._capacity):
            self._used += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take one slot, waiting in FIFO order if none is free."""
        if not self._waiters and self._free():
            self._used += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The slot was handed to us just as we were cancelled: give it back.
                self.release()
            raise

    def release(self) -> None:
        """Give back one slot and wake the next waiter."""
        if self._used <= 0:
            raise RuntimeError("Limiter.release() without a matching acquire()")
        self._used -= 1
        self._wake()

    def set_capacity(self, capacity: int | None) -> None:
        """Change the capacity; waiters are woken if it grew. Held slots are kept even if the
        new capacity is below ``used`` (they drain as they are released)."""
        self._capacity = capacity
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._free():
            fut = self._waiters.popleft()
            if not fut.done():
                self._used += 1
                fut.set_result(None)
