"""The public :class:`Client`: one WebSocket, many concurrent calls multiplexed by id."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._calls import Call, UnaryCall
from ._connection import Connection, Counters, open_connection
from ._limiter import Limiter
from .backoff import Backoff, RetryPolicy
from .codec import (
    Version,
    chat_messages,
    check_guided_choice,
    check_guided_json,
    check_guided_regex,
    check_logprobs,
    check_trace_context,
    check_version,
    encode_admin,
    encode_generate,
    encode_models,
    encode_ping,
    encode_predict,
    parse_model_status,
    parse_models,
    parse_result,
    timeout_to_ms,
)
from .errors import (
    ClientClosed,
    ConnectionLost,
    DeadlineExceeded,
    ProtocolError,
    RequestTooLarge,
    Unauthorized,
    WsserveError,
)
from .results import (
    ClientStats,
    Completion,
    ModelInfo,
    ModelStatus,
    PredictResult,
    ServerHello,
)
from .streams import DEADLINE_GRACE_S, Generation, PredictStream, ResponseStream
from .tensors import BinaryFrame

__all__ = ["Client", "DEFAULT_URL"]

DEFAULT_URL = "ws://127.0.0.1:8765"

#: Default bound on the unread frames one stream may hold (``max_stream_buffer_bytes``).
DEFAULT_MAX_STREAM_BUFFER_BYTES = 64 * 2**20
#: Seconds the server has to end a request after the client's ``cancel`` before the client ends
#: it itself and frees its inflight slot (``Client(cancel_timeout=...)``).
DEFAULT_CANCEL_TIMEOUT_S = 30.0

#: Reconnect policy used unless ``reconnect=`` is given.
DEFAULT_RECONNECT = Backoff()

Frame = dict[str, Any]

_RESULT = frozenset({"result"})
_MODELS = frozenset({"models"})
_PONG = frozenset({"pong"})


class Client:
    """Async client for a wsserve server (protocol ``wsserve.v1``).

    Use as ``async with Client(url) as c: ...`` (or ``await c.connect()`` / ``await c.close()``).
    All calls share one socket and may run concurrently from many tasks; each gets a fresh
    integer id and the reply is routed back to it by one reader task.

    Limits: at most the server's ``max_inflight`` (from ``hello``) predict+generate calls are
    outstanding at once; further calls wait for a slot (FIFO). ``max_inflight=`` overrides the
    server's value (above it, the server answers ``overloaded``). A request whose frame is
    larger than the server's ``max_message_bytes`` raises :class:`RequestTooLarge` unsent.

    Connection loss fails every unfinished call with :class:`ConnectionLost`; the next call
    reconnects, trying up to ``reconnect.max_attempts`` times with jittered exponential backoff.
    Closing the client sends ``cancel`` for every unfinished call, then closes the socket;
    calls still awaited elsewhere raise :class:`ClientClosed`.

    Args:
        url: ``ws://host:port`` (or ``wss://``).
        subprotocol: offered on the handshake (``None`` offers none).
        token: API key; sent as ``Authorization: Bearer <token>`` on the handshake, and also as
            a first ``{"type": "auth"}`` frame when ``auth_message`` is true.
        retry: opt-in retry of ``overloaded``/``rate_limited`` refusals (``None``: no retry).
        reconnect: attempts and backoff for (re)connecting.
        connect_timeout: seconds for one connection attempt, handshake and ``hello`` included.
        close_timeout: seconds :meth:`close` may take in all (cancels, close handshake); past
            it the socket is dropped without the handshake (``None``: wait as long as it takes).
        cancel_timeout: seconds the server has to end a request after the client sent its
            ``cancel`` (a timeout, an abandoned call, a stream's ``cancel()``); past it the call
            ends with :class:`ProtocolError` and its inflight slot is freed, so a server that
            ignores cancels cannot hold every slot (``None``: wait for the server forever).
        ping_interval, ping_timeout: WebSocket keepalive (``None`` disables).
        max_inflight: client-side cap on outstanding predict+generate (``None``: the server's).
        max_receive_bytes: largest frame accepted from the server (``None``: unlimited).
        max_stream_buffer_bytes: most bytes of received frames one stream (``predict_stream``,
            ``generate``) may hold unread; past it the stream raises :class:`StreamOverflow`
            and the client cancels that request (``None``: unbounded).
        compression: ``"deflate"`` to offer permessage-deflate; off by default (speed).
        additional_headers: extra handshake headers.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        subprotocol: str | None = "wsserve.v1",
        token: str | None = None,
        auth_message: bool = False,
        retry: RetryPolicy | None = None,
        reconnect: Backoff = DEFAULT_RECONNECT,
        # Timeouts
        connect_timeout: float | None = 10.0,
        close_timeout: float | None = 5.0,
        cancel_timeout: float | None = DEFAULT_CANCEL_TIMEOUT_S,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        # Limits
        max_inflight: int | None = None,
        max_receive_bytes: int | None = 64 * 2**20,
        max_stream_buffer_bytes: int | None = DEFAULT_MAX_STREAM_BUFFER_BYTES,
        compression: str | None = None,
        additional_headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_inflight is not None and max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1 or None, got {max_inflight!r}")
        if max_stream_buffer_bytes is not None and max_stream_buffer_bytes < 1:
            raise ValueError(f"max_stream_buffer_bytes must be >= 1 or None, got {max_stream_buffer_bytes!r}")
        if close_timeout is not None and not close_timeout >= 0:
            raise ValueError(f"close_timeout must be >= 0 seconds or None, got {close_timeout!r}")
        if cancel_timeout is not None and not 0 < cancel_timeout < float("inf"):
            raise ValueError(f"cancel_timeout must be > 0 seconds or None, got {cancel_timeout!r}")
        self.url = url
        self._subprotocol = subprotocol
        self._token = token
        self._auth_message = auth_message
        self._retry = retry
        self._reconnect = reconnect
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout
        self._cancel_timeout = cancel_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._max_inflight = max_inflight
        self._max_receive_bytes = max_receive_bytes
        self._max_stream_buffer_bytes = max_stream_buffer_bytes
        self._compression = compression
        self._headers = dict(additional_headers or {})
        self._ids = itertools.count(1)
        self._limiter = Limiter(max_inflight)
        self._counters = Counters()
        self._conn: Connection | None = None
        self._last_hello: ServerHello | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the socket now (calls also connect on demand).

        Raises:
            ConnectionLost: no attempt succeeded. Unauthorized: the handshake got 401/403.
            ProtocolError: the server's ``hello`` has a ``protocol`` version this client does not
                speak (1); not retried.
        """
        await self._connection()

    async def close(self) -> None:
        """Cancel what is unfinished on the server, end local waiters with
        :class:`ClientClosed`, close the socket. Idempotent; the client cannot be reused.

        Returns within ``close_timeout`` seconds (plus a loop iteration or two), even when the
        server never answers the close handshake or stopped reading: past it the TCP
        connection is aborted."""
        if self._closed:
            return
        self._closed = True
        # A connect in progress notices ``_closed`` and closes what it opened (see _connection).
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close(ClientClosed("the client was closed"), timeout=self._close_timeout)

    @property
    def closed(self) -> bool:
        """True after :meth:`close` began."""
        return self._closed

    @property
    def hello(self) -> ServerHello | None:
        """The current (or last) connection's ``hello``, or ``None`` before the first."""
        return self._last_hello

    def _binary_dtypes(self) -> tuple[str, ...]:
        """The last ``hello``'s ``binary_dtypes`` (none before the first connection: arrays are widened)."""
        return self._last_hello.binary_dtypes if self._last_hello is not None else ()

    @property
    def draining(self) -> bool:
        """True once the server announced ``draining`` on the current connection."""
        return self._conn is not None and self._conn.draining

    def stats(self) -> ClientStats:
        """A frozen snapshot of this client's counters."""
        conn = self._conn
        c = self._counters
        return ClientStats(
            inflight=self._limiter.used,
            waiting=self._limiter.waiting,
            capacity=self._limiter.capacity,
            connects=c.connects,
            requests_sent=c.requests_sent,
            cancels_sent=c.cancels_sent,
            server_cancelled=c.server_cancelled,
            connected=conn is not None and conn.open,
        )

    # -- calls -----------------------------------------------------------------------------

    async def predict(
        self,
        model: str,
        inputs: Any,
        *,
        version: Version | None = None,
        timeout: float | None = None,
        priority: int = 0,
        as_numpy: bool = False,
        explain: bool = False,
        binary: bool = False,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> PredictResult:
        """Run ``model`` on ``inputs`` (an ``[n, d]`` nested list or numpy array, or
        ``{name: rows}`` for a model with several named inputs).

        ``version`` pins a model version (``"2"`` or ``2``; default: the server's default, its
        highest ready version); ``result.version`` says which one answered. ``timeout`` (seconds)
        bounds the whole call — connecting, waiting for an inflight slot, retries and the
        answer: it is sent as the server deadline ``timeout_ms`` (a retry sends what is left),
        and the client gives up on its own 1 s (``DEADLINE_GRACE_S``) after it, sending
        ``cancel``; either way :class:`DeadlineExceeded` (a :class:`TimeoutError`) is raised.
        ``priority`` 1 is served first (a model whose config.pbtxt sets ``priority_levels`` N takes
        0..N, level 1 first, 0 its default level; docs/PROTOCOL.md "Priority levels"). ``as_numpy`` returns
        ``outputs`` (and ``attributions``) as float64 ``numpy.ndarray`` (a string output: an object
        array of ``str``). ``explain`` asks for
        per-feature attributions with each row (``BadRequestError`` for a model that cannot
        be explained): ``result.attributions`` and ``result.explanation``.

        ``binary=True`` sends ``inputs`` as a binary tensor frame and asks for binary outputs
        (no JSON number parsing on either side). ``inputs`` is then a
        numpy array ``[n, ...]``, an ``array.array`` (one row), a :class:`~wsserve_client.Tensor`
        (raw bytes + dtype + shape, see :func:`~wsserve_client.as_tensor`) or ``{name: ...}``
        of those; ``outputs`` come back as numpy arrays in the model's dtype when numpy is
        installed, else as :class:`~wsserve_client.Tensor` (``.tolist()``); with ``explain``
        ``attributions`` come back the same way (float64).

        ``traceparent`` and ``tracestate`` (W3C Trace Context, e.g. from OpenTelemetry's
        ``propagate.inject(carrier)``): the server's span for this request (with
        ``--otlp-traces-endpoint``) joins that trace (:func:`~wsserve_client.codec.check_trace_context`;
        a ``TypeError``/``ValueError`` here for a non-string or over-long value).

        Raises:
            WsserveError subclass: the server's error (``InvalidInput``, ``UnknownModelError``,
                ``DeadlineExceeded``, ``OverloadedError`` once retries are exhausted, or when the
                next retry could not start before ``timeout``, ...).
            RequestTooLarge: the request exceeds the server's ``max_message_bytes`` (or, binary,
                its header exceeds ``max_binary_header_bytes``).
            ProtocolError: the server's answer is not a well-formed ``result``.
            ConnectionLost: the connection closed before the answer.
        """
        loop = asyncio.get_running_loop()
        deadline = call_deadline(loop, timeout, DEADLINE_GRACE_S)
        attempt = 0
        while True:
            rid = next(self._ids)
            left = timeout if attempt == 0 else time_left(loop, deadline, DEADLINE_GRACE_S)
            data = encode_predict(rid, model, inputs, version=version, timeout=left, priority=priority,
                                  explain=explain, binary=binary, traceparent=traceparent, tracestate=tracestate,
                                  dtypes=self._binary_dtypes())
            try:
                frame = await self._unary(rid, data, counted=True, deadline=deadline, timeout=timeout,
                                          grace=True, expect=_RESULT, what="predict")
            except WsserveError as exc:
                retry = self._retry
                if retry is not None and retry.should_retry(exc.code, attempt):
                    delay = retry.delay(attempt, exc.retry_after, random.random())
                    if deadline is not None and loop.time() + delay >= deadline - DEADLINE_GRACE_S:
                        raise  # no time left for another try: the refusal is the answer
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                raise
            return parse_result(frame, as_numpy=as_numpy, explain=explain)

    def predict_stream(
        self,
        model: str,
        inputs: Any,
        *,
        chunk_rows: int | None = None,
        version: Version | None = None,
        timeout: float | None = None,
        priority: int = 0,
        as_numpy: bool = False,
        binary: bool = False,
        explain: bool = False,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> PredictStream:
        """Streamed predict: ``async for chunk in client.predict_stream(...)`` yields
        :class:`Chunk` (``offset``, ``outputs``) in order; ``.summary`` after the end.

        Returns at once (not a coroutine); the request is sent on first iteration or on
        ``async with``. See :mod:`wsserve_client.streams` for cancellation. ``binary`` as
        for :meth:`predict`: each chunk's ``outputs`` is then an array (or ``Tensor``).
        ``explain`` as for :meth:`predict`: each chunk carries its rows' ``attributions``
        and ``summary.explanation`` says how they were computed. ``traceparent``/``tracestate`` as
        for :meth:`predict`.
        """
        check_version(version)
        check_trace_context(traceparent, tracestate)

        def make(rid: int, left: float | None) -> bytes:
            return encode_predict(
                rid, model, inputs, version=version, timeout=left, priority=priority,
                stream=True, chunk_rows=chunk_rows, binary=binary, explain=explain,
                traceparent=traceparent, tracestate=tracestate, dtypes=self._binary_dtypes(),
            )

        return PredictStream(self, make, timeout=timeout, retry=self._retry, as_numpy=as_numpy, explain=explain,
                             max_buffer_bytes=self._max_stream_buffer_bytes)

    def predict_responses(
        self,
        model: str,
        inputs: Any,
        *,
        version: Version | None = None,
        timeout: float | None = None,
        priority: int = 0,
        as_numpy: bool = False,
        binary: bool = False,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> ResponseStream:
        """A predict to a decoupled model (Triton's decoupled mode: any number of responses per
        request): ``async for response in client.predict_responses(...)`` yields each
        :class:`Response` (``seq``, ``outputs``, ``final``) as the model sends it;
        ``.summary`` (responses, timing, version) after the end.  ``cancel()`` (or leaving the
        loop: ``aclose()``) cancels the request; the model sees it cancelled.

        Returns at once (not a coroutine); the request is sent on first iteration or on
        ``async with``.  ``inputs``, ``version``, ``timeout``, ``priority``, ``as_numpy``,
        ``binary`` (the inputs sent as a binary tensor frame, each response's outputs answered as
        one: numpy arrays in the model's dtypes) and ``traceparent``/``tracestate`` as for :meth:`predict`.
        """
        check_version(version)
        check_trace_context(traceparent, tracestate)

        def make(rid: int, left: float | None) -> bytes:
            return encode_predict(rid, model, inputs, version=version, timeout=left, priority=priority,
                                  binary=binary, traceparent=traceparent, tracestate=tracestate,
                                  dtypes=self._binary_dtypes())

        return ResponseStream(self, make, timeout=timeout, retry=self._retry, as_numpy=as_numpy,
                              max_buffer_bytes=self._max_stream_buffer_bytes)

    def generate(
        self,
        model: str,
        prompt: str | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        repetition_penalty: float | None = None,
        logit_bias: Mapping[int, float] | None = None,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        version: Version | None = None,
        logprobs: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        min_tokens: int | None = None,
        include_stop_str_in_output: bool | None = None,
        guided_choice: Sequence[str] | None = None,
        guided_regex: str | None = None,
        guided_json: Mapping[str, Any] | str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> Generation:
        """Token streaming: ``async for text in client.generate(...)`` yields each token's
        text as it is generated; ``.result`` (reason, tokens, timing, text, version) after the end.

        ``prompt`` is the text to continue, or a conversation: a sequence of chat messages
        (``{"role": "system" | "user" | "assistant", "content": str}``, OpenAI's form) sent as
        ``messages``, which the server turns into the prompt with the model's chat template (a
        model without one answers ``bad_request``). ``None`` parameters take the server's
        defaults (``max_tokens`` 64, greedy, the default version). ``top_k``, ``top_p``
        (nucleus sampling, in (0, 1]) and ``min_p`` (in [0, 1]) narrow sampling; greedy ignores
        them. ``presence_penalty`` and ``frequency_penalty`` (in [-2, 2], OpenAI's) lower the
        logits of tokens already generated, greedy included. ``repetition_penalty`` (vLLM's, in
        (0, 2], 1 or ``None``: off) divides the logit of every token that is in the prompt (the
        part the model reads) or was generated so far by it when the logit is positive, and
        multiplies it when negative, before the other penalties, greedy included: above 1 repeats
        are less likely. ``logit_bias`` (``{token id: bias}``, biases in [-100, 100]) is
        added to those tokens' logits. ``logprobs=k`` (an integer >= 0, at most the server's
        ``max_logprobs``, 20) asks for each token's log-probability and the ``k`` likeliest
        tokens with theirs, by the model's own distribution (before penalties, bias,
        temperature): iteration still yields texts; ``.logprobs`` holds a
        :class:`~wsserve_client.TokenLogprob` per token received and ``.result.logprobs`` all
        of them (``None`` without ``logprobs``). vLLM's stop controls: ``stop_token_ids`` (token
        ids, at most the server's ``max_stop_token_ids``, 64: the generation ends with reason
        ``stop`` at one of them, whose text is not sent), ``min_tokens`` (0 to ``max_tokens``: no
        stop within the first ones; the stop tokens are not generated then) and
        ``include_stop_str_in_output`` (the stop string or token text is sent, nothing after it).
        ``guided_choice`` (vLLM's: 1 to the server's ``max_guided_choices``, 64, non-empty strings
        of at most ``max_guided_choice_chars``, 256): the text is exactly one of them, ending with
        reason ``stop`` (``length`` at ``max_tokens``). ``guided_regex`` (a
        regular expression) and ``guided_json`` (a JSON Schema: a mapping, or a string holding
        one), each of at most the server's ``max_guided_pattern_chars`` (16384) characters, at most
        one guided form per request (vLLM's; the server needs its ``structured`` extra): the text
        matches, ending with reason ``stop`` when it fully matches and the model would not go on
        (``length`` at ``max_tokens``: a prefix of a match); a pattern the server cannot compile is
        its ``BadRequestError`` naming the field. ``traceparent``/``tracestate`` as for :meth:`predict`.
        Returns at once; the request is sent on first iteration or on ``async with``.

        Raises:
            TypeError, ValueError: a bad ``prompt``, ``version``, ``logprobs`` or guided field (here, before
                anything is sent); the server's errors (e.g. ``BadRequestError`` naming the
                field, as for a sampling option out of its range) come on iteration.
        """
        check_version(version)  # a bad version raises here, not on first iteration
        check_logprobs(logprobs)
        guided_choice = check_guided_choice(guided_choice)  # a copy, so later edits don't leak in
        guided_regex = check_guided_regex(guided_regex)
        guided_json = check_guided_json(guided_json)  # JSON text: a snapshot
        check_trace_context(traceparent, tracestate)
        if not isinstance(prompt, str):
            prompt = chat_messages(prompt)  # a TypeError here; a copy, so later edits don't leak in

        def make(rid: int, left: float | None) -> bytes:
            return encode_generate(
                rid, model, prompt, max_tokens=max_tokens, temperature=temperature,
                top_k=top_k, top_p=top_p, min_p=min_p, presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                repetition_penalty=repetition_penalty, logit_bias=logit_bias, seed=seed, stop=stop, timeout=left,
                priority=priority, version=version, logprobs=logprobs, stop_token_ids=stop_token_ids,
                min_tokens=min_tokens, include_stop_str_in_output=include_stop_str_in_output,
                guided_choice=guided_choice, guided_regex=guided_regex, guided_json=guided_json,
                traceparent=traceparent, tracestate=tracestate,
            )

        return Generation(self, make, timeout=timeout, retry=self._retry,
                          max_buffer_bytes=self._max_stream_buffer_bytes, logprobs=logprobs is not None)

    async def complete(
        self,
        model: str,
        prompt: str | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        repetition_penalty: float | None = None,
        logit_bias: Mapping[int, float] | None = None,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        version: Version | None = None,
        logprobs: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        min_tokens: int | None = None,
        include_stop_str_in_output: bool | None = None,
        guided_choice: Sequence[str] | None = None,
        guided_regex: str | None = None,
        guided_json: Mapping[str, Any] | str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> Completion:
        """Generate to the end and return the whole text with how it ended (``prompt`` as for
        :meth:`generate`: text, or chat messages; with ``logprobs``, ``.logprobs`` holds each
        token's :class:`~wsserve_client.TokenLogprob`)."""
        gen = self.generate(
            model, prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, repetition_penalty=repetition_penalty,
            logit_bias=logit_bias, seed=seed, stop=stop, timeout=timeout, priority=priority, version=version,
            logprobs=logprobs, stop_token_ids=stop_token_ids, min_tokens=min_tokens,
            include_stop_str_in_output=include_stop_str_in_output, guided_choice=guided_choice,
            guided_regex=guided_regex, guided_json=guided_json, traceparent=traceparent, tracestate=tracestate,
        )
        async with gen:
            async for _ in gen:
                pass
        r = gen.result
        return Completion(text=r.text, reason=r.reason, tokens=r.tokens, timing=r.timing, version=r.version,
                          prompt_tokens=r.prompt_tokens, logprobs=r.logprobs, completion_tokens=r.completion_tokens)

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The server's models with shapes, parameter counts and metrics.

        ``timeout`` (seconds) bounds the wait locally (:class:`DeadlineExceeded`)."""
        rid = next(self._ids)
        frame = await self._unary(rid, encode_models(rid), counted=False, timeout=timeout, grace=False,
                                  expect=_MODELS, what="models")
        return parse_models(frame)

    async def load(self, model: str, *, version: Version | None = None, config: Mapping[str, Any] | str | None = None,
                   timeout: float | None = None) -> ModelStatus:
        """Load ``model`` from the server's model repository (one ``version``, or every version
        its policy selects); returns its versions and their states afterwards.

        ``config``: a model configuration in Triton's JSON form (a mapping, or JSON text as
        ``tritonclient``'s ``load_model(config=...)`` takes it) served instead of the model's
        config file: every version its policy selects is loaded anew with it, until the model is
        loaded again without one (docs/PROTOCOL.md, "A load's config").

        An admin operation: the client needs the server's admin key (``token=``), or a loopback
        connection to a server without keys. A version that fails to load is reported as
        ``state == "failed"`` with its ``reason``, not raised. ``timeout`` (seconds) bounds
        the wait locally (loading a large model takes a while).

        Raises:
            Forbidden: not allowed. UnknownModelError: no such model or version in the
            repository. BadRequestError: e.g. the server has no model repository, or a
            ``config`` that does not parse or breaks a rule, or with which a version fails to
            load (``load failed for model ...``: with a ``config`` a failed version is raised,
            not reported; the model keeps what it served).
            TypeError: ``config`` is neither a mapping nor a string.
        """
        return await self._admin("load", model, version, timeout, config)

    async def unload(self, model: str, *, version: Version | None = None, timeout: float | None = None) -> ModelStatus:
        """Stop serving ``version`` of ``model`` (or the whole model): it takes no new requests,
        finishes those in flight (state ``"unloading"``), then leaves. Admin operation, see
        :meth:`load`.

        Raises:
            Forbidden, UnknownModelError (not loaded), BadRequestError.
        """
        return await self._admin("unload", model, version, timeout)

    async def reload(self, model: str, *, version: Version | None = None, timeout: float | None = None) -> ModelStatus:
        """Load ``version`` of ``model`` (or all its versions) again from the repository's files
        and swap it in once warmed up. Admin operation, see :meth:`load`.

        Raises:
            Forbidden, UnknownModelError, BadRequestError.
        """
        return await self._admin("reload", model, version, timeout)

    async def _admin(self, op: str, model: str, version: Version | None, timeout: float | None,
                     config: Mapping[str, Any] | str | None = None) -> ModelStatus:
        rid = next(self._ids)
        data = encode_admin(op, rid, model, version, config)
        frame = await self._unary(rid, data, counted=False, timeout=timeout, grace=False,
                                  expect=frozenset({op}), what=op)
        return parse_model_status(frame)

    async def ping(self, *, timeout: float | None = None) -> float:
        """Round-trip time of one application-level ``ping``/``pong``, in seconds."""
        rid = next(self._ids)
        data = encode_ping(rid)
        start = time.perf_counter()
        await self._unary(rid, data, counted=False, timeout=timeout, grace=False, expect=_PONG, what="ping")
        return time.perf_counter() - start

    # -- internals (used by streams) -------------------------------------------------------

    def _next_id(self) -> int:
        return next(self._ids)

    def _loop_or_running(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def _connection(self) -> Connection:
        """The open connection, connecting (with bounded backoff) if there is none.

        Raises:
            ClientClosed, ConnectionLost, Unauthorized.
        """
        conn = self._conn
        if conn is not None and conn.open:
            return conn
        if self._closed:
            raise ClientClosed("the client is closed")
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.open:
                return conn
            if self._closed:
                raise ClientClosed("the client is closed")
            conn = await self._connect_with_backoff()
            if self._closed:  # close() ran while we were connecting
                await conn.close(ClientClosed("the client was closed"), timeout=self._close_timeout)
                raise ClientClosed("the client is closed")
            self._conn = conn
            self._last_hello = conn.hello
            return conn

    async def _connect_with_backoff(self) -> Connection:
        policy = self._reconnect
        last: BaseException | None = None
        for attempt in range(policy.max_attempts):
            if attempt:
                await asyncio.sleep(policy.delay(attempt - 1, random.random()))
            if self._closed:
                raise ClientClosed("the client is closed")
            try:
                conn = await open_connection(
                    self.url,
                    subprotocol=self._subprotocol,
                    token=self._token,
                    auth_message=self._auth_message,
                    connect_timeout=self._connect_timeout,
                    close_timeout=self._close_timeout,
                    cancel_timeout=self._cancel_timeout,
                    ping_interval=self._ping_interval,
                    ping_timeout=self._ping_timeout,
                    max_receive_bytes=self._max_receive_bytes,
                    compression=self._compression,
                    additional_headers=self._headers,
                    limiter=self._limiter,
                    counters=self._counters,
                )
            except (Unauthorized, ProtocolError):
                raise  # a refusal, not a failure: another attempt would get the same
            except (ConnectionLost, TimeoutError, OSError) as exc:
                last = exc
                continue
            cap = self._max_inflight if self._max_inflight is not None else conn.hello.limits.max_inflight
            self._limiter.set_capacity(cap)
            return conn
        raise ConnectionLost(
            f"could not connect to {self.url} after {policy.max_attempts} attempts: {last}"
        ) from last

    @staticmethod
    def _check_size(conn: Connection, call: Call, data: bytes) -> None:
        limit = conn.max_message_bytes
        if limit is not None and len(data) > limit:
            raise RequestTooLarge(
                f"request is {len(data)} bytes, over the server's max_message_bytes={limit} "
                "(it would close the connection); split the inputs into smaller calls",
                request_id=call.id,
            )
        header_limit = conn.max_binary_header_bytes
        if header_limit is not None and type(data) is BinaryFrame:
            header = int.from_bytes(data[:4], "little")
            if header > header_limit:
                # The server could not read this frame's id: its error would answer no call.
                raise RequestTooLarge(
                    f"binary frame header is {header} bytes, over the server's max_binary_header_bytes="
                    f"{header_limit}; use fewer or shorter input names",
                    request_id=call.id,
                )

    async def _send_call(self, call: Call, data: bytes) -> Connection:
        """Take a slot (for counted calls), register ``call`` and send ``data``.

        On return the call is registered and owns its slot until its terminal frame.

        Raises:
            RequestTooLarge, ConnectionLost, ClientClosed, Unauthorized.
        """
        conn = self._conn
        if conn is None or not conn.open:
            conn = await self._connection()  # also learns the limits before taking a slot
        self._check_size(conn, call, data)
        if call.counted:
            limiter = self._limiter
            if not limiter.try_acquire():
                await limiter.acquire()
            try:
                if not conn.open:  # lost while waiting for a slot
                    conn = await self._connection()
                    self._check_size(conn, call, data)
                conn.register(call)
            except BaseException:
                limiter.release()
                raise
        else:
            conn.register(call)
        await conn.send(call, data)
        return conn

    async def _unary(
        self,
        rid: int,
        data: bytes,
        *,
        counted: bool,
        timeout: float | None,
        grace: bool,
        expect: frozenset[str],
        what: str,
        deadline: float | None = None,
    ) -> Frame:
        """Send one request and return its reply frame (of a type in ``expect``).

        ``deadline`` (loop time; default: now + ``timeout`` [+ grace]) bounds everything:
        connecting, waiting for a slot, sending and the answer. Past it a sent request is
        abandoned (``cancel`` sent) and :class:`DeadlineExceeded` raised.
        """
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = call_deadline(loop, timeout, DEADLINE_GRACE_S if grace else 0.0)
        call = UnaryCall(rid, loop.create_future(), counted=counted, expect=expect, what=what)
        conn: Connection | None = None
        if deadline is None:  # no guard to arm (the common case: an asyncio.timeout costs ~3 us a call)
            try:
                conn = await self._send_call(call, data)
                return await call.future
            except asyncio.CancelledError:
                if conn is not None:
                    conn.abandon(call)
                raise
        guard = asyncio.timeout_at(deadline)
        try:
            async with guard:
                conn = await self._send_call(call, data)
                return await call.future
        except TimeoutError:
            if not guard.expired():
                raise  # the server's deadline_exceeded (a TimeoutError too), not our guard
            if conn is not None:
                conn.abandon(call)
            sent = "cancel sent" if conn is not None or call.cancel_sent else "the request was never sent (no connection or inflight slot in time)"
            raise DeadlineExceeded(
                f"{what}: no answer within {timeout}s" + (f" (+{DEADLINE_GRACE_S}s grace)" if grace else "")
                + f"; {sent}",
                request_id=rid,
            ) from None
        except asyncio.CancelledError:
            if conn is not None:
                conn.abandon(call)
            raise


def call_deadline(loop: asyncio.AbstractEventLoop, timeout: float | None, grace: float) -> float | None:
    """The loop time at which a call with ``timeout`` seconds gives up (``None``: never).

    Raises:
        ValueError: ``timeout`` is not a positive finite number.
    """
    if timeout is None:
        return None
    timeout_to_ms(timeout)  # validates
    return loop.time() + timeout + grace


def time_left(loop: asyncio.AbstractEventLoop, deadline: float | None, grace: float) -> float | None:
    """Seconds left of a call's ``timeout`` (its deadline less the grace), at least 1 ms, to
    send as a retry's ``timeout_ms``; ``None`` without a deadline."""
    if deadline is None:
        return None
    return max(deadline - grace - loop.time(), 0.001)
