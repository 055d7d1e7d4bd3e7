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

from .errors import ProtocolError, StreamOverflow, WsserveError, error_from_frame

__all__ = ["Call", "UnaryCall", "StreamCall", "TERMINAL_KINDS"]

Frame = dict[str, Any]

#: Frame types that end a request on the server's side whatever request they answer: after
#: one of these (even of the wrong type for the call) no terminal frame will follow.
TERMINAL_KINDS = frozenset({"result", "done", "error"})


class Call:
    """Base class. ``counted`` calls hold one inflight slot until ``finished`` is set.

    A frame for this id that does not fit the call (a type it does not expect) ends the call
    with :class:`ProtocolError` (see :meth:`protocol_violation`); the connection then sends
    ``cancel`` for it when the frame left the request running on the server.
    """

    __slots__ = ("id", "counted", "abandoned", "cancel_sent", "finished", "what")

    def __init__(self, request_id: int | str, *, counted: bool, what: str = "request") -> None:
        self.id = request_id
        #: What the call is, for error messages ("predict", "generate", "ping", ...).
        self.what = what
        self.counted = counted
        self.abandoned = False
        self.cancel_sent = False
        self.finished = False

    def on_frame(self, kind: Any, frame: Frame, nbytes: int = 0) -> bool:
        """Take one frame for this id (``nbytes``: its size on the wire); return True if it was
        the terminal frame. Never raises for a malformed frame: the call fails instead, and is
        marked ``abandoned`` if the server may still be running it (the connection then sends
        ``cancel``)."""
        raise NotImplementedError

    def fail(self, exc: WsserveError) -> None:
        """End the call locally with ``exc`` (connection lost or client closed)."""
        raise NotImplementedError

    def _set_error(self, exc: WsserveError) -> None:
        """Deliver ``exc`` to the caller without ending the call (subclasses)."""
        raise NotImplementedError

    def take_failure(self) -> WsserveError | None:
        """The error the call was already ended with locally (by :meth:`fail`), now taken by
        the caller (so it is raised once, and never reported as unretrieved), else ``None``."""
        raise NotImplementedError

    def protocol_violation(self, kind: Any, message: str) -> bool:
        """Fail the call with :class:`ProtocolError` for a frame of type ``kind``.

        Returns True (the call is over: unregister it) when ``kind`` ends a request on the
        server's side or the call holds no slot; else marks the call abandoned (further frames
        are dropped, the connection sends ``cancel``) and returns False: it stays registered
        until the server's terminal frame, like any abandoned call.
        """
        self._set_error(ProtocolError(message, request_id=self.id))
        if kind in TERMINAL_KINDS or not self.counted:
            self.finished = True
            return True
        self.abandoned = True
        return False


class UnaryCall(Call):
    """A request answered by one frame (predict, models, ping, admin); ``future`` gets that
    frame (or the mapped exception). ``expect`` holds the reply types that answer it (besides
    ``error``)."""

    __slots__ = ("future", "expect")

    def __init__(self, request_id: int | str, future: asyncio.Future[Frame], *, counted: bool,
                 expect: frozenset[str] = frozenset({"result"}), what: str = "predict") -> None:
        super().__init__(request_id, counted=counted, what=what)
        self.future = future
        self.expect = expect

    def on_frame(self, kind: Any, frame: Frame, nbytes: int = 0) -> bool:
        if kind == "error" or kind in self.expect:
            self.finished = True
            fut = self.future
            if not self.abandoned and not fut.done():
                if kind == "error":
                    fut.set_exception(error_from_frame(frame))
                else:
                    fut.set_result(frame)
            return True
        if self.abandoned:  # the caller left: drop it, but a terminal frame still ends the call
            self.finished = kind in TERMINAL_KINDS
            return self.finished
        return self.protocol_violation(
            kind, f"the server answered {self.what} {self.id!r} with a {kind!r} frame; "
                  f"expected {' or '.join(repr(k) for k in sorted(self.expect | {'error'}))}")

    def _set_error(self, exc: WsserveError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def fail(self, exc: WsserveError) -> None:
        self.finished = True
        if not self.abandoned and not self.future.done():
            self.future.set_exception(exc)

    def take_failure(self) -> WsserveError | None:
        fut = self.future
        if fut.done() and not fut.cancelled():
            exc = fut.exception()
            return exc if isinstance(exc, WsserveError) else None
        return None


class StreamCall(Call):
    """A request answered by many frames (streamed predict, generate).

    ``item_kind`` frames (``chunk`` or ``token``) queue in ``items`` with their size; ``done``
    sets ``final``; ``error`` sets ``error``. For a streamed predict (``accepts_result``) a plain
    ``result`` (a server that did not stream) is taken as one chunk plus done. The consumer
    awaits :meth:`next_frame`.

    Buffer bound: when the unread frames' sizes would pass ``max_buffer_bytes`` (``None``: no
    bound), the buffer is dropped, the call fails with :class:`StreamOverflow` and is marked
    abandoned (the connection sends ``cancel``).
    """

    __slots__ = ("items", "final", "error", "_waiter", "_loop", "item_kind", "accepts_result",
                 "max_buffer_bytes", "buffered_bytes")

    def __init__(self, request_id: int | str, loop: asyncio.AbstractEventLoop, *, counted: bool,
                 item_kind: str = "chunk", accepts_result: bool = True,
                 max_buffer_bytes: int | None = None) -> None:
        super().__init__(request_id, counted=counted,
                         what="generate" if item_kind == "token" else "streamed predict")
        #: unread items: (frame, its size, loop time it arrived)
        self.items: deque[tuple[Frame, int, float]] = deque()
        self.final: Frame | None = None
        self.error: WsserveError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._loop = loop
        self.item_kind = item_kind
        self.accepts_result = accepts_result
        self.max_buffer_bytes = max_buffer_bytes
        self.buffered_bytes = 0

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def on_frame(self, kind: Any, frame: Frame, nbytes: int = 0) -> bool:
        if kind == self.item_kind:
            if not self.abandoned:
                self._push(frame, nbytes)
            return False
        if kind == "done":
            self.final = frame
        elif kind == "error":
            if self.error is None:
                self.error = error_from_frame(frame)
        elif kind == "result" and self.accepts_result:
            outputs = frame.get("outputs")
            rows = len(outputs) if isinstance(outputs, (list, dict)) else 0
            self._push({"type": "chunk", "id": self.id, "seq": 0, "offset": 0, "outputs": outputs}, nbytes)
            self.final = {"type": "done", "id": self.id, "reason": "complete",
                          "rows": rows, "timing": frame.get("timing") or {}}
        elif self.abandoned:  # the caller left: drop it, but a terminal frame still ends the call
            if kind not in TERMINAL_KINDS:
                return False
        else:
            expected = f"{self.item_kind!r}, 'done'" + (" or 'result'" if self.accepts_result else "")
            terminal = self.protocol_violation(
                kind, f"the server sent a {kind!r} frame for {self.what} {self.id!r}; expected "
                      f"{expected} or 'error'")
            self._wake()
            return terminal
        self.finished = True
        self._wake()
        return True

    def _push(self, frame: Frame, nbytes: int) -> None:
        limit = self.max_buffer_bytes
        if limit is not None and self.buffered_bytes + nbytes > limit:
            unread = len(self.items)
            self.items.clear()
            self.buffered_bytes = 0
            self.abandoned = True
            self._set_error(StreamOverflow(
                f"{self.what} {self.id!r}: {unread} unread frames plus a new one of {nbytes} bytes "
                f"pass max_stream_buffer_bytes={limit}; the consumer fell behind, request cancelled",
                request_id=self.id))
            return
        self.items.append((frame, nbytes, self._loop.time()))
        self.buffered_bytes += nbytes
        self._wake()

    def _set_error(self, exc: WsserveError) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def fail(self, exc: WsserveError) -> None:
        if self.finished:
            return
        self.finished = True
        if self.error is None:  # a local failure already reported (overflow, protocol) wins
            self.error = exc
        self._wake()

    def take_failure(self) -> WsserveError | None:
        return self.error

    async def next_frame(self, deadline: float | None = None) -> Frame | None:
        """Next ``chunk``/``token`` frame, or ``None`` after ``done``.

        ``deadline`` (loop time) bounds the whole stream: once it passed, the frames that
        arrived before it are still returned (a slow reader gets what came in time), then this
        raises :class:`TimeoutError`; frames that arrived after it are not returned, so a server
        streaming faster than the reader cannot keep the stream alive.  Once the server ended
        the request, every buffered frame is returned.

        Raises:
            WsserveError: the server's error frame, ConnectionLost, ProtocolError, StreamOverflow.
            TimeoutError: ``deadline`` (loop time) passed before the end of the stream.
        """
        while True:
            ended = self.finished or self.error is not None
            if self.items and (deadline is None or ended or self.items[0][2] < deadline):
                frame, nbytes, _ = self.items.popleft()
                self.buffered_bytes -= nbytes
                return frame
            if deadline is not None and not ended and self._loop.time() >= deadline:
                raise TimeoutError
            if self.error is not None:
                raise self.error
            if self.finished:
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
