"""Per-connection protocol state: dispatch of each message, in-flight jobs, limits.

Messages arrive by callback from :class:`~wsserve.wsconn.WsConnection`
(``on_message``, on the loop thread, in order); replies are queued with
``send`` and written after the read or batch that produced them.
:class:`Session` keeps the connection's in-flight jobs by id and enforces the
per-connection rules: auth, draining, rate limits, duplicate ids,
``max_inflight``, slow consumers.  A bad message gets an ``error`` frame and
nothing else happens.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import TYPE_CHECKING, Any

import orjson

from .errors import (
    BadJson,
    BadRequest,
    DuplicateId,
    Internal,
    Overloaded,
    RateLimited,
    ShuttingDown,
    Unauthorized,
    WsserveError,
)
from .auth import AUTH_FAILURES_PER_CONNECTION
from .jobs import GenerateJob, Job, PredictJob
from .ratelimit import TokenBucket
from .protocol import Auth, Cancel, Generate, Models, Ping, Predict, decode, encode_error, validate_inputs

if TYPE_CHECKING:
    from .server import Server
    from .wsconn import WsConnection

__all__ = ["Session"]

log = logging.getLogger("wsserve.session")


class Session:
    """Per-connection protocol state.  All methods run on the loop thread."""

    def __init__(self, server: Server, conn: WsConnection) -> None:
        self.server = server
        self.conn = conn
        self.loop = server.loop
        self.inflight: dict[Any, Job] = {}
        cfg = server.config
        self.key: str | None = None  # the API key this connection authenticated with
        self.authenticated = not cfg.api_keys
        self.evicted = False  # closed to free a slot for an authenticated client
        self._auth_failures = 0
        self._auth_timer: Any = None
        if not self.authenticated:
            self.key = server.handshake_key(conn)
            self.authenticated = self.key is not None
        if not self.authenticated:
            server.unauthenticated[self] = None
            self._auth_timer = self.loop.call_later(cfg.auth_timeout, self._auth_expired)
        self.inflight_bytes = 0  # input bytes of unfinished requests (max_inflight_bytes)
        now = monotonic()
        self.last_activity = now
        self.bucket = (
            TokenBucket(cfg.rate_limit_per_s, cfg.rate_burst(cfg.rate_limit_per_s), now)
            if cfg.rate_limit_per_s else None
        )
        self._over_since: float | None = None
        self._seed_keys = 0
        self.closing = False
        #: Unsent bytes above which the slow-consumer policy applies (and reading pauses).
        self.write_limit = cfg.max_write_buffer_bytes

    # -- output

    def send(self, frame: bytes) -> None:
        if not self.closing:  # after close() nothing more goes out before the close frame
            self.conn.queue_text(frame)

    def error(self, exc: WsserveError, rid: Any = None) -> None:
        self.send(encode_error(exc, rid))

    def job_finished(self, job: Job, frame: bytes | None, code: str) -> None:
        """Called once per job by :meth:`Job._terminal`."""
        self.inflight.pop(job.key, None)
        self.inflight_bytes -= job.nbytes
        server = self.server
        server.inflight -= 1
        if frame is not None:
            self.send(frame)
        server.metrics.request_done(job.model, job.kind, code, monotonic() - job.received_at)
        if server.draining and not self.inflight and not self.closing:
            self.close(1001, "server shutting down")

    # -- input

    def on_message(self, data: bytes, binary: bool) -> None:
        if self.closing:  # the connection is being closed: later messages are dropped
            return
        server = self.server
        server.messages += 1
        self.last_activity = monotonic()
        if binary:
            self.error(BadRequest("binary frames are not accepted: send each JSON message as a text frame"))
            return
        req: Any = None
        try:
            req = decode(data, max_tokens=server.config.max_tokens)
            kind = type(req)
            if kind is Predict:
                self._predict(req)  # type: ignore[arg-type]
            elif kind is Generate:
                self._generate(req)  # type: ignore[arg-type]
            elif kind is Cancel:
                job = self.inflight.get(req.id)  # type: ignore[union-attr]
                if job is not None:
                    job.cancel()
            elif kind is Ping:
                self.send(b'{"type":"pong","id":' + _id_json(req.id) + b"}")  # type: ignore[union-attr]
            elif kind is Models:
                self._need_auth(req.id)  # type: ignore[union-attr]
                self.send(b'{"type":"models","id":' + _id_json(req.id) + b',"models":' + server.models_json + b"}")  # type: ignore[union-attr]
            elif kind is Auth:
                self._auth(req)  # type: ignore[arg-type]
        except BadJson as exc:
            if exc.invalid_utf8:  # RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection
                self.close(1007, "invalid UTF-8 in a text frame")
            else:
                self.error(exc)
                server.metrics.rejected("", "other", exc.code)
        except WsserveError as exc:
            self.error(exc)
            kind_name = "generate" if type(req) is Generate else "predict" if type(req) is Predict else "other"
            model = getattr(req, "model", "")
            # Label only real model names: client-chosen labels would grow without bound.
            server.metrics.rejected(model if model in server.model_names else "", kind_name, exc.code)
        except Exception as exc:  # a bug: report it, keep the connection
            log.exception("internal error while handling a message")
            self.error(Internal(f"internal error: {type(exc).__name__}: {exc}"), getattr(req, "id", None))

    def _need_auth(self, rid: Any) -> None:
        if not self.authenticated:
            raise Unauthorized("authenticate first: send {\"type\":\"auth\",\"token\":...}", request_id=rid)

    def _auth(self, req: Auth) -> None:
        server = self.server
        address = _address(self.conn)
        now = monotonic()
        wait = server.keys.blocked_for(address, now)
        if wait > 0:
            raise RateLimited(
                "too many failed authentication attempts from this address",
                retry_after_ms=max(1, int(wait * 1000 + 0.999)),
                request_id=req.id,
            )
        key = server.keys.match(req.token)
        if key is not None:
            self.key = key
            if not self.authenticated:
                self.authenticated = True
                server.unauthenticated.pop(self, None)
                self.forget_auth_timer()
            self.send(b'{"type":"auth","id":' + _id_json(req.id) + b',"ok":true}')
            return
        server.keys.failed(address, now)
        self._auth_failures += 1
        if self._auth_failures >= AUTH_FAILURES_PER_CONNECTION:
            self.error(Unauthorized("invalid API key", request_id=req.id))
            self.close(1008, "too many failed authentication attempts")
            return
        raise Unauthorized("invalid API key", request_id=req.id)

    def _auth_expired(self) -> None:
        self._auth_timer = None
        if not self.authenticated and not self.closing:
            self.close(1008, "authentication timeout")

    def forget_auth_timer(self) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None

    def _admit(self, rid: Any) -> None:
        """Checks common to predict and generate, before any model work."""
        if not self.authenticated:
            raise Unauthorized("authenticate first: send {\"type\":\"auth\",\"token\":...}", request_id=rid)
        if self.server.draining:
            raise ShuttingDown("server is draining; no new work is accepted", request_id=rid)
        if self.closing:
            raise ShuttingDown("this connection is closing; no new work is accepted", request_id=rid)
        if self.bucket is not None:
            self._rate_check(self.bucket, "this connection", rid)
        if self.key is not None and self.server.key_buckets is not None:
            self._rate_check(self.server.key_bucket(self.key), "this API key", rid)
        if rid is not None and rid in self.inflight:
            raise DuplicateId(f"id {rid!r} is already in use by an unfinished request", request_id=rid)

    def _rate_check(self, bucket: TokenBucket, who: str, rid: Any) -> None:
        wait = bucket.take(monotonic())
        if wait > 0:
            raise RateLimited(
                f"rate limit of {bucket.rate:g} requests/s for {who} exceeded",
                retry_after_ms=max(1, int(wait * 1000 + 0.999)),
                request_id=rid,
            )

    def _capacity(self, rid: Any, nbytes: int = 0) -> None:
        if self._over_since is not None and not self._caught_up():
            raise Overloaded(
                "this connection is not reading its replies fast enough; no new work until it catches up",
                retry_after_ms=100,
                request_id=rid,
            )
        cfg = self.server.config
        limit = cfg.max_inflight
        if len(self.inflight) >= limit:
            raise Overloaded(
                f"this connection already has {limit} unfinished requests (max_inflight)",
                retry_after_ms=10,
                request_id=rid,
            )
        # Bytes: with nothing in flight any single request is taken (it fits max_message_bytes).
        if self.inflight_bytes and self.inflight_bytes + nbytes > cfg.max_inflight_bytes:
            raise Overloaded(
                f"this connection's unfinished requests hold {self.inflight_bytes} input bytes; this one needs "
                f"{nbytes} more and the limit is {cfg.max_inflight_bytes} (max_inflight_bytes)",
                retry_after_ms=10,
                request_id=rid,
            )

    def _predict(self, req: Predict) -> None:
        server = self.server
        rid = req.id
        self._admit(rid)
        try:
            entry = server.pool.lookup(req.model, req.version)
            if entry.kind != "predict":
                raise BadRequest(f"model {req.model!r} serves generate, not predict")
            rows = validate_inputs(req.inputs, entry.input_width, server.config.max_rows)
        except WsserveError as exc:
            exc.request_id = rid
            raise
        self._capacity(rid, rows.nbytes)
        now = monotonic()
        if rid is None:  # seed form: no id, still tracked so shutdown and limits see it
            self._seed_keys += 1
            key: Any = ("seed", self._seed_keys)
        else:
            key = rid
        job = PredictJob(self, key, req, entry, rows, now)
        deadline = None if req.timeout_ms is None else now + req.timeout_ms / 1000.0
        try:
            job.item = entry.worker.submit(job, priority=req.priority, deadline=deadline)
        except WsserveError as exc:
            exc.request_id = rid
            raise
        self._track(job, deadline)

    def _generate(self, req: Generate) -> None:
        server = self.server
        rid = req.id
        self._admit(rid)
        try:
            entry = server.pool.lookup(req.model, req.version)
            if entry.kind != "generate":
                raise BadRequest(f"model {req.model!r} serves predict, not generate")
            self._capacity(rid)
            now = monotonic()
            deadline = None if req.timeout_ms is None else now + req.timeout_ms / 1000.0
            job = GenerateJob(self, rid, req, entry, now)
            params = server.generation_params(req, deadline)
            job.handle = entry.worker.submit(params, job, group=self)
        except WsserveError as exc:
            exc.request_id = rid
            raise
        self._track(job, deadline)

    def _track(self, job: Job, deadline: float | None) -> None:
        self.inflight[job.key] = job
        self.inflight_bytes += job.nbytes
        self.server.inflight += 1
        if deadline is not None:
            job.timer = self.loop.call_later(deadline - monotonic(), job.expire)

    # -- flow control and closing

    def check_backpressure(self, buffered: int) -> None:
        """Slow-consumer policy: a connection may hold at most
        ``max_write_buffer_bytes`` unsent for ``slow_consumer_timeout`` seconds,
        and never more than four times that; past either it is closed with 1008
        and its requests are cancelled."""
        cfg = self.server.config
        limit = cfg.max_write_buffer_bytes
        if buffered <= limit:
            self._over_since = None
            return
        now = monotonic()
        if self._over_since is None:
            self._over_since = now
            # Re-check when the grace period ends even if nothing more is written.
            self.loop.call_later(cfg.slow_consumer_timeout + 0.01, self._recheck_backpressure)
        if buffered > 4 * limit or now - self._over_since > cfg.slow_consumer_timeout:
            self.server.metrics.slow_consumers += 1
            log.warning("closing slow consumer %s: %d bytes unsent", self.conn.remote_address, buffered)
            self.abandon_all()
            self.close(1008, "slow consumer: stopped reading")

    def _recheck_backpressure(self) -> None:
        if not self.closing and self._over_since is not None:
            self.check_backpressure(self.conn.transport.get_write_buffer_size())

    def _caught_up(self) -> bool:
        """Re-read the socket's unsent bytes (the client may have resumed reading)."""
        if self.conn.transport.get_write_buffer_size() <= self.server.config.max_write_buffer_bytes:
            self._over_since = None
            return True
        return False

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.abandon_all()  # nothing can be sent after the close frame: stop the work now
        self.conn.flush()  # replies queued so far go out before the close frame
        self.loop.create_task(self.conn.close(code, reason))

    def abandon_all(self) -> None:
        """The socket is gone (or going): stop all work, send nothing."""
        for job in list(self.inflight.values()):
            job.abandon()

    def end_all(self, exc: WsserveError) -> None:
        """End every unfinished request with ``exc`` (used at the drain deadline)."""
        for job in list(self.inflight.values()):
            job.fail(exc)


def _address(conn: Any) -> str:
    peer = conn.remote_address
    return str(peer[0]) if peer else "?"


def _id_json(rid: Any) -> bytes:
    if rid is None:
        return b"null"
    return orjson.dumps(rid)
