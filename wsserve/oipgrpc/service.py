"""The gRPC front end: a ``grpc.aio`` server on the server's loop, answering KServe v2's RPCs.

:class:`GrpcFrontend` is started, drained and stopped by :class:`~wsserve.server.Server`
(``--grpc-port``).  It is an adapter only: every answer is the HTTP API's
(:class:`~wsserve.rest.HttpApi`: the same lookups, bodies, admission, worker
queues and metrics), converted by :mod:`wsserve.oipgrpc.convert`; the model
repository RPCs are :mod:`wsserve.rest.modelrepo`'s, as the HTTP routes are.

A gRPC "connection", for ``max_inflight``, ``max_inflight_bytes`` and
``rate_limit_per_s``, is the client's HTTP/2 connection: the RPC's peer
(``ipv4:ADDRESS:PORT``), one :class:`~wsserve.rest.calls.HttpSession` each.
A peer's session is forgotten once it has nothing in flight and its rate
bucket has refilled (it is then no different from a new one), so sessions do
not pile up; gRPC connections do not count against ``--max-connections``
(grpc accepts them itself).

The same port serves gRPC's standard health service, ``grpc.health.v1.Health`` (grpc's own
``HealthServicer``, as Kubernetes' ``grpc`` probes and ``grpc_health_probe`` call it): the
services ``""`` (the server) and ``inference.GRPCInferenceService`` are ``SERVING`` once the
server is ready and ``NOT_SERVING`` from the start of its drain on (for good); any other name
is ``NOT_FOUND``.  It needs no API key, as ``/healthz`` and ServerLive need none.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ..admission import PROXY_HEADERS, check_bearer, client_address, local_admin
from ..config import proxy_networks
from ..decoupled import decoupled_refusal
from ..errors import BadRequest, Internal, Overloaded, UnknownModel, WsserveError
from ..generation.fairslots import compile_client
from ..rest import modelrepo
from ..rest.api import CUDA_SHM_REFUSAL, SHM_STATUS_OP
from ..rest.calls import CompletionCall, HttpSession, InferCall, generate_span_head
from ..rest.tritongen import parse_generate
from ..tracecontext import trace_fields
from . import convert

__all__ = ["GrpcFrontend", "GrpcDecoupledCall", "GrpcGenerateCall", "GrpcInferCall", "IMPLEMENTED", "UNIMPLEMENTED"]

log = logging.getLogger("wsserve.grpc")

#: The RPCs answered; every other one of the service is UNIMPLEMENTED.
IMPLEMENTED = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
               "ModelInfer", "ModelStreamInfer", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad",
               "RepositoryModelUnload", "LogSettings", "TraceSetting", "SystemSharedMemoryStatus",
               "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
               "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister")
UNIMPLEMENTED = tuple(m.name for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
                      if m.name not in IMPLEMENTED)
#: Metadata a reverse proxy adds (grpc's keys are lower-case strings).
_PROXY_METADATA = frozenset(h.decode() for h in PROXY_HEADERS)
#: Sessions kept before the idle ones are forgotten (then twice as many as remain, at least this).
_SWEEP_AT = 64
#: The services grpc.health.v1 answers for: the server as a whole, and its inference service.
HEALTH_SERVICES = ("", "inference.GRPCInferenceService")


class _StreamFlow:
    """A ModelStreamInfer stream's requests its read bound does not count (:meth:`free`): those
    waiting for their sequence to be given a slot (``waiting``; :meth:`GrpcInferCall.on_slot_wait`)
    and, while any waits, the answers computed but not yet written because an earlier request's
    is not (``parked``: the stream writes in request order, so those behind a request waiting for
    a slot wait for it too; the END that gives it a slot may come behind them).  Parked answers
    are bounded in bytes (``max_parked_bytes``, each counted with :data:`_PARKED_OVERHEAD` more):
    past it they count again.  ``more`` is set when :meth:`free` may have grown (the read loop
    may go on)."""

    __slots__ = ("waiting", "more", "parked", "parked_bytes", "max_parked_bytes", "backlog")

    def __init__(self, max_parked_bytes: int, backlog: _Backlog | None = None) -> None:
        self.waiting = 0
        self.more = asyncio.Event()
        self.parked = 0
        self.parked_bytes = 0
        self.max_parked_bytes = max_parked_bytes
        #: its connection's, which counts its requests waiting for a slot too (:class:`_Backlog`)
        self.backlog = backlog

    def add(self, delta: int) -> None:
        self.waiting += delta
        if self.backlog is not None:
            self.backlog.wait(delta)
        if delta > 0:
            self.more.set()

    def free(self) -> int:
        """How many of the stream's unfinished requests its read bound does not count."""
        if not self.waiting:
            return 0
        if self.parked_bytes > self.max_parked_bytes:
            return self.waiting
        return self.waiting + self.parked

    def park(self, nbytes: int) -> int:
        """An answer of ``nbytes`` bytes waits for an earlier one to be written; returns its cost
        (for :meth:`unpark`)."""
        cost = nbytes + _PARKED_OVERHEAD
        self.parked += 1
        self.parked_bytes += cost
        if self.waiting:
            self.more.set()
        return cost

    def unpark(self, cost: int) -> None:
        self.parked -= 1
        self.parked_bytes -= cost


#: What a parked answer (:class:`_StreamFlow`) holds besides its message: its task and its call
_PARKED_OVERHEAD = 4096


class _Backlog:
    """What the ModelStreamInfer streams of one gRPC connection (its peer) hold for their
    predictive requests read and not yet answered on the wire: each request's message (``bytes``
    counts it from the moment it is read until its answer is written, or, a generation's or a
    decoupled model's, until it starts: those are bounded as running requests) and its answer once
    computed.  Past ``max_write_buffer_bytes`` no stream of the connection reads another request
    until it drains (``drained`` is set whenever it shrinks), as a WebSocket or HTTP connection
    stops reading while its unsent answers are over the limit: the streams a client multiplexes on
    one connection share one bound, not ``max_inflight`` requests and answers each.  While a
    request of any of its streams waits for its sequence to be given a slot (``waiting``), the
    bound does not stop a read: the END that frees the slot may come on another stream."""

    __slots__ = ("bytes", "streams", "drained", "waiting")

    def __init__(self) -> None:
        self.bytes = 0
        self.streams = 0
        self.drained = asyncio.Event()
        self.waiting = 0

    def add(self, nbytes: int) -> None:
        self.bytes += nbytes
        if nbytes < 0:
            self.drained.set()

    def wait(self, delta: int) -> None:
        """A request of one of its streams starts (1) or stops (-1) waiting for a sequence slot."""
        self.waiting += delta
        if delta > 0:
            self.drained.set()  # (the streams' reads stopped by the bound go on)

    def over_limit(self, limit: int) -> bool:
        """The streams stop reading: more than ``limit`` bytes held, no request waiting for a slot."""
        return self.bytes > limit and not self.waiting


class _Held:
    """The bytes one stream request counts in its connection's :class:`_Backlog` (released by
    :meth:`release`, in part or, when its task ends however it ends, all)."""

    __slots__ = ("backlog", "nbytes")

    def __init__(self, backlog: _Backlog, nbytes: int) -> None:
        self.backlog = backlog
        self.nbytes = 0
        self.add(nbytes)

    def add(self, nbytes: int) -> None:
        self.nbytes += nbytes
        self.backlog.add(nbytes)

    def release(self, _: Any = None) -> None:
        if self.nbytes:
            self.backlog.add(-self.nbytes)
            self.nbytes = 0


class GrpcInferCall(InferCall):
    """A ModelInfer's rows through the predict worker: the outputs (or the error) go to ``future``;
    ``flow``: its stream's, on a ModelStreamInfer stream."""

    __slots__ = ("future", "flow")

    def __init__(self, *args: Any, future: asyncio.Future[Any], flow: _StreamFlow | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.future = future
        self.flow = flow

    def on_slot_wait(self, waiting: bool) -> None:
        was = self.slot_wait
        super().on_slot_wait(waiting)
        if self.flow is not None and self.slot_wait != was:
            self.flow.add(1 if waiting else -1)

    def _end(self, code: str) -> bool:
        ended = super()._end(code)
        if ended and self.slot_wait and self.flow is not None:  # ended while waiting for a slot
            self.flow.add(-1)
        return ended

    def _result(self, outputs: Any) -> None:
        """The outputs asked in shared memory written (raises naming one that cannot be: the call
        then ends with that error, as HTTP's), then ``(values, parameters, written)`` to ``future``."""
        values, parameters = self.values(outputs)
        written = self.write_shm(values)
        if not self.future.done():
            self.future.set_result((values, parameters, written))

    def _error(self, exc: WsserveError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class GrpcDecoupledCall(InferCall):
    """A decoupled model's request on a ModelStreamInfer stream (a
    :class:`~wsserve.decoupled.DecoupledWorker`'s sink): each response's values, its FINAL flag and
    its error go to ``events`` in order (``("response", values, parameters, written, final, nbytes,
    present)``, ``("final", nbytes)``, ``("error", exc)``), for the stream's writer.  ``present``: the
    requested outputs (``requested``'s entries) the response carries; a decoupled response may carry
    any subset of the model's outputs, and only those are answered (and written into shared memory)."""

    __slots__ = ("events", "responses")

    def __init__(self, *args: Any, events: asyncio.Queue[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events = events
        self.responses = 0

    def on_parameters(self, parameters: Mapping[str, Any] | None) -> None:
        """The stream's: the parameters of the response about to come, its own (None: none)."""
        self.response_parameters = parameters or None

    def on_started(self, queue_s: float) -> None:
        """The worker's: its execute starts after ``queue_s`` in the queue (its metrics' and statistics' queue time)."""
        self.queue_s = queue_s

    def on_response(self, outputs: Any, final: bool, nbytes: int) -> None:
        """One response of the model (None: FINAL alone); ``final`` ends the call (``ok``)."""
        if self.finished:
            return
        if outputs is None:
            self.events.put_nowait(("final", nbytes))
        else:
            values, parameters = self.values(outputs)
            present = [(i, b) for i, b in self.requested if self.outputs[i].name in outputs]
            written = self.write_shm(values, frozenset(i for i, _ in present))
            self.responses += 1
            self.events.put_nowait(("response", values, parameters, written, final, nbytes, present))
        if final:
            self._end("ok")

    def _error(self, exc: WsserveError) -> None:
        self.events.put_nowait(("error", exc))


class _QueueExchange:
    """What a :class:`GrpcGenerateCall` answers through: its encoder's events into a queue, the
    tokens not yet written to the client counted in ``pending`` (their texts' UTF-8 bytes and
    their additional outputs', :func:`~wsserve.oipgrpc.convert.token_bytes`, as a connection's
    write buffer counts an HTTP stream's events).  Past ``limit`` (``--max-write-buffer-bytes``: the
    client stopped reading its stream), the call fails with ``Overloaded`` and its generation is
    cancelled, so an unread stream holds at most that much."""

    __slots__ = ("queue", "limit", "pending", "call")

    def __init__(self, queue: asyncio.Queue[Any], limit: int) -> None:
        self.queue = queue
        self.limit = limit
        self.pending = 0
        self.call: Any = None

    def start_stream(self, *_: Any) -> None:
        pass

    def send(self, event: Any) -> None:
        if not event:
            return
        self.queue.put_nowait(event)
        if event[0] == "token":
            self.pending += convert.token_bytes(event[1], event[2])  # (the encoder's UTF-8 bytes)
            if self.pending > self.limit and self.call is not None:
                self.call.fail(Overloaded(f"slow consumer: this stream's client left {self.pending} bytes of responses "
                                          f"unread (max_write_buffer_bytes={self.limit}); the generation is "
                                          "cancelled"))

    def end_stream(self) -> None:
        pass


class GrpcGenerateCall(CompletionCall):
    """A ModelStreamInfer request's generation through the engine, as an HTTP generate's (metrics,
    cancellation); its :class:`~wsserve.oipgrpc.convert.StreamEncoder` events, its answer and its
    error go to the exchange's queue."""

    __slots__ = ()

    def _answer(self, body: Any, content_type: str = "", headers: Any = None) -> None:
        self.exchange.send(body)

    def _error(self, exc: WsserveError) -> None:
        self.exchange.send(("error", exc))


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    """The RPC's ``authorization`` metadata value (None without one).  Raises ``BadRequest`` when
    it is given twice."""
    values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
    if len(values) > 1:
        raise BadRequest("duplicate authorization metadata")
    value = values[0] if values else None
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _address(peer: str) -> str:
    """The client's address in a gRPC peer string: ``ipv4:1.2.3.4:5`` -> ``1.2.3.4``,
    ``ipv6:%5B::1%5D:5`` -> ``::1`` (grpc percent-encodes an IPv6 peer, its brackets and a zone's
    ``%``; older releases wrote ``ipv6:[::1]:5``).  Any other peer (``unix:...``) is returned
    whole: it names no IP address, so it is never loopback.  The address, not the port, is whose
    failed attempts count (:func:`~wsserve.admission.check_bearer`) and who may be admin."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        rest = unquote(rest)
        if rest.startswith("[") and "]" in rest:
            return rest[1:rest.find("]")]
    elif kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


class _MetadataHeaders:
    """An RPC's metadata read as :func:`~wsserve.admission.client_address` reads an HTTP
    request's headers: ``header_values(b"x-forwarded-for")`` is every value of that key, in order
    (several entries are one list, as several header lines are)."""

    __slots__ = ("metadata",)

    def __init__(self, metadata: Any) -> None:
        self.metadata = metadata or ()

    def header_values(self, name: bytes) -> list[str]:
        key = name.decode("latin-1")
        return [str(v) for k, v in self.metadata if k == key]


_MODEL_INFER = "inference.GRPCInferenceService/ModelInfer"  # span names: OpenTelemetry's for RPCs
_MODEL_STREAM_INFER = "inference.GRPCInferenceService/ModelStreamInfer"


def _trace_metadata(context: Any) -> tuple[str | None, str | None]:
    """An RPC's W3C ``traceparent`` and ``tracestate`` metadata (:func:`~wsserve.tracecontext.trace_fields`:
    repeated ones as W3C reads them; checked by the tracer)."""
    parents, states = [], []
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            parents.append(str(value))
        elif key == "tracestate":
            states.append(str(value))
    return trace_fields(parents, states)


def _grpc_head(model: str, method: str) -> dict[str, Any]:
    """The attributes of a gRPC request's span known when it arrives (OpenTelemetry's RPC names)."""
    return {"wsserve.transport": "grpc", "wsserve.model": model, "rpc.system": "grpc",
            "rpc.service": "inference.GRPCInferenceService", "rpc.method": method}


def _c_int(value: int) -> int:
    """``value`` as a grpc channel argument (a C ``int``: larger values are its largest)."""
    return min(value, 2**31 - 1)


def _ms(seconds: float) -> int:
    """``seconds`` (finite, ≥ 0) as a grpc channel argument in milliseconds, at least 1."""
    return _c_int(max(1, round(seconds * 1000)))


class _AccessRecords(grpc.aio.ServerInterceptor):
    """``--access-log`` for gRPC: one record per RPC once it ended, as an HTTP request's (the
    RPC is an HTTP/2 ``POST`` of its method's path): the client (:meth:`GrpcFrontend._client`),
    ``POST /<service>/<Method> HTTP/2`` (``inference.GRPCInferenceService``, or
    ``grpc.health.v1.Health``), status 200 with the note
    ``grpc-status <NAME>`` when the RPC did not end ``OK`` (``CANCELLED`` when its client cancelled
    it or its deadline passed, which sets no status), the answer's bytes (a unary RPC's
    message; a stream's: the sum of the messages it wrote, counted by :class:`_CountedWrites`)
    and the milliseconds it took.  Installed only with the flag."""

    def __init__(self, access_log: Any, client_of: Callable[[Any], str]) -> None:
        self.access_log = access_log
        self.client_of = client_of

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        line = f"POST {details.method[:256]} HTTP/2"
        record = self._record
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                t0, response, cancelled = asyncio.get_running_loop().time(), None, False
                try:
                    response = await inner(request, context)
                    return response
                except asyncio.CancelledError:  # the client cancelled it, or its deadline passed
                    cancelled = True
                    raise
                finally:
                    record(context, line, t0, response.ByteSize() if response is not None else 0, cancelled)

            return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)
        if handler.stream_stream is not None:
            inner_stream = handler.stream_stream

            async def stream(requests: Any, context: Any) -> Any:
                t0, counted, cancelled = asyncio.get_running_loop().time(), _CountedWrites(context), False
                try:
                    return await inner_stream(requests, counted)
                except asyncio.CancelledError:  # the client cancelled it, or its deadline passed
                    cancelled = True
                    raise
                finally:
                    record(context, line, t0, counted.written, cancelled)

            return grpc.stream_stream_rpc_method_handler(stream, request_deserializer=handler.request_deserializer,
                                                         response_serializer=handler.response_serializer)
        if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
            inner_watch = handler.unary_stream  # grpc.health.v1's Watch: writes through its context

            async def watch(request: Any, context: Any) -> Any:
                t0, counted, cancelled = asyncio.get_running_loop().time(), _CountedWrites(context), False
                try:
                    return await inner_watch(request, counted)
                except asyncio.CancelledError:  # the client left, or the server stopped
                    cancelled = True
                    raise
                finally:
                    record(context, line, t0, counted.written, cancelled)

            return grpc.unary_stream_rpc_method_handler(watch, request_deserializer=handler.request_deserializer,
                                                        response_serializer=handler.response_serializer)
        return handler

    def _record(self, context: Any, line: str, t0: float, size: int, cancelled: bool = False) -> None:
        """Add the record of an RPC that ended (``cancelled``: its handler was cancelled, which
        sets no status on the context: the note says ``grpc-status CANCELLED``)."""
        code = context.code()
        if code is None and cancelled:
            code = grpc.StatusCode.CANCELLED
        note = "" if code is None or code == grpc.StatusCode.OK else f"grpc-status {code.name}"
        ms = round((asyncio.get_running_loop().time() - t0) * 1000.0, 3)
        if self.access_log.add(self.client_of(context), line, 200, size, ms, note):
            asyncio.get_running_loop().call_soon(self.access_log.flush)


class _CountedWrites:
    """A streaming RPC's ``grpc.aio.ServicerContext`` that counts the bytes of the messages
    written through it (``written``: each message's serialized size, as a unary answer's is
    counted); every other attribute is the context's own.  Used only by ``--access-log``."""

    __slots__ = ("_context", "written")

    def __init__(self, context: Any) -> None:
        self._context = context
        self.written = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def write(self, message: Any) -> None:
        """Write ``message`` on the stream; its size counts once it was handed to grpc."""
        await self._context.write(message)
        self.written += message.ByteSize()


class _HealthServicer(health.aio.HealthServicer):
    """grpc's own health servicer, whose ``Watch`` streams (never ended by grpc's: it waits for
    the next change until the client leaves) end with status OK once :meth:`close` is called, as
    the server stops (an open one would hold the stop for its whole grace period), each once it
    has written its last status (``NOT_SERVING``: :meth:`close` comes after
    ``enter_graceful_shutdown``; an unknown name's ``SERVICE_UNKNOWN``; a client that does not
    read it keeps its stream until the grace period ends).  Event-loop thread only."""

    def __init__(self) -> None:
        super().__init__()
        self._closed: asyncio.Event | None = None  # made on the loop, by the first Watch

    def close(self) -> None:
        """End every open ``Watch`` stream, and any opened later (once the status is ``NOT_SERVING``
        for good)."""
        if self._closed is None:
            self._closed = asyncio.Event()
        self._closed.set()

    async def Watch(self, request: Any, context: Any) -> None:  # noqa: N802 - grpc's name
        if self._closed is None:
            self._closed = asyncio.Event()
        final = (health_pb2.HealthCheckResponse.NOT_SERVING if request.service in HEALTH_SERVICES
                 else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        writes = _StatusWrites(context)
        watch = asyncio.ensure_future(super().Watch(request, writes))
        try:
            await _until(watch, self._closed.wait())
            # closing: grpc's Watch was woken by the last change; it ends once that was written
            # (never cancelled in a write: grpc refuses the call's next operation then)
            while not watch.done() and writes.last != final:
                writes.written.clear()
                await _until(watch, writes.written.wait())
        finally:  # ended, or the client left (this RPC cancelled)
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        if not watch.cancelled() and watch.exception() is not None:
            raise watch.exception()  # type: ignore[misc]


async def _until(task: asyncio.Future[Any], event: Any) -> None:
    """Wait until ``task`` is done or the awaitable ``event`` is (which is then dropped)."""
    waiter = asyncio.ensure_future(event)
    try:
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


class _StatusWrites:
    """A health ``Watch``'s context that remembers the last status written through it (``last``,
    None before the first; ``written`` is set after each write); every other attribute is the
    context's own."""

    __slots__ = ("_context", "last", "written")

    def __init__(self, context: Any) -> None:
        self._context = context
        self.last: Any = None
        self.written = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self.last = message.status
        self.written.set()


class GrpcFrontend(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The GRPCInferenceService of one server.  Event-loop thread only.

    ``api``: the server's :class:`~wsserve.rest.HttpApi`; ``on_idle``: called when the last
    ModelInfer in flight ended (the drain waits for it); ``clock``: monotonic seconds."""

    def __init__(self, api: Any, *, clock: Callable[[], float], on_idle: Callable[[], None],
                 access_log: Any = None) -> None:
        self.api = api
        self.access_log = access_log  # --access-log: a wsserve.logs.AccessLog (one record per RPC), else None
        self.config = api.config
        self.clock = clock
        self.on_idle = on_idle
        #: ModelInfer RPCs whose rows are queued or computing.
        self.busy = 0
        self.sessions: dict[str, HttpSession] = {}
        #: each connection's (peer's) stream requests read and not answered on the wire, while it has a stream
        self._backlogs: dict[str, _Backlog] = {}
        self._sweep_at = _SWEEP_AT
        self._server: grpc.aio.Server | None = None
        self._proxies = proxy_networks(self.config.trusted_proxy)
        #: grpc.health.v1: NOT_SERVING until :meth:`set_serving` says the server is ready
        self.health = _HealthServicer()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int, tls: tuple[bytes, bytes] | None = None, *,
                    reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port.  Raises ``OSError`` when the
        port cannot be bound.  ``reuse_port``: bind with ``SO_REUSEPORT`` (a ``--workers`` worker,
        whose supervisor reserved the port for its workers); without it a port already taken is
        refused, not shared."""
        interceptors = [_AccessRecords(self.access_log, self._client)] if self.access_log is not None else []
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", _c_int(self.config.max_message_bytes)),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if reuse_port else 0),  # grpc's default is 1: always set explicitly
            # RPCs at once on one HTTP/2 connection (more wait for one to end), as max_inflight
            # bounds a connection's unfinished requests
            ("grpc.max_concurrent_streams", _c_int(self.config.max_inflight)),
            # --max-connections: grpc's own count of its connections (accepted by grpc, they are
            # not among the WebSocket and HTTP ones); past it a new connection is closed at once
            *((("grpc.max_allowed_incoming_connections", _c_int(self.config.max_connections)),)
              if self.config.max_connections is not None else ()),
            # --handshake-timeout-s: a connection that has not completed its HTTP/2 (and TLS)
            # handshake by then is closed (grpc's default: 120 s)
            ("grpc.server_handshake_timeout_ms", _ms(self.config.handshake_timeout_s)),
            # --idle-timeout-s: a connection with no RPC for that long is closed (HTTP/2 GOAWAY)
            *((("grpc.max_connection_idle_ms", _ms(self.config.idle_timeout_s)),)
              if self.config.idle_timeout_s is not None else ()),
        ])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)
        for service in HEALTH_SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if tls is None:
                bound = server.add_insecure_port(address)
            else:
                bound = server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
        except RuntimeError as exc:  # grpc's "Failed to bind"
            raise OSError(f"cannot bind the gRPC port {address}: {exc}") from None
        if not bound:
            raise OSError(f"cannot bind the gRPC port {address}")
        await server.start()
        self._server = server
        return bound

    async def set_serving(self, serving: bool) -> None:
        """grpc.health.v1: the server became ready (``SERVING``), or began its drain
        (``NOT_SERVING`` for good: a later call changes nothing).  Open ``Watch`` streams are
        told at once."""
        if serving:
            for service in HEALTH_SERVICES:
                await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        else:
            await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float | None) -> None:
        """Stop listening; RPCs still running get ``grace_s`` (None: cancelled now).  Open health
        ``Watch`` streams end now (they would otherwise hold the stop for all of ``grace_s``)."""
        self.health.close()
        if self._server is not None:
            await self._server.stop(grace_s)

    def end_all(self, exc: WsserveError) -> None:
        """End every unfinished ModelInfer with ``exc`` (the drain deadline)."""
        for session in list(self.sessions.values()):
            session.end_all(exc)

    # ------------------------------------------------------------------ helpers

    async def _abort(self, context: grpc.aio.ServicerContext, exc: WsserveError) -> None:
        metadata = (("retry-after-ms", str(exc.retry_after_ms)),) if exc.retry_after_ms is not None else ()
        await context.abort(convert.status_of(exc), exc.message, metadata)

    def _client(self, context: grpc.aio.ServicerContext) -> str:
        """Who sent the RPC: its peer's address, or, when the peer is a ``--trusted-proxy`` (nginx's
        ``grpc_pass``), the client the proxy forwarded in its ``x-forwarded-for`` (else
        ``x-real-ip``) metadata, by HTTP's rule (:func:`~wsserve.admission.client_address`).
        Whose failed attempts count and who is loopback for the admin rule."""
        peer = _address(context.peer())
        if not self._proxies:
            return peer
        return client_address(peer, _MetadataHeaders(context.invocation_metadata()), self._proxies)

    async def _key(self, context: grpc.aio.ServicerContext, rpc: str | None = None, model: str = "") -> str | None:
        """The caller's API key (None with keys off); aborts UNAUTHENTICATED without a valid one
        (RESOURCE_EXHAUSTED while its address has failed too often).  ``rpc`` (``"ModelInfer"``,
        ``"ModelStreamInfer"``: the traced RPCs) and ``model``: with tracing on, a refusal is that
        RPC's span, ended at once with the error code (as an HTTP 401 is its route's)."""
        if not self.config.api_key:
            return None
        try:
            return check_bearer(self.api.keys, self._client(context), _authorization(context), self.clock())
        except WsserveError as exc:
            tracer = self.api.tracer
            if rpc is not None and tracer is not None:
                head = _grpc_head(model, rpc)
                if not model:  # a stream's requests (and their models) come after its metadata
                    del head["wsserve.model"]
                tracer.refused(_MODEL_INFER if rpc == "ModelInfer" else _MODEL_STREAM_INFER, *_trace_metadata(context),
                               self.clock(), head, exc.code)
            await self._abort(context, exc)
            raise  # not reached: abort raises

    def _may_admin(self, context: grpc.aio.ServicerContext, op: str) -> None:
        """:func:`~wsserve.rest.modelrepo.check_admin` for an RPC, HTTP's rule: with keys configured
        an admin key in the ``authorization`` metadata; without keys a loopback peer whose RPC no
        proxy forwarded (no ``forwarded``, ``x-forwarded-for``, ``x-real-ip`` metadata) and that
        is no browser's (no ``origin``: grpc gives no ``Host`` to check it against); its
        ``authorization`` then is not read (as no RPC reads it without keys).  Raises
        ``WsserveError``."""
        address = self._client(context)
        metadata = context.invocation_metadata() or ()
        forwarded = any(k in _PROXY_METADATA for k, _ in metadata)
        origin = next((v for k, v in metadata if k == "origin"), None)
        local = local_admin(address, None if origin is None else str(origin), None, forwarded)
        authorization = _authorization(context) if modelrepo.admin_keys_on(self.config) else None
        modelrepo.check_admin(self.config, self.api.keys, op, address=address, authorization=authorization,
                              local=local, now=self.clock())

    def _session(self, peer: str, now: float) -> HttpSession:
        session = self.sessions.get(peer)
        if session is None:
            if len(self.sessions) >= self._sweep_at:
                for old, s in list(self.sessions.items()):
                    if not s.calls and s.admission.fresh(now):
                        del self.sessions[old]
                self._sweep_at = max(_SWEEP_AT, 2 * len(self.sessions))
            api = self.api
            session = HttpSession(self.config, api.shared, api.metrics, self.clock, _address(peer), now)
            self.sessions[peer] = session
        return session

    async def _entry(self, context: grpc.aio.ServicerContext, name: str, version: str) -> Any:
        try:
            return self.api.lookup(name, version or None)
        except WsserveError as exc:
            await self._abort(context, exc)

    # ------------------------------------------------------------------ health and metadata

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.api.ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._key(context)
        try:
            self.api.lookup(request.name, request.version or None)
        except UnknownModel:  # unknown, or exists but not ready: false, as Triton answers both
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=self.api.ready())

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._key(context)
        return service_pb2.ServerMetadataResponse(name="wsserve", version=self.api.version,
                                                  extensions=self.api.extensions)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._key(context)
        entry = await self._entry(context, request.name, request.version)
        return convert.json_message(self.api.model_metadata(entry), service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._key(context)
        entry = await self._entry(context, request.name, request.version)
        return service_pb2.ModelConfigResponse(config=convert.model_config(self.api.model_config(entry)))

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._key(context)
        try:
            body = self.api.model_stats(request.name or None, request.version or None)
        except WsserveError as exc:
            await self._abort(context, exc)
        return convert.json_message(body, service_pb2.ModelStatisticsResponse())

    # ------------------------------------------------------------------ model repository extension

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """``POST /v2/repository/index``'s rows (:func:`~wsserve.rest.modelrepo.index_rows`);
        ``ready``: the ready versions only; ``repository_name`` must be empty."""
        await self._key(context)
        try:
            modelrepo.check_repository_name(request.repository_name)
        except WsserveError as exc:
            await self._abort(context, exc)
        api = self.api
        return convert.repository_index(modelrepo.index_rows(api.models, api.unloaded(), request.ready))

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._repository_op("load", request, context)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._repository_op("unload", request, context)
        return service_pb2.RepositoryModelUnloadResponse()

    async def _repository_op(self, op: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Load or unload as ``POST /v2/repository/models/{name}/load`` and ``/unload`` (same
        rule, parameters, admin hook); returns once the operation is done, aborts with its error.
        A cancelled RPC does not cancel the operation (as an HTTP client that leaves)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(result: Any) -> None:
            if not future.done():
                future.set_result(result)

        try:
            self._may_admin(context, op)
            admin = modelrepo.admin_hook(self.api.admin, op)
            name, version, config = convert.repository_op(op, request)
            admin(op, name, version, done, config)
        except WsserveError as exc:
            await self._abort(context, exc)
        result = await future
        if isinstance(result, WsserveError):
            await self._abort(context, result)

    # ------------------------------------------------------------------ logging extension

    async def LogSettings(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Triton's logging extension, as ``GET /v2/logging`` (no settings in the request: an API
        key when keys are configured) and ``POST /v2/logging`` (settings to change: an admin, the
        same rule) answer it; every setting now in force comes back."""
        await self._key(context)
        control = self.api.log_control
        try:
            if control is None:
                raise BadRequest("the logging extension is not offered by this server")
            if request.settings:
                self._may_admin(context, "changing log settings")
                changes = convert.log_changes(request.settings)
                settings = control.update(changes, lambda: log.warning(
                    "log settings changed by %s: %s", self._client(context), changes))
            else:
                settings = control.settings
        except WsserveError as exc:
            await self._abort(context, exc)
        return convert.log_settings(settings.as_dict())

    # ------------------------------------------------------------------ trace extension

    async def TraceSetting(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Triton's trace extension, as ``GET /v2[/models/{name}]/trace/setting`` (no settings in the
        request) and ``POST`` (settings to change, a setting with no value cleared: an admin) answer it."""
        await self._key(context)
        api = self.api
        try:
            if api.trace_control is None:
                raise BadRequest("the trace extension is not offered by this server")
            model = api.trace_model(request.model_name or None)
            if request.settings:
                self._may_admin(context, "changing trace settings")
                settings = api.trace_update(convert.trace_changes(request.settings), model, self._client(context))
            else:
                settings = api.trace_control.settings(model)
        except WsserveError as exc:
            await self._abort(context, exc)
        return convert.trace_settings(settings)

    # ------------------------------------------------------------------ shared memory extensions (Triton's)

    def _shm_access(self, context: grpc.aio.ServicerContext) -> Any:
        """The regions, for a ModelInfer naming one: HTTP's rule (the admin rule, :meth:`_may_admin`)."""
        self._may_admin(context, "using a shared memory region")
        return self.api.shm

    async def SystemSharedMemoryStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Every registered region, or ``name``'s (INVALID_ARGUMENT when it is not registered); HTTP's
        rule (the admin rule, :meth:`_may_admin`)."""
        try:
            self._may_admin(context, SHM_STATUS_OP)
            return convert.shm_status(self.api.shm.status(request.name or None))
        except WsserveError as exc:
            await self._abort(context, exc)

    async def SystemSharedMemoryRegister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """As ``POST /v2/systemsharedmemory/region/{name}/register`` (same rule and checks)."""
        try:
            self.api.check_shm_register(lambda: self._may_admin(context, "registering shared memory"))
            self.api.shm.register(request.name, request.key, request.offset, request.byte_size)
        except WsserveError as exc:
            await self._abort(context, exc)
        return service_pb2.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """One region (``name``), or every region (empty ``name``)."""
        try:
            self._may_admin(context, "unregistering shared memory")
            self.api.shm.unregister(request.name or None)
        except WsserveError as exc:
            await self._abort(context, exc)
        return service_pb2.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """None is ever registered (no GPUs): empty, or INVALID_ARGUMENT for a named region."""
        await self._key(context)
        if request.name:
            await self._abort(context, BadRequest(f"CUDA shared memory region {request.name[:256]!r} is not registered"))
        return service_pb2.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._key(context)
        await self._abort(context, BadRequest(CUDA_SHM_REFUSAL))

    async def CudaSharedMemoryUnregister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._key(context)
        return service_pb2.CudaSharedMemoryUnregisterResponse()

    # ------------------------------------------------------------------ inference

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Rows through the model's queue as an HTTP ``/infer``'s (:meth:`_infer`); a cancelled RPC
        (the client's, or its deadline) drops its queued rows."""
        key = await self._key(context, "ModelInfer", request.model_name)
        try:
            trace = _trace_metadata(context) if self.api.tracer is not None else (None, None)
            return await self._infer(request, key, context.peer(), context.time_remaining(), "ModelInfer", trace,
                                     shm=lambda: self._shm_access(context))
        except WsserveError as exc:
            await self._abort(context, exc)

    async def _infer(self, request: Any, key: str | None, peer: str, remaining: float | None, rpc: str,
                     trace: tuple[str | None, str | None] = (None, None), shm: Any = None,
                     call_type: type[InferCall] = GrpcInferCall, events: asyncio.Queue[Any] | None = None,
                     flow: _StreamFlow | None = None) -> Any:
        """One ``ModelInferRequest`` of a predictive model: its rows through the model's queue as
        an HTTP ``/infer``'s (same checks, admission, batching with other rows, limits, metrics);
        returns its ``ModelInferResponse`` (the requested outputs as raw contents, ``id`` echoed).

        ``peer``: whose session (admission, in-flight bounds) the request counts against;
        ``remaining``: the RPC's seconds left (its deadline bounds the rows' time in the queue too),
        None without a deadline; ``rpc``: the RPC named in the log of a bug and in its span;
        ``trace``: the RPC's W3C ``traceparent`` and ``tracestate`` metadata (with tracing on);
        ``shm``: the shared memory regions a tensor may name (an
        :data:`~wsserve.rest.oip.ShmAccess`; None: refused).  ``call_type``
        :class:`GrpcDecoupledCall` (a decoupled model's request on a stream): its responses go to
        ``events`` and the call is returned once queued (else a decoupled model is refused as
        Triton refuses it on ModelInfer); ``flow``: the ModelStreamInfer stream's (its requests
        waiting for a sequence slot, :class:`_StreamFlow`).  Raises
        ``WsserveError`` (a request refused before any work is counted as rejected; a bug is
        logged and raised as ``Internal``).  Cancelled, it drops its queued rows."""
        api, cfg = self.api, self.config
        now = self.clock()
        name = request.model_name
        span_name = _MODEL_INFER if rpc == "ModelInfer" else _MODEL_STREAM_INFER
        session = self._session(peer, now)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            session.admission.admit(key, now)
            entry = api.lookup(name, request.model_version or None)
            if entry.kind != "predict":
                raise BadRequest(f"model {name!r} generates text: use ModelStreamInfer (text_input, stream: as Triton's "
                                 "vLLM backend), or over HTTP POST /v1/completions or Triton's generate extension")
            if entry.decoupled and call_type is GrpcInferCall:  # Triton's answer (grpc/infer_handler.cc)
                raise decoupled_refusal("ModelInfer RPC doesn't support models with decoupled transaction policy")
            inputs, outputs = api.signature(entry)
            if not inputs or not outputs:
                raise BadRequest(f"model {name!r} declares no input or output tensors")
            req = convert.parse_infer(request, inputs, outputs, max_rows=cfg.max_rows,
                                      explain_refusal=entry.explain_refusal, shm=shm,
                                      max_message_bytes=cfg.max_message_bytes)
            if remaining is not None:
                req.timeout_us = max(1, min(req.timeout_us or 1 << 62, int(remaining * 1e6)))
            extra: dict[str, Any] = {"events": events} if call_type is GrpcDecoupledCall \
                else {"future": future, "flow": flow}
            call = api.queue_infer(session, entry, req, inputs, outputs, now, call_type, None, None, **extra)
        except WsserveError as exc:
            api.rejected(exc, name, "predict")
            if api.tracer is not None:
                api.tracer.refused(span_name, *trace, now, _grpc_head(name, rpc), exc.code)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: this request fails, the others go on
            raise _internal(rpc, name, exc) from None
        session.track(call)
        if api.tracer is not None:
            head = _grpc_head(name, rpc)
            if call.rid is not None:
                head["wsserve.request_id"] = call.rid
            call.span = api.tracer.begin(span_name, *trace, now, head)
        if call_type is GrpcDecoupledCall:
            return call
        self.busy += 1
        try:
            values, parameters, written = await future
        except asyncio.CancelledError:  # the client cancelled, or the deadline passed
            call.abort()
            raise
        except WsserveError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: this request fails, the others go on
            raise _internal(rpc, name, exc) from None
        finally:
            self.busy -= 1
            if not self.busy:
                self.on_idle()
        try:
            return convert.infer_response(call.model, call.version, call.rid, call.outputs, call.requested, values,
                                          parameters, written)
        except Exception as exc:  # noqa: BLE001 - a bug: this request fails, the others go on
            raise _internal(rpc, name, exc) from None

    # ------------------------------------------------------------------ generation

    async def ModelStreamInfer(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        """Any model's requests, as Triton's stream answers them: a generative model's generation
        as Triton's vLLM backend (a decoupled model) streams it (:meth:`_generate`); a predictive
        model's request exactly as ModelInfer runs it (:meth:`_stream_infer`), answered by one
        response.  Each request on the stream runs concurrently with the others (its failure is an
        ``error_message`` response; the stream goes on); the stream ends when the client's side has
        ended and every request has.  The predictive requests' responses are written in the order
        the requests came (as Triton writes a non-decoupled model's), a generation's as they come.
        At most ``max_inflight`` requests of a stream are handled at once (a refused one until its
        error is written): the next one is read from the stream only when one of them ends, so a
        client that sends without reading cannot pile up work.  A request waiting for its sequence
        to be given a slot (a stateful model's, :class:`_StreamFlow`) is not counted meanwhile, nor,
        while one waits, the answers computed behind it (up to ``max_write_buffer_bytes``): the
        model's queue bounds the former, and the request ending a sequence that holds a slot, sent
        behind them, must be read for them to get one.  Nor is a request read while the streams of
        the connection hold more than ``max_write_buffer_bytes`` for their predictive requests not
        yet answered on the wire (:class:`_Backlog`), unless a request of one of them waits for a slot."""
        key = await self._key(context, "ModelStreamInfer")
        peer = context.peer()
        lock = asyncio.Lock()
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()

        async def write(response: Any) -> None:
            async with lock:
                await context.write(response)

        bound = self.config.max_inflight
        limit = self.config.max_write_buffer_bytes
        turn: asyncio.Future[None] | None = None  # set once the previous request's predictive response is written
        trace = _trace_metadata(context) if self.api.tracer is not None else (None, None)
        backlog = self._backlogs.get(peer)
        if backlog is None:
            backlog = self._backlogs[peer] = _Backlog()
        backlog.streams += 1
        flow = _StreamFlow(limit, backlog)
        failed: list[BaseException] = []  # a request's task that raised (a write failed: the RPC is gone)

        def ended(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:  # (retrieved: the stream raises it)
                failed.append(task.exception())  # type: ignore[arg-type]

        def shm() -> Any:  # a request naming a shared memory region: the stream's caller must be allowed
            return self._shm_access(context)

        try:
            async for request in requests:
                # no more read from the stream until one ends (its answer written) or waits for a
                # slot, or an answer is parked behind one that waits for a slot (_StreamFlow.free);
                # nor while the connection's streams hold more than the limit (_Backlog; unless a
                # request of one of them waits for a slot: the END that frees it may be next)
                while len(tasks) - flow.free() >= bound or backlog.over_limit(limit):
                    flow.more.clear()
                    backlog.drained.clear()
                    more = loop.create_task(flow.more.wait())
                    drained = loop.create_task(backlog.drained.wait())
                    try:
                        await asyncio.wait((*tasks, more, drained), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        more.cancel()
                        drained.cancel()
                    if failed:  # as gather() below would: the stream ends with it, its other requests cancelled
                        raise failed[0]
                held = _Held(backlog, request.ByteSize())
                after: asyncio.Future[None] = loop.create_future()
                task = loop.create_task(self._stream_request(request, key, peer, context.time_remaining(), write,
                                                             turn, after, trace, shm, flow, held))
                turn = after
                tasks.add(task)
                task.add_done_callback(ended)
                task.add_done_callback(held.release)
            if tasks:
                await asyncio.gather(*tasks)
            if failed:
                raise failed[0]
        finally:
            for task in list(tasks):  # the stream was cancelled: so are its requests
                task.cancel()
            backlog.streams -= 1
            if not backlog.streams and self._backlogs.get(peer) is backlog:
                del self._backlogs[peer]

    async def _stream_request(self, request: Any, key: str | None, peer: str, remaining: float | None,
                              write: Callable[[Any], Any], before: asyncio.Future[None] | None,
                              after: asyncio.Future[None], trace: tuple[str | None, str | None],
                              shm: Any = None, flow: _StreamFlow | None = None, held: _Held | None = None) -> None:
        """One request of a ModelStreamInfer stream, by its model's kind (looked up in the same
        step as the request's own lookup: no load between them): a generation (its responses are
        not ordered: ``after`` is set with ``before``), else :meth:`_stream_infer` (an unknown
        model's error too, as Triton orders it).  ``trace``: the stream's W3C ``traceparent`` and
        ``tracestate`` metadata (each request's span is a child of it); ``shm``: the shared memory
        regions a predictive request may name (:meth:`_infer`); ``held``: what it counts in its
        connection's :class:`_Backlog` (a generation and a decoupled request count no more once
        started: they are bounded as running requests, their responses by their own bounds)."""
        kind = self._kind(request)
        if kind == "generate":
            _chain(before, after)
            if held is not None:
                held.release()
            await self._generate(request, key, peer, write, trace)
        elif kind == "decoupled":
            _chain(before, after)
            if held is not None:
                held.release()
            await self._stream_decoupled(request, key, peer, remaining, write, trace, shm)
        else:
            await self._stream_infer(request, key, peer, remaining, write, before, after, trace, shm, flow, held)

    def _kind(self, request: Any) -> str:
        """``"generate"`` when ``request`` names a generative model that is ready, ``"decoupled"`` a
        decoupled one, else ``"predict"`` (an unknown model's too; a lookup only)."""
        try:
            entry = self.api.lookup(request.model_name, request.model_version or None)
        except WsserveError:
            return "predict"
        return "decoupled" if entry.decoupled else entry.kind

    async def _stream_decoupled(self, request: Any, key: str | None, peer: str, remaining: float | None,
                                write: Callable[[Any], Any], trace: tuple[str | None, str | None],
                                shm: Any = None) -> None:
        """A decoupled model's request on a stream (checked and admitted as :meth:`_infer` does):
        each response the model sends is one stream message, as it comes (``triton_final_response``
        true on the one sent with the FINAL flag, false on the others); a FINAL sent without a
        response is an empty response with ``triton_final_response`` true when the request's
        ``triton_enable_empty_final_response`` parameter is true (as Triton's), else nothing.  An
        error (a refusal, the model's, a slow consumer's) is an ``error_message`` response and ends
        the request.  Cancelled (the stream ended), the model sees the request cancelled."""
        name, rid = request.model_name, request.id or None
        empty_final = request.parameters["triton_enable_empty_final_response"].bool_param \
            if "triton_enable_empty_final_response" in request.parameters else False
        events: asyncio.Queue[Any] = asyncio.Queue()
        try:
            call = await self._infer(request, key, peer, remaining, "ModelStreamInfer", trace, shm,
                                     call_type=GrpcDecoupledCall, events=events)
        except WsserveError as exc:
            await write(convert.stream_error(exc, name, rid))
            return
        self.busy += 1
        try:
            while True:
                event = await events.get()
                if event[0] == "response":
                    _, values, parameters, written, final, nbytes, present = event
                    response = convert.infer_response(call.model, call.version, call.rid, call.outputs,
                                                      present, values, parameters, written)
                    response.parameters["triton_final_response"].bool_param = final
                    await write(service_pb2.ModelStreamInferResponse(infer_response=response))
                    call.item.written(nbytes)
                    if final:
                        return
                elif event[0] == "final":
                    if empty_final:
                        response = service_pb2.ModelInferResponse(model_name=call.model, model_version=call.version,
                                                                  id=call.rid or "")
                        response.parameters["triton_final_response"].bool_param = True
                        await write(service_pb2.ModelStreamInferResponse(infer_response=response))
                    return
                else:
                    await write(convert.stream_error(event[1], name, rid))
                    return
        except BaseException:  # cancelled, or the write failed: the model sees its request cancelled
            call.abort()
            raise
        finally:
            self.busy -= 1
            if not self.busy:
                self.on_idle()

    async def _stream_infer(self, request: Any, key: str | None, peer: str, remaining: float | None,
                            write: Callable[[Any], Any], before: asyncio.Future[None] | None,
                            after: asyncio.Future[None], trace: tuple[str | None, str | None],
                            shm: Any = None, flow: _StreamFlow | None = None, held: _Held | None = None) -> None:
        """A predictive model's request on a stream, run as ModelInfer runs it (:meth:`_infer`):
        one response, its ``infer_response`` ModelInfer's answer (with ``triton_final_response``
        true, as Triton marks every stream response), or its ``error_message``.  It is written once
        ``before`` is set (the previous predictive response was written); ``after`` is set once
        this one was written or the request ended otherwise (cancelled, the write failed).
        ``held``: its bytes in its connection's :class:`_Backlog`, its answer's added."""
        try:
            try:
                response = await self._infer(request, key, peer, remaining, "ModelStreamInfer", trace, shm,
                                             flow=flow)
                response.parameters["triton_final_response"].bool_param = True
                message = service_pb2.ModelStreamInferResponse(infer_response=response)
            except WsserveError as exc:
                message = convert.stream_error(exc, request.model_name, request.id or None)
            nbytes = message.ByteSize()
            if held is not None:
                held.add(nbytes)
            if before is not None and not before.done():
                cost = flow.park(nbytes) if flow is not None else 0
                try:
                    await asyncio.shield(before)  # (cancelled, this task leaves ``before`` to its own)
                finally:
                    if flow is not None:
                        flow.unpark(cost)
            await write(message)
        finally:
            if not after.done():
                after.set_result(None)

    async def _generate(self, request: Any, key: str | None, peer: str, write: Callable[[Any], Any],
                        trace: tuple[str | None, str | None] = (None, None)) -> None:
        """One generation of a ModelStreamInfer stream; ``trace``: the stream's W3C ``traceparent``
        and ``tracestate`` metadata (its span is a child of it)."""
        api, cfg = self.api, self.config
        now = self.clock()
        name, rid = request.model_name, request.id or None
        session = self._session(peer, now)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        try:
            session.admission.admit(key, now)
            entry = api.lookup(name, request.model_version or None)  # a generative one (_stream_request)
            obj = convert.generate_request(request)
            wanted = convert.requested_outputs(request)
            completion, rid, outputs, prepend = parse_generate(obj, model=name, stream=convert.stream_flag(obj),
                                                               max_tokens_limit=cfg.max_tokens)
            session.admission.capacity(session.inflight, session.inflight_bytes, 0)
            exchange = _QueueExchange(queue, cfg.max_write_buffer_bytes)
            encoder = (convert.StreamEncoder(prepend) if outputs is None
                       else convert.StreamOutputsEncoder(outputs, prepend))
            call = exchange.call = GrpcGenerateCall(session, exchange, entry, now, completion,  # type: ignore[arg-type]
                                                    encoder, None, style="oip")  # type: ignore[arg-type]
            call.client = compile_client(key, session.address)  # (the TCP peer's address without a key)
            call.submit(completion.params, session)
            if type(encoder) is convert.StreamOutputsEncoder:  # its events' num_input_tokens
                encoder.prompt_tokens = call.choices[0].handle.prompt_tokens
        except WsserveError as exc:
            api.rejected(exc, name, "generate")
            if api.tracer is not None:
                head = _grpc_head(name, "ModelStreamInfer")
                if rid:
                    head["wsserve.request_id"] = str(rid)[:256]
                api.tracer.refused(_MODEL_STREAM_INFER, *trace, now, head, exc.code)
            await write(convert.stream_error(exc, name, rid))
            return
        except Exception as exc:  # noqa: BLE001 - a bug: this request fails, the others go on
            log.error("ModelStreamInfer of %r failed: %s: %s", name, type(exc).__name__, exc)
            await write(convert.stream_error(Internal("internal error"), name, rid))
            return
        session.track(call)
        if api.tracer is not None:
            head = generate_span_head("grpc", name, completion, False)
            head.update(_grpc_head(name, "ModelStreamInfer"))
            if rid:
                head["wsserve.request_id"] = str(rid)[:256]
            call.span = api.tracer.begin(_MODEL_STREAM_INFER, *trace, now, head)
        if completion.stream:
            call.start_stream()
        self.busy += 1
        model, version = call.model, call.version
        try:
            # each token (its bytes, its outputs) waits for the next event: the last one is flagged final
            held: tuple[bytes, Any] | None = None
            ended: Any = None  # the outputs of the stream's end (no token)
            while True:
                event = await queue.get()
                kind = event[0]
                if kind == "token":
                    if held is not None:
                        await write(convert.stream_text(model, version, rid, *held, final=False, wanted=wanted))
                        exchange.pending -= convert.token_bytes(*held)
                    held = event[1:]
                elif kind == "end":
                    ended = event[2]
                elif kind == "tail" or kind == "full":
                    text, outputs = event[1:] if kind == "full" else _last(held, ended)
                    await write(convert.stream_text(model, version, rid, text, outputs, final=True, wanted=wanted))
                    return
                elif kind == "error":  # the token held for the final flag goes first: it was generated
                    if held is not None:
                        await write(convert.stream_text(model, version, rid, *held, final=False, wanted=wanted))
                    await write(convert.stream_error(event[1], model, rid))
                    return
        except BaseException:  # cancelled, or the write failed: the generation stops (a no-op once it ended)
            call.abort()
            raise
        finally:
            self.busy -= 1
            if not self.busy:
                self.on_idle()


def _chain(before: asyncio.Future[None] | None, after: asyncio.Future[None]) -> None:
    """Set ``after`` once ``before`` is set (now, when there is none or it is)."""
    if before is None or before.done():
        after.set_result(None)
    else:
        before.add_done_callback(lambda _: after.done() or after.set_result(None))


def _internal(rpc: str, name: str, exc: Exception) -> Internal:
    """A bug met while answering ``rpc`` for model ``name``: logged; the request fails with
    ``internal error`` (the others go on)."""
    log.error("%s of %r failed: %s: %s", rpc, name, type(exc).__name__, exc)
    return Internal("internal error")


def _last(held: tuple[bytes, Any] | None, ended: Any) -> tuple[bytes, Any]:
    """The text and outputs of a stream's last response: its last token (``held``) with the
    finish reason of its end (as the vLLM backend's last response is its last token's), or with
    no token left (stop strings are not sent), the end's own outputs."""
    if held is None:
        return b"", ended
    text, outputs = held
    if outputs is not None and ended is not None:
        if "finish_reason" in outputs:
            outputs = {**outputs, "finish_reason": ended["finish_reason"]}
        if "num_output_tokens" in outputs:  # the tokens generated but not sent (a stop token) count there
            outputs = {**outputs, "num_output_tokens": outputs["num_output_tokens"] + ended["num_output_tokens"]}
    return text, outputs


def _unimplemented(name: str) -> Callable[..., Any]:
    async def method(self: GrpcFrontend, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            f"{name} is not implemented by wsserve (its gRPC endpoint answers: {', '.join(IMPLEMENTED)})")

    method.__name__ = name
    return method


def _install_unimplemented() -> None:
    """Every RPC of the service not in :data:`IMPLEMENTED` answers UNIMPLEMENTED (as an async
    handler: the generated base class's are synchronous)."""
    for name in UNIMPLEMENTED:
        setattr(GrpcFrontend, name, _unimplemented(name))


_install_unimplemented()
