"""One WebSocket connection: the dispatch table, the single reader task, cancel sending.

Contract:
- :func:`open_connection` returns a connection whose ``hello`` has been read.
- Every registered call ends exactly once: by its terminal frame (routed by id), or by
  ``fail`` with :class:`ConnectionLost` when the socket closes, or with :class:`ClientClosed`
  from :meth:`Connection.close`. Counted calls release their inflight slot at that moment.
- Sending never needs a task: frames are queued on the socket and written once per loop
  iteration (:mod:`._wsconn`); ``send`` awaits only while the socket is congested.
- :meth:`Connection.abandon` never awaits: it marks the call and queues a ``cancel`` frame
  (written in the same iteration's flush; in the fallback without coalescing, by one
  short-lived flusher task).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ._calls import Call
from ._limiter import Limiter
from ._wsconn import CoalescingClientConnection, supports_coalescing
from .codec import encode_auth, encode_cancel, parse_hello
from .errors import ConnectionLost, ProtocolError, Unauthorized, WsserveError
from .results import ServerHello
from .tensors import BinaryFrame, decode_frame, peek_header

__all__ = ["Connection", "Counters", "open_connection"]

log = logging.getLogger("wsserve_client")

#: Write request frames coalesced once per loop iteration (see :mod:`._wsconn`); tests turn
#: it off to exercise the plain ``send()`` path.
COALESCE = True


@dataclass(slots=True)
class Counters:
    """Mutable counters shared by a client and its connections."""

    connects: int = 0
    requests_sent: int = 0
    cancels_sent: int = 0
    server_cancelled: int = 0


def _closed_message(url: str, exc: BaseException) -> str:
    return f"connection to {url} lost: {exc}"


class Connection:
    """A connected socket plus the calls in flight on it. Create with :func:`open_connection`."""

    def __init__(
        self,
        ws: ClientConnection,
        hello: ServerHello,
        *,
        url: str,
        limiter: Limiter,
        counters: Counters,
        cancel_timeout: float | None = None,
    ) -> None:
        self.ws = ws
        self.hello = hello
        self.url = url
        self.loop = asyncio.get_running_loop()
        self.calls: dict[int | str, Call] = {}
        self.draining = False
        #: The server's ``max_message_bytes`` (``None``: no limit announced).
        self.max_message_bytes = hello.limits.max_message_bytes
        #: The server's ``max_binary_header_bytes`` (``None``: not announced).
        self.max_binary_header_bytes = hello.limits.max_binary_header_bytes
        self._limiter = limiter
        self._counters = counters
        #: Seconds the server has to end a request after its ``cancel`` (None: forever).
        self._cancel_timeout = cancel_timeout
        self._open = True
        #: The socket, when it supports coalesced writes (else None: plain ``send()``).
        self._fast: CoalescingClientConnection | None = (
            ws if COALESCE and isinstance(ws, CoalescingClientConnection) and supports_coalescing(ws) else None
        )
        self._cancel_ids: deque[int | str] = deque()
        self._cancel_task: asyncio.Task[None] | None = None
        self._reader = self.loop.create_task(self._read_loop(), name=f"wsserve-client-reader {url}")

    @property
    def open(self) -> bool:
        """True until the socket closed (seen by the reader) or :meth:`close` began."""
        return self._open

    # -- sending ---------------------------------------------------------------------------

    def register(self, call: Call) -> None:
        """Route frames for ``call.id`` to ``call`` from now on.

        Raises:
            ConnectionLost: the connection is closed.
        """
        if not self._open:
            raise ConnectionLost(f"connection to {self.url} is closed", request_id=call.id)
        self.calls[call.id] = call

    async def send(self, call: Call, data: bytes) -> None:
        """Send a registered call's request frame; on failure the call is ended and removed.

        With coalescing (the normal case) this queues the frame for this loop iteration's
        single write and only awaits when the socket's write buffer is congested.

        Raises:
            ConnectionLost: the socket closed before or while sending.
        """
        try:
            fast = self._fast
            binary = type(data) is BinaryFrame  # a binary tensor frame; everything else is JSON text
            if fast is not None:
                if not fast.queue_text(data, binary=binary):
                    raise ConnectionClosed(None, None)
                self._counters.requests_sent += 1
                if fast.congested:
                    await fast.drain()
                return
            await self.ws.send(data, text=not binary)
            self._counters.requests_sent += 1
        except ConnectionClosed as exc:
            # Already ended locally (the client closed, the reader saw the socket die)? Then the
            # caller gets that error, here. Else the one raised here, not via the call.
            failure = call.take_failure() if call.finished else None
            call.abandoned = True
            call.finished = True
            self._end(call)
            if failure is not None:
                raise failure from exc
            reason = _closed_message(self.url, exc) if exc.rcvd or exc.sent else f"connection to {self.url} is closed"
            raise ConnectionLost(reason, request_id=call.id) from exc
        except BaseException:
            # Cancelled while waiting for the socket: the frame was already handed to the
            # protocol (websockets writes before it awaits), so the server may run it: cancel.
            self.abandon(call)
            raise

    def abandon(self, call: Call) -> None:
        """The caller left: drop further frames and send ``cancel`` if still unfinished.

        Never awaits. Safe to call more than once, from a finalizer, or after the call finished.
        """
        call.abandoned = True
        self.request_cancel(call)

    def request_cancel(self, call: Call) -> None:
        """Send ``cancel`` (never awaits) but keep routing frames: the server's terminal frame
        still reaches a caller that has not abandoned the call."""
        if call.finished or call.cancel_sent or not self._open or self.calls.get(call.id) is not call:
            return
        call.cancel_sent = True
        if self._cancel_timeout is not None:
            self.loop.call_later(self._cancel_timeout, self._cancel_unanswered, call)
        if self._fast is not None:
            if self._fast.queue_text(encode_cancel(call.id)):
                self._counters.cancels_sent += 1
            return
        self._cancel_ids.append(call.id)
        if self._cancel_task is None:
            self._cancel_task = self.loop.create_task(self._flush_cancels())

    async def _flush_cancels(self) -> None:
        """Fallback without coalescing: one short-lived task sends the queued cancels."""
        try:
            while self._cancel_ids and self._open:
                request_id = self._cancel_ids.popleft()
                call = self.calls.get(request_id)
                if call is None or call.finished:
                    continue
                await self.ws.send(encode_cancel(request_id), text=True)
                self._counters.cancels_sent += 1
        except ConnectionClosed:
            pass  # the reader fails the remaining calls
        finally:
            self._cancel_task = None
            if not self._open:
                self._cancel_ids.clear()

    def _cancel_unanswered(self, call: Call) -> None:
        """``cancel_timeout`` after the cancel: a request the server has not ended yet is ended
        here (:class:`ProtocolError`) and its inflight slot released, so a server that ignores
        cancels cannot hold the client's slots; its later frames are dropped as unknown."""
        if call.finished or self.calls.get(call.id) is not call:
            return
        log.warning("wsserve_client: %s %r not ended by the server %gs after its cancel; slot released",
                    call.what, call.id, self._cancel_timeout)
        call.fail(ProtocolError(f"{call.what} {call.id!r}: the server did not end the request within "
                                f"{self._cancel_timeout:g}s of its cancel", request_id=call.id))
        self._end(call)

    # -- receiving -------------------------------------------------------------------------

    def _end(self, call: Call) -> None:
        """Unregister ``call`` and release its slot (exactly once per call)."""
        if self.calls.get(call.id) is call:
            del self.calls[call.id]
            if call.counted:
                self._limiter.release()

    async def _read_loop(self) -> None:
        """Route every frame to its call until the socket closes.

        Nothing a server sends ends this loop but the socket's end: a frame that cannot be
        decoded, is not an object, or does not fit its call fails only the call it names (with
        :class:`ProtocolError`), or is logged and dropped when it names no pending call.
        """
        ws = self.ws
        calls = self.calls
        lost: WsserveError
        try:
            while True:
                data = await ws.recv()  # str for a text frame, bytes for a binary one
                frame = self._decode(data)
                if frame is None:
                    continue
                rid = frame.get("id")
                kind = frame.get("type")
                call = calls.get(rid) if type(rid) is int or type(rid) is str else None
                if call is None:
                    self._unrouted(kind, frame)
                    continue
                try:
                    terminal = call.on_frame(kind, frame, len(data))
                except Exception as exc:  # a bug handling one frame fails only its call
                    log.exception("wsserve_client: cannot handle a %r frame for request %r", kind, rid)
                    terminal = call.protocol_violation(kind, f"cannot handle the server's {kind!r} frame "
                                                             f"for {call.what} {rid!r}: {exc!r}")
                self._after_frame(call, terminal, kind, frame)
        except ConnectionClosed as exc:
            lost = ConnectionLost(_closed_message(self.url, exc))
        except asyncio.CancelledError:
            lost = ConnectionLost(f"connection to {self.url} closed by the client")
            raise
        except Exception as exc:  # a bug in routing must not leave callers hanging
            log.exception("wsserve_client: reader failed")
            lost = ConnectionLost(f"connection to {self.url} failed: {exc!r}")
        finally:
            self._open = False
            self._fail_all(lost)

    def _after_frame(self, call: Call, terminal: bool, kind: Any, frame: dict[str, Any]) -> None:
        """Unregister ``call`` after its terminal frame; send ``cancel`` for a call that gave
        up on a request the server may still be running (overflow, protocol violation)."""
        if terminal:
            del self.calls[call.id]
            if call.counted:
                self._limiter.release()
            if (kind == "done" and frame.get("reason") == "cancelled") or (
                kind == "error" and frame.get("code") == "cancelled"
            ):
                self._counters.server_cancelled += 1
        elif call.abandoned and not call.cancel_sent:
            self.request_cancel(call)

    def _decode(self, data: str | bytes) -> dict[str, Any] | None:
        """One received frame as a dict, or ``None`` (logged; a malformed binary reply whose
        header names a pending call fails that call) when it is not a frame object."""
        if type(data) is str:
            try:
                frame = orjson.loads(data)
            except orjson.JSONDecodeError:
                log.warning("wsserve_client: ignoring a frame from %s that is not JSON: %.80r", self.url, data)
                return None
            if type(frame) is not dict:
                log.warning("wsserve_client: ignoring a frame from %s that is not a JSON object: %.80r",
                            self.url, data)
                return None
            return frame
        try:
            return decode_frame(data, as_numpy=True)
        except Exception as exc:  # ValueError for a malformed frame; anything else is as bad
            header = peek_header(data)
            rid = header.get("id") if header is not None else None
            call = self.calls.get(rid) if type(rid) is int or type(rid) is str else None
            if call is None:
                log.warning("wsserve_client: ignoring a binary frame from %s that cannot be decoded: %s",
                            self.url, exc)
                return None
            kind = header.get("type") if header is not None else None
            terminal = call.protocol_violation(
                kind, f"the server's binary {kind!r} frame for {call.what} {rid!r} is malformed: {exc}")
            self._after_frame(call, terminal, kind, {})
            return None

    def _unrouted(self, kind: Any, frame: dict[str, Any]) -> None:
        if kind == "draining":
            self.draining = True
            log.info("wsserve_client: server at %s is draining", self.url)
        elif kind == "error" and frame.get("id") is None:
            log.warning("wsserve_client: server error without id: %s %s",
                        frame.get("code"), frame.get("message"))
        elif not isinstance(kind, str):
            log.warning("wsserve_client: ignoring a frame from %s without a type: %.80r", self.url, frame)
        else:
            # Late frames for calls already ended locally are normal (a cancel crossing a reply).
            log.debug("wsserve_client: ignoring a %r frame for no pending request (id %r)", kind, frame.get("id"))

    def _fail_all(self, exc: WsserveError) -> None:
        calls = list(self.calls.values())
        self.calls.clear()
        for call in calls:
            if call.counted:
                self._limiter.release()
            call.fail(type(exc)(exc.message, request_id=call.id))

    # -- closing ---------------------------------------------------------------------------

    async def close(self, exc: WsserveError, *, timeout: float | None) -> None:
        """Send ``cancel`` for every unfinished call, end them locally with ``exc``, close.

        Idempotent. Bounded by ``timeout`` seconds in all (``None``: unbounded): when the close
        handshake is not done by then — a server that never answers it, or stopped reading so
        that even the close frame cannot be written — the TCP connection is aborted.
        """
        loop = self.loop
        deadline = None if timeout is None else loop.time() + timeout
        if self._open:
            self._open = False
            pending = [c.id for c in self.calls.values() if not c.finished and not c.cancel_sent]
            try:
                async with asyncio.timeout_at(deadline):
                    for request_id in pending:
                        frame = encode_cancel(request_id)
                        if self._fast is not None:
                            if not self._fast.queue_text(frame):
                                break
                        else:
                            await self.ws.send(frame, text=True)
                        self._counters.cancels_sent += 1
            except (ConnectionClosed, TimeoutError):
                pass
            self._fail_all(exc)
        if self._cancel_task is not None:
            self._cancel_task.cancel()
        try:
            async with asyncio.timeout_at(deadline):
                await self.ws.close()
        except TimeoutError:
            log.warning("wsserve_client: %s did not complete the close handshake within %ss; "
                        "dropping the connection", self.url, timeout)
            self.ws.transport.abort()  # connection_lost follows at once and ends the reader
        await asyncio.wait([self._reader])


async def open_connection(
    url: str,
    *,
    subprotocol: str | None,
    token: str | None,
    auth_message: bool,
    connect_timeout: float | None,
    close_timeout: float | None,
    ping_interval: float | None,
    ping_timeout: float | None,
    max_receive_bytes: int | None,
    compression: str | None,
    additional_headers: dict[str, str] | None,
    limiter: Limiter,
    counters: Counters,
    cancel_timeout: float | None = None,
) -> Connection:
    """Open one socket, read ``hello``, optionally send the auth frame, start the reader.

    Raises:
        Unauthorized: the handshake was answered 401 or 403.
        ConnectionLost: the socket could not be opened, or closed before ``hello``.
        TimeoutError: ``connect_timeout`` passed (the caller retries or maps it).
    """
    headers = dict(additional_headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with asyncio.timeout(connect_timeout):
            ws = await connect(
                url,
                subprotocols=[subprotocol] if subprotocol else None,  # type: ignore[list-item]
                additional_headers=headers or None,
                compression=compression,
                open_timeout=None,
                close_timeout=close_timeout,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                max_size=max_receive_bytes,
                create_connection=CoalescingClientConnection,
            )
            try:
                first = orjson.loads(await ws.recv(decode=False))
                hello = parse_hello(first if isinstance(first, dict) else {})
            except BaseException:
                await ws.close()
                raise
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise Unauthorized(f"{url} refused the handshake with HTTP {status}") from exc
        raise ConnectionLost(f"{url} refused the handshake with HTTP {status}") from exc
    except InvalidHandshake as exc:
        raise ConnectionLost(f"WebSocket handshake with {url} failed: {exc}") from exc
    except ConnectionClosed as exc:
        raise ConnectionLost(f"connection to {url} closed before hello: {exc}") from exc
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise ConnectionLost(f"{url} did not start with a wsserve hello frame: {exc}") from exc
    except OSError as exc:
        raise ConnectionLost(f"cannot connect to {url}: {exc}") from exc
    if token is not None and auth_message:
        try:
            await ws.send(encode_auth(token), text=True)
        except ConnectionClosed as exc:
            raise ConnectionLost(f"connection to {url} closed after hello: {exc}") from exc
    counters.connects += 1
    return Connection(ws, hello, url=url, limiter=limiter, counters=counters, cancel_timeout=cancel_timeout)
