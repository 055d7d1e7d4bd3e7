"""HTTP requests in flight: one call per predict, inference or completion, and the session that owns them.

A call is the sink its worker calls back (:class:`~wsserve.worker.PredictSink`
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

import dataclasses
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from ..admission import Admission
from ..dtypes import json_ready
from ..errors import Internal, WsserveError
from ..generation.logprobs import TokenLogprobs
from ..httpmsg import HttpExchange, HttpResponse
from ..protocol import encode_seed_result, timing_fields
from ..sequences import sequence_request_id
from ..shapes import VARIABLE
from ..worker import concat_rows, count_rows, merge_parameters, too_many_parameters
from . import kserve, oip
from .errors import Style, error_response
from .openai import ChatCompletionEncoder, Completion, CompletionEncoder
from .responses import ResponsesEncoder
from .sharedmem import ShmRef, SystemSharedMemory
from .tritongen import GenerateEncoder

if TYPE_CHECKING:
    from ..admission import Shared
    from ..config import ServerConfig
    from ..metrics import Metrics
    from ..pool import ModelEntry

__all__ = ["Call", "CompletionCall", "CompletionChoice", "HttpSession", "InferCall", "PredictCall", "PredictFormCall", "SeedCall",
           "generate_span_head", "generation_timing"]

log = logging.getLogger("wsserve.rest")

JSON = "application/json"
_NO_HEADERS: tuple[tuple[str, str], ...] = ()  # never mutated


class HttpSession:
    """One HTTP connection's admission state and unfinished calls (created at its first work request).

    Holds a connection slot (``--max-connections``) until the server releases it
    when the connection closes."""

    __slots__ = ("admission", "calls", "inflight", "inflight_bytes", "address", "_shared", "_metrics", "_clock")

    def __init__(self, cfg: ServerConfig, shared: Shared, metrics: Metrics, clock: Callable[[], float],
                 address: str, now: float) -> None:
        self.admission = Admission(cfg, shared, now)
        self.calls: set[Call] = set()
        #: unfinished requests, as ``max_inflight`` counts them: one per call, one per choice of a completion;
        #: not one waiting for its sequence to be given a slot (:meth:`slot_wait`; its bytes count)
        self.inflight = 0
        self.inflight_bytes = 0
        self.address = address
        self._shared = shared
        self._metrics = metrics
        self._clock = clock

    def track(self, call: Call) -> None:
        """``call`` was accepted by its worker."""
        self.calls.add(call)
        self.inflight_bytes += call.nbytes
        if not call.slot_wait:
            self.inflight += call.weight
        self._shared.inflight += 1

    def slot_wait(self, call: Call, waiting: bool) -> None:
        """``call`` (unfinished, its flag just changed) waits for its sequence to be given a slot
        (True): it stops counting against ``max_inflight`` until given one (False).  A stateful
        model bounds the requests waiting for a slot (its ``max_queue_size``, queue rows and bytes);
        were they counted here, a connection's requests waiting for a slot could keep it from
        sending the END that frees one."""
        if call in self.calls:  # (before track(): track reads the flag)
            self.inflight += -call.weight if waiting else call.weight

    def finished(self, call: Call, code: str) -> None:
        """Called once per tracked call, by :meth:`Call._end`."""
        self.calls.discard(call)
        self.inflight_bytes -= call.nbytes
        if not call.slot_wait:
            self.inflight -= call.weight
        self._shared.inflight -= 1
        if call.span is not None:
            call.span.end(code, call)
        metrics = self._metrics
        if isinstance(call, CompletionCall):  # the gRPC front end's generations too
            metrics.request_done(call.model, call.kind, code, self._clock() - call.received_at, call.engine.stats)
            if code in ("ok", "cancelled"):
                metrics.add_tokens(call.model, call.tokens)
        else:
            metrics.predict_done(call.model, code, self._clock() - call.received_at,  # type: ignore[attr-defined]
                                 call.queue_s, call.worker.stats)  # type: ignore[attr-defined]

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
                 "headers", "weight", "span", "slot_wait")

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
        self.weight = 1  # requests it counts as against max_inflight (a completion: its choices)
        self.headers = headers or _NO_HEADERS  # CORS headers for the answer
        self.span: Any = None  # --otlp-traces-endpoint: its wsserve.tracing.RequestSpan, ended by the session
        self.slot_wait = False  # it waits for its sequence to be given a slot (HttpSession.slot_wait)

    def _end(self, code: str) -> bool:
        if self.finished:
            return False
        self.finished = True
        self.session.finished(self, code)
        return True

    def _answer(self, body: bytes, content_type: str = JSON, headers: Any = None) -> None:
        self.exchange.respond(HttpResponse(200, body, content_type, headers or self.headers))  # type: ignore[arg-type]

    def fail(self, exc: WsserveError) -> None:
        """End with an error answer and stop the remaining work (OpenAI's envelope names the
        field ``exc.param``, when the error was given one, as a route's own error does)."""
        if self._end(exc.code):
            self._stop_work()
            self._error(exc)

    def _error(self, exc: WsserveError) -> None:
        response = error_response(exc, self.style, param=getattr(exc, "param", None))
        if self.headers:
            response.headers.extend(self.headers)
        self.exchange.respond(response)

    def span_attributes(self) -> dict[str, Any]:
        """What its span records once it ended (the figures measured for its answer)."""
        return {"wsserve.model_version": self.version}

    def abort(self) -> None:
        """The client is gone: stop the work, answer nothing."""
        if self._end("cancelled"):
            self._stop_work()

    def _stop_work(self) -> None:
        raise NotImplementedError




def _contiguous(outputs: Any) -> Any:
    if isinstance(outputs, dict):
        return {k: json_ready(v) for k, v in outputs.items()}
    return json_ready(outputs)


class PredictCall(Call):
    """Rows through a predict worker (its :class:`~wsserve.worker.PredictSink`); subclasses encode the answer.

    ``inputs`` is what the entry's ``prepare`` made (``[n, ...]`` or ``{name: [n, ...]}``);
    outputs arrive the same way (an array, or ``{name: [n, ...]}`` for named outputs).
    With ``explain`` the worker also hands each delivery's attributions (``[rows, d]``)."""

    __slots__ = ("inputs", "n", "worker", "item", "queue_s", "explain", "explanation", "_compute_s", "_batch_max",
                 "_parts", "_attr_parts", "_delivered")

    def __init__(self, session: HttpSession, exchange: HttpExchange, entry: ModelEntry, inputs: Any, n: int,
                 nbytes: int, style: Style, received_at: float, headers: list[tuple[str, str]] | None, *,
                 explain: bool = False) -> None:
        super().__init__(session, exchange, entry, "predict", style, received_at, headers)
        self.inputs = inputs
        self.n = n
        self.nbytes = nbytes
        self.worker = entry.worker
        self.item: Any = None
        self.queue_s = -1.0
        self.explain = explain
        self.explanation = entry.explanation if explain else None
        self._compute_s = 0.0
        self._batch_max = 0
        self._parts: list[Any] | None = None
        self._attr_parts: list[np.ndarray] = []
        self._delivered = 0

    def _stop_work(self) -> None:
        if self.item is not None:
            self.worker.cancel(self.item)

    # -- PredictSink

    def on_error(self, exc: WsserveError) -> None:
        self.fail(exc)

    def on_rows(self, start: int, outputs: Any, batch_rows: int, queue_s: float, compute_s: float,
                attributions: np.ndarray | None = None) -> None:
        if self.finished:
            return
        if self.queue_s < 0:
            self.queue_s = queue_s
        self._compute_s += compute_s
        if batch_rows > self._batch_max:
            self._batch_max = batch_rows
        if self.explain:
            if attributions is None:  # the worker must explain every row of an explain request
                self.fail(Internal(f"model {self.model!r} returned rows without their attributions"))
                return
            self._attr_parts.append(attributions)
        self._delivered += count_rows(outputs)
        if self._delivered < self.n:
            if self._parts is None:
                self._parts = [outputs]
            else:
                self._parts.append(outputs)
            return
        if self._parts is not None:
            outputs = concat_rows([*self._parts, outputs])
        try:
            self._result(outputs)  # answers as its last step, or raises before answering
        except WsserveError as exc:  # (e.g. an output's shared memory region is gone): this call's error answer
            self.fail(exc)
            return
        except Exception as exc:  # noqa: BLE001 - one request's answer that cannot be made fails that request only
            log.exception("answering a %s request to model %r failed", self.kind, self.model)
            self.fail(Internal(f"the answer could not be made: {type(exc).__name__}: {exc}"[:512]))
            return
        self._end("ok")

    def _timing(self) -> dict[str, float | int]:
        return timing_fields(self.queue_s, self._compute_s, self._batch_max)

    def span_attributes(self) -> dict[str, Any]:
        """Its version and rows, and (once computed) the timing its answer carries."""
        attributes: dict[str, Any] = {"wsserve.model_version": self.version, "wsserve.rows": self.n}
        if self._batch_max:  # (a decoupled model's call has a queue time but no batch: none)
            attributes.update({"wsserve." + k: v for k, v in self._timing().items()})
        return attributes

    def _result(self, outputs: Any) -> None:
        raise NotImplementedError


class SeedCall(PredictCall):
    """``POST /predict`` in the seed form: ``{"y_pred": number or list}``."""

    __slots__ = ("scalar",)

    def __init__(self, *args: Any, scalar: bool) -> None:
        super().__init__(*args)
        self.scalar = scalar

    def _result(self, outputs: Any) -> None:
        self._answer(encode_seed_result(outputs, self.scalar))


class PredictFormCall(PredictCall):
    """``POST /predict`` with ``model`` and ``inputs``: ``{"model", "version", "outputs", "timing"}``
    (``outputs`` by name for a model with named outputs; with ``"explain": true`` also
    ``attributions`` and ``explanation``, as the WebSocket ``result`` frame has them)."""

    __slots__ = ()

    def _result(self, outputs: Any) -> None:
        body: dict[str, Any] = {"model": self.model, "version": self.version, "outputs": _contiguous(outputs)}
        if self.explain:
            parts = self._attr_parts
            body["attributions"] = np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts))
            body["explanation"] = self.explanation
        body["timing"] = self._timing()
        self._answer(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


class KServeCall(PredictCall):
    """``POST /v1/models/{name}[/versions/{v}]:predict`` or ``:explain`` (KServe's V1 protocol):
    ``{"predictions": ...}`` or, for a columnar request, ``{"outputs": ...}``; explained rows also
    carry ``explanations`` (:func:`~wsserve.rest.kserve.encode_v1`)."""

    __slots__ = ("columnar",)

    def __init__(self, *args: Any, columnar: bool, explain: bool = False) -> None:
        super().__init__(*args, explain=explain)
        self.columnar = columnar

    def _result(self, outputs: Any) -> None:
        attributions = None
        if self.explain:
            parts = self._attr_parts
            attributions = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self._answer(kserve.encode_v1(outputs, self.columnar, attributions, self.explanation))


#: What :meth:`InferCall.values` holds for an output left out because it was not requested.
_NOT_REQUESTED = np.empty(0)


class InferCall(PredictCall):
    """``POST /v2/models/{name}[/versions/{version}]/infer``: the Open Inference Protocol response
    (JSON or binary outputs), each output tensor by its name.

    With ``explain``, ``outputs`` goes on past the model's outputs with their
    :func:`~wsserve.rest.oip.attribution_tensors` (filled with the worker's
    attributions), and the response carries :func:`~wsserve.rest.oip.explain_parameters`."""

    __slots__ = ("rid", "outputs", "requested", "shm", "shm_outputs", "sequence", "response_parameters")

    def __init__(self, *args: Any, rid: str | None, outputs: tuple[oip.Tensor, ...],
                 requested: list[tuple[int, bool]], explain: bool = False,
                 shm: SystemSharedMemory | None = None, shm_outputs: Mapping[int, ShmRef] | None = None,
                 sequence: tuple[int | str, bool, bool] | None = None) -> None:
        super().__init__(*args, explain=explain)
        #: the request's sequence ``(id, start, end)`` (a stateful model's worker reads it), None: none
        self.sequence = sequence
        self.rid = rid
        self.outputs = outputs
        self.requested = requested
        self.shm = shm  # the regions, when an output is to be written into one (shm_outputs)
        self.shm_outputs = shm_outputs or {}
        #: the model's response parameters (a Triton Python model's ``InferenceResponse(parameters=)``;
        #: a decoupled model's: its current response's), None: none
        self.response_parameters: Mapping[str, Any] | None = None

    def on_slot_wait(self, waiting: bool) -> None:
        """A stateful model's worker: the request waits for its sequence to be given a slot (True),
        or its sequence was given one (False); see :meth:`HttpSession.slot_wait`."""
        if not self.finished and waiting != self.slot_wait:
            self.slot_wait = waiting
            self.session.slot_wait(self, waiting)

    def on_parameters(self, parameters: Mapping[str, Any] | None) -> None:
        """The worker's: the model's parameters of the rows about to be delivered (:meth:`values`
        adds them), merged in row order over the batches a request's rows are split across, as the
        WebSocket ``result`` merges them (a decoupled call's sink takes each response's alone)."""
        if parameters:
            merged = merge_parameters(self.response_parameters, parameters)
            if merged is None:
                self.fail(too_many_parameters(self.model))
                return
            self.response_parameters = merged

    @property
    def request_id(self) -> str | None:
        """The OIP request's ``id`` (None: none given), for a model that reads it
        (:func:`~wsserve.worker.request_id_of`); with a sequence, a
        :class:`~wsserve.sequences.SequenceId` carrying it (a Triton Python model's
        ``request.correlation_id()`` and ``flags()``, whether or not the model is stateful, as Triton's)."""
        if self.sequence is None:
            return self.rid
        return sequence_request_id(self.rid or "", self.sequence)

    def _result(self, outputs: Any) -> None:
        values, parameters = self.values(outputs)
        written = self.write_shm(values)  # raises for a region unregistered, too small or truncated since
        body, json_size = oip.encode_infer(self.model, self.version, self.rid, self.outputs, self.requested, values,
                                           parameters, written)
        if json_size is None:
            self._answer(body)
        else:
            self._answer(body, "application/octet-stream",
                         [("Inference-Header-Content-Length", str(json_size)), *self.headers])

    def wanted_outputs(self) -> frozenset[str] | None:
        """The model outputs this request asks for (OIP ``outputs``), None for all: an ensemble runs only
        the steps they need and may leave the others out of its outputs (:meth:`values`)."""
        specs = self.outputs[: len(self.outputs) // 2] if self.explain else self.outputs
        asked = frozenset(specs[i].name for i, _ in self.requested if i < len(specs))
        return None if len(asked) == len(specs) else asked

    def write_shm(self, values: list[np.ndarray], present: Collection[int] | None = None) -> frozenset[int]:
        """Write the outputs asked in shared memory (:attr:`shm_outputs`) into their regions, in
        their declared datatypes, all or none; returns their indexes (answered without data).
        ``present``: the indexes of the outputs the answer carries (a decoupled model's response
        may carry a subset; None: all).  Raises :class:`~wsserve.errors.WsserveError` naming the
        output and the region (every transport's)."""
        if not self.shm_outputs or self.shm is None:
            return frozenset()
        writes = []
        for index, ref in self.shm_outputs.items():
            if present is not None and index not in present:
                continue
            spec = self.outputs[index]
            array = np.ascontiguousarray(values[index], dtype=oip.DATATYPES[spec.datatype])
            if array.dtype.kind == "V":  # bfloat16 exports no buffer of its own: its bytes
                array = array.view(np.uint8)
            writes.append((ref, memoryview(array).cast("B"), f"output {spec.name!r}"))
        self.shm.write_all(writes)
        return frozenset(self.shm_outputs) if present is None else frozenset(self.shm_outputs).intersection(present)

    def values(self, outputs: Any) -> tuple[list[np.ndarray], dict[str, Any] | None]:
        """The worker's ``outputs`` as one ``[n, *shape]`` array per tensor of ``self.outputs`` (the
        attributions too, with ``explain``; a tensor that is not ``batched`` - a model without a batch
        dimension, whose one row this is - as ``shape`` itself), and the response's parameters (the
        model's, :attr:`response_parameters`, and the explanation's; or None); every OIP transport encodes these.  An output not requested that ``outputs`` lacks (an
        ensemble's, pruned), or one a decoupled model's response does not carry, is an empty
        placeholder, never encoded."""
        n = count_rows(outputs) if not isinstance(outputs, dict) or outputs else 0
        specs = self.outputs[: len(self.outputs) // 2] if self.explain else self.outputs  # one attribution each

        def shaped(array: np.ndarray, spec: oip.Tensor) -> np.ndarray:
            if not spec.batched:
                return array.reshape(array.shape[1:])  # its one row
            if VARIABLE in spec.shape:  # sized by the model's answer (one reshape takes one -1 only)
                return array
            return array.reshape((n, *spec.shape))

        if isinstance(outputs, dict):
            values = [shaped(outputs[spec.name], spec) if spec.name in outputs else _NOT_REQUESTED for spec in specs]
        else:
            values = [shaped(outputs, specs[0])]
        parameters = dict(self.response_parameters) if self.response_parameters else None
        if self.explain:
            parts = self._attr_parts
            attributions = parts[0] if len(parts) == 1 else np.concatenate(parts)
            values.extend(shaped(attributions, spec) for spec in self.outputs[len(specs):])
            parameters = {**(parameters or {}), **oip.explain_parameters(self.explanation)}
        return values, parameters


class CompletionCall(Call):
    """``POST /v1/completions``, ``/v1/chat/completions``, ``/v1/responses`` or Triton's ``generate``/``generate_stream``:
    ``n`` generations per prompt (one :class:`CompletionChoice` each, the engine's token sinks;
    prompt ``a``'s choices are indexes ``a * n`` to ``a * n + n - 1``); a JSON answer once every
    choice ended, or Server-Sent Events as tokens come (the bytes are the ``encoder``'s).  A choice
    that fails fails the call (the others are cancelled)."""

    __slots__ = ("engine", "choices", "encoder", "stream", "include_usage", "scoring", "compiling", "streaming", "echo",
                 "echo_logged", "logged", "prompts", "prompt_ids", "prompt_counts", "client", "_open")

    def __init__(self, session: HttpSession, exchange: HttpExchange, entry: ModelEntry, received_at: float,
                 completion: Completion,
                 encoder: CompletionEncoder | ChatCompletionEncoder | ResponsesEncoder | GenerateEncoder,
                 headers: list[tuple[str, str]] | None, style: Style = "openai") -> None:
        super().__init__(session, exchange, entry, "generate", style, received_at, headers)
        self.engine = entry.worker
        self.encoder = encoder
        self.stream = completion.stream
        self.include_usage = completion.include_usage
        #: with logprobs, not streamed: each choice keeps each token's text and record
        self.logged = completion.params.logprobs is not None and not completion.stream
        #: the prompts (one, or a completion's list; token-id prompts: their texts)
        self.prompts = completion.prompts or (completion.params.prompt,)
        #: token-id prompts (one tuple of ids per prompt), or empty
        self.prompt_ids = completion.prompt_ids
        #: each prompt's token count when nothing is generated (``echo_only``); else the generations'
        self.prompt_counts: list[int] | None = None
        #: ``echo``: each choice's text starts with its prompt, and (with logprobs) its tokens' records
        self.echo = completion.echo
        self.echo_logged: list[list[tuple[str, TokenLogprobs | None]] | None] = [None] * len(self.prompts)
        #: the futures of the prompts' records while they are computed (``echo`` with ``logprobs``)
        self.scoring: list[Any] = []
        #: its guided pattern is being compiled (the engine's ``prepare`` future, cancelled if the
        #: client leaves): queued (and the stream started) once it is
        self.compiling: Any = None
        #: the 200 and the stream's first events are out
        self.streaming = False
        #: whose fair share of the compile slots its guided pattern takes (the route sets it:
        #: :func:`~wsserve.generation.fairslots.compile_client` of its key and address)
        self.client: Any = None
        n = completion.n
        self.choices = [CompletionChoice(self, a * n + j, a, j) for a in range(len(self.prompts)) for j in range(n)]
        self._open = self.weight = len(self.choices)  # choices not ended yet; each counts against max_inflight

    @property
    def tokens(self) -> int:
        """Tokens sent so far, over every choice (their token events; the metric)."""
        return sum(c.tokens for c in self.choices)

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far, over every choice, as vLLM counts them (``usage.completion_tokens``:
        a stop string's and a stop token's included, see
        :attr:`~wsserve.generation.sequence.Sequence.completion_tokens`)."""
        return sum(c.completion_tokens for c in self.choices)

    @property
    def prompt_tokens(self) -> int | None:
        """``usage.prompt_tokens``: every prompt's token count once, whatever ``n`` (None while a
        choice is not queued yet)."""
        if self.prompt_counts is not None:
            return sum(self.prompt_counts)
        if any(c.handle is None for c in self.choices):
            return None
        n = len(self.choices) // len(self.prompts)
        return sum(c.handle.prompt_tokens for c in self.choices[::n])

    def span_attributes(self) -> dict[str, Any]:
        """Its version and token counts under GenAI's names (``usage``'s figures: each prompt once)."""
        attributes: dict[str, Any] = {"wsserve.model_version": self.version,
                                      "gen_ai.usage.output_tokens": self.completion_tokens}
        prompt_tokens = self.prompt_tokens
        if prompt_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = prompt_tokens
        attributes.update(generation_timing(c.timing for c in self.choices))
        return attributes

    def scored(self, prompt: int, logged: list[tuple[str, TokenLogprobs | None]]) -> None:
        """Prompt ``prompt``'s tokens' texts and records, for ``echo`` with ``logprobs``."""
        self.echo_logged[prompt] = logged

    def submit(self, params: Any, group: Any) -> None:
        """Queue every choice's generation (its prompt's; choice ``j`` of a prompt seeded
        ``seed + j``).  Raises what the engine raises; the choices queued before it are cancelled then."""
        try:
            for choice in self.choices:
                p = params
                if self.prompt_ids:
                    p = dataclasses.replace(p, prompt_ids=self.prompt_ids[choice.prompt])
                elif choice.prompt:
                    p = dataclasses.replace(p, prompt=self.prompts[choice.prompt])
                if choice.nth and params.seed is not None:
                    p = dataclasses.replace(p, seed=(params.seed + choice.nth) & 0xFFFF_FFFF_FFFF_FFFF)
                # the queue bound is checked for the first choice only: a request's choices are
                # admitted together (one alone on the queue is always accepted)
                choice.handle = self.engine.submit(p, choice, group=group, client=self.client,
                                                   bounded=choice is self.choices[0])
        except Exception:
            for choice in self.choices:
                if choice.handle is not None:
                    choice.ended = True  # its on_done("cancelled") is not an answer
                    self.engine.cancel(choice.handle)
            raise

    def answer_prompts(self, prompt_counts: list[int]) -> None:
        """``echo_only`` (``max_tokens: 0`` with ``echo``): end every choice now, its text its prompt
        (and its records, when scored), with reason ``length``; ``prompt_counts``: each prompt's
        token count (``usage.prompt_tokens``).  Streamed as a generation is: the echo, then the end."""
        self.prompt_counts = prompt_counts
        if self.stream:
            self.start_stream()
        for choice in self.choices:
            if self.finished:
                return
            choice.ended = True
            choice.reason = "length"
            self.choice_ended(choice, "length")

    def start_stream(self) -> None:
        """Send the 200 and what a stream begins with (per choice: the role; the echoed prompt)."""
        self.streaming = True
        self.exchange.start_stream(200, "text/event-stream", [("Cache-Control", "no-cache"), *self.headers])
        start = b""
        for choice in self.choices:
            start += self.encoder.start_events(choice.index)
            if self.echo:
                start += self.encoder.echo_event(self.prompts[choice.prompt], self.echo_logged[choice.prompt],  # type: ignore[union-attr]
                                                 choice.index)
        if start:
            self.exchange.send(start)

    def _stop_work(self) -> None:
        if self.compiling is not None:  # the last request waiting for it kills its compiling child
            self.compiling.cancel()
        for scoring in self.scoring:
            scoring.cancel()
        for choice in self.choices:
            if choice.handle is not None and not choice.ended:
                self.engine.cancel(choice.handle)  # its on_done("cancelled") finds the call finished

    def _error(self, exc: WsserveError) -> None:
        if not self.streaming:
            super()._error(exc)
            return
        # The 200 and the first events are out: the error is an event (OpenAI's: then [DONE]); the
        # Responses API's carries the usage of what was generated.
        self.exchange.send(self.encoder.error_event(exc, self.prompt_tokens, self.completion_tokens))
        self.exchange.end_stream()

    def choice_ended(self, choice: CompletionChoice, reason: str) -> None:
        """``choice`` ended with ``reason`` (``length``, ``stop``, ``cancelled``); the answer once all have."""
        self._open -= 1
        if reason == "cancelled":  # not by us (we end first): answer what there is
            choice.reason, choice.cancelled = "stop", True
        if self.stream:  # its tokens generated but not sent count at its end (Triton's num_output_tokens)
            self.exchange.send(self.encoder.choice_end_event(choice.reason, choice.index,
                                                             choice.completion_tokens - choice.tokens))
        if self._open:
            return
        if not self._end("cancelled" if any(c.cancelled for c in self.choices) else "ok"):
            return
        prompt_tokens = self.prompt_tokens or 0  # never None here: every choice was queued, or echo_only
        tokens = self.completion_tokens
        if self.stream:
            self.exchange.send(self.encoder.tail_events(prompt_tokens, tokens, self.include_usage))
            self.exchange.end_stream()
            return
        answers = []
        for c in self.choices:
            text = "".join(c.texts)
            logged = c.logged
            if self.echo:
                text = self.prompts[c.prompt] + text
                if logged is not None:
                    logged = [*(self.echo_logged[c.prompt] or ()), *logged]
            answers.append((text, c.reason, logged))
        self._answer(self.encoder.response(answers, prompt_tokens, tokens))


class CompletionChoice:
    """One choice of a :class:`CompletionCall`: the engine's sink for its generation.  ``index`` is
    its place in the answer, ``prompt`` its prompt's, ``nth`` its place among that prompt's ``n``."""

    __slots__ = ("call", "index", "prompt", "nth", "handle", "tokens", "texts", "logged", "reason", "ended",
                 "cancelled", "timing")

    def __init__(self, call: CompletionCall, index: int, prompt: int = 0, nth: int = 0) -> None:
        self.call = call
        self.index = index
        self.prompt = prompt
        self.nth = nth
        self.handle: Any = None
        self.tokens = 0
        self.texts: list[str] = []
        self.logged: list[tuple[str, TokenLogprobs | None]] | None = [] if call.logged else None
        self.reason = ""
        self.ended = False
        self.cancelled = False
        self.timing: dict[str, Any] | None = None  # the engine's, once it ended (queue_ms, ttft_ms, total_ms)

    @property
    def completion_tokens(self) -> int:
        """Its generation's tokens so far as vLLM counts them (0 when none was queued: ``echo_only``)."""
        return 0 if self.handle is None else self.handle.completion_tokens

    def on_token(self, seq: int, text: str) -> None:
        call = self.call
        if call.finished:
            return
        self.tokens = seq + 1
        if call.stream:
            event = call.encoder.token_event(text, self.index)
            if event:  # a tool call's token may send nothing yet (.toolcalls)
                call.exchange.send(event)
        else:
            self.texts.append(text)

    def on_token_logprobs(self, seq: int, text: str, logprobs: TokenLogprobs) -> None:
        call = self.call
        if call.finished:
            return
        self.tokens = seq + 1
        if call.stream:
            event = call.encoder.token_event_logprobs(text, logprobs, self.index)  # type: ignore[union-attr]
            if event:
                call.exchange.send(event)
        else:
            self.texts.append(text)
            if self.logged is not None:
                self.logged.append((text, logprobs))

    def on_done(self, reason: str, tokens: int, timing: dict[str, Any]) -> None:
        if self.ended:
            return
        self.ended = True
        self.tokens, self.reason, self.timing = tokens, reason, timing
        if not self.call.finished:
            self.call.choice_ended(self, reason)

    def on_error(self, exc: WsserveError) -> None:
        if self.ended:
            return
        self.ended = True
        self.call.fail(exc)


def generation_timing(timings: Iterable[dict[str, Any] | None]) -> dict[str, float]:
    """A generation span's timing attributes from its choices' ``done`` timings (None: not ended):
    ``wsserve.queue_ms`` and ``wsserve.ttft_ms`` of the first to get there (the request's own
    time to first token), ``wsserve.total_ms`` of the last to end; a figure no choice has is left out."""
    out: dict[str, float] = {}
    for timing in timings:
        if not timing:
            continue
        for key, first in (("queue_ms", True), ("ttft_ms", True), ("total_ms", False)):
            value = timing.get(key)
            if value is None:
                continue
            name = "wsserve." + key
            seen = out.get(name)
            if seen is None or (value < seen if first else value > seen):
                out[name] = value
    return out


def generate_span_head(transport: str, model: str, completion: Any, chat: bool) -> dict[str, Any]:
    """The attributes of a generation's span known when it is queued, under OpenTelemetry's GenAI
    names (every transport's: HTTP's and gRPC's)."""
    params = completion.params
    return {"wsserve.transport": transport, "wsserve.model": model, "gen_ai.request.model": model,
            "gen_ai.operation.name": "chat" if chat else "text_completion",
            "gen_ai.request.max_tokens": params.max_tokens, "gen_ai.request.temperature": params.temperature}
