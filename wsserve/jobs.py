"""In-flight requests of a connection: one job per ``predict`` or ``generate``.

A job is the sink its worker calls back (:class:`~wsserve.pool.PredictSink`
for predict, the generation engine's :class:`~wsserve.generation.TokenSink`
for generate) and turns what it gets into frames (encoded by
:mod:`wsserve.protocol`) for its owner, the connection.

Every way a job can end goes through :meth:`Job._terminal`, which hands the
owner at most one terminal frame: that is where the protocol's *exactly one
terminal frame per id* invariant lives.  After it, ``finished`` is true and
every callback is a no-op.  Jobs touch no clock, socket or metrics: the owner
records what they measured when they finish.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .errors import Cancelled, DeadlineExceeded, Internal, Overloaded, WsserveError
from .protocol import (
    Generate,
    Predict,
    ResultRows,
    encode_chunk,
    encode_error,
    encode_generate_done,
    encode_predict_done,
    encode_response,
    encode_responses_done,
    encode_result,
    encode_seed_result,
    encode_token,
    encode_token_logprobs,
    timing_fields,
    token_prefix,
)
from .sequences import sequence_request_id
from .tensorframe import encode as encode_tensor_frame
from .worker import (
    BatchOutputs,
    Tensors,
    concat_rows,
    count_rows,
    merge_parameters,
    slice_rows,
    too_many_parameters,
)

if TYPE_CHECKING:
    from .batching import WorkItem
    from .generation.logprobs import TokenLogprobs
    from .pool import ModelEntry

__all__ = ["Job", "JobOwner", "PredictJob", "DecoupledJob", "GenerateJob"]

#: The attributions of a job that explains nothing: an empty tuple, so a plain predict allocates
#: no lists for them (only ``explain`` jobs append, to lists of their own).
_NO_ATTRIBUTIONS: tuple[()] = ()


class JobOwner(Protocol):
    """What a job needs from its connection."""

    def send(self, frame: bytes) -> None:
        """Queue a non-terminal text frame (chunk, token)."""

    def send_binary(self, frame: bytes) -> None:
        """Queue a non-terminal binary frame (a binary tensor ``chunk``)."""

    def job_finished(self, job: Job, frame: bytes | None, code: str, binary: bool = False) -> None:
        """Called exactly once per job with its terminal frame (None: nothing can be
        sent any more; ``binary``: a binary tensor frame, else text) and its result
        code (``ok`` or an error code)."""

    def elapsed_ms(self, since: float) -> float:
        """Milliseconds from ``since`` (the clock the job's times use) to now."""

    def job_slot_wait(self, job: Job, waiting: bool) -> None:
        """``job`` (unfinished, its ``slot_wait`` just set to ``waiting``) waits for its sequence to
        be given a slot, or was given one (:meth:`PredictJob.on_slot_wait`)."""


class Job:
    """Base of in-flight requests.  Subclasses stop their work in ``_stop_work``."""

    __slots__ = ("owner", "key", "id", "model", "version", "kind", "received_at", "deadline", "finished", "nbytes",
                 "span")

    #: it waits for its sequence to be given a slot (a stateful model's predict: :meth:`PredictJob.on_slot_wait`)
    slot_wait = False

    def __init__(
        self, owner: JobOwner, key: Any, rid: Any, entry: ModelEntry, kind: str, received_at: float,
        deadline: float | None,
    ) -> None:
        self.owner = owner
        self.key = key
        self.id = rid
        self.model = entry.name
        self.version = entry.version
        self.kind = kind
        self.received_at = received_at
        self.deadline = deadline
        self.finished = False
        self.nbytes = 0  # input bytes held while unfinished (the connection's max_inflight_bytes)
        self.span: Any = None  # --otlp-traces-endpoint: its wsserve.tracing.RequestSpan, ended by the owner

    # -- ending

    def _terminal(self, frame: bytes | None, code: str, binary: bool = False) -> bool:
        """Hand the owner the terminal frame (None: the socket is gone) exactly once."""
        if self.finished:
            return False
        self.finished = True
        self.owner.job_finished(self, frame, code, binary)
        return True

    def fail(self, exc: WsserveError) -> None:
        """End with an ``error`` frame and stop any remaining work."""
        if self._terminal(encode_error(exc, self.id), exc.code):
            self._stop_work()

    def cancel(self) -> None:
        """The client sent ``cancel``: end as the protocol says for this kind."""
        self.fail(Cancelled("cancelled by the client"))

    def expire(self) -> None:
        """The request's ``timeout_ms`` passed (queued or running)."""
        self.fail(DeadlineExceeded("deadline passed"))

    def abandon(self, code: str = "cancelled") -> None:
        """The connection is gone (or closing): stop work, send nothing."""
        if self._terminal(None, code):
            self._stop_work()

    def _stop_work(self) -> None:
        raise NotImplementedError

    def span_attributes(self) -> dict[str, Any]:
        """What its span records once it ended (the figures measured for its answer)."""
        return {"wsserve.model_version": self.version}


class PredictJob(Job):
    """A ``predict`` (plain, streamed or seed-form) in flight; its worker's :class:`PredictSink`."""

    __slots__ = (
        "inputs", "n", "stream", "chunk_rows", "seed_form", "item", "worker", "_parts", "_delivered",
        "_seq", "_pending", "_pending_rows", "queue_s", "_compute_s", "_batch_max", "explain", "explanation",
        "_attr_parts", "_attr_pending", "binary_outputs", "shared_outputs", "_names", "_head", "sequence",
        "parameters", "slot_wait",
    )

    def on_slot_wait(self, waiting: bool) -> None:
        """A stateful model's worker: the request waits for its sequence to be given a slot (True),
        or its sequence was given one (False); its connection does not count it against
        ``max_inflight`` meanwhile (:meth:`JobOwner.job_slot_wait`)."""
        if not self.finished and waiting != self.slot_wait:
            self.slot_wait = waiting
            self.owner.job_slot_wait(self, waiting)

    @property
    def request_id(self) -> Any:
        """The client's ``id`` (None: a seed-form predict), for a model that reads it
        (:func:`~wsserve.worker.request_id_of`); with a ``sequence``, a
        :class:`~wsserve.sequences.SequenceId` carrying it (as the OIP's)."""
        if self.sequence is None:
            return self.id
        return sequence_request_id("" if self.id is None else str(self.id), self.sequence)

    def __init__(
        self, owner: JobOwner, key: Any, req: Predict, entry: ModelEntry, inputs: Tensors, n: int, nbytes: int,
        received_at: float, deadline: float | None,
    ) -> None:
        # Job.__init__'s fields, assigned here rather than through super().__init__ (one call
        # less per request on the predict hot path; keep in step with Job.__init__).
        self.owner = owner
        self.key = key
        self.id = req.id
        self.model = entry.name
        self.version = entry.version
        self.kind = "predict"
        self.received_at = received_at
        self.deadline = deadline
        self.finished = False
        self.span = None
        self.inputs = inputs  # [n, ...] or {name: [n, ...]}: what the worker batches
        self.n = n
        self.nbytes = nbytes
        self.stream = req.stream
        self.chunk_rows = req.chunk_rows
        self.seed_form = req.seed_form
        self.sequence = req.sequence  # (id, start, end): a stateful model's worker reads it
        self.slot_wait = False
        self.worker = entry.worker
        self.item: WorkItem | None = None
        self._parts: list[np.ndarray] | None = None  # rows computed so far (a request split over batches)
        self._delivered = 0
        self._seq = 0
        self._pending: list[np.ndarray] | None = None  # rows waiting for a full chunk (stream + chunk_rows)
        self._pending_rows = 0
        self.queue_s = -1.0  # wait before the first batch (-1: none yet)
        self._compute_s = 0.0
        self._batch_max = 0
        # "explain": true - attributions arrive with each delivery, kept beside the outputs
        self.explain = req.explain
        self.binary_outputs = req.binary_outputs  # result and chunks as binary tensor frames
        if req.explain:
            self.explanation: dict[str, Any] | None = entry.explanation
            # attributions of the rows computed so far, and of the rows in _pending
            self._attr_parts: list[np.ndarray] = []
            self._attr_pending: list[np.ndarray] = []
            #: (output, attributions) tensor names of binary answers (read only with binary_outputs)
            self._names: tuple[str, str] = entry.attribution_names if req.binary_outputs else ("", "")
        else:
            self.explanation = None
            self._attr_parts = self._attr_pending = _NO_ATTRIBUTIONS  # type: ignore[assignment]
            self._names = ("", "")
        #: One JSON ``result`` frame, nothing else to keep: the worker may deliver through
        #: :meth:`on_batch_outputs`, and :meth:`on_rows` has a fast path for it.
        self.shared_outputs = not (req.stream or req.explain or req.binary_outputs) and req.seed_form is None
        self._head = entry.result_head
        #: the model's response parameters (:meth:`on_parameters`), None: none
        self.parameters: dict[str, Any] | None = None

    def _stop_work(self) -> None:
        if self.item is not None:
            self.worker.cancel(self.item)

    def span_attributes(self) -> dict[str, Any]:
        """Its version and rows, and (once computed) the timing its answer carries."""
        attributes: dict[str, Any] = {"wsserve.model_version": self.version, "wsserve.rows": self.n}
        if self.queue_s >= 0:
            attributes.update({"wsserve." + k: v for k, v in self._timing().items()})
        return attributes

    # -- PredictSink

    def on_error(self, exc: WsserveError) -> None:
        self.fail(exc)

    def on_parameters(self, parameters: Mapping[str, Any] | None) -> None:
        """The worker's: the model's response parameters, before the rows they answer (merged, a
        request split over responses); the ``result`` frame (or a stream's ``done``) carries them."""
        if parameters:
            merged = merge_parameters(self.parameters, parameters)
            if merged is None:
                self.fail(too_many_parameters(self.model))
                return
            self.parameters = merged
            self.shared_outputs = False  # its frame is its own: no batch-shared encoding

    def on_batch_outputs(self, out: BatchOutputs, a: int, b: int, queue_s: float) -> None:
        """All of a plain predict's rows at once, as rows ``a .. b`` of its batch's outputs: the
        same ``result`` frame as :meth:`on_rows` gives, from one encoding of the whole batch
        (:class:`~wsserve.protocol.ResultRows`, made by the batch's first such job)."""
        if self.finished:
            return
        rows = out.encoded
        if rows is None:
            rows = out.encoded = ResultRows(out.y, out.compute_s, out.rows)
        self._whole_result(rows.frame(self.id, self._head, a, b, queue_s), queue_s, out.compute_s, out.rows)

    def _whole_result(self, frame: bytes, queue_s: float, compute_s: float, batch_rows: int) -> None:
        """A plain predict whose rows all came in one delivery: its figures, then its ``result``."""
        self.queue_s = queue_s
        self._compute_s = compute_s
        self._batch_max = batch_rows
        self._delivered = self.n
        self._terminal(frame, "ok")

    def on_rows(self, start: int, outputs: np.ndarray, batch_rows: int, queue_s: float, compute_s: float,
                attributions: np.ndarray | None = None) -> None:
        if self.finished:
            return
        if self.shared_outputs and self._delivered == 0 and type(outputs) is np.ndarray and outputs.shape[0] == self.n:
            # (a job given response parameters is not shared_outputs: on_parameters)
            # The common case - a plain predict whose rows all come in one delivery - in one step: the
            # same frame and figures as the general path below, without its bookkeeping (-0.3 us a request).
            timing = timing_fields(queue_s, compute_s, batch_rows)
            frame = encode_result(self.id, self.model, self.version, outputs, timing)
            self._whole_result(frame, queue_s, compute_s, batch_rows)
            return
        if self.queue_s < 0:
            self.queue_s = queue_s
        self._compute_s += compute_s
        if batch_rows > self._batch_max:
            self._batch_max = batch_rows
        self._delivered += outputs.shape[0] if type(outputs) is np.ndarray else count_rows(outputs)
        last = self._delivered >= self.n
        if self.explain:
            if attributions is None:  # the worker must explain every row of an explain request
                self.fail(Internal(f"model {self.model!r} returned rows without their attributions"))
                return
            self._attr_parts.append(attributions)
        if self.stream:
            self._stream_rows(start, outputs, last)
        elif last:
            self._result(outputs if self._parts is None else concat_rows([*self._parts, outputs]))
        elif self._parts is None:
            self._parts = [outputs]
        else:
            self._parts.append(outputs)

    def _timing(self) -> dict[str, float | int]:
        return timing_fields(self.queue_s, self._compute_s, self._batch_max)

    def _result(self, outputs: np.ndarray) -> None:
        if self.seed_form is not None:
            frame = encode_seed_result(outputs, self.seed_form == "scalar")
        elif self.binary_outputs:
            fields: dict[str, Any] = {"type": "result", "id": self.id, "model": self.model, "version": self.version,
                                      "timing": self._timing()}
            if self.parameters:
                fields["parameters"] = self.parameters
            if self.explain:
                parts = self._attr_parts
                fields["explanation"] = self.explanation
                frame = encode_tensor_frame(fields, self._named(outputs, parts[0] if len(parts) == 1
                                                                else np.concatenate(parts)))
            else:
                frame = encode_tensor_frame(fields, outputs)
            self._terminal(frame, "ok", True)
            return
        elif self.explain:
            parts = self._attr_parts
            attributions = parts[0] if len(parts) == 1 else np.concatenate(parts)
            frame = encode_result(self.id, self.model, self.version, outputs, self._timing(),
                                  attributions, self.explanation, self.parameters)
        else:
            frame = encode_result(self.id, self.model, self.version, outputs, self._timing(),
                                  parameters=self.parameters)
        self._terminal(frame, "ok")

    def _stream_rows(self, start: int, outputs: np.ndarray, last: bool) -> None:
        size = self.chunk_rows
        explain = self.explain
        if size is None:  # one chunk per computed slice
            self._send_chunk(start, outputs, self._attr_parts.pop() if explain else None)
        else:
            if self._pending is None:
                self._pending = []
            self._pending.append(outputs)
            if explain:
                self._attr_pending.append(self._attr_parts.pop())
            self._pending_rows += count_rows(outputs)
            if self._pending_rows >= size or last:
                block = self._pending[0] if len(self._pending) == 1 else concat_rows(self._pending)
                ablock = (self._attr_pending[0] if len(self._attr_pending) == 1 else np.concatenate(self._attr_pending)
                          ) if explain else None
                offset = self._delivered - self._pending_rows
                cut = 0
                while self._pending_rows - cut >= size:
                    self._send_chunk(offset + cut, slice_rows(block, cut, cut + size),
                                     None if ablock is None else ablock[cut:cut + size])
                    cut += size
                rest = slice_rows(block, cut, self._pending_rows)
                arest = None if ablock is None else ablock[cut:self._pending_rows]
                self._pending_rows -= cut
                self._pending = [rest] if self._pending_rows else []
                self._attr_pending = [arest] if self._pending_rows and arest is not None else []
                if last and self._pending_rows:
                    self._send_chunk(offset + cut, rest, arest)
                    self._pending, self._pending_rows, self._attr_pending = [], 0, []
        if last:
            frame = encode_predict_done(self.id, self.n, self._timing(), self.version, self.explanation,
                                        self.parameters)
            self._terminal(frame, "ok")

    def _named(self, outputs: Tensors, attributions: np.ndarray) -> dict[str, np.ndarray]:
        """The tensors of a binary answer to an explain request: the output, then its attributions
        (an explained model has one output, so ``outputs`` is one array or a one-entry dict)."""
        output_name, attributions_name = self._names
        named = dict(outputs) if isinstance(outputs, dict) else {output_name: outputs}
        named[attributions_name] = attributions
        return named

    def _send_chunk(self, offset: int, outputs: np.ndarray, attributions: np.ndarray | None = None) -> None:
        if self.binary_outputs:
            fields = {"type": "chunk", "id": self.id, "seq": self._seq, "offset": offset}
            tensors = outputs if attributions is None else self._named(outputs, attributions)
            self.owner.send_binary(encode_tensor_frame(fields, tensors))
        else:
            self.owner.send(encode_chunk(self.id, self._seq, offset, outputs, attributions))
        self._seq += 1


class DecoupledJob(Job):
    """A ``predict`` to a decoupled model in flight (a :class:`~wsserve.decoupled.DecoupledWorker`'s
    sink): each response the model sends is one ``response`` frame (``seq`` 0, 1, ...), then one
    ``done`` (reason ``complete``, ``responses``: how many) once the model sent FINAL; or an
    ``error`` (cancel: ``cancelled``).  A response's ``outputs`` are those it carries (a subset of
    the model's, none included: ``{}``), by name; a model with one output's response carrying it
    gives its rows, as a ``result`` does.  With ``binary_outputs`` each ``response`` is a binary
    tensor frame (header ``type``, ``id``, ``seq``, ``final``, then ``dtype``/``shape`` or
    ``outputs``), as a binary ``result`` is; ``done`` and ``error`` stay JSON.  A response that finds the connection congested (its write
    buffer over ``max_write_buffer_bytes``) ends the request with ``overloaded`` rather than
    queueing more behind a client that does not read."""

    __slots__ = ("inputs", "n", "worker", "item", "responses", "queue_s", "explain", "one_output", "binary_outputs",
                 "parameters")

    def __init__(self, owner: JobOwner, key: Any, req: Predict, entry: ModelEntry, inputs: Tensors, n: int,
                 nbytes: int, received_at: float, deadline: float | None) -> None:
        super().__init__(owner, key, req.id, entry, "predict", received_at, deadline)
        #: the model lists one output: a response carrying it gives its rows, not ``{name: rows}``
        self.one_output = len(getattr(entry.model, "outputs", None) or ()) == 1
        self.binary_outputs = req.binary_outputs  # responses as binary tensor frames
        self.parameters: Mapping[str, Any] | None = None  # the next response's (on_parameters)
        self.inputs = inputs
        self.n = n
        self.nbytes = nbytes
        self.worker = entry.worker
        self.item: Any = None
        self.responses = 0
        self.queue_s = -1.0  # its wait for an instance (on_started; -1: its execute has not started)
        self.explain = False

    @property
    def request_id(self) -> Any:
        return self.id

    def _stop_work(self) -> None:
        if self.item is not None:
            self.worker.cancel(self.item)

    def span_attributes(self) -> dict[str, Any]:
        return {"wsserve.model_version": self.version, "wsserve.responses": self.responses}

    def on_error(self, exc: WsserveError) -> None:
        self.fail(exc)

    def on_started(self, queue_s: float) -> None:
        """The worker's: its execute starts after ``queue_s`` in the queue (its metrics' and statistics' queue time)."""
        self.queue_s = queue_s

    def on_parameters(self, parameters: Mapping[str, Any] | None) -> None:
        """The stream's: the parameters of the response about to come (None: none)."""
        self.parameters = parameters

    def on_response(self, outputs: Any, final: bool, nbytes: int) -> None:
        if self.finished:
            return
        if outputs is not None:
            if getattr(self.owner, "congested", False):
                self.fail(Overloaded(f"slow consumer: this connection's write buffer is over max_write_buffer_bytes "
                                     f"after {self.responses} responses of model {self.model!r}; the request is "
                                     "cancelled"))
                return
            if self.one_output and len(outputs) == 1:  # one output: its rows, as a result frame gives them
                outputs = next(iter(outputs.values()))
            if self.binary_outputs:
                fields = {"type": "response", "id": self.id, "seq": self.responses, "final": final}
                if self.parameters:
                    fields["parameters"] = dict(self.parameters)
                self.owner.send_binary(encode_tensor_frame(fields, outputs))
            else:
                self.owner.send(encode_response(self.id, self.responses, outputs, final, self.parameters))
            self.responses += 1
        if self.item is not None:
            self.item.written(nbytes)  # (the connection's write buffer bounds what is unread)
        if final:
            timing = {"total_ms": self.owner.elapsed_ms(self.received_at)}
            self._terminal(encode_responses_done(self.id, self.responses, timing, self.version), "ok")


class GenerateJob(Job):
    """A ``generate`` in flight; the generation engine's sink."""

    __slots__ = ("engine", "handle", "_prefix", "tokens", "timing")

    def __init__(
        self, owner: JobOwner, key: Any, req: Generate, entry: ModelEntry, received_at: float, deadline: float | None
    ) -> None:
        super().__init__(owner, key, req.id, entry, "generate", received_at, deadline)
        self.engine = entry.worker
        self.handle: Any = None
        self._prefix = token_prefix(req.id)  # token frames are the hottest: built by concatenation
        self.tokens = 0
        self.timing: dict[str, Any] | None = None  # its done's, once it ended (span attributes)

    def _stop_work(self) -> None:
        if self.handle is not None:
            self.engine.cancel(self.handle)

    def span_attributes(self) -> dict[str, Any]:
        """Its version, token counts (GenAI's names: ``usage``'s figures) and the timing its ``done`` carried."""
        handle = self.handle
        attributes: dict[str, Any] = {"wsserve.model_version": self.version, "gen_ai.usage.output_tokens":
                                      self.tokens if handle is None else handle.completion_tokens}
        if handle is not None:
            attributes["gen_ai.usage.input_tokens"] = handle.prompt_tokens
        if self.timing:
            attributes.update({"wsserve." + k: v for k, v in self.timing.items() if v is not None})
        return attributes

    def cancel(self) -> None:
        """Cancel ends a generation with ``done`` reason ``cancelled``.

        The engine answers ``cancel(handle)`` with ``on_done("cancelled", ...)``
        carrying its own timing; if it has nothing to cancel, end here."""
        if self.finished:
            return
        if self.handle is not None:
            self.engine.cancel(self.handle)
        if not self.finished:
            self.finish("cancelled", self.tokens, {"ttft_ms": None, "total_ms": self.owner.elapsed_ms(self.received_at)})

    # -- engine sink

    def on_token(self, seq: int, text: str) -> None:
        if self.finished:
            return
        self.tokens = seq + 1
        self.owner.send(encode_token(self._prefix, seq, text))

    def on_token_logprobs(self, seq: int, text: str, logprobs: TokenLogprobs) -> None:
        if self.finished:
            return
        self.tokens = seq + 1
        self.owner.send(encode_token_logprobs(self._prefix, seq, text, logprobs))

    def on_done(self, reason: str, tokens: int, timing: dict[str, Any]) -> None:
        self.finish(reason, tokens, timing)

    def on_error(self, exc: WsserveError) -> None:
        self.fail(exc)

    def finish(self, reason: str, tokens: int, timing: dict[str, Any]) -> None:
        self.tokens, self.timing = tokens, timing
        handle = self.handle
        if handle is None:  # cancelled before it was queued: nothing was generated
            frame = encode_generate_done(self.id, reason, tokens, timing, self.version)
        else:
            frame = encode_generate_done(self.id, reason, tokens, timing, self.version, handle.prompt_tokens,
                                         handle.completion_tokens)
        self._terminal(frame, "ok" if reason != "cancelled" else "cancelled")
