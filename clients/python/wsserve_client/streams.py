"""Async iterators for the streaming calls: :class:`PredictStream` and :class:`Generation`.

Lifecycle of one stream object (returned synchronously by ``Client.predict_stream`` /
``Client.generate``; the request is encoded at once, so a bad argument raises right there):

1. The request is *sent* on ``__aenter__`` or on the first ``__anext__``, whichever comes first.
2. Items arrive in ``seq`` order; iteration ends after the server's ``done`` frame, or raises
   the server's error (or :class:`ConnectionLost`).
3. Leaving early sends ``cancel`` to the server:

   - ``await stream.aclose()`` or leaving ``async with stream:`` — explicit and immediate;
   - cancelling the task that awaits the next item;
   - ``break`` out of a bare ``async for`` over the object: CPython frees the object at once
     and a ``weakref.finalize`` hook (a safety net, not the primary mechanism) queues the
     ``cancel`` on the event loop. Unlike an async generator, nothing is left for the GC's
     asyncgen hooks. Prefer ``async with`` in code that must not depend on CPython.

   ``stream.cancel()`` instead asks the server to stop *and keeps listening*: a generation then
   ends normally with ``result.reason == "cancelled"``; a streamed predict raises
   :class:`RequestCancelled` after the chunks already produced.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, Self, TypeVar

from ._calls import Call, StreamCall
from ._connection import Connection
from .backoff import RetryPolicy
from .codec import (
    parse_chunk,
    parse_generation_done,
    parse_response,
    parse_responses_done,
    parse_stream_done,
    parse_token,
    parse_token_logprobs,
)
from .errors import DeadlineExceeded, ProtocolError, WsserveError
from .results import (
    Chunk,
    GenerationResult,
    Response,
    ResponsesSummary,
    StreamSummary,
    TokenLogprob,
)

__all__ = ["PredictStream", "ResponseStream", "Generation"]


class StreamOwner(Protocol):
    """What a stream needs from its :class:`~wsserve_client.Client` (which implements it)."""

    def _next_id(self) -> int: ...

    def _loop_or_running(self) -> asyncio.AbstractEventLoop: ...

    async def _send_call(self, call: Call, data: bytes) -> Connection: ...


T = TypeVar("T")
F = TypeVar("F")

#: Extra seconds the client waits past a request's ``timeout`` for the server's own
#: ``deadline_exceeded`` before giving up locally.
DEADLINE_GRACE_S = 1.0


def _abandon_from_gc(conn: Connection, call: StreamCall) -> None:
    """Finalizer of an unclosed stream object: schedule its ``cancel`` on the connection's loop.

    The garbage collector may run this in the middle of unrelated code, so it does no work
    itself: it only schedules :meth:`Connection.abandon` for the loop's next iteration.
    """
    if call.finished or call.abandoned:
        return
    loop = conn.loop
    if loop.is_closed():
        return
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    try:
        if running is loop:
            loop.call_soon(conn.abandon, call)
        else:
            loop.call_soon_threadsafe(conn.abandon, call)
    except RuntimeError:  # the loop closed meanwhile: the socket is gone anyway
        pass


class _Stream(Generic[T, F]):
    """Shared machinery: sending, retries, deadlines, cancellation, iteration to the terminal frame.
    Subclasses convert each item frame to a ``T`` (:meth:`_item`) and the final ``done`` frame to an
    ``F`` (:meth:`_final_of`), which :meth:`_completed` gives once iteration has ended normally.

    ``make_frame(request_id, timeout)`` encodes the request (``timeout``: seconds left, sent as
    ``timeout_ms``). ``timeout`` bounds the whole stream from the first send on (connecting,
    waiting for a slot, retries, every item) plus :data:`DEADLINE_GRACE_S`.
    ``max_buffer_bytes`` bounds the frames held unread (:class:`StreamOverflow` past it).
    ``as_numpy``: the items' outputs as numpy arrays (for the subclasses whose items hold outputs).
    """

    #: Frame type of one item, and whether a plain ``result`` is accepted as the whole stream.
    item_kind = "chunk"
    accepts_result = True
    #: What the stream is called when its final frame is asked for before it completed.
    what = "stream"

    def __init__(
        self,
        client: StreamOwner,
        make_frame: Callable[[int, float | None], bytes],
        *,
        timeout: float | None,
        retry: RetryPolicy | None,
        max_buffer_bytes: int | None = None,
        as_numpy: bool = False,
    ) -> None:
        self._client = client
        self._make_frame = make_frame
        self._request_id = client._next_id()
        self._data: bytes | None = make_frame(self._request_id, timeout)  # raises on bad arguments now
        self._max_buffer_bytes = max_buffer_bytes
        self._timeout = timeout
        self._retry = retry
        self._conn: Connection | None = None
        self._call: StreamCall | None = None
        self._finalizer: weakref.finalize[[Connection, StreamCall], Any] | None = None
        self._deadline: float | None = None
        self._received = 0
        self._attempt = 0
        self._ended = False  # no more items: done seen, error raised, or closed by the caller
        self._as_numpy = as_numpy
        self._final: F | None = None  # the parsed ``done`` frame, once iteration reached it

    # -- subclass hooks --------------------------------------------------------------------
    def _item(self, frame: dict[str, Any]) -> T:
        """One item frame as the item iteration yields (``ProtocolError`` for a malformed one)."""
        raise NotImplementedError

    def _final_of(self, frame: dict[str, Any]) -> F:
        """The ``done`` frame as what the stream keeps of it (``ProtocolError`` for a malformed one)."""
        raise NotImplementedError

    def _completed(self) -> F:
        """The parsed final frame.

        Raises:
            RuntimeError: the stream has not completed (still running, failed or closed).
        """
        if self._final is None:
            raise RuntimeError(f"{self.what} has not completed; iterate it to the end first")
        return self._final

    # -- public ----------------------------------------------------------------------------
    @property
    def request_id(self) -> int:
        """The id of the current attempt's request on the wire."""
        return self._request_id

    @property
    def finished(self) -> bool:
        """True once iteration can yield nothing more (done, error, or closed)."""
        return self._ended

    async def __aenter__(self) -> Self:
        if self._call is None and not self._ended:
            await self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        if self._ended:
            raise StopAsyncIteration
        if self._call is None:
            await self._start()
        call = self._call
        assert call is not None
        while True:
            try:
                frame = await call.next_frame(self._deadline)
            except WsserveError as exc:
                if (
                    self._received == 0
                    and self._retry is not None
                    and not call.cancel_sent
                    and self._retry.should_retry(exc.code, self._attempt)
                ):
                    self._detach()
                    delay = self._retry.delay(self._attempt, exc.retry_after, random.random())
                    loop = self._client._loop_or_running()
                    if self._deadline is not None and loop.time() + delay >= self._deadline - DEADLINE_GRACE_S:
                        self._ended = True
                        raise  # no time left for another try: the refusal is the answer
                    try:
                        await asyncio.sleep(delay)
                        self._attempt += 1
                        self._request_id = self._client._next_id()
                        left = None
                        if self._deadline is not None:
                            left = max(self._deadline - DEADLINE_GRACE_S - loop.time(), 0.001)
                        self._data = self._make_frame(self._request_id, left)
                        await self._start()
                    except BaseException:
                        self._ended = True
                        raise
                    call = self._call
                    assert call is not None
                    continue
                self._ended = True
                self._detach()
                raise
            except TimeoutError:
                self._abandon()
                raise DeadlineExceeded(
                    f"no end of stream within timeout={self._timeout}s "
                    f"(+{DEADLINE_GRACE_S}s grace); cancel sent",
                    request_id=call.id,
                ) from None
            except asyncio.CancelledError:
                self._abandon()
                raise
            if frame is None:
                self._ended = True
                self._detach()
                assert call.final is not None
                self._final = self._final_of(call.final)  # ProtocolError for a malformed done
                raise StopAsyncIteration
            self._received += 1
            try:
                return self._item(frame)
            except ProtocolError:
                self._abandon()  # a malformed item: stop here and tell the server
                raise

    def cancel(self) -> None:
        """Ask the server to stop this request but keep iterating to its terminal frame.

        Before the request was sent, this just ends the stream (nothing is sent).
        """
        if self._call is None:
            self._ended = True
            self._data = None
            return
        if self._conn is not None:
            self._conn.request_cancel(self._call)

    async def aclose(self) -> None:
        """Stop listening; if the request is unfinished, send ``cancel`` (not awaited).

        Idempotent. After it, iteration ends and unreceived items are dropped.
        """
        self._abandon()

    # -- internals -------------------------------------------------------------------------
    async def _start(self) -> None:
        """Send the request (the first time, the stream's deadline starts here).

        Raises:
            DeadlineExceeded: no connection or inflight slot before the deadline (nothing sent).
        """
        data = self._data
        if data is None:
            raise RuntimeError("stream already closed")
        loop = self._client._loop_or_running()
        if self._timeout is not None and self._deadline is None:
            self._deadline = loop.time() + self._timeout + DEADLINE_GRACE_S
        call = StreamCall(self._request_id, loop, counted=True, item_kind=self.item_kind,
                          accepts_result=self.accepts_result, max_buffer_bytes=self._max_buffer_bytes)
        guard = asyncio.timeout_at(self._deadline)
        try:
            async with guard:
                conn = await self._client._send_call(call, data)
        except TimeoutError:
            if not guard.expired():
                raise
            self._ended = True
            self._data = None
            raise DeadlineExceeded(
                f"{call.what}: not sent within timeout={self._timeout}s (+{DEADLINE_GRACE_S}s grace): "
                "no connection or inflight slot in time", request_id=call.id) from None
        self._conn, self._call = conn, call
        fin = weakref.finalize(self, _abandon_from_gc, conn, call)
        fin.atexit = False
        self._finalizer = fin

    def _detach(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def _abandon(self) -> None:
        self._ended = True
        self._data = None
        self._detach()
        if self._conn is not None and self._call is not None:
            self._conn.abandon(self._call)


class _SummarizedStream(_Stream[T, F]):
    """A stream of tensors whose final ``done`` frame is its :attr:`summary`."""

    @property
    def summary(self) -> F:
        """The final ``done`` frame.

        Raises:
            RuntimeError: the stream has not completed (still running, failed or closed).
        """
        return self._completed()


class PredictStream(_SummarizedStream[Chunk, StreamSummary]):
    """``async for chunk in client.predict_stream(...)``: :class:`Chunk` objects in order.

    After iteration completes, :attr:`summary` holds the ``done`` frame (rows, timing).
    """

    what = "predict stream"

    def __init__(
        self,
        client: StreamOwner,
        make_frame: Callable[[int, float | None], bytes],
        *,
        timeout: float | None,
        retry: RetryPolicy | None,
        as_numpy: bool,
        explain: bool = False,
        max_buffer_bytes: int | None = None,
    ) -> None:
        super().__init__(client, make_frame, timeout=timeout, retry=retry, max_buffer_bytes=max_buffer_bytes,
                         as_numpy=as_numpy)
        self._explain = explain

    def _item(self, frame: dict[str, Any]) -> Chunk:
        return parse_chunk(frame, as_numpy=self._as_numpy, explain=self._explain)

    def _final_of(self, frame: dict[str, Any]) -> StreamSummary:
        return parse_stream_done(frame)


class ResponseStream(_SummarizedStream[Response, ResponsesSummary]):
    """``async for response in client.predict_responses(...)``: a decoupled model's
    :class:`Response` objects as it sends them (any number, zero included).

    After iteration completes, :attr:`summary` holds the ``done`` frame (responses, timing,
    version).  The server's error (the model's, a slow consumer's ``overloaded``...) is raised
    by iteration after the responses that came before it.
    """

    item_kind = "response"
    accepts_result = False
    what = "response stream"

    def _item(self, frame: dict[str, Any]) -> Response:
        return parse_response(frame, as_numpy=self._as_numpy)

    def _final_of(self, frame: dict[str, Any]) -> ResponsesSummary:
        return parse_responses_done(frame)


class Generation(_Stream[str, GenerationResult]):
    """``async for text in client.generate(...)``: token texts (one character each for
    ``charlm``) as they are generated.

    After iteration completes, :attr:`result` holds reason, token count, timing and the
    whole text; :attr:`text` is the text received so far at any time. A token frame whose
    ``seq`` is not the next in order (0, 1, 2, ...) fails the stream with :class:`ProtocolError`
    (and cancels the request): the text is never silently missing a token. For a generate with
    ``logprobs``, :attr:`logprobs` holds a :class:`~wsserve_client.TokenLogprob` per token
    received so far (the one of the text just yielded is ``logprobs[-1]``); a token frame
    without them fails the stream with :class:`ProtocolError` (a server without ``logprobs``).
    """

    item_kind = "token"
    accepts_result = False
    what = "generation"

    def __init__(
        self,
        client: StreamOwner,
        make_frame: Callable[[int, float | None], bytes],
        *,
        timeout: float | None,
        retry: RetryPolicy | None,
        max_buffer_bytes: int | None = None,
        logprobs: bool = False,
    ) -> None:
        super().__init__(client, make_frame, timeout=timeout, retry=retry, max_buffer_bytes=max_buffer_bytes)
        self._parts: list[str] = []
        self._logprobs: list[TokenLogprob] | None = [] if logprobs else None

    def _item(self, frame: dict[str, Any]) -> str:
        text = parse_token(frame, len(self._parts))
        if self._logprobs is not None:
            self._logprobs.append(parse_token_logprobs(frame, text))
        self._parts.append(text)
        return text

    def _final_of(self, frame: dict[str, Any]) -> GenerationResult:
        return parse_generation_done(frame, "".join(self._parts), self._logprobs)

    @property
    def text(self) -> str:
        """The text of the tokens received so far."""
        return "".join(self._parts)

    @property
    def logprobs(self) -> Sequence[TokenLogprob] | None:
        """One :class:`~wsserve_client.TokenLogprob` per token received so far, in order (the
        stream's own list, appended to as tokens arrive: read it, do not modify it); ``None``
        when the generate did not ask for ``logprobs``."""
        return self._logprobs

    @property
    def result(self) -> GenerationResult:
        """The finished generation (``reason`` ``length``/``stop``/``cancelled``, ``tokens``,
        ``timing``, ``text``, and ``logprobs`` when asked for).

        Raises:
            RuntimeError: the generation has not completed (still running, failed or closed).
        """
        return self._completed()
