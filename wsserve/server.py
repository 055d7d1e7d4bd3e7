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
import hmac
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
        self._keys = tuple(k.encode() for k in config.api_keys)
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

    def match_key(self, token: str) -> str | None:
        """The configured API key equal to ``token`` (constant-time compare), or None."""
        given = token.encode()
        found = None
        for key in self._keys:
            if hmac.compare_digest(given, key):
                found = key
        return None if found is None else found.decode()

    def handshake_key(self, conn: ServerConnection) -> str | None:
        """The API key of an ``Authorization: Bearer`` handshake header, if valid."""
        request = conn.request
        if request is None:
            return None
        header = request.headers.get("Authorization", "")
        return self.match_key(header[7:].strip()) if header.startswith("Bearer ") else None

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
        path = request.path.split("?", 1)[0]
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if not upgrade:
            return self._http_route(path)
        if path != "/":
            return _response(404, b"WebSocket endpoint is at /\n")
        if self.draining or self._closed:
            return _response(503, b"server is shutting down\n")
        cfg = self.config
        if cfg.max_connections is not None and len(self.sessions) >= cfg.max_connections:
            return _response(503, b"too many connections\n", {"Retry-After": "1"})
        if cfg.allowed_origins is not None:
            origin = request.headers.get("Origin")
            if origin is None:
                if not cfg.allow_no_origin:
                    return _response(403, b"an Origin header is required\n")
            elif origin not in cfg.allowed_origins:
                return _response(403, b"origin not allowed\n")
        if cfg.api_keys and "Authorization" in request.headers and self.handshake_key(conn) is None:
            return _response(401, b"invalid API key\n", {"WWW-Authenticate": "Bearer"})
        return None

    def _http_route(self, path: str) -> Response:
        if path == "/healthz":
            return _response(200, b"ok\n")
        if path == "/readyz":
            if self.ready and not self.draining:
                return _response(200, b"ready\n")
            return _response(503, b"draining\n" if self.draining else b"starting\n")
        if path == "/metrics":
            return _response(200, self.metrics.render(), content_type=CONTENT_TYPE)
        if path == "/v1/models":
            return _response(200, self.models_json, content_type="application/json")
        if path in ("/", "/index.html"):
            page = _static_file("index.html")
            return _response(200, page if page is not None else _FALLBACK_PAGE, content_type="text/html; charset=utf-8")
        if path.startswith("/static/"):
            name = path[len("/static/") :]
            body = _static_file(name)
            if body is not None:
                ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
                if ctype.startswith("text/") or ctype in ("application/javascript", "text/javascript"):
                    ctype += "; charset=utf-8"
                return _response(200, body, content_type=ctype)
        return _response(404, b"not found\n")


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


def _static_file(name: str) -> bytes | None:
    """A file of ``wsserve/static`` (no subdirectories, no traversal), or None."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    try:
        return (_STATIC / name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


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
