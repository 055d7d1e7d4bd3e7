"""Request tracing with OpenTelemetry (``--otlp-traces-endpoint``): the one module that imports it.

The rest of wsserve calls through a tiny interface and never imports OpenTelemetry:

- :meth:`Tracing.begin` (name, W3C ``traceparent``/``tracestate`` as received, the request's
  arrival on the server's monotonic clock, attributes known then) returns a
  :class:`RequestSpan`, kept by the request (an HTTP or gRPC call, a WebSocket job);
- :meth:`RequestSpan.end` (the result code, ``ok`` or a wire error code, and the request, whose
  ``span_attributes()`` gives the figures measured by then) ends it when the request's terminal answer is sent; a second call is a no-op;
- :meth:`Tracing.refused` records a request refused before it was queued (one span, ended at once);
- :meth:`Tracing.close` flushes and stops the exporter (bounded), at shutdown.

With the flag off no :class:`Tracing` exists: the request paths test ``span is None`` (or
``tracer is None``) and do nothing else, and this module's OpenTelemetry imports never run.

Spans go to an OTLP/HTTP collector through the SDK's ``BatchSpanProcessor``: ended spans are
queued (bounded: ``OTEL_BSP_MAX_QUEUE_SIZE``, 2048 by default; past it they are dropped) and
exported by its own thread, so the event loop never waits on the collector, and a collector
that is down costs dropped spans, not slower answers.  Every call here catches its own errors
(logged once per kind): tracing never fails a request.  The service name is ``wsserve``, or
``OTEL_SERVICE_NAME``; the SDK's other ``OTEL_*`` variables (``OTEL_BSP_SCHEDULE_DELAY``,
``OTEL_EXPORTER_OTLP_TRACES_HEADERS``, ``OTEL_TRACES_SAMPLER``...) apply as documented by OpenTelemetry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ._version import __version__
from .tracecontext import parse_traceparent, parse_tracestate
from .tracesettings import TraceControl

__all__ = ["RequestSpan", "Tracing", "check_endpoint", "traces_url", "MAX_ATTRIBUTE_CHARS", "MAX_ENDPOINT_CHARS"]

log = logging.getLogger("wsserve.tracing")

#: The longest ``--otlp-traces-endpoint`` accepted.
MAX_ENDPOINT_CHARS = 2048
#: The longest attribute value a span keeps (longer strings are cut): some are the client's
#: (a refused request's model name, up to ``--max-message-bytes``), and up to 2048 ended spans
#: wait in the exporter's queue.
MAX_ATTRIBUTE_CHARS = 256
#: How long :meth:`Tracing.close` waits for the last spans to be exported (a collector that is
#: down must not hold up the exit).
CLOSE_TIMEOUT_S = 5.0

Attributes = Mapping[str, Any]


def check_endpoint(url: object, flag: str) -> str:
    """``url`` if it is an ``http://`` or ``https://`` URL with a host (what the OTLP/HTTP exporter
    posts to), else ``ValueError`` naming ``flag``."""
    if type(url) is not str or not url or len(url) > MAX_ENDPOINT_CHARS or not url.isprintable() or " " in url:
        raise ValueError(f"{flag} must be an http:// or https:// URL of at most {MAX_ENDPOINT_CHARS} characters "
                         f"(e.g. http://localhost:4318/v1/traces), got {str(url)[:100]!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"{flag} {url[:100]!r} is not a usable URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{flag} {url[:100]!r} is not an http:// or https:// URL with a host "
                         "(an OTLP/HTTP collector, e.g. http://localhost:4318/v1/traces)")
    return url


def traces_url(url: str) -> str:
    """The URL spans are posted to: ``url`` as given, or with ``/v1/traces`` (OTLP/HTTP's path)
    appended when it has no path (``http://collector:4318`` -> ``http://collector:4318/v1/traces``)."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return parts._replace(path="/v1/traces").geturl()
    return url


class RequestSpan:
    """One request's span, from :meth:`Tracing.begin` to :meth:`end`."""

    __slots__ = ("_tracing", "_span")

    def __init__(self, tracing: Tracing, span: Any) -> None:
        self._tracing = tracing
        self._span = span

    def end(self, code: str, request: Any = None) -> None:
        """Set ``request.span_attributes()`` (the figures measured by then; read here, so that an
        error in them is tracing's, not the request's), the status (a code other than ``ok``:
        ``ERROR`` with ``error.type`` and ``wsserve.error_code``; ``cancelled`` is an error too)
        and end the span.  Called once by the request's owner; later calls do nothing.  Never raises."""
        span, self._span = self._span, None
        if span is not None:
            self._tracing.finish(span, code, request)


class Tracing:
    """The server's tracer provider and its OTLP/HTTP exporter.  Event-loop thread only (the
    exporter runs in the SDK's own thread).

    ``endpoint``: a checked URL (:func:`check_endpoint`); ``clock``: the monotonic clock the
    requests' arrival times are read on; ``control``: which requests get a span (Triton's trace
    settings, :class:`~wsserve.tracesettings.TraceControl`; None: every one the SDK's sampler
    keeps).  Raises ``ImportError`` without the ``otel`` extra."""

    def __init__(self, endpoint: str, *, clock: Callable[[], float], control: TraceControl | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

        self._clock = clock
        self._control = control
        service = os.environ.get("OTEL_SERVICE_NAME") or "wsserve"
        resource = Resource.create({"service.name": service, "service.version": __version__})
        # no exit handler of its own (shutdown_on_exit): close() is the one, bounded, shutdown; the
        # SDK's joins an export to a collector that does not answer for up to 30 s more at exit
        self._provider = TracerProvider(resource=resource, shutdown_on_exit=False,
                                        span_limits=SpanLimits(max_span_attribute_length=MAX_ATTRIBUTE_CHARS))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
        self._tracer = self._provider.get_tracer("wsserve", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._server_kind = trace.SpanKind.SERVER
        self._error = trace.Status(trace.StatusCode.ERROR)
        self._failed: set[str] = set()  # the kinds of failure already logged (once each)
        self.endpoint = traces_url(endpoint)
        self._closed = False

    def begin(self, name: str, traceparent: str | None, tracestate: str | None, received_at: float,
              attributes: Attributes) -> RequestSpan | None:
        """Start a request's span, named ``name``, started at ``received_at`` (the monotonic
        clock's), a child of ``traceparent`` when it is a usable W3C value (else a new trace).
        Returns None when the trace settings or the sampler left it out, or if the SDK failed
        (logged once)."""
        control = self._control
        counts = None
        if control is not None:
            counts = control.pick(attributes.get("wsserve.model"))
            if counts is None:
                return None
        try:
            context = None
            traceparent = parse_traceparent(traceparent)
            if traceparent is not None:
                carrier = {"traceparent": traceparent}
                tracestate = parse_tracestate(tracestate)
                if tracestate is not None:
                    carrier["tracestate"] = tracestate
                context = self._propagator.extract(carrier)
            start_ns = time.time_ns() - int((self._clock() - received_at) * 1e9)
            span = self._tracer.start_span(name, context, self._server_kind, attributes, start_time=start_ns)
        except Exception as exc:  # noqa: BLE001 - tracing never fails a request
            self._log_once("begin", exc)
            return None
        if not span.is_recording():  # sampled out (OTEL_TRACES_SAMPLER): nothing more to do for it
            return None
        if counts is not None:
            control.spend(counts)  # (a span made: trace_count counts it)
        return RequestSpan(self, span)

    def finish(self, span: Any, code: str, request: Any) -> None:
        """End ``span`` with ``code`` (see :meth:`RequestSpan.end`); a failure to read the request's
        attributes still ends it.  Never raises."""
        try:
            if request is not None:
                span.set_attributes(request.span_attributes())
        except Exception as exc:  # noqa: BLE001 - tracing never fails a request
            self._log_once("attributes", exc)
        try:
            if code != "ok":
                span.set_attributes({"error.type": code, "wsserve.error_code": code})
                span.set_status(self._error)
            span.end()
        except Exception as exc:  # noqa: BLE001 - tracing never fails a request
            self._log_once("end", exc)

    def refused(self, name: str, traceparent: str | None, tracestate: str | None, received_at: float,
                attributes: Attributes, code: str) -> None:
        """A request refused before it was queued (unknown model, bad body, limits): its span,
        begun and ended at once with ``code``."""
        span = self.begin(name, traceparent, tracestate, received_at, attributes)
        if span is not None:
            span.end(code)

    def close(self) -> None:
        """Export what is queued and stop the exporter's thread, waiting at most
        :data:`CLOSE_TIMEOUT_S` (a collector that is down: the rest is dropped).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        provider = self._provider
        done = threading.Event()

        def shut() -> None:
            try:
                provider.force_flush(int(CLOSE_TIMEOUT_S * 1000))
                provider.shutdown()
            except Exception as exc:  # noqa: BLE001
                self._log_once("close", exc)
            finally:
                done.set()

        threading.Thread(target=shut, name="wsserve-otel-close", daemon=True).start()
        if not done.wait(CLOSE_TIMEOUT_S):
            log.warning("tracing: spans not exported within %.0f s at shutdown (is the collector at %s up?); "
                        "the rest are dropped", CLOSE_TIMEOUT_S, self.endpoint)

    def _log_once(self, what: str, exc: Exception) -> None:
        if what not in self._failed:
            self._failed.add(what)
            log.warning("tracing: %s failed (%s: %s); requests are served as usual", what, type(exc).__name__, exc)
