"""A ``websockets`` client connection that coalesces outgoing text frames.

``websockets``' ``send()`` writes every frame to the socket at once: one ``send`` syscall per
request, a large part of a small request's client-side CPU cost. :meth:`queue_text` instead
hands the frame to the sans-I/O protocol and writes the queued frames with one
``transport.writelines`` at the end of the event-loop iteration, or as soon as
``flush_frames`` frames / ``flush_bytes`` bytes are queued — the same technique the wsserve
server uses for its replies. Frames keep their order relative to each other and to the frames
``websockets`` writes itself (pings, close), since all go through the protocol's buffer.

This relies on the asyncio connection's ``protocol``/``transport`` attributes and its flow
control (``paused``/``drain``), present in websockets 14 to 17. :func:`supports_coalescing`
checks them on a live connection; without them the client falls back to ``send()``.
"""

from __future__ import annotations

from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

__all__ = ["CoalescingClientConnection", "supports_coalescing"]

_OPEN = State.OPEN


class CoalescingClientConnection(ClientConnection):
    """``ClientConnection`` plus :meth:`queue_text` (sync, coalesced) and :attr:`congested`."""

    #: Write at once when this many frames (or bytes) are queued instead of waiting for the
    #: end of the loop iteration, so that the server starts on the first requests while the
    #: client is still producing the rest. Without it the two processes take turns (one
    #: busy, one idle) and one-socket throughput halves (see benchmarks/bench_client.py).
    flush_frames = 16
    flush_bytes = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flush_scheduled = False
        self._queued = 0
        self._queued_bytes = 0

    def queue_text(self, data: bytes, *, binary: bool = False) -> bool:
        """Queue one text frame (``binary``: a binary frame) for this loop iteration's flush.

        Returns False, queueing nothing, when the connection is not open.
        """
        if self.protocol.state is not _OPEN:
            return False
        if binary:
            self.protocol.send_binary(data)
        else:
            self.protocol.send_text(data)
        self._queued += 1
        self._queued_bytes += len(data)
        if self._queued >= self.flush_frames or self._queued_bytes >= self.flush_bytes:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_soon)
        return True

    @property
    def congested(self) -> bool:
        """True while the transport's write buffer is above its high-water mark."""
        return bool(self.paused)

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        self._queued = self._queued_bytes = 0
        if self.protocol.state is not _OPEN:
            return  # closing: websockets' own close path writes what is left
        out = self.protocol.data_to_send()
        if not out:
            return
        try:
            self.transport.writelines(out)
        except Exception as exc:  # the socket died under us: let websockets close it
            self.set_connection_exc(exc)
            self.transport.abort()


def supports_coalescing(ws: object) -> bool:
    """Whether ``ws`` is a :class:`CoalescingClientConnection` whose websockets internals
    (``protocol``, ``transport``, ``paused``, ``drain``, ``set_connection_exc``) exist."""
    return isinstance(ws, CoalescingClientConnection) and all(
        hasattr(ws, name) for name in ("protocol", "transport", "paused", "drain", "set_connection_exc")
    )
