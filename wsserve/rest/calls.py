"""HTTP requests in flight: one call per predict, inference or completion, and the session that owns them.

A call is the sink its worker calls back (:class:`~wsserve.pool.PredictSink`
or the engine's :class:`~wsserve.generation.TokenSink`, exactly as a
WebSocket job is) and answers through its request's
:class:`~wsserve.httpmsg.HttpExchange`.  Every way a call ends goes through
:meth:`Call._end`, once: then ``finished`` is true, every callback is a no-op,
and the session counts it (in-flight totals, metrics).  A client that goes away
aborts its calls (``exchange.on_abort``): queued rows are dropped and a
generation is cancelled in the engine.

Sans-I/O: the session is given its clock; calls touch no socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from ..admission import Admission
from ..errors import WsserveError
from ..httpmsg import HttpExchange, HttpResponse
from ..protocol import encode_seed_result
from . import oip
from .errors import Style, error_response
from .openai import Completion, CompletionEncoder, error_event

if TYPE_CHECKING:
    from ..config import ServerConfig
    from ..metrics import Metrics
    from ..pool import ModelEntry
    from ..admission import Shared

__all__ = ["Call", "CompletionCall", "HttpSession", "InferCall", "PredictCall", "PredictFormCall", "SeedCall"]

JSON = "application/json"
_NO_HEADERS: tuple[tuple[str, str], ...] = ()  # never mutated


class HttpSession:
    """One HTTP connection's admission state and unfinished calls (created at its first work request).

    Holds a connection slot (``--max-connections``) until the server releases it
    when the connection closes."""

    __slots__ = ("admission", "calls", "inflight_bytes", "address", "_shared", "_metrics", "_clock")

    def __init__(self, cfg: ServerConfig, shared: Shared, metrics: Metrics, clock: Callable[[], float],
                 address: str, now: float) -> None:
        self.admission = Admission(cfg, shared, now)
        self.calls: set[Call] = set()
        self.inflight_bytes = 0
        self.address = address
        self._shared = shared
        self._metrics = metrics
        self._clock = clock

    def track(self, call: Call) -> None:
        """``call`` was accepted by its worker."""
        self.calls.add(call)
        self.inflight_bytes += call.nbytes
        self._shared.inflight += 1

    def finished(self, call: Call, code: str) -> None:
        """Called once per tracked call, by :meth:`Call._end`."""
        self.calls.discard(call)
        self.inflight_bytes -= call.nbytes
        self._shared.inflight -= 1
        metrics = self._metrics
        metrics.request_done(call.model, call.kind, code, self._clock() - call.received_at)
        if type(call) is CompletionCall:
            if code in ("ok", "cancelled"):
                metrics.add_tokens(call.model, call.tokens)
        elif call.queue_s >= 0:  # type: ignore[attr-defined]
            metrics.queued(call.model, call.queue_s)  # type: ignore[attr-defined]

    def end_all(self, exc: WsserveError) -> None:
        """End every unfinished call with ``exc`` (the drain deadline)."""
        for call in list(self.calls):
            call.fail(exc)

    def abort_all(self) -> None:
        """The connection is gone: stop every call's work."""
        for call in list(self.calls):
            call.abort()


class Call:
    """Base of HTTP calls.  Subclasses stop their work in ``_stop_work``."""

    __slots__ = ("session", "exchange", "model", "version", "kind", "received_at", "finished", "nbytes", "style",
                 "headers")

    def __init__(self, session: HttpSession, exchange: HttpExchange, entry: ModelEntry, kind: str, style: Style,
                 received_at: float, headers: list[tuple[str, str]] | None) -> None:
        self.session = session
        self.exchange = exchange
        self.model = entry.name
        self.version = entry.version
        self.kind = kind
        self.style = style
        self.received_at = received_at
        self.finished = False
        self.nbytes = 0
        self.headers = headers or _NO_HEADERS  # CORS headers for the answer

    def _end(self, code: str) -> bool:
        if self.finished:
            return False
        self.finished = True
        self.session.finished(self, code)
        return True

    def _answer(self, body: bytes, content_type: str = JSON, headers: Any = None) -> None:
        self.exchange.respond(HttpResponse(200, body, content_type, headers or self.headers))  # type: ignore[arg-type]

    def fail(self, exc: WsserveError) -> None:
        """End with an error answer and stop the remaining work."""
        if self._end(exc.code):
            self._stop_work()
            self._error(exc)

    def _error(self, exc: WsserveError) -> None:
        response = error_response(exc, self.style)
        if self.headers:
            response.headers.extend(self.headers)
        self.exchange.respond(response)

    def abort(self) -> None:
        """The client is gone: stop the work, answer nothing."""
        if self._end("cancelled"):
            self._stop_work()

    def _stop_work(self) -> None:
        raise NotImplementedError


class PredictCall(Call):
    """Rows through a predict worker (its :class:`~wsserve.pool.PredictSink`); subclasses encode the answer."""

    __slots__ = ("rows", "n", "worker", "item", "queue_s", "_compute_s", "_batch_max", "_parts", "_delivered")

    def __init__(self, session: HttpSession, exchange: HttpExchange, entry: ModelEntry, rows: np.ndarray,
                 style: Style, received_at: float, headers: list[tuple[str, str]] | None) -> None:
        super().__init__(session, exchange, entry, "predict", style, received_at, headers)
        self.rows = rows
        self.n = rows.shape[0]
        self.nbytes = rows.nbytes
        self.worker = entry.worker
        self.item: Any = None
        self.queue_s = -1.0
        self._compute_s = 0.0
        self._batch_max = 0
        self._parts: list[np.ndarray] | None = None
        self._delivered = 0

    def _stop_work(self) -> None:
        if self.item is not None:
            self.worker.cancel(self.item)

    # -- PredictSink

    def on_error(self, exc: WsserveError) -> None:
        self.fail(exc)

    def on_rows(self, start: int, outputs: np.ndarray, batch_rows: int, queue_s: float, compute_s: float) -> None:
        if self.finished:
            return
        if self.queue_s < 0:
            self.queue_s = queue_s
        self._compute_s += compute_s
        if batch_rows > self._batch_max:
            self._batch_max = batch_rows
        self._delivered += outputs.shape[0]
        if self._delivered < self.n:
            if self._parts is None:
                self._parts = [outputs]
            else:
                self._parts.append(outputs)
            return
        if self._parts is not None:
            outputs = np.concatenate([*self._parts, outputs])
        if self._end("ok"):
            self._result(outputs)

    def _result(self, outputs: np.ndarray) -> None:
        raise NotImplementedError


class SeedCall(PredictCall):
    """``POST /predict`` in the seed form: ``{"y_pred": number or list}``."""

    __slots__ = ("scalar",)

    def __init__(self, *args: Any, scalar: bool) -> None:
        super().__init__(*args)
        self.scalar = scalar

    def _result(self, outputs: np.ndarray) -> None:
        self._answer(encode_seed_result(outputs, self.scalar))


class PredictFormCall(PredictCall):
    """``POST /predict`` with ``model`` and ``inputs``: ``{"model", "version", "outputs", "timing"}``."""

    __slots__ = ()

    def _result(self, outputs: np.ndarray) -> None:
        timing = {
            "queue_ms": round(self.queue_s * 1000.0, 3) if self.queue_s > 0 else 0.0,
            "compute_ms": round(self._compute_s * 1000.0, 3),
            "batch_size": self._batch_max,
        }
        self._answer(orjson.dumps(
            {"model": self.model, "version": self.version, "outputs": np.ascontiguousarray(outputs), "timing": timing},
            option=orjson.OPT_SERIALIZE_NUMPY,
        ))


class InferCall(PredictCall):
    """``POST /v2/models/{name}/infer``: the Open Inference Protocol response (JSON or binary outputs)."""

    __slots__ = ("rid", "outputs", "requested")

    def __init__(self, *args: Any, rid: str | None, outputs: tuple[oip.Tensor, ...],
                 requested: list[tuple[int, bool]]) -> None:
        super().__init__(*args)
        self.rid = rid
        self.outputs = outputs
        self.requested = requested

    def _result(self, outputs: np.ndarray) -> None:
        spec = self.outputs[0]
        value = outputs.reshape((outputs.shape[0], *spec.shape))
        body, json_size = oip.encode_infer(self.model, self.version, self.rid, self.outputs, self.requested, [value])
        if json_size is None:
            self._answer(body)
        else:
            self._answer(body, "application/octet-stream",
                         [("Inference-Header-Content-Length", str(json_size)), *self.headers])


class CompletionCall(Call):
    """``POST /v1/completions``: the engine's token sink; a JSON answer, or Server-Sent Events when streamed."""

    __slots__ = ("engine", "handle", "encoder", "stream", "include_usage", "tokens", "_texts")

    def __init__(self, session: HttpSession, exchange: HttpExchange, entry: ModelEntry, received_at: float,
                 completion: Completion, encoder: CompletionEncoder, headers: list[tuple[str, str]] | None) -> None:
        super().__init__(session, exchange, entry, "generate", "openai", received_at, headers)
        self.engine = entry.worker
        self.handle: Any = None
        self.encoder = encoder
        self.stream = completion.stream
        self.include_usage = completion.include_usage
        self.tokens = 0
        self._texts: list[str] = []

    def _stop_work(self) -> None:
        if self.handle is not None:
            self.engine.cancel(self.handle)  # its on_done("cancelled") finds the call finished

    def _error(self, exc: WsserveError) -> None:
        if not self.stream:
            super()._error(exc)
            return
        # The 200 and the first events are out: the error is an event, then [DONE].
        self.exchange.send(error_event(error_response(exc, "openai").body))
        self.exchange.end_stream()

    # -- TokenSink

    def on_token(self, seq: int, text: str) -> None:
        if self.finished:
            return
        self.tokens = seq + 1
        if self.stream:
            self.exchange.send(self.encoder.token_event(text))
        else:
            self._texts.append(text)

    def on_done(self, reason: str, tokens: int, timing: dict[str, Any]) -> None:
        self.tokens = tokens
        if not self._end("ok" if reason != "cancelled" else "cancelled"):
            return
        if reason == "cancelled":  # not by us (we end first): answer what there is
            reason = "stop"
        if self.stream:
            self.exchange.send(self.encoder.final_events(reason, tokens, self.include_usage))
            self.exchange.end_stream()
        else:
            self._answer(self.encoder.response("".join(self._texts), reason, tokens))

    def on_error(self, exc: WsserveError) -> None:
        self.fail(exc)
