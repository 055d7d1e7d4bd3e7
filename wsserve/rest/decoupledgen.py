"""Triton's generate extension for a decoupled model (Triton's decoupled mode), sans-I/O.

``POST /v2/models/{name}[/versions/{v}]/generate_stream`` on a decoupled model (a Triton Python
model with ``model_transaction_policy { decoupled: true }``) answers Server-Sent Events, one per
response the model sends, as Triton's HTTP frontend writes them (server ``src/http_server.cc``,
``GenerateRequestClass``): ``data: {"id"?, "model_name", "model_version", OUTPUT: value, ...}``,
an output of one element as a JSON scalar, any other as a flat list of its elements (BYTES:
strings).  The model's FINAL ends the stream; an error is an event ``data: {"error": "..."}``
that ends it (before any event: the error's status and OIP JSON body instead).

``.../generate`` (not streamed) answers the one response as one such JSON object; a model that
sends any other number of responses is answered, as Triton answers it, with status 200 and
``{"error": "generate expects model to produce exactly 1 response, use generate stream for model
that generates various number of responses"}``.

The request is a JSON object whose fields named as the model's inputs are their values (a
scalar, or nested lists of the input's ``dims``: one request is one row); ``id`` is echoed and
is the model's ``request_id()``; ``parameters`` (an object) and other fields are request
parameters, ignored.  Every input is required but those config.pbtxt makes ``optional``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from ..errors import BadRequest, WsserveError
from .calls import PredictCall

__all__ = ["DecoupledGenerateCall", "generate_inputs", "response_object", "ONE_RESPONSE_ERROR"]

#: The longest ``id`` (characters), as on a generative model's ``generate`` (:mod:`.tritongen`).
MAX_GENERATE_ID = 256

#: Triton's answer to ``generate`` on a model that sent other than one response.
ONE_RESPONSE_ERROR = ("generate expects model to produce exactly 1 response, use generate stream for model that "
                      "generates various number of responses")


def generate_inputs(body: Any, names: tuple[str, ...], optional: frozenset[str] = frozenset()) -> tuple[Any, str | None]:
    """``(inputs, id)``: the model's inputs in the form a predict's ``inputs`` takes (one row each:
    ``{name: [value]}``, or ``[value]`` for a single-input model) and the request's ``id`` (None
    without one); an input in ``optional`` the body leaves out is left out.  Raises ``BadRequest``
    naming what is wrong (not an object, a required input missing, an ``id`` that is not a
    string of at most :data:`MAX_GENERATE_ID` characters, ``parameters`` not an object)."""
    if type(body) is not dict:
        raise BadRequest("the generate request must be a JSON object")
    rid = body.get("id")
    if rid is not None and (type(rid) is not str or len(rid) > MAX_GENERATE_ID):  # echoed in every event
        raise BadRequest(f"'id' must be a string of at most {MAX_GENERATE_ID} characters")
    parameters = body.get("parameters")
    if parameters is not None and type(parameters) is not dict:
        raise BadRequest("'parameters' must be a JSON object")
    missing = [n for n in names if n not in body and n not in optional]
    if missing:
        raise BadRequest(f"the generate request has no field {missing[0]!r}: the model's inputs are "
                         f"{', '.join(names)}")
    rows = {n: [body[n] if type(body[n]) is list else [body[n]]] for n in names if n in body}
    return (rows[names[0]] if len(names) == 1 and rows else rows), rid


def _json_value(array: np.ndarray) -> Any:
    """An output as Triton's generate writes it: one element as a scalar, else a flat list."""
    flat = array.reshape(-1)
    if flat.dtype.kind == "O" or flat.dtype.kind in "SU":
        values: list[Any] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    else:
        values = flat.tolist()
    return values[0] if len(values) == 1 else values


def response_object(model: str, version: str, rid: str | None, outputs: dict[str, np.ndarray]) -> bytes:
    """One response as Triton's generate answers it (JSON bytes)."""
    obj: dict[str, Any] = {}
    if rid:
        obj["id"] = rid
    obj["model_name"] = model
    obj["model_version"] = version
    for name, array in outputs.items():
        obj[name] = _json_value(array)
    return orjson.dumps(obj)


class DecoupledGenerateCall(PredictCall):
    """``generate`` or ``generate_stream`` on a decoupled model: the
    :class:`~wsserve.decoupled.DecoupledWorker`'s sink (see the module docstring).  A response is
    acknowledged as written once handed to the connection (whose own slow-consumer policy bounds
    what it holds unsent)."""

    __slots__ = ("rid", "stream", "responses", "_held", "_started")

    def __init__(self, *args: Any, rid: str | None, stream: bool) -> None:
        super().__init__(*args)
        self.rid = rid
        self.stream = stream
        self.responses = 0
        self._held: bytes | None = None  # not streamed: the one response's answer
        self._started = False  # streamed: the 200 and its headers are out

    @property
    def request_id(self) -> str | None:
        """The request's ``id`` (None: none given): the model's ``request_id()``
        (:func:`~wsserve.worker.request_id_of`)."""
        return self.rid

    def on_started(self, queue_s: float) -> None:
        """The worker's: its execute starts after ``queue_s`` in the queue (its metrics' and statistics' queue time)."""
        self.queue_s = queue_s

    def on_response(self, outputs: dict[str, np.ndarray] | None, final: bool, nbytes: int) -> None:
        if self.finished:
            return
        if outputs is not None:
            body = response_object(self.model, self.version, self.rid, outputs)
            if self.stream:
                self._start()
                self.exchange.send(b"data: " + body + b"\n\n")
            elif self.responses == 0:
                self._held = body
            self.responses += 1
        if self.item is not None:
            self.item.written(nbytes)
        if not final:
            return
        if self.stream:
            self._start()
            self.exchange.end_stream()
        elif self.responses == 1 and self._held is not None:
            self._answer(self._held)
        else:  # Triton's answer: a 200 whose body is the error
            self._answer(orjson.dumps({"error": ONE_RESPONSE_ERROR}))
        self._end("ok" if self.stream or self.responses == 1 else "internal")

    def _start(self) -> None:
        """Streamed: the 200 and the event stream's headers, once (at the first response or FINAL)."""
        if not self._started:
            self._started = True
            self.exchange.start_stream(200, "text/event-stream", [("Cache-Control", "no-cache"), *self.headers])

    def _error(self, exc: WsserveError) -> None:
        """Streamed after the first event: an error event ending the stream; else the error's
        status and OIP body."""
        if self._started:
            self.exchange.send(b"data: " + orjson.dumps({"error": exc.message}) + b"\n\n")
            self.exchange.end_stream()
        else:
            super()._error(exc)

