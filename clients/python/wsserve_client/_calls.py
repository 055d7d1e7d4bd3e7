"""Per-request state kept by a connection until the request's terminal frame.

The connection's single reader task routes each frame by id to ``Call.on_frame`` (a plain
method call: no task, no queue hop for unary calls). A call is *abandoned* when its caller
left (task cancelled, stream closed): it then stays registered, with its ``cancel`` sent,
until the server's terminal frame arrives, so the inflight slot is released only when the
server has really ended the request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .errors import WsserveError, error_from_frame

__all__ = ["Call", "UnaryCall", "StreamCall"]

Frame = dict[str, Any]


class Call:
    """Base class. ``counted`` calls hold one inflight slot until ``finished`` is set."""

    __slots__ = ("id", "counted", "abandoned", "cancel_sent", "finished")

    def __init__(self, request_id: int | str, *, counted: bool) -> None:
        self.id = request_id
        self.counted = counted
        self.abandoned = False
        self.cancel_sent = False
        self.finished = False

    def on_frame(self, kind: Any, frame: Frame) -> bool:
        """Take one frame for this id; return True if it was the terminal frame."""
        raise NotImplementedError

    def fail(self, exc: WsserveError) -> None:
        """End the call locally with ``exc`` (connection lost or client closed)."""
        raise NotImplementedError


class UnaryCall(Call):
    """A request answered by one frame (predict, models, ping); ``future`` gets that frame
    (or the mapped exception)."""

    __slots__ = ("future",)

    def __init__(self, request_id: int | str, future: asyncio.Future[Frame], *, counted: bool) -> None:
        super().__init__(request_id, counted=counted)
        self.future = future

    def on_frame(self, kind: Any, frame: Frame) -> bool:
        self.finished = True
        fut = self.future
        if not self.abandoned and not fut.done():
            if kind == "error":
                fut.set_exception(error_from_frame(frame))
            else:
                fut.set_result(frame)
        return True

    def fail(self, exc: WsserveError) -> None:
        self.finished = True
        if not self.abandoned and not self.future.done():
            self.future.set_exception(exc)


class StreamCall(Call):
    """A request answered by many frames (streamed predict, generate).

    ``chunk``/``token`` frames queue in ``items``; ``done`` sets ``final``; ``error`` sets
    ``error``. A plain ``result`` (a server that did not stream) is taken as one chunk plus
    done. The consumer awaits :meth:`next_frame`.
    """

    __slots__ = ("items", "final", "error", "_waiter", "_loop")

    def __init__(self, request_id: int | str, loop: asyncio.AbstractEventLoop, *, counted: bool) -> None:
        super().__init__(request_id, counted=counted)
        self.items: deque[Frame] = deque()
        self.final: Frame | None = None
        self.error: WsserveError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._loop = loop

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def on_frame(self, kind: Any, frame: Frame) -> bool:
        if kind == "chunk" or kind == "token":
            if not self.abandoned:
                self.items.append(frame)
                self._wake()
            return False
        if kind == "done":
            self.final = frame
        elif kind == "error":
            self.error = error_from_frame(frame)
        elif kind == "result":
            outputs = frame.get("outputs") or []
            self.items.append({"type": "chunk", "id": self.id, "seq": 0, "offset": 0, "outputs": outputs})
            self.final = {"type": "done", "id": self.id, "reason": "complete",
                          "rows": len(outputs), "timing": frame.get("timing") or {}}
        else:
            return False  # unknown frame kinds are ignored
        self.finished = True
        self._wake()
        return True

    def fail(self, exc: WsserveError) -> None:
        if self.finished:
            return
        self.finished = True
        self.error = exc
        self._wake()

    async def next_frame(self, deadline: float | None = None) -> Frame | None:
        """Next ``chunk``/``token`` frame, or ``None`` after ``done``.

        Raises:
            WsserveError: the server's error frame, or ConnectionLost.
            TimeoutError: ``deadline`` (loop time) passed while waiting.
        """
        while True:
            if self.items:
                return self.items.popleft()
            if self.finished:
                if self.error is not None:
                    raise self.error
                return None
            self._waiter = self._loop.create_future()
            try:
                if deadline is None:
                    await self._waiter
                else:
                    async with asyncio.timeout_at(deadline):
                        await self._waiter
            finally:
                self._waiter = None
