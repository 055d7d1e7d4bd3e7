"""The HTTP API: every plain (non-WebSocket) route of a server, sans-I/O.

:meth:`HttpApi.handle` answers one request: at once (a returned
:class:`~wsserve.httpmsg.HttpResponse`) or later through its exchange (the
work routes, which queue rows or a generation next to the WebSocket traffic).
It applies, in order: the route (404; 405 with ``Allow``), the browser
``Origin`` policy (403; CORS headers and ``OPTIONS`` preflights answered from
the allowlist), the API key (401/429), then for work routes the same admission
rules as a WebSocket connection (:class:`~wsserve.admission.Admission`:
draining, rate limits, capacity) and the same codec errors.

Routes (docs/PROTOCOL.md, "HTTP"):

- ``POST /predict`` - the seed form ``{"x": ...}`` -> ``{"y_pred": ...}``, or
  ``{"model", "inputs", ...}`` -> ``{"model", "version", "outputs", "timing"}``;
- the Open Inference Protocol v2: ``GET /v2``, ``/v2/health/live|ready``,
  ``/v2/models/{name}[/versions/{version}][/ready]``, ``POST .../infer``;
- Triton's model configuration and statistics extensions:
  ``GET /v2/models/{name}[/versions/{version}]/config``, ``GET /v2/models[/{name}[/versions/{version}]]/stats``
  (bodies: :mod:`wsserve.rest.triton`);
- Triton's generate extension: ``POST /v2/models/{name}[/versions/{version}]/generate`` and
  ``/generate_stream`` (bodies: :mod:`wsserve.rest.tritongen`);
- KServe's V1 protocol: ``GET /v1/models/{name}[/versions/{version}]``, ``POST
  /v1/models/{name}[/versions/{version}]:predict`` and ``:explain`` (bodies: :mod:`wsserve.rest.kserve`);
- the OIP model repository extension (Triton's): ``POST /v2/repository/index``,
  ``POST /v2/repository/models/{name}/load`` and ``/unload`` (optional body
  ``{"parameters": {"version": ...}}``), through the server's admin hook (the
  WebSocket ``load``/``unload`` path) with the same authorization rule (the logic, shared with
  the gRPC RPCs: :mod:`wsserve.rest.modelrepo`);
- the OIP logging extension (Triton's): ``GET /v2/logging`` and ``POST /v2/logging`` (an admin,
  the same rule), over the server's :class:`~wsserve.logcontrol.LogControl`;
- ``POST /v1/completions``, ``POST /v1/chat/completions`` and ``POST /v1/responses`` (OpenAI; a
  chat's prompt is the served model's template of its ``messages``, a response's of its
  ``instructions`` and ``input``: :mod:`wsserve.rest.responses`), ``GET /v1/models`` (the WebSocket ``models``
  reply, versions included; ``?format=openai``: OpenAI's list shape).
- vLLM's ``POST /tokenize`` and ``POST /detokenize`` for generative models (bodies:
  :mod:`wsserve.rest.tokenize`), answered at once.

More routes are added with :meth:`HttpApi.add_route` (the server adds its
health, metrics and static routes).
"""

from __future__ import annotations

import functools
import itertools
import logging
import secrets
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import orjson

from ..admission import Shared, check_bearer, local_admin, origin_allowed, proxied
from ..auth import KeyRegistry
from ..config import ServerConfig
from ..decoupled import decoupled_refusal
from ..dtypes import array_bytes
from ..errors import (
    BadJson,
    BadRequest,
    Forbidden,
    Internal,
    InvalidInput,
    Overloaded,
    ShuttingDown,
    UnknownModel,
    WsserveError,
)
from ..generation.fairslots import compile_client
from ..generation.logprobs import MAX_SCORED_VALUES
from ..generation.running import checked_prompt_ids
from ..generation.scheduler import check_token_ids
from ..httpmsg import HttpExchange, HttpRequest, HttpResponse
from ..logcontrol import LogControl
from ..metrics import Metrics
from ..protocol import decode_predict_body, loads
from ..tracecontext import trace_fields
from ..tracesettings import TraceControl, TraceSettingError
from . import kserve, modelrepo, oip, sharedmem, triton
from .calls import (
    CompletionCall,
    HttpSession,
    InferCall,
    KServeCall,
    PredictFormCall,
    SeedCall,
    generate_span_head,
)
from .decoupledgen import DecoupledGenerateCall, generate_inputs
from .errors import Style, content_type_note, error_response, plain_error
from .openai import (
    ChatCompletionEncoder,
    CompletionEncoder,
    ParamError,
    kept_logprob_values,
    models_list,
    parse_chat_completion,
    parse_completion,
)
from .responses import ResponsesEncoder, parse_response_request
from .router import Auth, Handler, Route, Router
from .tokenize import detokenize, parse_detokenize, parse_tokenize, tokenize
from .toolcalls import ToolCallEncoder
from .tritongen import (
    GENERATE_INPUTS,
    GENERATE_OUTPUTS,
    GenerateOutputsEncoder,
    generate_encoder,
    parse_generate,
)

__all__ = ["HttpApi"]

log = logging.getLogger("wsserve.rest")

#: What one log-probability value of a non-streamed answer costs while it is kept (its record's
#: share: a token with 20 alternatives holds ~3.7 KB until the answer is encoded), counted against
#: the connection's ``max_inflight_bytes`` as a request's input bytes are.
LOGPROB_VALUE_BYTES = 176

JSON = "application/json"
#: Request headers a browser may send cross-origin (the preflight's answer).
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Inference-Header-Content-Length"
#: Response headers a cross-origin page may read.
CORS_EXPOSE_HEADERS = "Retry-After, Inference-Header-Content-Length"
#: Preflight answers may be cached this long (seconds).
CORS_MAX_AGE = "600"

_NO_STORE = ("Cache-Control", "no-store")
#: The operation the admin rule names when a client asks for the system shared memory regions' status.
SHM_STATUS_OP = "reading the shared memory regions' status"
#: What registering CUDA shared memory answers (Triton's extension, on a server without GPUs).
CUDA_SHM_REFUSAL = "CUDA shared memory is not supported: this server runs no GPU (use system shared memory)"
_PLATFORMS = {"onnx": "onnxruntime_onnx", "python": "python", "npz": "wsserve_npz", "ensemble": "ensemble"}
#: Triton's ``backend`` for a ``platform`` (others: the platform's name).
_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "ensemble": ""}
#: A batch input's dtype -> its config ``data_type`` (config.pbtxt allows these two).
_BATCH_TYPES = {"int32": "TYPE_INT32", "float32": "TYPE_FP32"}


class HttpApi:
    """The routes of one server.  Event-loop thread only.

    ``ready()`` says whether the server takes new work (``/v2/health/ready``);
    ``slot_free()`` whether one more connection fits ``--max-connections`` (an
    HTTP connection takes a slot at its first work request, see :attr:`sessions`);
    ``clock`` is monotonic seconds, ``wall_clock`` Unix seconds (OpenAI's ``created``).
    """

    def __init__(
        self,
        *,
        config: ServerConfig,
        models: Any,  # ModelPool: lookup, knows, names, status, models_json
        metrics: Metrics,
        keys: KeyRegistry,
        shared: Shared,
        version: str,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        ready: Callable[[], bool],
        slot_free: Callable[[], bool],
        admin: modelrepo.AdminHook | None = None,
        unloaded: Callable[[], Iterable[str]] = tuple,
        tracer: Any = None,
        log_control: LogControl | None = None,
        trace_control: TraceControl | None = None,
        settings_fixed: str | None = None,
        shared_memory: bool = True,
    ) -> None:
        self.config = config
        self.models = models
        self.metrics = metrics
        self.keys = keys
        self.shared = shared
        self.version = version
        self.clock = clock
        self.wall_clock = wall_clock
        self.ready = ready
        self.slot_free = slot_free
        self.admin = admin
        self.unloaded = unloaded
        #: ``--otlp-traces-endpoint``: a :class:`~wsserve.tracing.Tracing` (a span per predict, inference
        #: and generation, HTTP's and gRPC's); None: off
        self.tracer = tracer
        #: Triton's logging extension (``/v2/logging``, gRPC's ``LogSettings``); None: not offered.
        self.log_control = log_control
        #: Triton's trace extension (``/v2/trace/setting``, gRPC's ``TraceSetting``); None: not offered.
        self.trace_control = trace_control
        #: Why trace settings cannot be changed here (``--workers``), or None.
        self.settings_fixed = settings_fixed
        #: Sessions of open HTTP connections holding a connection slot.
        self.sessions: set[HttpSession] = set()
        #: Triton's system shared memory extension: the registered regions (closed by :meth:`close`);
        #: ``shared_memory`` false (``--workers``: a region registered in one worker process would
        #: be unknown to the others), registering is refused
        self.shm = sharedmem.SystemSharedMemory()
        self.shm_registers = shared_memory
        #: OIP extensions announced by ``GET /v2``.
        self.extensions: list[str] = (["binary_tensor_data", "model_configuration", "statistics"]
                                      + (["model_repository"] if admin is not None else [])
                                      + (["system_shared_memory"] if shared_memory else [])
                                      + (["logging"] if log_control is not None else [])
                                      + (["trace"] if trace_control is not None else []))
        self.router = Router()
        self._keys_on = bool(config.api_key)  # an admin key alone guards admin operations only (as on the WebSocket)
        self._completion_prefix = f"cmpl-{secrets.token_hex(6)}-"  # unique across restarts, cheap per request
        self._completion_ids = itertools.count(1)
        self._response_token = secrets.token_hex(6)  # /v1/responses' ids: resp_<token><n>, msg_<token><n>
        self._started = int(wall_clock())
        # Per loaded version (weak: a retired version's entry and model are not kept alive here).
        self._signatures: weakref.WeakKeyDictionary[Any, tuple[tuple[oip.Tensor, ...], tuple[oip.Tensor, ...]]] = (
            weakref.WeakKeyDictionary())
        add = self.add_route
        add("POST", "/predict", self._predict, auth="key", style="wsserve")
        add("GET", "/v1/models", self._models, auth="key", style="wsserve")
        add("POST", "/v1/completions", self._completions, auth="key", style="openai")
        add("POST", "/v1/chat/completions", self._chat_completions, auth="key", style="openai")
        add("POST", "/v1/responses", self._responses, auth="key", style="openai")
        add("POST", "/tokenize", self._tokenize, auth="key", style="openai")  # vLLM's
        add("POST", "/detokenize", self._detokenize, auth="key", style="openai")
        add("GET", "/version", self._version, auth="key", style="openai")  # vLLM's
        # KServe's V1 protocol (TensorFlow Serving's REST API): {name} / {version} end with ":predict" or ":explain".
        for base in ("/v1/models/{name}", "/v1/models/{name}/versions/{version}"):
            add("GET", base, self._v1_model, auth="key", style="oip")
            add("POST", base, self._v1_predict, auth="key", style="oip").methods_of = _v1_methods
        add("GET", "/v2", self._server_metadata, auth="key", style="oip")
        add("GET", "/v2/health/live", self._live, auth="none", style="oip")
        add("GET", "/v2/health/ready", self._server_ready, auth="none", style="oip")
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            add("GET", base, self._model_metadata, auth="key", style="oip")
            add("GET", base + "/ready", self._model_ready, auth="key", style="oip")
            add("POST", base + "/infer", self._infer, auth="key", style="oip")
            add("GET", base + "/config", self._model_config, auth="key", style="oip")
            add("GET", base + "/stats", self._model_stats, auth="key", style="oip")
            add("POST", base + "/generate", self._triton_generate, auth="key", style="oip")
            add("POST", base + "/generate_stream", self._triton_generate_stream, auth="key", style="oip")
        add("GET", "/v2/models/stats", self._model_stats, auth="key", style="oip")
        # The model repository extension (Triton's): admin operations check their own rule (_may_admin).
        add("POST", "/v2/repository/index", self._repository_index, auth="key", style="oip")
        add("POST", "/v2/repository/models/{name}/load", self._load, auth="none", style="oip")
        add("POST", "/v2/repository/models/{name}/unload", self._unload, auth="none", style="oip")
        if log_control is not None:  # Triton's logging extension: reading needs a key, changing an admin
            add("GET", "/v2/logging", self._log_settings, auth="key", style="oip")
            add("POST", "/v2/logging", self._update_log_settings, auth="key", style="oip")
        if trace_control is not None:  # Triton's trace extension: the same rule
            for path in ("/v2/trace/setting", "/v2/models/{name}/trace/setting"):
                add("GET", path, self._trace_settings, auth="key", style="oip")
                add("POST", path, self._update_trace_settings, auth="key", style="oip")
        # Triton's shared memory extensions: the system regions' status, registering and unregistering
        # check the admin rule (_may_admin); CUDA's routes (never a region) an API key, as every route.
        for kind, status, register, unregister in (
                ("system", self._shm_status, self._shm_register, self._shm_unregister),
                ("cuda", self._cuda_status, self._cuda_register, self._cuda_unregister)):
            auth: Auth = "none" if kind == "system" else "key"
            for base in (f"/v2/{kind}sharedmemory", f"/v2/{kind}sharedmemory/region/{{name}}"):
                add("GET", base + "/status", status, auth=auth, style="oip")
                add("POST", base + "/unregister", unregister, auth=auth, style="oip")
            add("POST", f"/v2/{kind}sharedmemory/region/{{name}}/register", register, auth=auth, style="oip")

    def add_route(self, method: str, pattern: str, handler: Handler, *, auth: Auth, style: Style | None) -> Route:
        """Route ``method pattern`` to ``handler(request, exchange, params, key, cors)``, which
        returns a response or None (it answers through ``exchange`` later).

        ``auth``: ``"none"``, ``"key"`` (an API key when keys are on) or ``"metrics"``
        (an API key or ``--metrics-key``); ``key`` is the caller's key (None with keys
        off).  ``style``: the error body (``"wsserve"``, ``"oip"``, ``"openai"``, or None
        for plain text).  ``cors``: headers to add to the answer (None: none).  Handlers
        may raise :class:`~wsserve.errors.WsserveError`: answered in the route's style."""
        return self.router.add(method, pattern, handler, auth=auth, style=style)

    # ------------------------------------------------------------------ dispatch

    def handle(self, request: HttpRequest, exchange: HttpExchange) -> HttpResponse | None:
        """Answer ``request`` now (the response) or later through ``exchange`` (None).  Never raises."""
        match = self.router.match(request.path)
        if match is None:
            return plain_error(404, f"no route for {request.path[:200]!r}", _style_of(request.path), "not_found")
        route, params = match
        cors = None
        origin = request.header(b"origin")
        if origin is not None:
            if request.header_count(b"origin") > 1:
                return plain_error(400, "duplicate Origin header", route.style)
            if not origin_allowed(self.config, origin, request.header(b"host")):
                return plain_error(403, "origin not allowed (only this server's own pages by default; see --allow-origin)",
                                   route.style, "forbidden")
            cors = self._cors(origin)
        method = request.method
        if method == "OPTIONS":
            return self._options(request, route, params, cors)
        handler = route.handler_for(method, params)
        if handler is None:
            allow = route.allow_for(params)
            where = route.pattern if route.methods_of is None else repr(request.path[:200])
            return _with(plain_error(405, f"{method} is not allowed on {where}; allowed: {allow}",
                                     route.style, "method_not_allowed", [("Allow", allow)]), cors)
        try:
            key = None
            if route.auth != "none" and self._keys_on:
                if request.header_count(b"authorization") > 1:
                    raise BadRequest("duplicate Authorization header")
                key = check_bearer(self.keys, request.address, request.header(b"authorization"), self.clock(),
                                   metrics=route.auth == "metrics")
            response = handler(request, exchange, params, key, cors)
        except WsserveError as exc:
            if self.tracer is not None:
                self._trace_refused(request, route, params, exc)
            if isinstance(exc, BadJson):
                exc.message += _content_type_note(request, route)
            return _with(error_response(exc, route.style or "wsserve", param=getattr(exc, "param", None)), cors)
        except Exception as exc:  # noqa: BLE001 - a bug: one log line, a 500, the connection stays
            log.error("error handling %s %r: %s: %s", method, request.path[:200], type(exc).__name__, exc)
            return _with(error_response(Internal("internal error"), route.style or "wsserve"), cors)
        if response is None:
            return None
        if method == "HEAD":
            response = HttpResponse(response.status, b"", response.content_type, response.headers, response.close)
        return _with(response, cors)

    def _cors(self, origin: str) -> list[tuple[str, str]] | None:
        """Headers for an allowed cross-origin request (None for a same-origin one)."""
        cfg = self.config
        if cfg.allow_origin is None:
            return None  # only our own origin is allowed, and it needs no CORS headers
        allow = "*" if "*" in cfg.allow_origin else origin
        return [("Access-Control-Allow-Origin", allow), ("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS),
                ("Vary", "Origin")]

    def _options(self, request: HttpRequest, route: Route, params: Mapping[str, str],
                 cors: list[tuple[str, str]] | None) -> HttpResponse:
        """``OPTIONS``: a CORS preflight is answered from the allowlist and the path's methods."""
        wanted = request.header(b"access-control-request-method")
        allowed = route.allow_for(params)
        if wanted is None or cors is None:  # not a (cross-origin) preflight
            return HttpResponse(204, headers=[("Allow", allowed), *(cors or ())])
        if wanted not in allowed.split(", "):
            return plain_error(405, f"{wanted} is not allowed on {route.pattern}; allowed: {allowed}",
                               route.style, "method_not_allowed", [("Allow", allowed), *cors])
        return HttpResponse(204, headers=[
            *cors, ("Access-Control-Allow-Methods", allowed), ("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS),
            ("Access-Control-Max-Age", CORS_MAX_AGE),
        ])

    def _trace_refused(self, request: HttpRequest, route: Route, params: Mapping[str, str],
                       exc: WsserveError) -> None:
        """A traced route's request refused before it was queued: its span, ended at once."""
        if request.method != "POST" or not route.pattern.endswith(_TRACED_ROUTES):
            return
        head: dict[str, Any] = {"wsserve.transport": "http"}
        if "name" in params:
            head["wsserve.model"] = params["name"]
        self.tracer.refused(f"POST {route.pattern}", *_trace_headers(request), self.clock(), head, exc.code)

    # ------------------------------------------------------------------ sessions (connection slots)

    def _session(self, exchange: HttpExchange, request: HttpRequest) -> HttpSession:
        """The connection's session, created at its first work request (taking a connection
        slot); raises ``ShuttingDown`` while draining, ``Overloaded``-like 503 at the cap."""
        session = exchange.session
        if session is None:
            if self.shared.draining:
                raise ShuttingDown("server is draining; no new work is accepted")
            if not self.slot_free():
                raise _TooManyConnections("too many connections (max_connections)", retry_after_ms=1000)
            now = self.clock()
            session = HttpSession(self.config, self.shared, self.metrics, self.clock, request.address, now)
            exchange.session = session
            self.sessions.add(session)
        return session

    def release(self, session: HttpSession | None) -> None:
        """The connection of ``session`` closed (or became a WebSocket): stop its calls, free its slot."""
        if session is not None:
            session.abort_all()
            self.sessions.discard(session)

    def _rejected(self, exc: WsserveError, model: str, kind: str) -> None:
        self.metrics.rejected(model if self.models.knows(model) else "", kind, exc.code)

    # ------------------------------------------------------------------ POST /predict

    def _predict(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str], key: str | None,
                 cors: list[tuple[str, str]] | None) -> HttpResponse | None:
        now = self.clock()
        model = ""
        try:
            session = self._session(exchange, request)
            session.admission.admit(key, now)
            req = decode_predict_body(request.body)
            model = req.model
            if req.stream:
                raise BadRequest("'stream' is not available on POST /predict; use the WebSocket for streamed rows")
            entry = self.models.lookup(req.model, req.version)
            if entry.kind != "predict":
                raise BadRequest(f"model {req.model!r} serves generate, not predict (use POST /v1/completions)")
            if req.priority > 1 and (refusal := entry.worker.priorities.refusal(req.priority, req.model)) is not None:
                raise BadRequest(refusal)  # 0 and 1 suit every model
            if req.explain and (refusal := entry.explain_refusal) is not None:
                raise BadRequest(refusal)
            cfg = self.config
            # Any JSON number takes at least two bytes of the body: a bound before anything is allocated.
            inputs, n, nbytes = entry.prepare(req.inputs, cfg.max_rows, cfg.max_message_bytes // 2)
            if req.explain and n > cfg.max_explain_rows:
                raise InvalidInput(f"'inputs' has {n} rows; explain takes at most {cfg.max_explain_rows} "
                                   "rows per request (max_explain_rows)")
            session.admission.capacity(session.inflight, session.inflight_bytes, nbytes)
            args = (session, exchange, entry, inputs, n, nbytes, "wsserve", now, cors)
            if req.seed_form is not None:
                call: Any = SeedCall(*args, scalar=req.seed_form == "scalar")
            else:
                call = PredictFormCall(*args, explain=req.explain)
            deadline = None if req.timeout_ms is None else now + req.timeout_ms / 1000.0
            call.item = entry.worker.submit(call, priority=req.priority, deadline=deadline)
        except WsserveError as exc:
            self._rejected(exc, model, "predict")
            raise
        session.track(call)
        exchange.on_abort = call.abort
        if self.tracer is not None:
            call.span = self.tracer.begin("POST /predict", *_trace_headers(request), now, {
                "wsserve.transport": "http", "wsserve.model": model})
        return None

    # ------------------------------------------------------------------ KServe V1

    def _v1_model(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                  *_: Any) -> HttpResponse:
        entry = self._lookup(params["name"], params.get("version"))
        if not self.ready():
            return HttpResponse(503, orjson.dumps({"error": f"model {entry.name!r} is not ready: the server is "
                                                            "draining"}), JSON, [_NO_STORE])
        return HttpResponse(200, kserve.model_ready(entry.name, self._started), JSON, [_NO_STORE])

    def _lookup(self, name: str, version: str | None) -> Any:
        """The entry serving ``name`` (``version``), as KServe answers a lookup: 404 (``UnknownModel``)
        for an unknown model or version, 503 (:class:`_ModelNotReady`, KServe's ModelNotReady) for a
        model or version that exists but is not ready (loading, unloading, failed; a model with no
        ready version).  Every model route of the KServe V1, OIP v2, Triton and OpenAI families
        looks up through here; ``POST /predict`` keeps the WebSocket's 404."""
        try:
            return self.models.lookup(name, version)
        except UnknownModel as exc:
            status = self.models.status(name)
            if status and (version is None or version in status):
                raise _ModelNotReady(exc.message) from None
            raise

    def _v1_predict(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str], key: str | None,
                    cors: list[tuple[str, str]] | None) -> HttpResponse | None:
        """``POST /v1/models/{name}[/versions/{version}]:predict|:explain``: rows through the model's
        queue as a WebSocket predict's, answered in KServe's V1 shapes."""
        now = self.clock()
        version = params.get("version")
        if version is None:
            name, verb = kserve.split_verb(params["name"])
        else:
            name = params["name"]
            version, verb = kserve.split_verb(version)
        if verb is None:
            return plain_error(404, f"no route for POST {request.path[:200]!r}: KServe's V1 "
                                    "protocol is POST /v1/models/NAME:predict (or :explain)", "oip", "not_found")
        try:
            session = self._session(exchange, request)
            session.admission.admit(key, now)
            entry = self._lookup(name, version)
            if entry.kind != "predict":
                raise BadRequest(f"model {name!r} generates text: use POST /v1/completions")
            explain = verb == "explain"
            if explain and (refusal := entry.explain_refusal) is not None:
                raise BadRequest(refusal)
            req = kserve.parse_v1(loads(request.body), entry.input_names, max_rows=self.config.max_rows,
                                  optional=entry.optional_inputs)
            cfg = self.config
            try:
                inputs, n, nbytes = entry.prepare(req.inputs, cfg.max_rows, cfg.max_message_bytes // 2)
            except InvalidInput as exc:  # the checks name the WebSocket's field: name the one sent
                if not req.columnar:
                    exc.message = kserve.instances_message(exc.message)
                raise
            if explain and n > cfg.max_explain_rows:
                field = "inputs" if req.columnar else "instances"
                raise InvalidInput(f"'{field}' has {n} rows; explain takes at most {cfg.max_explain_rows} "
                                   "rows per request (max_explain_rows)")
            session.admission.capacity(session.inflight, session.inflight_bytes, nbytes)
            call = KServeCall(session, exchange, entry, inputs, n, nbytes, "oip", now, cors, columnar=req.columnar,
                              explain=explain)
            call.item = entry.worker.submit(call)
        except WsserveError as exc:
            self._rejected(exc, name, "predict")
            raise
        session.track(call)
        exchange.on_abort = call.abort
        if self.tracer is not None:
            call.span = self.tracer.begin(_span_name("POST", params, "/v1/models/{name}", f":{verb}"),
                                          *_trace_headers(request), now, {"wsserve.transport": "http",
                                                                          "wsserve.model": name})
        return None

    # ------------------------------------------------------------------ OIP v2

    def _live(self, *_: Any) -> HttpResponse:
        return HttpResponse(200, b"", JSON, [_NO_STORE])

    def _server_ready(self, *_: Any) -> HttpResponse:
        return HttpResponse(200 if self.ready() else 400, b"", JSON, [_NO_STORE])

    def _server_metadata(self, *_: Any) -> HttpResponse:
        return HttpResponse(200, oip.server_metadata(self.version, self.extensions), JSON)

    def _signature(self, entry: Any) -> tuple[tuple[oip.Tensor, ...], tuple[oip.Tensor, ...]]:
        cached = self._signatures.get(entry)
        if cached is None:
            cached = self._signatures[entry] = oip.signature(entry.model)
        return cached

    # For the OIP's other transport (wsserve.oipgrpc): the same lookups, signatures and counts as HTTP's.
    rejected = _rejected
    lookup = _lookup
    signature = _signature

    def _model_metadata(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                        *_: Any) -> HttpResponse:
        return HttpResponse(200, self.model_metadata(self._lookup(params["name"], params.get("version"))), JSON)

    def model_metadata(self, entry: Any) -> bytes:
        """The OIP metadata body (JSON) of a served version (every transport's): a generative
        model's tensors are the generate extension's, as Triton's vLLM backend declares them."""
        generative = entry.kind != "predict"
        inputs, outputs = (GENERATE_INPUTS, GENERATE_OUTPUTS) if generative else self._signature(entry)
        explain = oip.explain_parameters(entry.explanation)
        return oip.model_metadata(entry.name, self._ready_versions(entry.name), _platform(entry), inputs, outputs,
                                  explain, batched=not generative)

    def _ready_versions(self, name: str) -> list[str]:
        ready = (v for v, st in self.models.status(name).items() if st.state == "ready")
        return sorted(ready, key=modelrepo.version_key)

    def _model_config(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                      *_: Any) -> HttpResponse:
        """Triton's model configuration extension (:func:`wsserve.rest.triton.model_config`): of
        version ``v``, or of the default version; 404 or 503 as the metadata route."""
        return HttpResponse(200, self.model_config(self._lookup(params["name"], params.get("version"))), JSON)

    @staticmethod
    def _priority_levels(worker: Any) -> dict[str, Any]:
        """:func:`triton.model_config`'s priority arguments of a predict or decoupled worker (its
        levels and their own queue policies; none when it has no ``priorities``)."""
        priorities = getattr(worker, "priorities", None)
        if priorities is None:
            return {}
        out: dict[str, Any] = {"priority_levels": priorities.levels, "default_priority_level": priorities.default}
        if priorities.policies:
            out["priority_queue_policy"] = {
                level: triton.level_queue_policy(p.max_queue_requests, p.default_timeout_s,
                                                 p.allow_timeout_override, p.timeout_action)
                for level, p in priorities.policies}
        return out

    def model_config(self, entry: Any) -> bytes:
        """The Triton configuration body (JSON) of a served version (every transport's)."""
        platform = _platform(entry)
        policy = getattr(getattr(entry.model, "config", None), "version_policy", None)
        batching: dict[str, Any] = {}
        max_rows = self.config.max_rows
        if entry.decoupled:  # one execute per request (no batching window), any number of responses
            inputs, outputs = self._signature(entry)
            worker = entry.worker
            default = getattr(worker, "queue_policy", None)  # its default queue policy (a level's own replaces it)
            batching = {"inputs": inputs, "outputs": outputs, "decoupled": True,
                        "queue_policy": triton.queue_policy(
                            getattr(worker, "max_queue_requests", None), getattr(default, "default_timeout_s", None),
                            getattr(default, "allow_timeout_override", True),
                            getattr(default, "timeout_action", "REJECT"))}
            batching.update(self._priority_levels(worker))
            config = getattr(entry.model, "config", None)
            if getattr(config, "iterative_sequence", False) is True:  # its request rescheduling, as config.pbtxt says it
                batching["sequence_batching"] = orjson.loads(config.triton_model_config)["sequence_batching"]
            steps = getattr(entry.model, "triton_steps", None)  # a decoupled ensemble's (a step is decoupled)
            if callable(steps):
                batching["ensemble_steps"] = steps()
                batching["ensemble_max_inflight_requests"] = entry.model.config.ensemble.max_inflight_requests
                max_rows = min(max_rows, entry.model.config.max_batch_size) or max_rows
        elif entry.kind == "predict":
            inputs, outputs = self._signature(entry)
            queue = entry.worker.queue
            worker = entry.worker
            batching = {"inputs": inputs, "outputs": outputs, "max_batch_rows": queue.max_batch_size,
                        "max_delay_s": queue.max_delay_s,
                        "queue_policy": triton.queue_policy(getattr(queue, "max_queue_requests", None),
                                                            getattr(worker, "default_timeout_s", None),
                                                            getattr(worker, "allow_timeout_override", True),
                                                            getattr(getattr(worker, "queue_policy", None),
                                                                    "timeout_action", "REJECT"))}
            batching.update(self._priority_levels(worker))
            batching["response_cache"] = getattr(getattr(entry.model, "config", None), "response_cache", False) is True
            config = getattr(entry.model, "config", None)
            batching["reshapes"] = {t.name: t.model_dims for t in (*(getattr(config, "inputs", None) or ()),
                                                                  *(getattr(config, "outputs", None) or ()))
                                    if getattr(t, "model_dims", None) is not None and t.name is not None}
            # config.pbtxt's ragged batching (wsserve.repository.ragged), as Triton lists it
            batching["ragged"] = frozenset(t.name for t in getattr(config, "inputs", None) or ()
                                           if getattr(t, "ragged", False))
            batching["batch_input"] = [{"kind": b.kind, "target_name": [b.target], "data_type": _BATCH_TYPES[b.dtype],
                                        "source_input": [b.source]} for b in getattr(config, "batch_inputs", ())]
            batching["batch_output"] = [{"target_name": list(b.targets), "kind": "BATCH_SCATTER_WITH_INPUT_SHAPE",
                                         "source_input": [b.source]} for b in getattr(config, "batch_outputs", ())]
            sequence = getattr(config, "sequence", None)  # a stateful model's sequence_batching
            if sequence is not None:
                batching["sequence_batching"] = sequence.as_json
            elif getattr(config, "iterative_sequence", False) is True:  # its request rescheduling, as written
                batching["sequence_batching"] = orjson.loads(config.triton_model_config)["sequence_batching"]
            steps = getattr(entry.model, "triton_steps", None)  # an ensemble's
            if callable(steps):
                batching["ensemble_steps"] = steps()
                batching["ensemble_max_inflight_requests"] = entry.model.config.ensemble.max_inflight_requests
                max_rows = min(max_rows, entry.model.config.max_batch_size) or max_rows  # its own bound on a request's rows
        config = getattr(entry.model, "config", None)
        if entry.kind == "predict" and "ensemble_steps" not in batching and getattr(config, "triton", False) is True \
                and (config.max_batch_size or 0) > 0:
            # config.pbtxt's own, as Triton answers it (clients size their batches by it); a request of more
            # rows is still served: split over executions of at most that many (a decoupled model's: whole)
            max_rows = min(max_rows, config.max_batch_size)
        return triton.model_config(entry.name, platform=platform, backend=_BACKENDS.get(platform, platform),
                                   policy=policy, generative=entry.kind != "predict", max_rows=max_rows,
                                   **batching)

    def _model_stats(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                     *_: Any) -> HttpResponse:
        """Triton's statistics extension (:func:`wsserve.rest.triton.model_stats`): every ready version
        of every model, of one model, or one version (as the metadata route: 404 for an unknown
        model or version, 503 for one that is not ready).  Figures: :meth:`Metrics.model_statistics`
        (merged over worker processes)."""
        return HttpResponse(200, self.model_stats(params.get("name"), params.get("version")), JSON, [_NO_STORE])

    def model_stats(self, name: str | None, version: str | None) -> bytes:
        """The Triton statistics body (JSON) of every model (``name`` None), one model or one version;
        raises as :meth:`lookup` for an unknown or unready one (every transport's)."""
        if name is not None:
            self._lookup(name, version)
        versions = []
        for model in sorted(self.models.names) if name is None else (name,):
            status = self.models.status(model)
            for ready in self._ready_versions(model):
                if version in (None, ready):
                    versions.append((model, ready, status[ready].entry.kind == "generate"))
        return triton.model_stats(versions, self.metrics.model_statistics())

    def _model_ready(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                     *_: Any) -> HttpResponse:
        """200 when the model (version) serves and the server is not draining; 400, with no body
        (Triton's "not ready", as ``/v2/health/ready``), when it exists but is not ready or the
        server drains; 404 for an unknown model or version."""
        try:
            self._lookup(params["name"], params.get("version"))
        except _ModelNotReady:
            return HttpResponse(400, b"", JSON, [_NO_STORE])
        return HttpResponse(200 if self.ready() else 400, b"", JSON, [_NO_STORE])

    def _infer(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str], key: str | None,
               cors: list[tuple[str, str]] | None) -> HttpResponse | None:
        now = self.clock()
        name = params["name"]
        try:
            session = self._session(exchange, request)
            session.admission.admit(key, now)
            entry = self._lookup(name, params.get("version"))
            if entry.kind != "predict":
                raise BadRequest(f"model {name!r} generates text: use POST /v1/completions")
            if entry.decoupled:  # Triton's answer (http_server.cc CheckTransactionPolicy)
                raise decoupled_refusal("HTTP end point doesn't support models with decoupled transaction policy")
            inputs, outputs = self._signature(entry)
            if not inputs or not outputs:
                raise BadRequest(f"model {name!r} declares no input or output tensors")
            encoding = request.header(b"content-encoding")
            if encoding is not None and encoding.strip().lower() != "identity":
                raise BadRequest(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
            cfg = self.config
            req = oip.parse_infer(request.body, _header_length(request), inputs, outputs, max_rows=cfg.max_rows,
                                  explain_refusal=entry.explain_refusal,
                                  shm=functools.partial(self._shm_access, request),
                                  max_message_bytes=cfg.max_message_bytes)
            call = self.queue_infer(session, entry, req, inputs, outputs, now, InferCall, exchange, cors)
        except WsserveError as exc:
            self._rejected(exc, name, "predict")
            raise
        session.track(call)
        exchange.on_abort = call.abort
        if self.tracer is not None:
            head = {"wsserve.transport": "http", "wsserve.model": name}
            if req.id is not None:
                head["wsserve.request_id"] = req.id
            call.span = self.tracer.begin(_span_name("POST", params, "/v2/models/{name}", "/infer"),
                                          *_trace_headers(request), now, head)
        return None

    def queue_infer(self, session: HttpSession, entry: Any, req: oip.InferRequest, inputs: tuple[oip.Tensor, ...],
                    outputs: tuple[oip.Tensor, ...], now: float, call_type: type[InferCall], exchange: Any,
                    headers: Any, **extra: Any) -> InferCall:
        """Queue a checked OIP inference (every transport's: HTTP's ``/infer``, gRPC's ModelInfer)
        on ``entry``'s worker: the explain row bound, ``session``'s capacity, then a ``call_type``
        (an :class:`InferCall`, answering through ``exchange`` with ``headers``, given ``extra``'s
        fields too) is submitted with the request's priority and deadline and returned (the
        caller tracks it).  Raises what the checks and the worker raise."""
        cfg = self.config
        if req.explain:
            if req.rows > cfg.max_explain_rows:  # the WebSocket's limit and message
                raise InvalidInput(f"'inputs' has {req.rows} rows; explain takes at most {cfg.max_explain_rows} "
                                   "rows per request (max_explain_rows)")
            outputs = (*outputs, *oip.attribution_tensors(inputs, outputs))
        batch = _worker_inputs(entry, inputs, req)
        nbytes = sum(map(array_bytes, batch.values())) if isinstance(batch, dict) else array_bytes(batch)
        session.admission.capacity(session.inflight, session.inflight_bytes, nbytes)
        if req.shm_outputs:
            extra.update(shm=self.shm, shm_outputs=req.shm_outputs)
        call = call_type(session, exchange, entry, batch, req.rows, nbytes, "oip", now, headers, rid=req.id,
                         outputs=outputs, requested=req.outputs, explain=req.explain, sequence=req.sequence, **extra)
        deadline = None if req.timeout_us is None else now + req.timeout_us / 1e6
        call.item = entry.worker.submit(call, priority=req.priority, deadline=deadline)  # any: Triton's rule maps it
        return call

    # ------------------------------------------------------------------ OIP model repository extension

    def _repository_index(self, request: HttpRequest, *_: Any) -> HttpResponse:
        """:func:`~wsserve.rest.modelrepo.index_rows`.  Body: none, or ``{"ready": true}`` for the
        ready versions only."""
        ready_only = False
        if request.body.strip():
            body = loads(request.body)
            if type(body) is not dict:
                raise BadRequest("the repository index request must be a JSON object")
            ready_only = body.get("ready", False)
            if type(ready_only) is not bool:
                raise BadRequest("'ready' must be a boolean")
        rows = modelrepo.index_rows(self.models, self.unloaded(), ready_only)
        return HttpResponse(200, orjson.dumps(rows), JSON, [_NO_STORE])

    def _load(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str], key: str | None,
              cors: list[tuple[str, str]] | None) -> HttpResponse | None:
        return self._repository_op("load", request, exchange, params["name"], cors)

    def _unload(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str], key: str | None,
                cors: list[tuple[str, str]] | None) -> HttpResponse | None:
        return self._repository_op("unload", request, exchange, params["name"], cors)

    def _may_admin(self, request: HttpRequest, op: str) -> None:
        """:func:`~wsserve.rest.modelrepo.check_admin` for an HTTP request (401, 429 or 403; a
        repeated Authorization header 400, when keys are configured: without them it is not read)."""
        authorization = None
        if modelrepo.admin_keys_on(self.config):
            if request.header_count(b"authorization") > 1:
                raise BadRequest("duplicate Authorization header")
            authorization = request.header(b"authorization")
        local = local_admin(request.address, request.header(b"origin"), request.header(b"host"), proxied(request))
        modelrepo.check_admin(self.config, self.keys, op, address=request.address, authorization=authorization,
                              local=local, now=self.clock())

    def _repository_op(self, op: str, request: HttpRequest, exchange: HttpExchange, name: str,
                       cors: list[tuple[str, str]] | None) -> HttpResponse | None:
        """Load or unload ``name`` through the admin hook; answered when the operation is done
        (200 with the model's versions and states, or the OIP error)."""
        self._may_admin(request, op)
        admin = modelrepo.admin_hook(self.admin, op)
        version, config = _admin_params(op, request.body)
        answer: list[HttpResponse] = []  # set if the hook answers before we return
        returned = False

        def done(result: Any) -> None:
            if isinstance(result, WsserveError):
                response = _with(error_response(result, "oip"), cors)
            else:
                response = _with(HttpResponse(200, orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY), JSON,
                                              [_NO_STORE]), cors)
            if returned:
                exchange.respond(response)  # ignored if the client is gone
            else:
                answer.append(response)

        admin(op, name, version, done, config)
        if answer:
            return answer[0]
        returned = True
        return None

    # ------------------------------------------------------------------ OIP logging extension (Triton's)

    def _log_settings(self, *_: Any) -> HttpResponse:
        """``GET /v2/logging``: every setting (:class:`~wsserve.logcontrol.LogSettings`)."""
        assert self.log_control is not None
        return HttpResponse(200, orjson.dumps(self.log_control.settings.as_dict()), JSON, [_NO_STORE])

    def _update_log_settings(self, request: HttpRequest, *_: Any) -> HttpResponse:
        """``POST /v2/logging``: a JSON object of the settings to change (none: nothing changes),
        by an admin (the model repository extension's rule); answers every setting now in force."""
        assert self.log_control is not None
        self._may_admin(request, "changing log settings")
        changes = loads(request.body) if request.body.strip() else {}
        if type(changes) is not dict:
            raise BadRequest("the log settings request must be a JSON object")
        settings = self.log_control.update(changes, lambda: log.warning(
            "log settings changed by %s: %s", request.address, orjson.dumps(changes).decode()[:512]))
        return HttpResponse(200, orjson.dumps(settings.as_dict()), JSON, [_NO_STORE])

    # ------------------------------------------------------------------ OIP trace extension (Triton's)

    def trace_model(self, name: str | None) -> str | None:
        """``name`` when a model of that name is served (None: the global settings); raises
        ``UnknownModel`` naming it otherwise (Triton's "Request for unknown model")."""
        if name is not None and not self.models.knows(name):
            raise UnknownModel(f"unknown model {name[:256]!r}: no trace settings")
        return name

    def trace_update(self, changes: Any, model: str | None, who: str) -> dict[str, Any]:
        """Apply a trace settings request (a JSON object of the settings; for a model, an empty one
        clears all of its own) and answer every setting in force; logged as a warning."""
        assert self.trace_control is not None
        if type(changes) is not dict:
            raise BadRequest("the trace settings request must be a JSON object")
        if self.settings_fixed is not None and changes:
            raise Forbidden(self.settings_fixed.format(what="trace settings"))
        if model is not None and not changes:
            changes = dict.fromkeys(("trace_level", "trace_rate", "trace_count", "log_frequency"))
        try:
            settings = self.trace_control.update(changes, model)
        except TraceSettingError as exc:
            raise BadRequest(str(exc)) from None
        if changes:
            log.warning("trace settings%s changed by %s: %s", "" if model is None else f" of model {model!r}", who,
                        orjson.dumps(changes).decode()[:512])
        return settings

    def _trace_settings(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                        *_: Any) -> HttpResponse:
        """``GET /v2[/models/{name}]/trace/setting``: every trace setting in force."""
        assert self.trace_control is not None
        settings = self.trace_control.settings(self.trace_model(params.get("name")))
        return HttpResponse(200, orjson.dumps(settings), JSON, [_NO_STORE])

    def _update_trace_settings(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                               *_: Any) -> HttpResponse:
        """``POST /v2[/models/{name}]/trace/setting``, by an admin (the model repository
        extension's rule): the settings to change (``null``: clear one)."""
        self._may_admin(request, "changing trace settings")
        model = self.trace_model(params.get("name"))
        changes = loads(request.body) if request.body.strip() else {}
        return HttpResponse(200, orjson.dumps(self.trace_update(changes, model, request.address)), JSON, [_NO_STORE])

    # ------------------------------------------------------------------ shared memory extensions (Triton's)

    def _shm_access(self, request: HttpRequest) -> sharedmem.SystemSharedMemory:
        """The regions, for an inference naming one: reading and writing a region is what
        registering it allows, so the caller passes the same rule (:meth:`_may_admin`)."""
        self._may_admin(request, "using a shared memory region")
        return self.shm

    def _shm_status(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                    *_: Any) -> HttpResponse:
        """``GET /v2/systemsharedmemory[/region/{name}]/status``: every region, or one (400 unknown);
        the admin rule's (:data:`SHM_STATUS_OP`), as registering: a region's key is the name of a
        shared memory object on the server's machine, and its name what an inference uses."""
        self._may_admin(request, SHM_STATUS_OP)
        return HttpResponse(200, orjson.dumps(self.shm.status(params.get("name"))), JSON, [_NO_STORE])

    def _shm_register(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                      *_: Any) -> HttpResponse:
        """``POST /v2/systemsharedmemory/region/{name}/register``, body ``{"key", "offset", "byte_size"}``."""
        self.check_shm_register(lambda: self._may_admin(request, "registering shared memory"))
        body = loads(request.body)
        if type(body) is not dict:
            raise BadRequest("the register request must be a JSON object {\"key\", \"offset\", \"byte_size\"}")
        unknown = sorted(k for k in body if k not in ("key", "offset", "byte_size"))
        if unknown:
            raise BadRequest(f"unknown field {unknown[0][:64]!r}; the register request has 'key', 'offset', 'byte_size'")
        if "key" not in body or "byte_size" not in body:
            raise BadRequest("the register request needs 'key' and 'byte_size' ('offset' defaults to 0)")
        self.shm.register(params["name"], body["key"], body.get("offset", 0), body["byte_size"])
        return HttpResponse(200, b"", JSON, [_NO_STORE])

    def check_shm_register(self, may_admin: Callable[[], None]) -> None:
        """Whether a register may go on (every transport's): under ``--workers`` never
        (``Forbidden``: a region would be known to one worker process only), else ``may_admin``
        (the transport's admin check) decides."""
        if not self.shm_registers:
            raise Forbidden("registering shared memory is not available with --workers: each worker process has "
                            "its own regions and a request may reach any of them")
        may_admin()

    def _shm_unregister(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                        *_: Any) -> HttpResponse:
        """``POST /v2/systemsharedmemory[/region/{name}]/unregister``: one region, or all."""
        self._may_admin(request, "unregistering shared memory")
        self.shm.unregister(params.get("name"))
        return HttpResponse(200, b"", JSON, [_NO_STORE])

    def _cuda_status(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                     *_: Any) -> HttpResponse:
        """CUDA shared memory: none is ever registered (no GPUs): ``[]``, or 400 for a named region."""
        if params.get("name"):
            raise BadRequest(f"CUDA shared memory region {params['name'][:256]!r} is not registered")
        return HttpResponse(200, b"[]", JSON, [_NO_STORE])

    def _cuda_register(self, *_: Any) -> HttpResponse:
        raise BadRequest(CUDA_SHM_REFUSAL)

    def _cuda_unregister(self, *_: Any) -> HttpResponse:
        """Nothing is registered: nothing to do (as unregistering an unknown region)."""
        return HttpResponse(200, b"", JSON, [_NO_STORE])

    def close(self) -> None:
        """The server stops: unregister every shared memory region (idempotent)."""
        self.shm.close()

    # ------------------------------------------------------------------ OpenAI

    def _version(self, *_: Any) -> HttpResponse:
        """vLLM's ``GET /version``: ``{"version": "<wsserve's version>"}``."""
        return HttpResponse(200, orjson.dumps({"version": self.version}), JSON, [_NO_STORE])

    def _models(self, request: HttpRequest, *_: Any) -> HttpResponse:
        """wsserve's list (the ``models`` reply's, the contract's), or OpenAI's list shape with
        ``?format=openai`` and, when no format is asked, to OpenAI's SDKs: a request carrying
        ``X-Stainless-Lang`` (the header every SDK generated from OpenAI's API spec sends: Python,
        Node...), whose ``client.models.list()`` cannot read a JSON array."""
        fmt = parse_qs(request.query).get("format", [""])[-1] if request.query else ""
        if fmt not in ("", "wsserve", "openai"):
            raise BadRequest(f"unknown format {fmt[:64]!r}; known: wsserve (default), openai")
        vary = ("Vary", "X-Stainless-Lang")
        if fmt == "openai" or (not fmt and request.header(b"x-stainless-lang") is not None):
            return HttpResponse(200, models_list(self.models.names, self._started), JSON, [_NO_STORE, vary])
        return HttpResponse(200, self.models.models_json, JSON, [_NO_STORE, vary])

    def _completions(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str], key: str | None,
                     cors: list[tuple[str, str]] | None) -> HttpResponse | None:
        return self._generate(request, exchange, key, cors, chat=False)

    def _chat_completions(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                          key: str | None, cors: list[tuple[str, str]] | None) -> HttpResponse | None:
        return self._generate(request, exchange, key, cors, chat=True)

    def _responses(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                   key: str | None, cors: list[tuple[str, str]] | None) -> HttpResponse | None:
        return self._generate(request, exchange, key, cors, chat=True, responses=True)

    def _triton_generate(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                         key: str | None, cors: list[tuple[str, str]] | None) -> HttpResponse | None:
        return self._generate(request, exchange, key, cors, chat=False, triton=params, stream=False)

    def _triton_generate_stream(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str],
                                key: str | None, cors: list[tuple[str, str]] | None) -> HttpResponse | None:
        return self._generate(request, exchange, key, cors, chat=False, triton=params, stream=True)

    def _generate(self, request: HttpRequest, exchange: HttpExchange, key: str | None,
                  cors: list[tuple[str, str]] | None, *, chat: bool, triton: Mapping[str, str] | None = None,
                  responses: bool = False,
                  stream: bool = False) -> HttpResponse | None:
        """``POST /v1/completions``, (``chat``) ``/v1/chat/completions``, (``chat`` and ``responses``)
        ``/v1/responses`` or (``triton``: the path's parameters) Triton's
        ``/v2/models/{name}[/versions/{v}]/generate[_stream]``: a generation queued next to the
        WebSocket ones, answered (or streamed) through ``exchange``."""
        now = self.clock()
        model = ""
        try:
            session = self._session(exchange, request)
            session.admission.admit(key, now)
            if triton is not None:
                model = triton["name"]
                entry = self._lookup(model, triton.get("version"))
                if entry.decoupled:
                    call = self._decoupled_generate(request, exchange, session, entry, stream, cors, now)
                    session.track(call)
                    exchange.on_abort = call.abort
                    return None
                if entry.kind != "generate":
                    raise BadRequest(f"model {model!r} does not generate text (use POST /v2/models/{model}/infer)")
                completion, rid, outputs, prepend = parse_generate(loads(request.body), model=model, stream=stream,
                                                                   max_tokens_limit=self.config.max_tokens)
            elif responses:
                asked = parse_response_request(loads(request.body), max_tokens_limit=self.config.max_tokens)
                completion = asked.completion
                model = completion.model
                entry = self._generative(model, f"use POST /v2/models/{model}/infer or POST /predict")
            else:
                parse = parse_chat_completion if chat else parse_completion
                completion = parse(loads(request.body), max_tokens_limit=self.config.max_tokens)
                model = completion.model
                entry = self._generative(model, f"use POST /v2/models/{model}/infer or POST /predict")
            prompts = max(1, len(completion.prompts), len(completion.prompt_ids))  # token-id prompts: texts set below
            choices = prompts * completion.n  # each counts against max_inflight
            if choices > self.config.max_inflight:
                raise ParamError("prompt" if prompts > 1 else "n",
                                 f"this request makes {choices} choices; this server takes at most "
                                 f"{self.config.max_inflight} unfinished requests per connection (max_inflight)")
            held = kept_logprob_values(completion, choices, kept_streamed=responses)  # (a Response's stream too)
            if held > MAX_SCORED_VALUES:
                k = completion.params.logprobs
                raise ParamError("top_logprobs" if responses else "logprobs",
                                 f"this answer would keep the log-probabilities of {choices} "
                                 f"choice(s) x {completion.params.max_tokens} tokens x {k + 1} values = {held} "
                                 f"values; at most {MAX_SCORED_VALUES} (ask for fewer tokens, choices or "
                                 "alternatives" + ("" if responses else ", or stream it: a stream keeps none") + ")")
            held_bytes = held * LOGPROB_VALUE_BYTES  # counted as input bytes are (max_inflight_bytes)
            session.admission.capacity(session.inflight + choices - 1, session.inflight_bytes, held_bytes)
            if completion.messages is not None:
                try:
                    completion = completion.with_prompt(entry.model.chat_prompt(completion.messages))
                except BadRequest as exc:
                    raise _with_param(exc, "input" if responses else "messages") from None
            if completion.prompt_ids:  # checked against the model now; their texts are what echo shows
                try:
                    completion = completion.with_prompt_texts(_id_texts(entry.worker.model, completion.prompt_ids))
                except BadRequest as exc:
                    raise _with_param(exc, "prompt") from None
            if triton is not None:
                encoder: Any = generate_encoder(rid, model, entry.version, outputs, prepend)
                call = CompletionCall(session, exchange, entry, now, completion, encoder, cors, style="oip")
            elif responses:
                n = next(self._completion_ids)
                encoder = ResponsesEncoder(f"resp_{self._response_token}{n}", f"msg_{self._response_token}{n}",
                                           int(self.wall_clock()), model, asked)
                call = CompletionCall(session, exchange, entry, now, completion, encoder, cors)
            else:
                cid = f"{'chat' if chat else ''}{self._completion_prefix}{next(self._completion_ids)}"
                if chat and completion.tool_choice is not None:  # a forced tool call: answered as tool_calls
                    encoder = ToolCallEncoder(cid, int(self.wall_clock()), model, completion.tool_choice)
                else:
                    encoder = (ChatCompletionEncoder if chat else CompletionEncoder)(cid, int(self.wall_clock()), model)
                call = CompletionCall(session, exchange, entry, now, completion, encoder, cors)
            call.client = compile_client(key, request.address)  # its fair share of the compile slots
            call.nbytes = held_bytes
            counts = None  # echo_only without scoring: each prompt's token count
            if completion.echo_only or (completion.echo and completion.params.logprobs is not None):
                # checked as a queued generation's are: none is queued (echo_only), or only once the
                # prompts are scored (then a refusal would come after that work)
                try:
                    check_token_ids(completion.params, entry.worker.model.vocab_size)
                except BadRequest as exc:
                    raise _token_id_param(exc) from None
            if completion.echo and completion.params.logprobs is not None:  # the prompts' tokens first
                chars = getattr(entry.worker.model, "prompt_chars", None)
                for prompt in () if completion.prompt_ids else call.prompts:
                    if chars is not None and len(prompt) > chars:
                        raise ParamError("echo", f"'echo' with 'logprobs' scores the prompt's tokens, and model "
                                                 f"{model!r} reads at most the last {chars} characters of a prompt; "
                                                 f"this one has {len(prompt)}")
                try:
                    for prompt in completion.prompt_ids or call.prompts:
                        call.scoring.append(entry.worker.score_prompt(prompt, completion.params.logprobs))
                except WsserveError as exc:
                    for scoring in call.scoring:
                        scoring.cancel()
                    raise _with_param(exc, "echo") if isinstance(exc, BadRequest) else exc from None
            elif completion.echo_only:  # nothing to queue: the prompts' token counts are the answer's usage
                counts = [len(ids) for ids in completion.prompt_ids] or [
                    entry.worker.model.encode_prompt(prompt)[1] for prompt in call.prompts]
            elif (compiling := entry.worker.prepare(completion.params, group=session, client=call.client)) is not None:
                # a guided_regex / guided_json compiled first (in a child process): a refusal is still a 400
                call.compiling = compiling
                compiling.add_done_callback(functools.partial(self._prepared, call, completion, session))
            else:
                self._submit(call, completion, session)
                if type(encoder) is GenerateOutputsEncoder:  # its events' num_input_tokens
                    encoder.prompt_tokens = call.choices[0].handle.prompt_tokens
        except WsserveError as exc:
            self._rejected(exc, model, "generate")
            raise
        session.track(call)
        exchange.on_abort = call.abort
        if self.tracer is not None:
            call.span = self.tracer.begin(f"POST {request.path}" if triton is None else _span_name(
                "POST", triton, "/v2/models/{name}", "/generate_stream" if stream else "/generate"),
                *_trace_headers(request), now, generate_span_head("http", model, completion, chat))
        if call.scoring:  # queued and answered once the prompts are scored
            for scoring in call.scoring:
                scoring.add_done_callback(functools.partial(self._scored, call, completion, session))
        elif counts is not None:
            call.answer_prompts(counts)
        elif completion.stream and call.compiling is None:
            call.start_stream()
        return None

    def _decoupled_generate(self, request: HttpRequest, exchange: HttpExchange, session: HttpSession, entry: Any,
                            stream: bool, cors: list[tuple[str, str]] | None, now: float) -> DecoupledGenerateCall:
        """Triton's ``generate``/``generate_stream`` on a decoupled model (:mod:`.decoupledgen`):
        its inputs checked as a predict's (bounded by the body's size), the call submitted to the
        model's :class:`~wsserve.decoupled.DecoupledWorker` and returned (the caller tracks it)."""
        cfg = self.config
        inputs, rid = generate_inputs(loads(request.body), entry.input_names, entry.optional_inputs)
        rows, n, nbytes = entry.prepare(inputs, cfg.max_rows, cfg.max_message_bytes // 2)
        session.admission.capacity(session.inflight, session.inflight_bytes, nbytes)
        call = DecoupledGenerateCall(session, exchange, entry, rows, n, nbytes, "oip", now, cors, rid=rid,
                                     stream=stream)
        call.item = entry.worker.submit(call)
        return call

    @staticmethod
    def _submit(call: CompletionCall, completion: Any, session: HttpSession) -> None:
        """Queue ``call``'s generation.  Raises what the engine raises (``logit_bias``,
        ``stop_token_ids`` and ``guided_choice`` named)."""
        try:
            call.submit(completion.params, session)
        except BadRequest as exc:  # a logit_bias or stop_token_ids id outside the vocabulary (the engine's check)
            raise _token_id_param(exc) from None

    def _prepared(self, call: CompletionCall, completion: Any, session: HttpSession,
                  compiled: Any) -> None:
        """A guided pattern is compiled (:meth:`~wsserve.generation.GenerationEngine.prepare`):
        queue ``call``'s generation and start its stream, or answer the refusal."""
        call.compiling = None
        if call.finished or compiled.cancelled():
            return
        try:
            compiled.result()
            self._submit(call, completion, session)
        except WsserveError as exc:
            call.fail(exc)  # (its param: the guided field)
            return
        if type(call.encoder) is GenerateOutputsEncoder:
            call.encoder.prompt_tokens = call.choices[0].handle.prompt_tokens
        if completion.stream:
            call.start_stream()

    def _scored(self, call: CompletionCall, completion: Any, session: HttpSession, _done: Any) -> None:
        """``echo`` with ``logprobs``: one prompt's scoring (the engine's future) is done; once every
        prompt's is, take their records (or the first failure) and queue the generations."""
        futures = call.scoring
        if call.finished or not futures or not all(f.done() for f in futures):
            return  # the client left, the drain ended it, it was handled, or prompts are still scored
        call.scoring = []
        try:
            for i, future in enumerate(futures):
                if future.cancelled():
                    return
                call.scored(i, future.result())
            if completion.echo_only:  # the prompts are the answer
                call.answer_prompts([len(logged or ()) for logged in call.echo_logged])
                return
            if (compiling := call.engine.prepare(completion.params, group=session, client=call.client)) is not None:
                # its guided pattern compiled first, as without echo: a refusal is still a 400
                call.compiling = compiling
                compiling.add_done_callback(functools.partial(self._prepared, call, completion, session))
                return
            self._submit(call, completion, session)
        except WsserveError as exc:
            call.fail(exc)  # counted once, as the tracked call it is (not also as a refusal)
            return
        if completion.stream:
            call.start_stream()

    # ------------------------------------------------------------------ vLLM's tokenizer routes

    def _tokenize(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str], key: str | None,
                  cors: list[tuple[str, str]] | None) -> HttpResponse:
        """vLLM's ``POST /tokenize`` (:mod:`wsserve.rest.tokenize`), answered at once."""
        self._session(exchange, request).admission.admit(key, self.clock())
        req = parse_tokenize(loads(request.body))
        return HttpResponse(200, tokenize(self._token_model(req.model), req), JSON, [_NO_STORE])

    def _detokenize(self, request: HttpRequest, exchange: HttpExchange, params: Mapping[str, str], key: str | None,
                    cors: list[tuple[str, str]] | None) -> HttpResponse:
        """vLLM's ``POST /detokenize`` (:mod:`wsserve.rest.tokenize`), answered at once."""
        self._session(exchange, request).admission.admit(key, self.clock())
        req = parse_detokenize(loads(request.body))
        return HttpResponse(200, detokenize(self._token_model(req.model), req), JSON, [_NO_STORE])

    def _token_model(self, model: str) -> Any:
        """The served generative model ``model`` (its default version), with the OpenAI routes'
        errors (:meth:`_generative`)."""
        return self._generative(model, "it has no tokens: /tokenize and /detokenize are for generative models").model

    def _generative(self, model: str, instead: str) -> Any:
        """The entry of ``model``'s default version, which must generate: 404 (503 not ready)
        naming ``model``; 400 naming it, with ``instead``, for a predictive model."""
        try:
            entry = self._lookup(model, None)
        except UnknownModel as exc:  # _ModelNotReady too: 503
            raise _with_param(exc, "model") from None
        if entry.kind != "generate":
            raise ParamError("model", f"model {model!r} does not generate text ({instead})")
        return entry

    # ------------------------------------------------------------------ drain

    def end_all(self, exc: WsserveError) -> None:
        """End every unfinished HTTP call with ``exc`` (the drain deadline)."""
        for session in list(self.sessions):
            session.end_all(exc)


class _ModelNotReady(UnknownModel):
    """The model or version exists but cannot serve (KServe's ModelNotReady): wire code
    ``unknown_model``, as the WebSocket answers it, with HTTP 503 (OpenAI's envelope: type
    ``server_error``, as every 503) so a client tells "not ready yet" from "no such model" (404)."""

    http_status = 503


class _TooManyConnections(Overloaded):
    """503 at ``--max-connections``; the connection is closed."""

    close_connection = True


#: The routes whose requests get a span with ``--otlp-traces-endpoint`` (their patterns' ends).
_TRACED_ROUTES = ("/predict", "/infer", "/generate", "/generate_stream", "/v1/completions", "/v1/chat/completions",
                  "/v1/responses")


def _trace_headers(request: HttpRequest) -> tuple[str | None, str | None]:
    """A request's W3C ``traceparent`` and ``tracestate`` headers (:func:`~wsserve.tracecontext.trace_fields`:
    repeated ones as W3C reads them; checked by the tracer)."""
    parents, states = [], []
    for name, value in request.raw_headers:
        if name == b"traceparent":
            parents.append(value.decode("latin-1"))
        elif name == b"tracestate":
            states.append(value.decode("latin-1"))
    return trace_fields(parents, states)


def _span_name(method: str, params: Mapping[str, str], base: str, tail: str) -> str:
    """The route a span is named after: ``POST /v2/models/{name}/infer``, or with
    ``/versions/{version}`` when the request named a version."""
    return f"{method} {base}{'/versions/{version}' if 'version' in params else ''}{tail}"


def _v1_methods(params: Mapping[str, str]) -> tuple[str, ...]:
    """The methods of a KServe V1 path: ``POST`` for ``{name}:predict`` / ``:explain``, ``GET`` for
    ``{name}`` (model ready), both for a ``:`` without a known verb (a model name may hold one; a
    POST is then answered 404 naming the verbs)."""
    last = params.get("version") or params["name"]
    if kserve.split_verb(last)[1] is not None:
        return ("POST",)
    return ("GET", "POST") if ":" in last else ("GET",)


def _platform(entry: Any) -> str:
    """The OIP ``platform`` of a served version (Triton's names where Triton has the backend)."""
    backend = entry.model.info.extra.get("backend") if hasattr(entry.model, "info") else None
    return _PLATFORMS.get(backend, f"wsserve_{backend or 'numpy'}")


def _token_id_param(exc: BadRequest) -> BadRequest:
    """A refusal of :func:`~wsserve.generation.scheduler.check_token_ids` naming its field in
    OpenAI's envelope (``logit_bias`` or ``stop_token_ids``), or of a ``guided_choice`` the model's
    tokens cannot write (:meth:`~wsserve.generation.Scheduler.add_request`)."""
    if getattr(exc, "param", None):  # a guided pattern's refusal names its field already
        return exc
    field = next((f for f in ("guided_choice", "logit_bias", "stop_token_ids") if f"'{f}'" in exc.message), None)
    return exc if field is None else _with_param(exc, field)  # type: ignore[return-value]


def _id_texts(model: Any, prompts: tuple[tuple[int, ...], ...]) -> tuple[str, ...]:
    """Token-id prompts' texts: each checked against the generative ``model``
    (:func:`~wsserve.generation.running.checked_prompt_ids`: ``BadRequest`` naming ``prompt``), its
    tokens' texts joined."""
    texts = model.id_to_text
    return tuple("".join([texts[i] for i in checked_prompt_ids(model, ids).tolist()]) for ids in prompts)


def _with_param(exc: WsserveError, param: str) -> WsserveError:
    """``exc`` naming the request field it is about (OpenAI's error envelope shows it)."""
    exc.param = param  # type: ignore[attr-defined]
    return exc


def _worker_inputs(entry: Any, inputs: tuple[oip.Tensor, ...], req: oip.InferRequest) -> Any:
    """The checked OIP tensors as the entry's worker batches them (as its ``prepare`` makes them
    from JSON): float64 rows ``[n, width]`` for a model on the float-rows fast path (the
    built-in models, a single one-dimensional float input); else the array of the only
    input, or ``{name: array}`` for several (each ``[n, *shape]`` in its declared dtype)."""
    if entry.input_width:
        # in its declared float type: a float32 row stays float32 (a batch that also holds JSON rows
        # concatenates to float64, and the model reads its own type either way), not a float64 copy
        # converted back at the model (for a 1 MiB row, two copies and 3/10 of the server's CPU)
        rows = req.arrays[inputs[0].name].reshape(req.rows, -1)
        return np.ascontiguousarray(rows, dtype=None if rows.dtype.kind == "f" else np.float64)
    if len(inputs) == 1:
        return req.arrays[inputs[0].name]
    return {t.name: req.arrays[t.name] for t in inputs if t.name in req.arrays}  # an optional one may be absent


def _admin_params(op: str, body: bytes) -> tuple[str | None, str | None]:
    """The version and config a load/unload's body names (:func:`~wsserve.rest.modelrepo.admin_params`
    of its ``parameters``): ``{"parameters": {"version": "2" or 2, "config": "{...}"}}``; None for an
    empty body or one absent (every version; the model's config file)."""
    if not body.strip():
        return None, None
    obj = loads(body)
    if type(obj) is not dict:
        raise BadRequest("the request body must be a JSON object")
    params = obj.get("parameters")
    if params is None:
        return None, None
    if type(params) is not dict:
        raise BadRequest("'parameters' must be an object")
    return modelrepo.admin_params(op, params)


def _header_length(request: HttpRequest) -> int | None:
    value = request.header(b"inference-header-content-length")
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 12:  # '²' is a digit to isdigit, not to int
        raise BadRequest(f"Inference-Header-Content-Length must be a byte count, got {value[:32]!r}")
    return int(value)


def _content_type_note(request: HttpRequest, route: Route) -> str:
    """What a body that is not JSON adds to its ``bad_json`` message: the request's Content-Type
    when it is present and not JSON (:func:`~wsserve.rest.errors.content_type_note`).  Not for a
    binary OIP request (``Inference-Header-Content-Length``: its Content-Type is binary, rightly)."""
    if request.header(b"inference-header-content-length") is not None:
        return ""
    return content_type_note(request.header(b"content-type"), binary=route.pattern.endswith("/infer"))


def _style_of(path: str) -> Style | None:
    """The error style of an unknown path: by its prefix (plain text outside the APIs)."""
    if path == "/v2" or path.startswith("/v2/") or path.startswith("/v1/models/"):  # OIP, KServe V1
        return "oip"
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/predict"):
        return "wsserve"
    return None


def _with(response: HttpResponse, cors: list[tuple[str, str]] | None) -> HttpResponse:
    if cors:
        response.headers = [*response.headers, *cors]
    return response
