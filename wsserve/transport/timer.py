"""The one timer handle of a WebSocket connection, shared by both transports.

A connection (:class:`~wsserve.transport.websocket.WebSocketProtocol` or the picows
adapter) has a single ``call_at`` handle for everything that must happen at a time:
the core's deadlines (``Connection.next_timer``), the close handshake's deadline, the
keepalive pong's deadline and the next keepalive ping.  :class:`OneTimer` keeps it
armed for the earliest of them.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["OneTimer"]


class OneTimer:
    """Mixin: :meth:`_rearm` keeps ``_timer`` armed for the earliest pending time.

    The class using it provides ``conn`` (a :class:`~wsserve.connection.Connection` or
    None), ``_lost``, ``_epoch``, ``_close_deadline``, ``_pong_deadline``, ``_ping_at``,
    ``_ping_payload`` (a ping in flight: no new ping is due), ``_timer``, ``_timer_at``
    and ``_on_timer`` (called when the handle fires; it clears ``_timer``/``_timer_at``).
    Times are ``monotonic()`` seconds.
    """

    conn: Any
    _lost: bool
    _epoch: int
    _close_deadline: float | None
    _pong_deadline: float | None
    _ping_at: float | None
    _ping_payload: bytes | None
    _timer: asyncio.TimerHandle | None
    _timer_at: float | None

    def _on_timer(self) -> None:
        raise NotImplementedError

    def _rearm(self, now: float) -> None:
        """One timer for the core's deadlines, keepalive and the close handshake."""
        if self._lost:
            return
        conn = self.conn
        when = None
        if conn is not None:
            self._epoch = conn.timer_epoch
            when = conn.next_timer()
        for t in (self._close_deadline, self._pong_deadline, self._ping_at if self._ping_payload is None else None):
            if t is not None and (when is None or t < when):
                when = t
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, when - now), self._on_timer)
