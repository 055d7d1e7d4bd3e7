"""Coalesced writes: every connection's queued replies go out in one write, as soon as a
burst of work that produced them is over.

A connection with queued output marks itself (:meth:`Flusher.mark`).  The marked
ones are written by :meth:`Flusher.flush`, called right after a read was handled,
a predict batch was delivered or a generation step's tokens were handed out, and
otherwise at the end of the event-loop iteration (one ``call_soon`` for all of
them).  One flusher per server; event-loop thread only.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Flusher", "Flushable"]


class Flushable(Protocol):
    def flush(self) -> None:
        """Write whatever is queued (one write)."""


class Flusher:
    def __init__(self) -> None:
        self._pending: list[Flushable] = []
        self._scheduled = False

    def mark(self, conn: Flushable) -> None:
        """``conn`` has queued output (call once per burst: the caller remembers it is marked)."""
        self._pending.append(conn)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write every marked connection's output now."""
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        for conn in pending:
            conn.flush()
