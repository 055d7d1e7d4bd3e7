"""The sans-I/O core of one client connection: admission rules, dispatch, in-flight requests.

Nothing here touches a socket, a loop or the clock: the transport adapter feeds
it events with ``now`` and receives frames and a close request through a
:class:`ConnectionIO`; workers (the model pool) call back the connection's jobs.
Every per-connection rule lives here, so each is unit-tested with a fake clock:

- **auth**: with API keys, ``predict``/``generate``/``models`` need a key (from
  the handshake's Bearer header or an ``auth`` message); a connection not
  authenticated by ``auth_timeout_s`` is closed (1008); failed attempts are
  limited per connection (then 1008) and per address (:class:`~wsserve.auth.KeyRegistry`);
- **rate limits**: a token bucket per connection and one per API key, and
  **capacity** (below): :class:`~wsserve.admission.Admission`, the rules HTTP
  requests go through too;
- **ids**: unique among the connection's unfinished requests (``duplicate_id``);
- **capacity**: ``max_inflight`` requests and ``max_inflight_bytes`` of inputs;
- **slow consumers**: while more than ``max_write_buffer_bytes`` are unsent, new
  work is refused; past ``slow_consumer_timeout_s`` over it, or four times it
  (or, when one message alone put it over, more than that message left), the
  connection is closed (1008);
- **deadlines** (``timeout_ms``), the **idle timeout**, **draining** and **closing**.

Call order (the adapter's)::

    conn = Connection(ctx, io, address=..., key=..., now=...)
    conn.open()                          # hello (+ draining) frames
    conn.receive(data, binary, now)      # each complete message, in order
    conn.wrote(unsent_bytes, now)        # after writes: the slow-consumer policy
    conn.on_timer(now)                   # whenever now >= conn.next_timer()
    conn.drain(deadline_ms) / conn.end_all(exc)    # server shutdown
    conn.lost()                          # the socket is gone: stop all work

After any call the adapter re-reads :meth:`next_timer`.  Frames go out through
``io.send`` (payloads of text frames; the adapter frames and writes them) and a
close through ``io.close`` — called at most once.  Binary tensor frames
(answers to predicts with ``"binary_outputs": true``) go out through
``io.send_binary``; binary messages in are ``predict`` tensor frames
(:func:`~wsserve.protocol.decode_binary`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .admission import Admission, Shared, is_loopback, retry_ms, slow_consumer_drop_at
from .auth import AUTH_FAILURES_PER_CONNECTION, KeyRegistry
from .config import ServerConfig
from .errors import (
    BadJson,
    BadRequest,
    DuplicateId,
    Forbidden,
    Internal,
    InvalidInput,
    Overloaded,
    RateLimited,
    Unauthorized,
    WsserveError,
)
from .generation.fairslots import compile_client
from .jobs import DecoupledJob, GenerateJob, Job, PredictJob
from .metrics import Metrics
from .protocol import (
    Admin,
    Auth,
    Cancel,
    Generate,
    Models,
    Ping,
    Predict,
    decode,
    decode_binary,
    encode_admin_ok,
    encode_auth_ok,
    encode_draining,
    encode_error,
    encode_models,
    encode_pong,
    ms,
)

__all__ = ["Connection", "ConnectionContext", "ConnectionIO", "ModelLookup", "Shared"]

log = logging.getLogger("wsserve.connection")

_GONE = object()  # an admin operation already answered (the drain deadline)


class ConnectionIO(Protocol):
    """What the core asks of its transport adapter."""

    def send(self, frame: bytes) -> None:
        """Queue one text frame (a JSON payload); written after the current event."""

    def send_binary(self, frame: bytes) -> None:
        """Queue one binary frame (a binary tensor frame); same order and rules as :meth:`send`."""

    def close(self, code: int, reason: str) -> None:
        """Write what is queued, then the close frame with ``code``; called once."""


class ModelLookup(Protocol):
    """What the core needs from the model pool."""

    def lookup(self, name: str, version: str | None = None) -> Any:
        """The entry serving ``name`` (``kind``, ``input_width``, ``worker``...); raises ``UnknownModel``."""

    def knows(self, name: str) -> bool:
        """True for a served model name (metrics label only real names)."""

    @property
    def models_json(self) -> bytes:
        """The ``models`` list as JSON."""


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    """Everything a connection may use: never the server itself."""

    config: ServerConfig
    models: ModelLookup
    metrics: Metrics
    keys: KeyRegistry
    shared: Shared
    hello: bytes
    clock: Callable[[], float]  # monotonic seconds, for events that come from workers
    #: ``admin(op, model, version, done[, config])``: run a load/unload/reload and call ``done``
    #: with the result (a dict) or the ``WsserveError``; ``config``: a load's model configuration
    #: in JSON, or None; None when the server has no repository.
    admin: Callable[[str, str, str | None, Callable[[Any], None], str | None], None] | None = None
    #: ``--otlp-traces-endpoint``: the server's :class:`~wsserve.tracing.Tracing` (a span per
    #: predict and generate); None: off, nothing is traced.
    tracer: Any = None


class Connection:
    """One client connection's protocol state.  Single-threaded (the event loop)."""

    def __init__(self, ctx: ConnectionContext, io: ConnectionIO, *, address: str, key: str | None, now: float,
                 local_admin: bool | None = None) -> None:
        """``key``: the API key of a valid Bearer handshake header (vetted by the server), if any;
        ``local_admin``: without keys, may it run admin operations (the server decides from the
        handshake, :func:`~wsserve.admission.local_admin`; None: if ``address`` is loopback)."""
        cfg = ctx.config
        self.ctx = ctx
        self.io = io
        # Hot-path shortcuts to the context (read on every message).
        self._cfg = cfg
        self._shared = ctx.shared
        self._models = ctx.models
        self._metrics = ctx.metrics
        self._clock = ctx.clock
        self._tracer = ctx.tracer  # None: tracing off
        self.address = address
        self._local_admin = is_loopback(address) if local_admin is None else local_admin
        self.inflight: dict[Any, Job] = {}
        self.inflight_bytes = 0
        #: of those, the ones waiting for their sequence to be given a slot: not counted against max_inflight
        #: (the model's queue bounds them; counted, they could keep the END that frees a slot from being taken)
        self.slot_waiting = 0
        #: admin operations (load/unload/reload) running for this connection: token -> request id.
        #: They hold the connection open while draining, as jobs do, and end with one frame each.
        self.admin_ops: dict[int, Any] = {}
        self._admin_seq = 0
        self.key = key
        self.authenticated = key is not None or not cfg.api_key
        self.evicted = False
        self.closing = False
        self.last_activity = now
        self._now = now
        self._auth_deadline = None if self.authenticated else now + cfg.auth_timeout_s
        self._auth_failures = 0
        self._deadlines: list[tuple[float, int, Job]] = []
        self._tiebreak = itertools.count()
        self._over_since: float | None = None
        self._drop_at = 0  # while over the write limit: the unsent bytes past which it is closed (wrote)
        self._seed_keys = 0
        #: Changes whenever :meth:`next_timer` may have moved earlier (the adapter re-arms then).
        self.timer_epoch = 0
        self._admission = Admission(cfg, ctx.shared, now)  # rate limits and capacity, shared with HTTP
        if not self.authenticated:
            ctx.shared.unauthenticated[self] = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Send ``hello`` (and ``draining`` when the server is already draining)."""
        self.io.send(self.ctx.hello)
        if self.ctx.shared.draining:
            self.io.send(encode_draining(0))

    def close(self, code: int, reason: str) -> None:
        """Stop all work (nothing can be sent after the close frame) and close.  Idempotent."""
        if self.closing:
            return
        self.closing = True
        self._forget_auth()
        self._abandon_all()
        self.io.close(code, reason)

    def lost(self) -> None:
        """The socket is gone (or the client started the closing handshake): stop all work."""
        self.closing = True
        self._forget_auth()
        self._abandon_all()

    def drain(self, deadline_ms: int) -> None:
        """The server is draining: say so; a connection with nothing in flight (no job, no admin
        operation) closes (1001)."""
        self.send(encode_draining(deadline_ms))
        if not self.inflight and not self.admin_ops:
            self.close(1001, "server shutting down")

    def end_all(self, exc: WsserveError) -> None:
        """End every unfinished request with ``exc`` (the drain deadline): jobs, and admin
        operations still running (their own answer, if it comes later, is not sent)."""
        for job in list(self.inflight.values()):
            job.fail(exc)
        ops, self.admin_ops = self.admin_ops, {}
        for rid in ops.values():
            self.send(encode_error(exc, rid))

    # ------------------------------------------------------------------ output (JobOwner)

    def send(self, frame: bytes) -> None:
        if not self.closing:  # after close() nothing more goes out before the close frame
            self.io.send(frame)

    def send_binary(self, frame: bytes) -> None:
        if not self.closing:
            self.io.send_binary(frame)

    def job_slot_wait(self, job: Job, waiting: bool) -> None:
        if self.inflight.get(job.key) is job:  # (before _track: it reads the flag)
            self.slot_waiting += 1 if waiting else -1

    def job_finished(self, job: Job, frame: bytes | None, code: str, binary: bool = False) -> None:
        """Called once per job by :meth:`Job._terminal`."""
        del self.inflight[job.key]
        self.inflight_bytes -= job.nbytes
        if job.slot_wait:
            self.slot_waiting -= 1
        shared = self._shared
        shared.inflight -= 1
        if frame is not None and not self.closing:
            if binary:
                self.io.send_binary(frame)
            else:
                self.io.send(frame)
        if job.span is not None:
            job.span.end(code, job)
        metrics = self._metrics
        if type(job) is PredictJob or type(job) is DecoupledJob:
            metrics.predict_done(job.model, code, self._clock() - job.received_at, job.queue_s, job.worker.stats)
        else:
            metrics.request_done(job.model, job.kind, code, self._clock() - job.received_at,
                                 job.engine.stats)  # type: ignore[attr-defined]
            if code in ("ok", "cancelled"):
                metrics.add_tokens(job.model, job.tokens)  # type: ignore[attr-defined]
        if not self.inflight and self._cfg.idle_timeout_s is not None:
            self.timer_epoch += 1  # the idle clock runs again
        if shared.draining and not self.inflight and not self.admin_ops and not self.closing:
            self.close(1001, "server shutting down")

    def elapsed_ms(self, since: float) -> float:
        return ms(self.ctx.clock() - since)

    # ------------------------------------------------------------------ timers

    def next_timer(self) -> float | None:
        """When :meth:`on_timer` should next run (None: no timer needed)."""
        if self.closing:
            return None
        cfg = self._cfg
        when: float | None = None
        if self._deadlines:
            when = self._deadlines[0][0]
        for t in (
            self._auth_deadline,
            None if self._over_since is None else self._over_since + cfg.slow_consumer_timeout_s,
            None if cfg.idle_timeout_s is None or self.inflight or self.admin_ops
            else self.last_activity + cfg.idle_timeout_s,
        ):
            if t is not None and (when is None or t < when):
                when = t
        return when

    def on_timer(self, now: float) -> None:
        """Fire whatever is due: request deadlines, auth timeout, slow consumer, idle timeout."""
        self._now = now
        self.timer_epoch += 1
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            job = heapq.heappop(heap)[2]
            if not job.finished:
                job.expire()
        if self.closing:
            return
        cfg = self.ctx.config
        if self._auth_deadline is not None and now >= self._auth_deadline:
            self.close(1008, "authentication timeout")
        elif self._over_since is not None and now - self._over_since >= cfg.slow_consumer_timeout_s:
            self._slow_consumer("stayed over the write-buffer limit")
        elif cfg.idle_timeout_s is not None and not self.inflight and not self.admin_ops \
                and now - self.last_activity >= cfg.idle_timeout_s:  # (as next_timer: a slow admin op is not idleness)
            self.close(1000, "idle timeout")

    # ------------------------------------------------------------------ flow control

    @property
    def congested(self) -> bool:
        """True while the last reported unsent bytes were over ``max_write_buffer_bytes``."""
        return self._over_since is not None

    def wrote(self, unsent: int, now: float) -> None:
        """The slow-consumer policy, after each write: ``unsent`` bytes wait in the socket's buffer."""
        limit = self.ctx.config.max_write_buffer_bytes
        if unsent <= limit:
            self._over_since = None
            return
        self._now = now
        if self._over_since is None:
            self._over_since = now
            self.timer_epoch += 1
            self._drop_at = slow_consumer_drop_at(limit, unsent)  # (a large result: given the timeout)
        elif unsent > self._drop_at:
            self._slow_consumer(f"{unsent} bytes unsent")
        elif now - self._over_since >= self.ctx.config.slow_consumer_timeout_s:
            self._slow_consumer("stayed over the write-buffer limit")

    def _slow_consumer(self, why: str) -> None:
        if self.closing:
            return
        self.ctx.metrics.slow_consumers += 1
        log.warning("closing slow consumer %s: %s", self.address, why)
        self.close(1008, "slow consumer: stopped reading")

    # ------------------------------------------------------------------ input

    def receive(self, data: bytes, binary: bool, now: float) -> None:
        """One complete message: a text frame's JSON, or (``binary``) a binary tensor frame.
        A bad one gets an ``error`` frame and nothing else happens; a text frame
        that is not UTF-8 fails the connection (1007)."""
        if self.closing:  # the connection is being closed: later messages are dropped
            return
        self._shared.messages += 1
        self.last_activity = self._now = now
        req: Any = None
        try:
            if binary:
                req = decode_binary(data, max_rows=self._cfg.max_rows)
            else:
                req = decode(data, max_tokens=self._cfg.max_tokens)
            kind = type(req)
            if kind is Predict:
                self._predict(req, now)
            elif kind is Generate:
                self._generate(req, now)
            elif kind is Cancel:
                job = self.inflight.get(req.id)
                if job is not None:
                    job.cancel()
            elif kind is Ping:
                self.send(encode_pong(req.id))
            elif kind is Models:
                self._need_auth()
                self.send(encode_models(req.id, self.ctx.models.models_json))
            elif kind is Auth:
                self._auth(req, now)
            elif kind is Admin:
                self._admin(req)
        except BadJson as exc:
            if exc.invalid_utf8:  # RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection
                self.close(1007, "invalid UTF-8 in a text frame")
            else:
                self._refuse(exc, None)
        except WsserveError as exc:
            self._refuse(exc, req, binary)
        except Exception as exc:  # a bug: report it, keep the connection
            log.exception("internal error while handling a message")
            self.send(encode_error(Internal(f"internal error: {type(exc).__name__}: {exc}"), getattr(req, "id", None)))

    def _refuse(self, exc: WsserveError, req: Any, binary: bool = False) -> None:
        """The one place a refused message becomes an ``error`` frame (and a metric).
        ``binary``: a binary tensor frame, always a predict (even when it failed to decode)."""
        rid = exc.request_id if exc.request_id is not None else getattr(req, "id", None)
        self.send(encode_error(exc, rid))
        kind = "generate" if type(req) is Generate else "predict" if binary or type(req) is Predict else "other"
        model = getattr(req, "model", "")
        # Label only real model names: client-chosen labels would grow without bound.
        self.ctx.metrics.rejected(model if self.ctx.models.knows(model) else "", kind, exc.code)
        if self._tracer is not None and kind != "other":
            head = _span_head(req) if req is not None else {"wsserve.transport": "websocket"}
            if rid is not None:
                head["wsserve.request_id"] = str(rid)[:256]
            self._tracer.refused(f"wsserve.{kind}", getattr(req, "traceparent", None), getattr(req, "tracestate", None),
                                 self._now, head, exc.code)

    # ------------------------------------------------------------------ auth

    def _need_auth(self) -> None:
        if not self.authenticated:
            raise Unauthorized('authenticate first: send {"type":"auth","token":...}')

    def _auth(self, req: Auth, now: float) -> None:
        keys = self.ctx.keys
        if not keys.enabled:  # no keys at all: nothing to check (as a Bearer header, it is ignored)
            self.send(encode_auth_ok(req.id))
            return
        wait = keys.blocked_for(self.address, now)
        if wait > 0:
            raise RateLimited("too many failed authentication attempts from this address", retry_after_ms=retry_ms(wait))
        key = keys.match(req.token)
        if key is not None:
            self.key = key
            if not self.authenticated:
                self.authenticated = True
                self._forget_auth()
            self.send(encode_auth_ok(req.id))
            return
        keys.failed(self.address, now)
        self._auth_failures += 1
        if self._auth_failures >= AUTH_FAILURES_PER_CONNECTION:
            self.send(encode_error(Unauthorized("invalid API key"), req.id))
            self.close(1008, "too many failed authentication attempts")
            return
        raise Unauthorized("invalid API key")

    def may_admin(self) -> bool:
        """Admin operations: with keys configured, an admin key; without, loopback only (and not
        a browser page of another name: :func:`~wsserve.admission.local_admin`)."""
        cfg = self._cfg
        if cfg.api_key or cfg.admin_key:
            return self.ctx.keys.is_admin(self.key)
        return self._local_admin

    def _admin(self, req: Admin) -> None:
        if not self.may_admin():
            raise Forbidden(f"{req.op} needs the admin key (--admin-key), or loopback when no keys are configured")
        admin = self.ctx.admin
        if admin is None:
            raise BadRequest(f"{req.op}: this server serves no model repository")
        rid, op = req.id, req.op
        self._admin_seq += 1
        token = self._admin_seq
        self.admin_ops[token] = rid

        def done(result: Any) -> None:
            """The operation's one answer, unless the drain deadline answered it already
            (or the connection is closing: nothing goes out then)."""
            if self.admin_ops.pop(token, _GONE) is _GONE:
                return
            if isinstance(result, WsserveError):
                self.send(encode_error(result, rid))
            else:
                self.send(encode_admin_ok(op, rid, result))
            if not self.admin_ops and not self.inflight:
                self.timer_epoch += 1  # the idle clock runs again
                if self._shared.draining and not self.closing:
                    self.close(1001, "server shutting down")

        admin(op, req.model, req.version, done, req.config)

    def _forget_auth(self) -> None:
        self._auth_deadline = None
        self.timer_epoch += 1
        self.ctx.shared.unauthenticated.pop(self, None)

    # ------------------------------------------------------------------ admission

    def _admit(self, rid: Any, now: float) -> None:
        """Checks common to predict and generate, before any model work."""
        if not self.authenticated:
            raise Unauthorized('authenticate first: send {"type":"auth","token":...}')
        self._admission.admit(self.key, now)  # draining, this connection's and this key's rates
        if rid is not None and rid in self.inflight:
            raise DuplicateId(f"id {rid!r} is already in use by an unfinished request")

    def _capacity(self, nbytes: int) -> None:
        if self._over_since is not None:
            raise Overloaded(
                "this connection is not reading its replies fast enough; no new work until it catches up",
                retry_after_ms=100,
            )
        self._admission.capacity(len(self.inflight) - self.slot_waiting, self.inflight_bytes, nbytes)

    def _deadline(self, timeout_ms: float | None, now: float) -> float | None:
        return None if timeout_ms is None else now + timeout_ms / 1000.0

    def _predict(self, req: Predict, now: float) -> None:
        rid = req.id
        self._admit(rid, now)
        entry = self._models.lookup(req.model, req.version)
        if entry.kind != "predict":
            raise BadRequest(f"model {req.model!r} serves generate, not predict")
        if req.priority > 1 and (refusal := entry.worker.priorities.refusal(req.priority, req.model)) is not None:
            raise BadRequest(refusal)  # 0 and 1 suit every model
        if req.explain and (refusal := entry.explain_refusal) is not None:
            raise BadRequest(refusal)
        if (req.binary_outputs or req.seed_form is not None) and getattr(entry, "answers_strings", False):
            raise BadRequest(f"model {req.model!r} answers strings (BYTES outputs): ask for them as JSON, with an 'id' "
                             "and without 'binary_outputs'")
        cfg = self._cfg
        if req.tensors is not None:  # a binary tensor frame: sizes were checked against the payload
            inputs, n, nbytes = entry.prepare_binary(req.tensors)
        else:
            # Any JSON number takes at least two bytes of the message: a bound before anything is allocated.
            inputs, n, nbytes = entry.prepare(req.inputs, cfg.max_rows, cfg.max_message_bytes // 2)
        if req.explain and n > cfg.max_explain_rows:
            raise InvalidInput(f"'inputs' has {n} rows; explain takes at most {cfg.max_explain_rows} "
                               "rows per request (max_explain_rows)")
        self._capacity(nbytes)
        if rid is None:  # seed form: no id, still tracked so shutdown and limits see it
            self._seed_keys += 1
            key: Any = ("seed", self._seed_keys)
        else:
            key = rid
        deadline = None if req.timeout_ms is None else now + req.timeout_ms / 1000.0
        job: PredictJob | DecoupledJob
        if entry.decoupled:  # its responses stream as ``response`` frames (:class:`~wsserve.jobs.DecoupledJob`)
            _check_decoupled(req)
            job = DecoupledJob(self, req.id, req, entry, inputs, n, nbytes, now, deadline)
        else:
            job = PredictJob(self, key, req, entry, inputs, n, nbytes, now, deadline)
        job.item = entry.worker.submit(job, priority=req.priority, deadline=deadline)
        self._track(job)
        if self._tracer is not None:
            job.span = self._tracer.begin("wsserve.predict", req.traceparent, req.tracestate, now, _span_head(req))

    def _generate(self, req: Generate, now: float) -> None:
        self._admit(req.id, now)
        entry = self.ctx.models.lookup(req.model, req.version)
        if entry.kind != "generate":
            raise BadRequest(f"model {req.model!r} serves predict, not generate")
        self._capacity(0)
        params = req.params
        if req.messages is not None:  # the model's chat template makes the prompt (BadRequest if it has none)
            params = replace(params, prompt=entry.model.chat_prompt(req.messages))
        deadline = self._deadline(req.timeout_ms, now)
        job = GenerateJob(self, req.id, req, entry, now, deadline)
        job.handle = entry.worker.submit(params, job, group=self, deadline=deadline,
                                         client=compile_client(self.key, self.address))
        self._track(job)
        if self._tracer is not None:
            job.span = self._tracer.begin("wsserve.generate", req.traceparent, req.tracestate, now, _span_head(req))

    def _track(self, job: Job) -> None:
        self.inflight[job.key] = job
        self.inflight_bytes += job.nbytes
        if job.slot_wait:
            self.slot_waiting += 1
        self._shared.inflight += 1
        if job.deadline is not None:
            heapq.heappush(self._deadlines, (job.deadline, next(self._tiebreak), job))
            self.timer_epoch += 1
            if len(self._deadlines) > 64 + 2 * len(self.inflight):  # drop finished jobs' entries
                self._deadlines = [e for e in self._deadlines if not e[2].finished]
                heapq.heapify(self._deadlines)

    def _abandon_all(self) -> None:
        for job in list(self.inflight.values()):
            job.abandon()


def _check_decoupled(req: Predict) -> None:
    """Refuse (``BadRequest``) a predict a decoupled model cannot answer: one without an ``id`` (its
    responses need one).  (``binary_outputs`` is answered in binary ``response`` frames; a model
    answering strings refuses it before this, as for any predict.)"""
    if req.id is None:
        raise BadRequest(f"model {req.model!r} is decoupled (any number of responses): send a predict with an 'id'")


def _span_head(req: Predict | Generate) -> dict[str, Any]:
    """The attributes of a WebSocket request's span known when it arrives (``--otlp-traces-endpoint``):
    the model, the id, a generate's parameters under OpenTelemetry's GenAI names."""
    head: dict[str, Any] = {"wsserve.transport": "websocket", "wsserve.model": req.model}
    if req.id is not None:  # (the seed form has none)
        head["wsserve.request_id"] = str(req.id)[:256]
    if type(req) is Generate:
        params = req.params
        head.update({"gen_ai.operation.name": "chat" if req.messages is not None else "text_completion",
                     "gen_ai.request.model": req.model, "gen_ai.request.max_tokens": params.max_tokens,
                     "gen_ai.request.temperature": params.temperature})
    return head

