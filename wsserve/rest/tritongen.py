"""Triton's generate extension of the Open Inference Protocol, sans-I/O.

``POST /v2/models/{name}[/versions/{v}]/generate`` answers one JSON object; ``.../generate_stream``
answers Server-Sent Events, one per token (triton-inference-server/server
``docs/protocol/extension_generate.md``).  The request is a JSON object whose fields are the
model's inputs and whose ``parameters`` object holds request parameters; as Triton's LLM backends
read them, a generation field may be given either way (not both):

- ``text_input`` (required): the prompt (a string);
- ``max_tokens`` (default 16, vLLM's; at most the server's ``max_tokens`` limit), ``temperature``
  (default 0: greedy, as the WebSocket ``generate``), ``top_k``, ``top_p``, ``min_p``, ``presence_penalty``,
  ``frequency_penalty``, ``seed``, ``stop`` (or
  ``stop_words``; a string or a list of strings);
- ``stream``: must agree with the route when given (``true`` only on ``generate_stream``);
- ``id``: echoed in the answer, as OIP does.

Other parameters (``exclude_input_in_output``, ``return_*`` flags...) are ignored; sampling fields
wsserve cannot honour are refused by name (beam search, several outputs).

Answers: ``{"id"?, "model_name", "model_version", "text_output"}``; each streamed event is that
object with one token's ``text_output``, and the last event has an empty ``text_output`` and
``finish_reason`` (``length`` or ``stop``; an extension field).  Errors are OIP's
``{"error": "message"}``: the response's body before the stream starts, an event after.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import BadRequest, WsserveError
from ..jsontypes import described, json_type, shown
from ..protocol import (
    MAX_TEMPERATURE,
    SAMPLING_FIELDS,
    GenerationParams,
    sampling_fields,
    stop_tuple,
)
from .openai import Completion

__all__ = ["GenerateEncoder", "parse_generate"]

_FIELDS = ("text_input", "max_tokens", "temperature", "top_k", *SAMPLING_FIELDS, "seed", "stop", "stop_words", "stream")
#: Refused unless they hold their neutral value (the sampling wsserve does not do).
_NEUTRAL = {"beam_width": (1,), "num_beams": (1,), "n": (1,), "best_of": (1,)}


def parse_generate(obj: Any, *, model: str, stream: bool, max_tokens_limit: int) -> tuple[Completion, Any]:
    """Check a decoded body for ``model``; return the generation (:class:`~wsserve.rest.openai.Completion`,
    its ``stream`` the route's) and the request ``id`` to echo (None without one).  Raises
    ``BadRequest`` naming the field."""
    if type(obj) is not dict:
        raise BadRequest(f"the body must be a JSON object, got {json_type(obj)}")
    params = obj.get("parameters")
    if params is None:
        params = {}
    elif type(params) is not dict:
        raise BadRequest(f"'parameters' must be an object, got {json_type(params)}")
    fields: dict[str, Any] = {}
    for name in (*_FIELDS, *_NEUTRAL):
        if name in obj and name in params:
            raise BadRequest(f"'{name}' is given both as an input and in 'parameters'; give it once")
        value = obj[name] if name in obj else params.get(name)
        if value is not None:
            fields[name] = value
    for name, neutral in _NEUTRAL.items():
        value = fields.get(name)
        if value is not None and not (type(value) in (int, float) and value in neutral):
            raise BadRequest(f"'{name}' is not supported (only {neutral[0]}); got {shown(value)}")
    rid = obj.get("id")
    if rid is not None and (type(rid) is not str or len(rid) > 256):
        raise BadRequest("'id' must be a string of at most 256 characters")
    prompt = fields.get("text_input")
    if type(prompt) is list and len(prompt) == 1:  # a batch of one, as tensor-minded clients send it
        prompt = prompt[0]
    if type(prompt) is not str:
        raise BadRequest(f"'text_input' must be a string (the prompt), got {json_type(prompt)}")
    wanted = fields.get("stream")
    if wanted is not None and (type(wanted) is not bool or wanted != stream):
        raise BadRequest("'stream' must be true on generate_stream and false (or absent) on generate")
    max_tokens = fields.get("max_tokens", min(16, max_tokens_limit))
    if type(max_tokens) is not int or not 1 <= max_tokens <= max_tokens_limit:
        raise BadRequest(f"'max_tokens' must be an integer in [1, {max_tokens_limit}], got {shown(max_tokens)}")
    temperature = fields.get("temperature", 0.0)
    if type(temperature) not in (int, float) or not 0 <= temperature <= MAX_TEMPERATURE:
        raise BadRequest(f"'temperature' must be a number in [0, {MAX_TEMPERATURE:g}], got {shown(temperature)}")
    if "stop" in fields and "stop_words" in fields:
        raise BadRequest("give 'stop' or 'stop_words', not both")
    stop_field = "stop_words" if "stop_words" in fields else "stop"  # errors name the field sent
    stop = stop_tuple(fields.get(stop_field))
    if stop is None:
        raise BadRequest(f"'{stop_field}' must be a string or an array of strings")
    seed = fields.get("seed")
    if seed is not None and type(seed) is not int:
        raise BadRequest(f"'seed' must be an integer, got {described(seed)}")
    top_k = fields.get("top_k", 0)
    try:
        params_ = GenerationParams(  # raises BadRequest naming the field (top_k, top_p, stop...)
            prompt=prompt, max_tokens=max_tokens, temperature=float(temperature),
            top_k=0 if top_k == -1 else top_k, seed=seed & 0xFFFF_FFFF_FFFF_FFFF if seed is not None else None,
            stop=stop, **sampling_fields(fields),
        )
    except BadRequest as exc:
        if stop_field == "stop_words":
            exc.message = exc.message.replace("field 'stop'", "field 'stop_words'")
        raise
    return Completion(model=model, params=params_, stream=stream, include_usage=False), rid


class GenerateEncoder:
    """Bodies and events of one generate (the interface :class:`~wsserve.rest.calls.CompletionCall`
    drives: ``start_events``, ``token_event``, ``choice_end_event``, ``tail_events``, ``response``,
    ``error_event``; one choice)."""

    __slots__ = ("_head",)

    def __init__(self, rid: str | None, model: str, version: str) -> None:
        head = b'{"id":' + orjson.dumps(rid) + b"," if rid is not None else b"{"
        self._head = head + b'"model_name":' + orjson.dumps(model) + b',"model_version":' + orjson.dumps(version)

    def start_events(self, index: int = 0) -> bytes:
        return b""

    def token_event(self, text: str, index: int = 0) -> bytes:
        return b"data: " + self._head + b',"text_output":' + orjson.dumps(text) + b"}\n\n"

    def choice_end_event(self, finish_reason: str, index: int = 0) -> bytes:
        return (b"data: " + self._head + b',"text_output":"","finish_reason":' + orjson.dumps(finish_reason)
                + b"}\n\n")

    def tail_events(self, prompt_tokens: int, tokens: int, include_usage: bool) -> bytes:
        return b""

    def response(self, choices: list[Any], prompt_tokens: int, tokens: int) -> bytes:
        return self._head + b',"text_output":' + orjson.dumps(choices[0][0]) + b"}"

    @staticmethod
    def error_event(exc: WsserveError) -> bytes:
        return b"data: " + orjson.dumps({"error": exc.message}) + b"\n\n"
