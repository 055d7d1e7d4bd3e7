"""Fair shares of a few slots between clients, sans-I/O: the engine's compile slots.

Each ``guided_regex`` / ``guided_json`` compile holds one of a few slots (a child process and a
core) for up to its CPU limit.  :class:`FairSlots` decides who gets a freed slot: the waiting
ticket whose *client* holds the fewest slots, the oldest among equals.  A client is whoever sent
the request (:func:`compile_client`): its API key when the connection authenticated with one,
else its address (an IPv6 client: its /64, as the failed-authentication budget counts it), so a
client that opens many connections (or sends from many ports) still gets one fair share.

Nothing here awaits or reads a clock: the engine's asyncio shell (``_CompileSlots``) turns a
ticket into a future, and tests drive the core directly.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..auth import client_network

__all__ = ["FairSlots", "SlotStatistics", "compile_client"]

T = TypeVar("T")


def compile_client(key: str | None, address: str | None) -> Hashable:
    """Whose fair share a request's compile counts against: ``("key", key)`` for a request
    authenticated with an API key, else ``("address", a)`` where ``a`` is its client address
    (``--trusted-proxy`` resolved by the caller) or, for IPv6, the /64 holding it; None when
    neither is known (the caller then uses its own group).  The identity stays in memory only
    (never logged, never sent)."""
    if key is not None:
        return ("key", key)
    if address:
        return ("address", client_network(address))
    return None


@dataclass(frozen=True, slots=True)
class SlotStatistics:
    """A snapshot of :class:`FairSlots`: its ``size``, the slots held (``running``), the tickets
    waiting, and the clients holding at least one slot."""

    size: int
    running: int
    waiting: int
    clients: int


class FairSlots(Generic[T]):
    """At most ``size`` tickets hold a slot at once.  Call order: :meth:`request` for a ticket
    (held now, or waiting); :meth:`release` once per held slot (it returns the tickets that take
    the freed slot); :meth:`withdraw` for a waiting ticket that is no longer wanted.  A freed slot
    goes to the waiting ticket whose client holds the fewest slots, the oldest among equals; a
    new ticket waits whenever others already wait (no overtaking)."""

    __slots__ = ("size", "_running", "_total", "_waiting")

    def __init__(self, size: int) -> None:
        if type(size) is not int or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self.size = size
        self._running: dict[Hashable, int] = {}  # client -> slots it holds
        self._total = 0
        self._waiting: list[tuple[Hashable, T]] = []  # oldest first

    def request(self, client: Hashable, ticket: T) -> bool:
        """True: ``ticket`` holds a slot for ``client`` now; False: it waits (a later
        :meth:`release` returns it when it gets one)."""
        if self._total < self.size and not self._waiting:
            self._take(client)
            return True
        self._waiting.append((client, ticket))
        return False

    def withdraw(self, ticket: T) -> bool:
        """Stop ``ticket`` waiting; False if it was not waiting (it was handed a slot already:
        the caller :meth:`release` s that slot)."""
        for i, (_, waiting) in enumerate(self._waiting):
            if waiting is ticket:
                del self._waiting[i]
                return True
        return False

    def release(self, client: Hashable) -> list[tuple[Hashable, T]]:
        """Give back one of ``client``'s slots; returns the ``(client, ticket)`` now holding the
        freed slot (none, or one).  Raises ``KeyError`` for a client that holds none."""
        left = self._running[client] - 1
        if left:
            self._running[client] = left
        else:
            del self._running[client]
        self._total -= 1
        granted: list[tuple[Hashable, T]] = []
        while self._waiting and self._total < self.size:
            running = self._running
            best = min(range(len(self._waiting)), key=lambda i: (running.get(self._waiting[i][0], 0), i))
            entry = self._waiting.pop(best)
            self._take(entry[0])
            granted.append(entry)
        return granted

    def running(self, client: Hashable) -> int:
        """The slots ``client`` holds."""
        return self._running.get(client, 0)

    def statistics(self) -> SlotStatistics:
        return SlotStatistics(self.size, self._total, len(self._waiting), len(self._running))

    def _take(self, client: Hashable) -> None:
        self._running[client] = self._running.get(client, 0) + 1
        self._total += 1
