"""The wsserve server: models + pool + one listener (HTTP and WebSocket) + lifecycle.

Call order::

    server = Server(config, models)      # models: name -> trained model
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
import logging
import mimetypes
import os
import signal
import ssl
import sys
from importlib import resources
from collections.abc import Mapping
from time import monotonic, time
from typing import Any

from websockets.datastructures import Headers

from . import __version__
from .admission import check_bearer, origin_allowed
from .auth import KeyRegistry
from .config import ServerConfig
from .connection import Connection, ConnectionContext, ConnectionIO, Shared
from .errors import RateLimited, ShuttingDown, Unauthorized
from .httpmsg import HttpExchange
from .metrics import CONTENT_TYPE, Metrics
from .models.base import PredictiveModel
from .pool import ModelEntry, ModelPool, PredictWorker
from .protocol import encode_hello
from .rest import HttpApi
from .transport import Flusher, HttpProtocol, HttpRequest, HttpResponse
from .transport.app import Counters

__all__ = ["Server", "run", "build_pool"]

log = logging.getLogger("wsserve.server")

_STATIC = resources.files("wsserve") / "static"
_FALLBACK_PAGE = b"""<!doctype html><meta charset=utf-8><title>wsserve</title>
<h1>wsserve</h1><p>WebSocket inference server. Connect to this URL with a WebSocket client;
see <a href=/v1/models>/v1/models</a>, <a href=/metrics>/metrics</a>.</p>"""

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")


def build_pool(models: dict[str, Any], config: ServerConfig, metrics: Metrics | None, flusher: Flusher | None) -> ModelPool:
    """Wrap each model in its worker: predictive -> batching queue, generative -> engine.

    Workers report each batch to ``metrics`` and call ``flusher.flush`` after
    handing out a batch's results, so replies are written at once."""
    after = flusher.flush if flusher is not None else None
    entries = []
    for name, model in models.items():
        if isinstance(model, PredictiveModel):
            worker: Any = PredictWorker(
                model,
                max_batch_size=config.max_batch_size,
                max_delay_ms=config.max_delay_ms,
                max_queue_rows=config.max_queue_rows,
                max_queue_bytes=config.max_queue_bytes,
                inline_max_flops=config.inline_max_flops,
                observer=metrics,
                after_batch=after,
            )
            kind = "predict"
            width = model.input_width
        else:
            from .generation import GenerationEngine

            worker = GenerationEngine(
                model,
                name=name,
                max_generate_batch=config.max_generate_batch,
                max_generate_queue=config.max_generate_queue,
                observer=metrics,
                after_delivery=after,
            )
            kind = "generate"
            width = 0
        entries.append(
            ModelEntry(name=name, version=model.info.version, kind=kind, model=model, worker=worker, input_width=width)
        )
    return ModelPool(entries)


class Server:
    """One wsserve server process's state.  Not thread-safe: use from its loop."""

    def __init__(self, config: ServerConfig, models: dict[str, Any]) -> None:
        self.config = config.validate()
        self.server_header = f"wsserve/{__version__}"
        self.metrics = Metrics(version=__version__, read_state=self._state)
        self.flusher = Flusher()
        self.counters = Counters()
        self.pool = build_pool(models, config, self.metrics, self.flusher)
        self.keys = KeyRegistry(config.api_key, metrics_key=config.metrics_key)
        self.shared = Shared()
        self.connections: set[Connection] = set()
        self.ctx = ConnectionContext(
            config=self.config,
            models=self.pool,
            metrics=self.metrics,
            keys=self.keys,
            shared=self.shared,
            hello=encode_hello(
                version=__version__,
                limits=config.public_limits(),
                models=self.pool.names,
                auth_required=bool(config.api_key),
            ),
            clock=monotonic,
        )
        self.ready = False
        self._static = _load_static()
        self.api = HttpApi(
            config=self.config, models=self.pool, metrics=self.metrics, keys=self.keys, shared=self.shared,
            version=__version__, clock=monotonic, wall_clock=time,
            ready=lambda: self.ready and not self._draining, slot_free=self._slot_free,
        )
        add = self.api.add_route
        add("GET", "/healthz", self._healthz, auth="none", style=None)
        add("GET", "/readyz", self._readyz, auth="none", style=None)
        add("GET", "/metrics", self._metrics, auth="metrics", style=None)
        for page in ("/", "/index.html"):
            add("GET", page, self._index, auth="none", style=None)
        add("GET", "/static/{file}", self._static_file, auth="none", style=None)
        self._protocols: set[Any] = set()  # every open TCP connection's protocol (HTTP or WebSocket)
        self._listener: asyncio.base_events.Server | None = None
        self._all_closed = asyncio.Event()  # set while draining once no WebSocket connection is left
        self._drained = asyncio.Event()
        self._draining = False
        self._closed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port: int = 0

    @property
    def draining(self) -> bool:
        return self._draining

    # -- lifecycle

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.certfile else "ws"
        return f"{scheme}://{self.config.host}:{self.port}"

    async def start(self) -> None:
        """Start workers and listen.  Raises ``OSError`` if the port is taken."""
        self.loop = asyncio.get_running_loop()
        await self.pool.start()
        cfg = self.config
        ssl_ctx = None
        if cfg.certfile:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(str(cfg.certfile), str(cfg.keyfile))
        self._listener = await self.loop.create_server(lambda: HttpProtocol(self), cfg.host, cfg.port, ssl=ssl_ctx)
        self.port = self._listener.sockets[0].getsockname()[1]
        self.ready = True
        log.info("serving %s on %s", ", ".join(self.pool.names), self.url)

    async def drain(self, timeout_s: float | None = None) -> None:
        """Graceful drain as in PROTOCOL.md; returns when every connection is closed
        or the deadline has passed and the rest were ended with ``shutting_down``."""
        if self._draining:
            await self._drained.wait()
            return
        timeout_s = self.config.drain_timeout_s if timeout_s is None else timeout_s
        self._draining = self.shared.draining = True
        self.ready = False
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
            self.flusher.flush()
            try:
                async with asyncio.timeout(2.0):
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
        if self._listener is not None:
            self._listener.close()
        for proto in list(self._protocols):
            if isinstance(proto, HttpProtocol):
                proto.close()
            else:
                proto.transport.abort()
        await self.pool.close()

    def _note_closed(self) -> None:
        """While draining: set ``_all_closed`` once no WebSocket is open and no HTTP connection owes answers."""
        if self._draining and not self.connections and not any(
            p.busy for p in self._protocols if isinstance(p, HttpProtocol)
        ):
            self._all_closed.set()

    # -- App: connections

    def open_connection(self, io: ConnectionIO, address: str, key: str | None) -> Connection:
        conn = Connection(self.ctx, io, address=address, key=key, now=monotonic())
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

    def vet_websocket(self, request: HttpRequest) -> tuple[str | None, HttpResponse | None]:
        try:
            return self._vet(request)
        except _BadHeader as exc:
            return None, HttpResponse(400, f"{exc}\n".encode(), close=True)

    def _vet(self, request: HttpRequest) -> tuple[str | None, HttpResponse | None]:
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
        if cfg.api_key and authorization is not None:
            key, refused = self._check_bearer(request.address, authorization)
            if refused is not None:
                return None, refused
        _single_header(headers, "Upgrade")  # refuses a repeated Upgrade header (400)
        if not self._slot_free():
            if key is None or not self.shared.evict_unauthenticated():
                return None, HttpResponse(503, b"too many connections\n", headers=[("Retry-After", "1")], close=True)
        return key, None

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
        return HttpResponse(200, self.metrics.render(), content_type=CONTENT_TYPE, headers=[_NO_STORE])

    def _index(self, *_: Any) -> HttpResponse:
        page = self._static.get("index.html")
        return HttpResponse(200, page[1] if page is not None else _FALLBACK_PAGE,
                            content_type="text/html; charset=utf-8", headers=[_NO_STORE])

    def _static_file(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                     *_: Any) -> HttpResponse:
        found = self._static.get(params["file"])
        if found is None:
            return HttpResponse(404, b"not found\n")
        return HttpResponse(200, found[1], content_type=found[0], headers=[_NO_STORE])

    # -- metrics

    def _state(self) -> dict[str, Any]:
        queues = {}
        for entry in self.pool.entries():
            stats = entry.worker.statistics()
            queues[entry.name] = (stats.queued, stats.queued_rows)
        return {
            "connections": len(self.connections),
            "http_connections": sum(1 for p in self._protocols if isinstance(p, HttpProtocol)),
            "inflight": self.shared.inflight,
            "queues": queues,
            "ready": 1 if self.ready else 0,
            "messages": self.shared.messages,
            "tasks": len(asyncio.all_tasks(self.loop)) if self.loop is not None else 0,
            "frames": {"fast": self.counters.frames_fast, "library": self.counters.frames_library},
        }


_NO_STORE = ("Cache-Control", "no-store")


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


async def serve_forever(config: ServerConfig, *, ready_line: bool = True) -> int:
    """Train the models, serve until a signal, drain, return the exit status."""
    from .trainer import train_default_models

    _limit_blas_threads()
    loop = asyncio.get_running_loop()
    models = await loop.run_in_executor(
        None,
        lambda: train_default_models(
            seed=config.seed, names=list(config.models), cache_dir=config.cache_dir, cache=config.cache
        ),
    )
    server = Server(config, models)
    await server.start()
    stop = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("received %s: draining (send again to exit at once)", signal.Signals(signum).name)
            stop.set()
        else:
            log.warning("second signal: exiting now")
            sys.stdout.flush()
            os._exit(1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    if ready_line:
        print(f"wsserve {__version__} ready on {server.url}", flush=True)
    await stop.wait()
    await server.drain()
    await server.close()
    log.info("stopped")
    return 0


def run(config: ServerConfig) -> int:
    """Blocking entry point for the CLI (``config.loop``: ``auto``, ``asyncio`` or ``uvloop``)."""
    factory = None
    if config.loop in ("auto", "uvloop"):
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if config.loop == "uvloop":
                raise SystemExit("error: --loop uvloop requested but uvloop is not installed") from None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve_forever(config))
