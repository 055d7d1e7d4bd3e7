"""The wsserve server: models + pool + WebSocket endpoint + HTTP routes + lifecycle.

Call order::

    server = Server(config, models)      # models: name -> trained model
    await server.start()                 # pool workers, listening socket
    ...                                  # server.url, server.port
    await server.drain()                 # PROTOCOL.md "Shutdown"; idempotent
    await server.close()                 # stop listening, stop workers; idempotent

:func:`run` does all of it for the CLI: trains the default models, serves,
prints the ``ws://HOST:PORT`` line, drains on SIGINT/SIGTERM, and exits at
once on a second signal.
"""

from __future__ import annotations

import asyncio
import http
import logging
from time import monotonic
import mimetypes
import os
import signal
import ssl
import sys
from importlib import resources
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from . import __version__
from .auth import KeyRegistry
from .config import ServerConfig
from .errors import ShuttingDown
from .metrics import CONTENT_TYPE, Metrics
from .models.base import PredictiveModel
from .pool import ModelEntry, ModelPool, PredictWorker
from .protocol import SUBPROTOCOL, Generate, encode_hello
from .ratelimit import TokenBucket
from .session import Session
from .wsconn import WsConnection, flush_pending

__all__ = ["Server", "run", "build_pool"]

log = logging.getLogger("wsserve.server")

_STATIC = resources.files("wsserve") / "static"
_FALLBACK_PAGE = b"""<!doctype html><meta charset=utf-8><title>wsserve</title>
<h1>wsserve</h1><p>WebSocket inference server. Connect to this URL with a WebSocket client;
see <a href=/v1/models>/v1/models</a>, <a href=/metrics>/metrics</a>.</p>"""


def build_pool(models: dict[str, Any], config: ServerConfig, metrics: Metrics | None) -> ModelPool:
    """Wrap each model in its worker: predictive → batching queue, generative → engine."""
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
                after_batch=flush_pending,
            )
            kind = "predict"
            width = model.input_width
        else:
            from .generation import GenerationEngine

            worker = GenerationEngine(
                model,
                max_batch_size=config.max_generate_batch,
                max_queue=config.max_generate_queue,
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
        self.metrics = Metrics(version=__version__, read_state=self._state)
        self.pool = build_pool(models, config, self.metrics)
        self.models_json = orjson.dumps(self.pool.describe(), option=orjson.OPT_SERIALIZE_NUMPY, default=_json_default)
        self.model_names = frozenset(self.pool.names)
        self.hello = encode_hello(
            version=__version__,
            limits=config.public_limits(),
            models=self.pool.names,
            auth_required=bool(config.api_keys),
        )
        self.sessions: set[Session] = set()
        #: Sessions not yet authenticated, oldest first (evicted for authenticated handshakes at the cap).
        self.unauthenticated: dict[Session, None] = {}
        self._evicting = 0  # evicted sessions still closing (not counted against max_connections)
        self.inflight = 0
        self.messages = 0
        self.ready = False
        self.draining = False
        self._all_closed = asyncio.Event()  # set while draining once no session is left
        self._ws_server: Any = None
        self._closed = False
        self._drained = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.port: int = 0
        self.keys = KeyRegistry(config.api_keys, metrics_key=config.metrics_key)
        self._static = _load_static()
        self.key_buckets: dict[str, TokenBucket] | None = {} if config.key_rate_limit_per_s else None
        self._idle_task: asyncio.Task[None] | None = None

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
        self._ws_server = await serve(
            self._handler,
            cfg.host,
            cfg.port,
            create_connection=WsConnection,
            process_request=self._process_request,
            select_subprotocol=_select_subprotocol,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            compression="deflate" if cfg.compression else None,
            max_size=cfg.max_message_bytes,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            ssl=ssl_ctx,
            server_header=f"wsserve/{__version__}",
        )
        sock = next(iter(self._ws_server.sockets))
        self.port = sock.getsockname()[1]
        if cfg.idle_timeout is not None:
            self._idle_task = self.loop.create_task(self._close_idle(cfg.idle_timeout), name="wsserve-idle")
        self.ready = True
        log.info("serving %s on %s", ", ".join(self.pool.names), self.url)

    async def _close_idle(self, timeout: float) -> None:
        """Close connections with nothing received and nothing in flight for ``timeout`` s
        (one scan every quarter timeout: no per-connection timers)."""
        while True:
            await asyncio.sleep(max(0.05, timeout / 4))
            limit = monotonic() - timeout
            for session in list(self.sessions):
                if not session.inflight and session.last_activity < limit:
                    session.close(1000, "idle timeout")

    async def drain(self, timeout: float | None = None) -> None:
        """Graceful drain as in PROTOCOL.md; returns when every connection is closed
        or the deadline has passed and the rest were ended with ``shutting_down``."""
        if self.draining:
            await self._drained.wait()
            return
        timeout = self.config.drain_timeout if timeout is None else timeout
        self.draining = True
        self.ready = False
        frame = orjson.dumps({"type": "draining", "deadline_ms": int(timeout * 1000)})
        log.info("draining %d connections (%d requests in flight), deadline %.1fs", len(self.sessions), self.inflight, timeout)
        for session in list(self.sessions):
            session.send(frame)
            if not session.inflight:
                session.close(1001, "server shutting down")
        self._note_closed()
        try:
            async with asyncio.timeout(timeout):
                await self._all_closed.wait()
        except TimeoutError:
            for session in list(self.sessions):
                session.end_all(ShuttingDown("drain deadline reached"))
                session.close(1001, "server shutting down")
            try:
                async with asyncio.timeout(2.0):
                    await self._all_closed.wait()
            except TimeoutError:
                for session in list(self.sessions):
                    session.conn.transport.abort()
        self._drained.set()

    async def close(self) -> None:
        """Stop listening and stop the workers (after :meth:`drain` for a graceful stop)."""
        if self._closed:
            return
        self._closed = True
        self.ready = False
        if self._idle_task is not None:
            self._idle_task.cancel()
        if self._ws_server is not None:
            self._ws_server.close()
            try:
                async with asyncio.timeout(5):
                    await self._ws_server.wait_closed()
            except TimeoutError:
                log.warning("connections did not close in time")
        await self.pool.close()

    # -- connections

    async def _handler(self, conn: ServerConnection) -> None:
        assert isinstance(conn, WsConnection)
        session = Session(self, conn)
        self.sessions.add(session)
        try:
            conn.queue_text(self.hello)
            if self.draining:
                conn.queue_text(orjson.dumps({"type": "draining", "deadline_ms": 0}))
            conn.attach(session)
            await conn.wait_closed()
        finally:
            session.abandon_all()
            session.forget_auth_timer()
            self.unauthenticated.pop(session, None)
            if session.evicted:
                self._evicting -= 1
            self.sessions.discard(session)
            self._note_closed()
            self.metrics.closed(_close_code(conn))

    def _note_closed(self) -> None:
        if self.draining and not self.sessions:
            self._all_closed.set()

    def generation_params(self, req: Generate, deadline: float | None) -> Any:
        from .generation import GenerationParams

        return GenerationParams(
            prompt=req.prompt,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            seed=req.seed,
            stop=req.stop,
            priority=req.priority,
            deadline=deadline,
        )

    # -- auth

    def handshake_key(self, conn: ServerConnection) -> str | None:
        """The API key of a valid ``Authorization: Bearer`` handshake header, if any
        (``_process_request`` has refused duplicate or invalid ones)."""
        request = conn.request
        if request is None:
            return None
        token = KeyRegistry.bearer(_single_header(request.headers, "Authorization"))
        return None if token is None else self.keys.match(token)

    def evict_unauthenticated(self) -> bool:
        """Close the oldest connection that has not authenticated, to free its slot."""
        for victim in self.unauthenticated:
            del self.unauthenticated[victim]
            victim.evicted = True
            self._evicting += 1
            victim.close(1008, "connection slot needed by an authenticated client")
            return True
        return False

    def key_bucket(self, key: str) -> TokenBucket:
        """The shared rate-limit bucket of an API key."""
        assert self.key_buckets is not None
        bucket = self.key_buckets.get(key)
        if bucket is None:
            rate = self.config.key_rate_limit_per_s
            assert rate is not None
            bucket = self.key_buckets[key] = TokenBucket(rate, self.config.rate_burst(rate), monotonic())
        return bucket

    # -- HTTP

    def _state(self) -> dict[str, Any]:
        queues = {}
        for entry in self.pool.entries():
            stats = entry.worker.statistics()
            queues[entry.name] = (getattr(stats, "requests", getattr(stats, "queued", 0)), getattr(stats, "rows", 0))
        return {
            "connections": len(self.sessions),
            "inflight": self.inflight,
            "queues": queues,
            "ready": 1 if self.ready else 0,
            "messages": self.messages,
            "tasks": len(asyncio.all_tasks(self.loop)) if self.loop is not None else 0,
        }

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Route a plain HTTP request or vet a WebSocket handshake.  Never raises: bad
        requests get 400, and an unexpected error is one log line and a 500."""
        try:
            return self._route_or_vet(conn, request)
        except _BadHeader as exc:
            return _response(400, f"{exc}\n".encode())
        except Exception as exc:  # noqa: BLE001 - one line, no traceback with install paths
            log.error("error handling %s %r: %s: %s", "request", request.path[:200], type(exc).__name__, exc)
            return _response(500, b"internal error\n")

    def _route_or_vet(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        headers = request.headers
        upgrade = "websocket" in (_single_header(headers, "Upgrade") or "").lower()
        if not upgrade:
            return self._http_route(path, headers, conn)
        if path != "/":
            return _response(404, b"WebSocket endpoint is at /\n")
        if self.draining or self._closed:
            return _response(503, b"server is shutting down\n")
        cfg = self.config
        refused = self._check_origin(headers)
        if refused is not None:
            return refused
        key = None
        authorization = _single_header(headers, "Authorization")
        if cfg.api_keys and authorization is not None:
            key, refused = self._check_bearer(conn, authorization)
            if refused is not None:
                return refused
        if cfg.max_connections is not None and len(self.sessions) - self._evicting >= cfg.max_connections:
            if key is None or not self.evict_unauthenticated():
                return _response(503, b"too many connections\n", {"Retry-After": "1"})
        return None

    def _check_origin(self, headers: Headers) -> Response | None:
        """Browsers send their page's Origin: allow the allowlist, or by default only this
        server's own origin (its demo page); requests without an Origin are not browsers."""
        cfg = self.config
        origin = _single_header(headers, "Origin")
        if origin is None:
            if cfg.allowed_origins is not None and not cfg.allow_no_origin:
                return _response(403, b"an Origin header is required\n")
            return None
        if cfg.allowed_origins is None:
            scheme = "https" if cfg.certfile else "http"
            host = (_single_header(headers, "Host") or "").lower()
            if origin.lower() != f"{scheme}://{host}":
                return _response(403, b"origin not allowed (only this server's own pages by default; see --allow-origin)\n")
        elif "*" not in cfg.allowed_origins and origin not in cfg.allowed_origins:
            return _response(403, b"origin not allowed\n")
        return None

    def _check_bearer(self, conn: ServerConnection, authorization: str) -> tuple[str | None, Response | None]:
        """``(key, None)`` for a valid Bearer key, else ``(None, 401 or 429)``."""
        address = _address(conn)
        now = monotonic()
        wait = self.keys.blocked_for(address, now)
        if wait > 0:
            return None, _response(429, b"too many failed authentication attempts\n", {"Retry-After": str(int(wait) + 1)})
        token = KeyRegistry.bearer(authorization)
        key = None if token is None else self.keys.match(token)
        if key is None:
            self.keys.failed(address, now)
            return None, _response(401, b"invalid API key\n", {"WWW-Authenticate": "Bearer"})
        return key, None

    def _http_authorized(self, conn: ServerConnection, headers: Headers, *, metrics: bool) -> Response | None:
        """With API keys, ``/metrics`` and ``/v1/models`` need a Bearer key (``/metrics``
        also takes ``--metrics-key``); returns the refusal, or None when allowed."""
        if not self.config.api_keys:
            return None
        address = _address(conn)
        now = monotonic()
        wait = self.keys.blocked_for(address, now)
        if wait > 0:
            return _response(429, b"too many failed authentication attempts\n", {"Retry-After": str(int(wait) + 1)})
        token = KeyRegistry.bearer(_single_header(headers, "Authorization"))
        ok = token is not None and (self.keys.match_metrics(token) if metrics else self.keys.match(token) is not None)
        if ok:
            return None
        if token is not None:
            self.keys.failed(address, now)
        return _response(401, b"an API key is required: Authorization: Bearer <key>\n", {"WWW-Authenticate": "Bearer"})

    def _http_route(self, path: str, headers: Headers, conn: ServerConnection) -> Response:
        if path == "/healthz":
            return _response(200, b"ok\n")
        if path == "/readyz":
            if self.ready and not self.draining:
                return _response(200, b"ready\n")
            return _response(503, b"draining\n" if self.draining else b"starting\n")
        if path == "/metrics":
            return self._http_authorized(conn, headers, metrics=True) or _response(
                200, self.metrics.render(), content_type=CONTENT_TYPE
            )
        if path == "/v1/models":
            return self._http_authorized(conn, headers, metrics=False) or _response(
                200, self.models_json, content_type="application/json"
            )
        if path in ("/", "/index.html"):
            page = self._static.get("index.html")
            return _response(200, page[1] if page is not None else _FALLBACK_PAGE, content_type="text/html; charset=utf-8")
        if path.startswith("/static/"):
            found = self._static.get(path[len("/static/") :])
            if found is not None:
                return _response(200, found[1], content_type=found[0])
        return _response(404, b"not found\n")


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


def _address(conn: ServerConnection) -> str:
    peer = conn.remote_address
    return str(peer[0]) if peer else "?"


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


def _close_code(conn: ServerConnection) -> int:
    """The code of the side that started the close (ours for 1001/1008/1011 even
    when the client never answered), else 1006 for a connection that just dropped."""
    proto = conn.protocol
    sent, rcvd = proto.close_sent, proto.close_rcvd
    if sent is not None and (rcvd is None or proto.close_rcvd_then_sent is False):
        return int(sent.code)
    if rcvd is not None:
        return int(rcvd.code)
    return 1006


def _json_default(value: Any) -> Any:
    """numpy scalars (and anything else with ``.item()``) in model metadata."""
    item = getattr(value, "item", None)
    if item is None:
        raise TypeError(f"cannot serialise {type(value).__name__} in model metadata")
    return item()


def _response(status: int, body: bytes, extra: dict[str, str] | None = None, *, content_type: str = "text/plain; charset=utf-8") -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-store"
    headers["Connection"] = "close"
    if extra:
        for k, v in extra.items():
            headers[k] = v
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _select_subprotocol(conn: ServerConnection, offered: Any) -> Any:
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")


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
            seed=config.seed, names=list(config.models), cache_dir=config.cache_dir, use_cache=config.use_cache
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


def run(config: ServerConfig, *, loop: str = "auto") -> int:
    """Blocking entry point for the CLI.  ``loop``: ``auto``, ``asyncio`` or ``uvloop``."""
    factory = None
    if loop in ("auto", "uvloop"):
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if loop == "uvloop":
                raise SystemExit("error: --loop uvloop requested but uvloop is not installed") from None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve_forever(config))
