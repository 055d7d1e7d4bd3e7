"""The wsserve server: models + pool + one listener (HTTP and WebSocket) + lifecycle.

Call order::

    server = Server(config, models)      # models: name -> in-process model object (optional)
    await server.start()                 # pool workers, listening socket
    ...                                  # server.url, server.port
    await server.drain()                 # PROTOCOL.md "Shutdown"; idempotent
    await server.close()                 # stop listening, stop workers; idempotent

:func:`run` does all of it for the CLI: trains the default models, serves,
prints the ``ws://HOST:PORT`` line, drains on SIGINT/SIGTERM, and exits at
once on a second signal.

The server is the :class:`~wsserve.transport.app.App` of the transport: it
hands plain HTTP requests to its :class:`~wsserve.rest.HttpApi` (the API
routes, plus the health, metrics and static routes it adds there), vets
WebSocket handshakes (path, draining, origin, Bearer key, connection cap) and
creates one sans-I/O :class:`~wsserve.connection.Connection` per accepted
socket, giving it a narrow :class:`~wsserve.connection.ConnectionContext`
(never itself).  ``--max-connections`` counts WebSocket connections and HTTP
connections that made a work request (predict, infer, completion).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import os
import signal
import ssl
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from time import monotonic, time
from typing import Any

from websockets.datastructures import Headers

from ._version import __version__
from .admission import (
    Handshake,
    check_bearer,
    local_admin,
    origin_allowed,
    proxied,
    proxy_networks,
)
from .auth import KeyRegistry
from .config import ServerConfig
from .connection import Connection, ConnectionContext, ConnectionIO, Shared
from .errors import Forbidden, RateLimited, ShuttingDown, Unauthorized, WsserveError
from .httpmsg import HttpExchange
from .logcontrol import LogControl
from .logs import AccessLog, RedactSecrets
from .metrics import CONTENT_TYPE, Metrics
from .pool import ModelPool
from .protocol import encode_hello
from .registry import ModelRegistry
from .rest import HttpApi
from .tracesettings import TraceControl
from .transport import Flusher, HttpProtocol, HttpRequest, HttpResponse
from .transport.app import Counters

__all__ = ["ListenError", "Server", "exit_after_drain_s", "run"]

log = logging.getLogger("wsserve.server")

#: After the drain deadline: how long connections ended with ``shutting_down`` get to close
#: before their transports are aborted (:meth:`Server.drain`).
CLOSE_AFTER_DRAIN_S = 2.0
#: The least time model code still running gets in :meth:`Server.close` (a generation step, a
#: ``Model.close()`` of a version being unloaded) before it is abandoned.
MODEL_CODE_GRACE_S = 2.0
#: How long a process waits for threads stuck in model code before ``os._exit``
#: (:func:`exit_past_stuck_threads`).
STUCK_THREAD_GRACE_S = 2.0
#: The longest a server process takes to exit after its drain deadline: the sum of the three.
#: Deployments give a stop this much more than the drain (docs/deploy.md, deploy/).
EXIT_AFTER_DRAIN_S = CLOSE_AFTER_DRAIN_S + MODEL_CODE_GRACE_S + STUCK_THREAD_GRACE_S


def exit_after_drain_s(config: ServerConfig) -> float:
    """The longest a server process of ``config`` takes to exit after its drain deadline:
    :data:`EXIT_AFTER_DRAIN_S`, plus, with ``--otlp-traces-endpoint``, the export of the last spans
    at its close (:data:`wsserve.tracing.CLOSE_TIMEOUT_S`, waited for a collector that does not answer)."""
    if config.otlp_traces_endpoint is None:
        return EXIT_AFTER_DRAIN_S
    from .tracing import CLOSE_TIMEOUT_S

    return EXIT_AFTER_DRAIN_S + CLOSE_TIMEOUT_S

_STATIC = resources.files("wsserve") / "static"
_FALLBACK_PAGE = b"""<!doctype html><meta charset=utf-8><title>wsserve</title>
<h1>wsserve</h1><p>WebSocket inference server. Connect to this URL with a WebSocket client;
see <a href=/v1/models>/v1/models</a>, <a href=/metrics>/metrics</a>.</p>"""

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")


class ListenError(OSError):
    """The listening socket could not be opened: the port is taken, or the address is not this
    machine's (the CLI's "cannot listen on HOST:PORT")."""


class Server:
    """One wsserve server process's state.  Not thread-safe: use from its loop."""

    def __init__(self, config: ServerConfig, models: dict[str, Any] | None = None, *,
                 builtin_repository: Path | None = None, worker: int | None = None,
                 metrics_dir: Path | None = None) -> None:
        """``models``: in-process model objects to serve (name -> model: ``wsserve.FunctionModel``,
        ``wsserve.onnx_model(...)``, any predictive model with ``predict`` and ``info``, or a
        generative one, see :mod:`wsserve.generation.model`; see
        :meth:`~wsserve.registry.ModelRegistry.serve_object`, which raises for a bad one);
        ``builtin_repository``: where the trainer wrote the default models (``config.models``
        of it are served); ``config.model_repository``: the operator's repositories;
        ``worker``/``metrics_dir``: this process's index among ``--workers`` and the directory
        where workers share their metrics (the port is then shared with ``SO_REUSEPORT``)."""
        self.config = config.validate(in_process_models=bool(models))
        self.server_header = f"wsserve/{__version__}"
        self.trusted_proxies = proxy_networks(config.trusted_proxy)
        self.worker = worker
        self.access_log = (AccessLog(config.log_format, config.secrets, None if worker is None else str(worker))
                           if config.access_log else None)
        self.metrics = Metrics(version=__version__, read_state=self._state, worker=worker, peers_dir=metrics_dir)
        #: Triton's trace extension: which requests get a span (their settings, changed at run time)
        self.trace_control = TraceControl(enabled=config.otlp_traces_endpoint is not None)
        #: --otlp-traces-endpoint: request spans (wsserve.tracing, the only OpenTelemetry importer); None: off
        self.tracing = _tracing(self.config, self.trace_control)
        self.flusher = Flusher()
        self.counters = Counters()
        self.pool = ModelPool(self.config, observer=self.metrics, after_batch=self.flusher.flush)
        self.registry = ModelRegistry(self.pool, builtin=builtin_repository, builtin_names=config.models,
                                      repositories=config.model_repository,
                                      model_load_timeout_s=self.config.model_load_timeout_s,
                                      max_npz_bytes=self.config.max_npz_bytes,
                                      custom_metrics=self.metrics.custom)
        for name, model in (models or {}).items():
            self.registry.serve_object(name, model)
        self.pool.on_change = self._set_hello
        self.keys = KeyRegistry(config.api_key, admin_keys=config.admin_key, metrics_key=config.metrics_key)
        self.shared = Shared()
        self.connections: set[Connection] = set()
        self.ctx = ConnectionContext(
            config=self.config,
            models=self.pool,
            metrics=self.metrics,
            keys=self.keys,
            shared=self.shared,
            hello=b"",  # set by start(), once the repositories are loaded
            clock=monotonic,
            admin=self._admin if (config.model_repository or builtin_repository) else None,
            tracer=self.tracing,
        )
        self.ready = False
        self._set_hello()
        self._static = _load_static()
        # Run-time settings (Triton's logging and trace extensions) change one process: not under --workers.
        fixed = None if worker is None else ("changing {what} is not available with --workers: each worker process "
                                             "has its own, and a request reaches one of them")
        self.api = HttpApi(
            config=self.config, models=self.pool, metrics=self.metrics, keys=self.keys, shared=self.shared,
            version=__version__, clock=monotonic, wall_clock=time,
            ready=lambda: self.ready and not self._draining, slot_free=self._slot_free,
            admin=self.ctx.admin, unloaded=self.registry.unloaded_names, tracer=self.tracing,
            trace_control=self.trace_control,
            log_control=LogControl.from_logging(self.config.log_format, requires=RedactSecrets,
                                                fixed=None if fixed is None else fixed.format(what="log settings")),
            settings_fixed=fixed,
            shared_memory=worker is None,
        )
        add = self.api.add_route
        add("GET", "/healthz", self._healthz, auth="none", style=None)
        add("GET", "/readyz", self._readyz, auth="none", style=None)
        add("GET", "/health", self._readyz, auth="none", style=None)  # vLLM's and TGI's name for it
        add("GET", "/metrics", self._metrics, auth="metrics", style=None)
        for page in ("/", "/index.html"):
            add("GET", page, self._index, auth="none", style=None)
        add("GET", "/static/{file}", self._static_file, auth="none", style=None)
        self._protocols: set[Any] = set()  # every open TCP connection's protocol (HTTP or WebSocket)
        self._listener: asyncio.base_events.Server | None = None
        self._all_closed = asyncio.Event()  # set while draining once no WebSocket connection is left
        self._drained = asyncio.Event()
        self._draining = False
        self._drain_deadline: float | None = None  # monotonic, once a drain began
        self._closed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port: int = 0
        self._watch_stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._grpc: Any = None  # the gRPC front end (wsserve.oipgrpc), with --grpc-port
        self.grpc_port: int | None = None

    @property
    def draining(self) -> bool:
        return self._draining

    # -- lifecycle

    @property
    def url(self) -> str:
        return self.config.url(self.port)

    async def start(self) -> None:
        """Start workers and listen.  Raises :class:`ListenError` if the port is taken (or the
        address is not this machine's); any other ``OSError`` is about a file (models, caches)."""
        self.loop = asyncio.get_running_loop()
        await self.pool.start()
        await self.registry.load_all()
        cfg = self.config
        ssl_ctx = None
        if cfg.certfile:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(str(cfg.certfile), str(cfg.keyfile))
        try:
            self._listener = await self.loop.create_server(
                lambda: HttpProtocol(self), cfg.host, cfg.port, ssl=ssl_ctx, reuse_port=self.worker is not None
            )
        except OSError as exc:
            raise ListenError(exc.errno, exc.strerror or str(exc)) from exc
        self.port = self._listener.sockets[0].getsockname()[1]
        if cfg.grpc_port is not None:
            await self._start_grpc(cfg.grpc_port)
        if cfg.reload:
            self._spawn(self._watch(), "wsserve-reload")
        if self.worker is not None:
            self._spawn(self._share_metrics(), "wsserve-metrics")
        self.ready = True
        if self._grpc is not None:
            await self._grpc.set_serving(True)
        log.info("serving %s on %s", ", ".join(self.pool.names), self.url)

    async def _start_grpc(self, port: int) -> None:
        """The Open Inference Protocol over gRPC on ``port`` (0: a free one), logged; TLS as the
        main port's.  A ``--workers`` worker binds it with ``SO_REUSEPORT``, as the main port (the
        supervisor reserved it, and the kernel spreads new HTTP/2 connections over the workers);
        one process binds it alone.  Raises :class:`ListenError` if the port cannot be bound."""
        from .oipgrpc.service import GrpcFrontend

        cfg = self.config
        tls = None
        if cfg.certfile:
            tls = (Path(cfg.certfile).read_bytes(), Path(cfg.keyfile).read_bytes())  # type: ignore[arg-type]
        self._grpc = GrpcFrontend(self.api, clock=monotonic, on_idle=self._note_closed, access_log=self.access_log)
        try:
            self.grpc_port = await self._grpc.start(cfg.host, port, tls, reuse_port=self.worker is not None)
        except OSError as exc:
            self._grpc = None
            raise ListenError(exc.errno, f"gRPC port {port}: {exc.strerror or exc}") from exc
        log.info("gRPC (Open Inference Protocol) on %s:%d", cfg.host, self.grpc_port)

    async def drain(self, timeout_s: float | None = None) -> None:
        """Graceful drain as in PROTOCOL.md; returns when every connection is closed
        or the deadline has passed and the rest were ended with ``shutting_down``."""
        if self._draining:
            await self._drained.wait()
            return
        timeout_s = self.config.drain_timeout_s if timeout_s is None else timeout_s
        self._drain_deadline = monotonic() + timeout_s
        self._draining = self.shared.draining = True
        self.ready = False
        if self._grpc is not None:
            await self._grpc.set_serving(False)  # grpc.health.v1: NOT_SERVING, as /readyz answers 503
        log.info("draining %d connections (%d requests in flight), deadline %.1fs",
                 len(self.connections), self.shared.inflight, timeout_s)
        for conn in list(self.connections):
            conn.drain(int(timeout_s * 1000))
        for proto in list(self._protocols):
            if isinstance(proto, HttpProtocol):
                proto.drain()  # idle: closed now; else after the answers it owes
        self.flusher.flush()
        self._note_closed()
        try:
            async with asyncio.timeout(timeout_s):
                await self._all_closed.wait()
        except TimeoutError:
            for conn in list(self.connections):
                conn.end_all(ShuttingDown("drain deadline reached"))
                conn.close(1001, "server shutting down")
            self.api.end_all(ShuttingDown("drain deadline reached"))  # HTTP calls: 503, then the connection closes
            if self._grpc is not None:
                self._grpc.end_all(ShuttingDown("drain deadline reached"))  # gRPC: UNAVAILABLE
            self.flusher.flush()
            try:
                async with asyncio.timeout(CLOSE_AFTER_DRAIN_S):
                    await self._all_closed.wait()
            except TimeoutError:
                for proto in list(self._protocols):
                    transport = getattr(proto, "transport", None)
                    if transport is not None:
                        transport.abort()
        self._drained.set()

    async def close(self) -> None:
        """Stop listening, close what is left and stop the workers (after :meth:`drain` for a graceful stop)."""
        if self._closed:
            return
        self._closed = True
        self.ready = False
        self._watch_stop.set()
        if self._listener is not None:
            self._listener.close()
        if self._grpc is not None:  # after a drain nothing is in flight; without one, RPCs are cancelled now
            await self._grpc.set_serving(False)
            await self._grpc.stop(CLOSE_AFTER_DRAIN_S if self._drained.is_set() else None)
        for proto in list(self._protocols):
            if isinstance(proto, HttpProtocol):
                proto.close()
            else:
                proto.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        self.api.close()  # shared memory regions unregistered (their files closed)
        await self.registry.stop()  # a load still running is abandoned, not served
        # What is left ends now; model code still running (a generation step, a Model.close() of a
        # version being unloaded) gets until the drain deadline (at least MODEL_CODE_GRACE_S more;
        # without a drain, --drain-timeout), then is abandoned, logged: a model that never returns
        # cannot hold the server forever.
        deadline = self._drain_deadline
        end = monotonic() + (self.config.drain_timeout_s if deadline is None
                             else max(MODEL_CODE_GRACE_S, deadline - monotonic()))
        try:
            async with asyncio.timeout(end - monotonic()):
                await self.pool.close()  # retiring versions then finish closing
        except TimeoutError:
            log.warning("gave up waiting for the models to stop: model code is still running")
        await self.registry.wait_retired(max(0.0, end - monotonic()))
        if self.access_log is not None:
            self.access_log.flush()
        if self.tracing is not None:  # the last spans, bounded (a collector that is down: dropped)
            await asyncio.get_running_loop().run_in_executor(None, self.tracing.close)

    def _note_closed(self) -> None:
        """While draining: set ``_all_closed`` once no WebSocket is open, no HTTP connection owes answers
        and no gRPC ModelInfer is in flight."""
        if self._draining and not self.connections and not (self._grpc is not None and self._grpc.busy) and not any(
            p.busy for p in self._protocols if isinstance(p, HttpProtocol)
        ):
            self._all_closed.set()

    # -- models

    def _set_hello(self) -> None:
        """The ``hello`` frame: limits and the served model names (as of start-up)."""
        import dataclasses

        hello = encode_hello(version=__version__, limits=self.config.public_limits(), models=self.pool.names,
                             auth_required=bool(self.config.api_key))
        self.ctx = dataclasses.replace(self.ctx, hello=hello)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        try:
            await self.registry.watch(self._watch_stop)
        except Exception:  # noqa: BLE001 - e.g. the repository vanished: log, keep serving
            log.exception("watching the model repository stopped")

    async def _share_metrics(self) -> None:
        """Write this worker's metrics for the other workers twice a second (and once at the end).
        A failed write (a full disk) is logged once and tried again at the next one: the task goes on."""
        failing = False
        try:
            while True:
                try:
                    self.metrics.write_snapshot()
                    failing = False
                except OSError as exc:
                    if not failing:
                        log.warning("cannot write this worker's metrics for the other workers: %s", exc)
                    failing = True
                await asyncio.sleep(0.5)
        finally:
            with contextlib.suppress(OSError):
                self.metrics.write_snapshot()

    def _admin(self, op: str, name: str, version: str | None, done: Any, config: str | None = None) -> None:
        """The connections' admin hook: run the operation, then hand ``done`` its result.

        Under ``--workers`` each worker process has its own models and a connection reaches
        one of them, so an operation would change one worker only: it is refused, and models
        change through the repository, which every worker watches with ``--reload``.  While the
        server drains a new operation is refused (``shutting_down``), as any new work."""
        if self.worker is not None:
            done(Forbidden(f"{op} is not available with --workers: each worker process has its own models; "
                           "change the model repository instead (every worker reloads it with --reload)"))
            return
        if self._draining:  # as any new work (an operation already running finishes)
            done(ShuttingDown("server is draining; no new work is accepted"))
            return

        async def run() -> None:
            try:
                result: Any = await self.registry.admin(op, name, version, config)
            except WsserveError as exc:
                result = exc
            except Exception as exc:  # noqa: BLE001
                log.exception("%s of model %r failed", op, name)
                from .errors import Internal

                result = Internal(f"{op} failed: {type(exc).__name__}: {exc}")
            done(result)

        self._spawn(run(), f"wsserve-{op}-{name}")

    # -- App: connections

    def open_connection(self, io: ConnectionIO, address: str, grant: Handshake | None) -> Connection:
        """``grant``: what :meth:`vet_websocket` returned (None: no key, admin by address)."""
        key = grant.key if grant is not None else None
        local = grant.local_admin if grant is not None else None
        conn = Connection(self.ctx, io, address=address, key=key, now=monotonic(), local_admin=local)
        self.connections.add(conn)
        return conn

    def connection_closed(self, conn: Connection, close_code: int) -> None:
        self.connections.discard(conn)
        self.shared.unauthenticated.pop(conn, None)
        if conn.evicted:
            self.shared.evicting -= 1
        self.metrics.closed(close_code)
        self._note_closed()

    def track(self, protocol: object, alive: bool) -> None:
        if alive:
            self._protocols.add(protocol)
            return
        self._protocols.discard(protocol)
        if isinstance(protocol, HttpProtocol):
            self.api.release(protocol.session)  # its calls stop, its connection slot is free
            protocol.session = None
            self._note_closed()

    def _slot_free(self) -> bool:
        """Room for one more connection under ``--max-connections``?"""
        cap = self.config.max_connections
        return cap is None or len(self.connections) + len(self.api.sessions) - self.shared.evicting < cap

    # -- App: WebSocket handshakes

    def vet_websocket(self, request: HttpRequest) -> tuple[Handshake | None, HttpResponse | None]:
        try:
            return self._vet(request)
        except _BadHeader as exc:
            return None, HttpResponse(400, f"{exc}\n".encode(), close=True)

    def _vet(self, request: HttpRequest) -> tuple[Handshake | None, HttpResponse | None]:
        if request.path != "/":
            return None, HttpResponse(404, b"WebSocket endpoint is at /\n", close=True)
        if self._draining or self._closed:
            return None, HttpResponse(503, b"server is shutting down\n", close=True)
        headers = request.headers
        refused = self._check_origin(headers)
        if refused is not None:
            return None, refused
        cfg = self.config
        key = None
        authorization = _single_header(headers, "Authorization")
        if (cfg.api_key or cfg.admin_key) and authorization is not None:  # an admin key alone is a key too
            key, refused = self._check_bearer(request.address, authorization)
            if refused is not None:
                return None, refused
        _single_header(headers, "Upgrade")  # refuses a repeated Upgrade header (400)
        if not self._slot_free():
            if key is None or not self.shared.evict_unauthenticated():
                return None, HttpResponse(503, b"too many connections\n", headers=[("Retry-After", "1")], close=True)
        local = local_admin(request.address, _single_header(headers, "Origin"), _single_header(headers, "Host"),
                            proxied(request))
        return Handshake(key, local), None

    def _check_origin(self, headers: Headers) -> HttpResponse | None:
        """Browsers send their page's Origin: allow the allowlist, or by default only this
        server's own origin (its demo page); requests without an Origin are not browsers."""
        origin = _single_header(headers, "Origin")
        if origin is None:
            if self.config.require_origin:
                return HttpResponse(403, b"an Origin header is required\n", close=True)
            return None
        if not origin_allowed(self.config, origin, _single_header(headers, "Host")):
            if self.config.allow_origin is None:
                return HttpResponse(
                    403, b"origin not allowed (only this server's own pages by default; see --allow-origin)\n", close=True
                )
            return HttpResponse(403, b"origin not allowed\n", close=True)
        return None

    def _check_bearer(self, address: str, authorization: str) -> tuple[str | None, HttpResponse | None]:
        """``(key, None)`` for a valid Bearer key, else ``(None, 401 or 429)``."""
        try:
            return check_bearer(self.keys, address, authorization, monotonic()), None
        except RateLimited as exc:
            wait_s = -(-(exc.retry_after_ms or 1000) // 1000)
            return None, HttpResponse(429, b"too many failed authentication attempts\n",
                                      headers=[("Retry-After", str(wait_s))], close=True)
        except Unauthorized:
            return None, HttpResponse(401, b"invalid API key\n", headers=[("WWW-Authenticate", "Bearer")], close=True)

    # -- App: plain HTTP

    def route_http(self, request: HttpRequest, exchange: HttpExchange) -> HttpResponse | None:
        return self.api.handle(request, exchange)

    def _healthz(self, *_: Any) -> HttpResponse:
        return HttpResponse(200, b"ok\n", headers=[_NO_STORE])

    def _readyz(self, *_: Any) -> HttpResponse:
        if self.ready and not self._draining:
            return HttpResponse(200, b"ready\n", headers=[_NO_STORE])
        return HttpResponse(503, b"draining\n" if self._draining else b"starting\n", headers=[_NO_STORE])

    def _metrics(self, *_: Any) -> HttpResponse:
        # Under --workers, which worker merged this scrape (its own values are live, the
        # others' are their last snapshot).
        served_by = [("Wsserve-Worker", str(self.worker))] if self.worker is not None else []
        return HttpResponse(200, self.metrics.render(), content_type=CONTENT_TYPE, headers=[_NO_STORE, *served_by])

    def _index(self, *_: Any) -> HttpResponse:
        page = self._static.get("index.html")
        return HttpResponse(200, page[1] if page is not None else _FALLBACK_PAGE,
                            content_type="text/html; charset=utf-8", headers=[_NO_STORE, *_PAGE_HEADERS])

    def _static_file(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                     *_: Any) -> HttpResponse:
        found = self._static.get(params["file"])
        if found is None:
            return HttpResponse(404, b"not found\n")
        return HttpResponse(200, found[1], content_type=found[0], headers=[_NO_STORE, *_PAGE_HEADERS])

    # -- metrics

    def _state(self) -> dict[str, Any]:
        queues, running = {}, {}
        for entry in self.pool.entries():
            stats = entry.worker.statistics()
            queues[entry.name] = (stats.queued, stats.queued_rows)
            if stats.kind == "generate":
                running[entry.name] = running.get(entry.name, 0) + stats.running  # every version's
        cache = self.pool.response_cache
        cached = cache.statistics() if cache is not None else None
        return {
            "connections": len(self.connections),
            "http_connections": sum(1 for p in self._protocols if isinstance(p, HttpProtocol)),
            "inflight": self.shared.inflight,
            "queues": queues,
            "generation_running": running,
            "ready": 1 if self.ready else 0,
            "loads_abandoned": self.registry.abandoned_loads,
            "response_cache_bytes": cached.bytes if cached is not None else 0,
            "response_cache_entries": cached.entries if cached is not None else 0,
            "messages": self.shared.messages,
            "tasks": len(asyncio.all_tasks(self.loop)) if self.loop is not None else 0,
            "frames": {"fast": self.counters.frames_fast, "library": self.counters.frames_library},
        }


_NO_STORE = ("Cache-Control", "no-store")
#: The demo page and its files: never sniffed into another type, and a policy that lets the page
#: load only its own scripts and styles (no inline code, no inline style attributes), images
#: only from itself or data: URLs (its icon), and open WebSockets to any server (``?ws=``).
_PAGE_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
)


def _tracing(config: ServerConfig, control: TraceControl) -> Any:
    """The server's :class:`~wsserve.tracing.Tracing` with ``--otlp-traces-endpoint``, sampling as
    ``control`` says, else None (then OpenTelemetry is never imported)."""
    if config.otlp_traces_endpoint is None:
        return None
    from .tracing import Tracing

    tracing = Tracing(config.otlp_traces_endpoint, clock=monotonic, control=control)
    log.info("tracing: request spans to %s (OTLP/HTTP)", tracing.endpoint)
    return tracing


class _BadHeader(ValueError):
    """A request header that must appear at most once appears several times."""


def _single_header(headers: Headers, name: str) -> str | None:
    """The value of header ``name`` (None if absent); raises ``_BadHeader`` if repeated."""
    values = headers.get_all(name)
    if not values:
        return None
    if len(values) > 1:
        raise _BadHeader(f"duplicate {name} header")
    return values[0]


def _load_static() -> dict[str, tuple[str, bytes]]:
    """``name -> (content type, bytes)`` of every file in ``wsserve/static``, read once:
    a request only looks names up in this table (no path from the wire reaches the disk)."""
    out: dict[str, tuple[str, bytes]] = {}
    try:
        entries = list(_STATIC.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        ctype = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "text/javascript"):
            ctype += "; charset=utf-8"
        out[entry.name] = (ctype, entry.read_bytes())
    return out


# --------------------------------------------------------------------------- run


def _limit_blas_threads() -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:  # pragma: no cover - threadpoolctl missing or unsupported BLAS
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


class StartupInterrupted(BaseException):
    """SIGINT or SIGTERM arrived while the process was still starting (training the default
    models, in the main thread).  A ``BaseException``, like ``KeyboardInterrupt``: no
    ``except Exception`` on the way swallows it, and every ``finally`` and ``with`` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def stop_on_signal_while_starting() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise :class:`StartupInterrupted` in the main
    thread, between two bytecodes of whatever it runs (the trainer's numpy loops stop within
    one step), instead of killing the process (SIGTERM's default action: no clean-up, the
    temporary directories stay) or raising ``KeyboardInterrupt``.  The caller catches it and
    exits 0.  An event loop started inside the block installs its own handlers, which win.
    Outside the main thread (no signals arrive there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        raise StartupInterrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def serve_until_signal(server: Server, *, on_ready: Any = None, exit_on_second_signal: bool = True) -> int:
    """Start ``server``, call ``on_ready``, serve until SIGINT/SIGTERM, drain, close; return 0.
    A signal while the server still starts (loading models) abandons the start: the server
    is closed (a load in progress is abandoned) and 0 returned without ``on_ready``.
    A second signal exits at once (status 1) unless ``exit_on_second_signal`` is false (a
    worker process, whose supervisor decides)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            if server.ready:
                log.info("received %s: draining (send again to exit at once)", signal.Signals(signum).name)
            else:
                log.info("received %s while starting: stopping", signal.Signals(signum).name)
            stop.set()
        elif exit_on_second_signal:
            log.warning("second signal: exiting now")
            sys.stdout.flush()
            os._exit(1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    starting = loop.create_task(server.start(), name="wsserve-start")
    stopping = loop.create_task(stop.wait(), name="wsserve-stop")
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal while starting: abandon the start
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        await server.close()
        log.info("stopped before serving")
        return 0
    stopping.cancel()
    starting.result()  # ListenError, a file error...: raised here
    if on_ready is not None:
        on_ready()
    await stop.wait()
    await server.drain()
    await server.close()
    log.info("stopped")
    return 0


def _loop_factory(loop: str) -> Any:
    """The event loop factory for ``--loop`` (None: asyncio's default)."""
    if loop in ("auto", "uvloop"):
        try:
            import uvloop

            return uvloop.new_event_loop
        except ImportError:
            if loop == "uvloop":
                raise SystemExit("error: --loop uvloop requested but uvloop is not installed") from None
    return None


def exit_past_stuck_threads(code: int, grace_s: float = STUCK_THREAD_GRACE_S) -> None:
    """After the server stopped, in a process that is the server's own (the CLI): if a thread
    still runs (model code that never returned: a ``predict`` or a generation step, whose
    thread the interpreter would join at exit, forever) ``grace_s`` later, log it and exit now
    with ``code`` (``os._exit``, after flushing the logs).  Returns when every thread ended."""
    end = monotonic() + grace_s
    stuck = []
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, end - monotonic()))
        if thread.is_alive():
            stuck.append(thread.name)
    if stuck:
        log.warning("exiting with %d thread(s) still running model code: %s", len(stuck), ", ".join(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(config: ServerConfig, *, models: dict[str, Any] | None = None) -> int:
    """Blocking entry point for one server process (``config.loop``: ``auto``, ``asyncio`` or
    ``uvloop``): train (or load) the default models into the built-in repository, serve them
    (with the in-process ``models`` and the operator's repositories) until a signal, drain,
    return the exit status.  A signal while starting stops it, with status 0 and the
    temporary directories removed.  ``--workers`` > 1 runs
    :func:`wsserve.supervisor.run_supervisor` instead."""
    from .trainer import prepare_builtin_repository

    _limit_blas_threads()
    with tempfile.TemporaryDirectory(prefix="wsserve-builtin-") as scratch:
        try:
            with stop_on_signal_while_starting():
                # In the main thread, so that a signal interrupts the training (see above).
                builtin = prepare_builtin_repository(
                    config.models, seed=config.seed, cache_dir=config.cache_dir, cache=config.cache,
                    scratch=Path(scratch),
                )

                async def serve() -> int:
                    server = Server(config, models, builtin_repository=builtin)
                    return await serve_until_signal(
                        server, on_ready=lambda: print(f"wsserve {__version__} ready on {server.url}", flush=True))

                with asyncio.Runner(loop_factory=_loop_factory(config.loop)) as runner:
                    return runner.run(serve())
        except StartupInterrupted as exc:
            log.info("received %s while starting: stopped", exc.name)
            return 0
