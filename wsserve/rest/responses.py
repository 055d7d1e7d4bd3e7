"""OpenAI's Responses API for text (``POST /v1/responses``), sans-I/O.

What the openai SDK's ``client.responses.create(...)`` sends for a text conversation, served by
the machinery of ``/v1/chat/completions`` (:mod:`wsserve.rest.openai`): the conversation is a
tuple of :class:`~wsserve.chat.ChatMessage` that the served model's chat template turns into the
prompt, and the sampling fields are checked by :func:`~wsserve.rest.openai.completion_of`.

- :func:`parse_response_request` - a request body into :class:`ResponseRequest`:

  - ``input``: a string (one user message), or a non-empty list of message items
    ``{"role", "content"[, "type": "message"]}`` (roles as a chat's; ``content`` a string or a
    non-empty list of ``{"type": "input_text" | "output_text", "text"}`` parts, joined; the
    ``id``, ``status`` and ``annotations`` of an SDK output message sent back are ignored);
    ``instructions``: a system message before them.
  - ``max_output_tokens`` (1 to the server's ``max_tokens``, which is the default, as a chat's
    ``max_completion_tokens``), ``temperature`` (default 1), ``top_p``, ``stream``, and vLLM's
    extensions to this route: ``top_k``, ``seed``, ``stop``, ``logit_bias``,
    ``repetition_penalty``, ``include_stop_str_in_output``, and the other sampling and stop fields
    every protocol's generate takes (``min_p``, ``presence_penalty``, ``frequency_penalty``,
    ``min_tokens``, ``stop_token_ids``: as on the chat route; vLLM's Responses route has none of them).
  - ``metadata`` (at most :data:`MAX_METADATA_KEYS` string values of at most
    :data:`MAX_METADATA_VALUE_CHARS` characters, keys of at most :data:`MAX_METADATA_KEY_CHARS`,
    OpenAI's bounds), ``user``, ``instructions`` and the neutral fields are echoed in the answer.
  - ``store`` is taken either way and nothing is stored (vLLM without its store does the
    same); the answer says ``"store": false``.
  - ``include: ["message.output_text.logprobs"]`` (:data:`INCLUDE_LOGPROBS`) asks for each
    output token's log-probability, with ``top_logprobs`` (0 to
    :data:`~wsserve.protocol.MAX_LOGPROBS`, default 0, echoed) likeliest alternatives: the
    model's raw values, as a chat's ``logprobs`` (:mod:`wsserve.generation.logprobs`).
    ``top_logprobs`` without that ``include`` asks for nothing (as vLLM takes it).
  - Refused by name (:class:`~wsserve.rest.openai.ParamError`) rather than ignored: what needs
    a stored response or conversation (``previous_response_id``, ``conversation``, vLLM's
    ``previous_response`` and ``previous_input_messages``), tools (non-empty ``tools``,
    ``tool_choice`` other than ``"none"``), ``reasoning``, ``text.format`` other than text and
    ``text.verbosity``, any other ``include`` value (tool results, images, reasoning), ``background:
    true``, ``truncation`` other than ``"disabled"``, ``prompt`` (templates), vLLM's
    ``structured_outputs`` and ``priority`` other than 0, and input items or parts that are not
    text messages (images, files, audio, function calls and their outputs, references); and, as
    the chat route refuses them, the other OpenAI routes' ``n`` other than 1, ``logprobs`` other than
    false and ``response_format`` other than text, and vLLM's fields for what wsserve does not do
    (beam search, guided decoding...: :data:`~wsserve.rest.openai.NEUTRAL_VLLM`).
    Unknown fields are ignored, as on the chat route.

- :class:`ResponsesEncoder` - the Response object (``object: "response"``, ``status``
  ``"completed"``, or ``"incomplete"`` with ``incomplete_details.reason`` ``max_output_tokens``
  when the length limit ended it), and the Server-Sent Events of a streamed one, each
  ``event: <type>`` and ``data: {..., "sequence_number": n}`` from 0: ``response.created``,
  ``response.in_progress``, ``response.output_item.added``, ``response.content_part.added``, one
  ``response.output_text.delta`` per token, ``response.output_text.done``,
  ``response.content_part.done``, ``response.output_item.done``, then ``response.completed``
  (or ``response.incomplete``).  With logprobs, each delta carries its token's (``[{"token",
  "logprob", "top_logprobs": [{"token", "logprob"}]}]``, the SDK's event shape) and
  ``response.output_text.done`` all of them; the ``output_text`` parts, of the answer and of the
  events, carry them with ``bytes`` (:func:`~wsserve.rest.openai.token_logprobs`, a chat's
  ``logprobs.content``).  A failure after the stream started is OpenAI's ``response.failed``
  event: its response ``status: "failed"``, the message as far as it went, ``error: {"code",
  "message", "param", "type"}`` (``code`` ``server_error``, or ``rate_limit_exceeded``; ``type``
  the wire code) and the ``usage`` of the prompt and of the tokens generated before the failure;
  then the stream ends.
  No ``[DONE]``: the Responses API does not send one.  It is given to
  :class:`~wsserve.rest.calls.CompletionCall` as the chat encoder is (one choice).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from ..chat import ROLES, ChatMessage, text_parts
from ..errors import BadRequest, WsserveError
from ..generation.logprobs import TokenLogprobs
from ..jsontypes import json_type, shown
from ..protocol import MAX_LOGPROBS, SAMPLING_FIELDS, STOP_FIELDS
from .openai import (
    NEUTRAL_VLLM,
    Choice,
    Completion,
    ParamError,
    completion_of,
    fit_default_max_tokens,
    is_neutral,
    max_tokens_field,
    model_field,
    token_logprobs,
)

__all__ = ["INCLUDE_LOGPROBS", "MAX_METADATA_KEYS", "MAX_METADATA_KEY_CHARS", "MAX_METADATA_VALUE_CHARS", "ResponseRequest",
           "ResponsesEncoder", "parse_response_request"]

#: ``metadata``: at most this many pairs, keys of at most ... characters, values of at most ... (OpenAI's).
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512

#: ``include``'s one value served: each output token's logprobs, in the ``output_text`` part (and
#: streamed, in its ``response.output_text.delta`` event).
INCLUDE_LOGPROBS = "message.output_text.logprobs"

#: Fields taken only at these values (OpenAI's defaults, or "off"); anything else is refused by name.
_NEUTRAL = {
    "previous_response_id": (None,), "conversation": (None,), "tools": (None, []), "tool_choice": (None, "none"),
    "background": (None, False), "truncation": (None, "disabled"), "prompt": (None,),
    # vLLM's extensions to this route: a stored (or resent) state, structured output, scheduling priority
    "previous_response": (None,), "previous_input_messages": (None, []), "structured_outputs": (None,),
    "priority": (None, 0), "enable_response_messages": (None, False),
}
#: Why each is refused (the message's end).
_WHY = {
    "previous_response_id": "wsserve stores no responses; send the whole conversation in 'input'",
    "conversation": "wsserve stores no conversations; send the whole conversation in 'input'",
    "previous_response": "send the whole conversation in 'input'",
    "previous_input_messages": "send the whole conversation in 'input'",
    "tools": "wsserve's models call no tools",
    "tool_choice": "wsserve's models call no tools (only \"none\")",
    "background": "wsserve stores no responses to fetch later; ask without 'background'",
    "truncation": "only \"disabled\": a prompt is not truncated to fit",
    "prompt": "prompt templates are not supported; send the text in 'input' and 'instructions'",
    "structured_outputs": "wsserve does not constrain output",
    "priority": "only its default, 0",
    "enable_response_messages": "only its default, false",
}
#: The other OpenAI routes' fields this one has no use for, refused by name unless at their
#: defaults (as the chat route refuses what it does not do, rather than ignore them): ``n`` (a
#: response has one output message), the chat's ``logprobs`` and ``response_format`` (this route's
#: are ``include``/``top_logprobs`` and ``text.format``), and vLLM's fields for what wsserve does
#: not do (:data:`~wsserve.rest.openai.NEUTRAL_VLLM`).
_NEUTRAL_OTHER = {"n": (None, 1), "logprobs": (None, False), "response_format": (None, {"type": "text"}),
                  "guided_choice": (None,), "guided_regex": (None,), "guided_json": (None,),
                  **{name: values for name, values in NEUTRAL_VLLM.items() if name not in _NEUTRAL}}
_WHY_OTHER = {
    "n": "a response has one output message (n choices: POST /v1/chat/completions)",
    "logprobs": f"this route's logprobs are asked for with 'include': [\"{INCLUDE_LOGPROBS}\"] and 'top_logprobs'",
    "response_format": "this route's output format is 'text.format', and only text",
    "guided_choice": "a guided choice is served on /v1/completions and /v1/chat/completions",
    "guided_regex": "a regex is served on /v1/completions and /v1/chat/completions (here: 'text.format')",
    "guided_json": "this route's JSON Schema is 'text.format': {\"type\": \"json_schema\", \"schema\": {...}}",
}
#: The sampling and stop fields handed to :func:`~wsserve.rest.openai.completion_of` (checked there
#: under these names), ``stream`` too: OpenAI's, vLLM's extensions to this route (``top_k``,
#: ``seed``, ``stop``, ``logit_bias``, ``repetition_penalty``, ``include_stop_str_in_output``) and
#: the rest of :data:`~wsserve.protocol.SAMPLING_FIELDS` and :data:`~wsserve.protocol.STOP_FIELDS`,
#: which every protocol's generate takes (``min_p``, ``presence_penalty``, ``frequency_penalty``,
#: ``min_tokens``, ``stop_token_ids``: as on the chat route).
_SAMPLING = tuple(dict.fromkeys(("temperature", "top_k", "seed", "stop", "logit_bias", "stream", *SAMPLING_FIELDS,
                                 *STOP_FIELDS)))
_TEXT_PARTS = ("input_text", "output_text")


@dataclass(frozen=True, slots=True)
class ResponseRequest:
    """A checked ``POST /v1/responses`` body: the generation (``completion.messages`` is the
    conversation, ``instructions`` first) and what the Response object echoes."""

    completion: Completion
    instructions: str | None
    max_output_tokens: int | None  # as sent (None: the server's limit applies)
    metadata: dict[str, str]
    user: str | None
    parallel_tool_calls: bool
    top_logprobs: int = 0  # as sent (echoed); logprobs are given only with include's INCLUDE_LOGPROBS
    #: ``text.format`` as sent (echoed): ``{"type": "text"}`` unless a JSON output was asked for
    text_format: Any = field(default_factory=lambda: {"type": "text"})


def parse_response_request(obj: Any, *, max_tokens_limit: int) -> ResponseRequest:
    """Check a decoded ``/v1/responses`` body; raises :class:`~wsserve.rest.openai.ParamError`
    (a ``BadRequest``) naming the first refused field."""
    model = model_field(obj)
    for name, values in _NEUTRAL.items():
        value = obj.get(name)
        if value is not None and not is_neutral(value, values):
            raise ParamError(name, f"'{name}' is not supported: {_WHY[name]}; got {shown(value, 80)}")
    for name, values in _NEUTRAL_OTHER.items():
        value = obj.get(name)
        if value is not None and not is_neutral(value, values):
            why = _WHY_OTHER.get(name, "only its default")
            raise ParamError(name, f"'{name}' is not supported on this route: {why}; got {shown(value, 80)}")
    _check_reasoning(obj.get("reasoning"))
    text_format = _text_format(obj.get("text"))
    instructions = obj.get("instructions")
    if instructions is not None and type(instructions) is not str:
        raise ParamError("instructions", f"'instructions' must be a string, got {json_type(instructions)}")
    messages = _input_messages(obj.get("input"))
    if instructions is not None:
        messages = (ChatMessage("system", instructions), *messages)
    sent_max = max_tokens_field(obj, "max_output_tokens", None, max_tokens_limit)
    sampling = {name: obj[name] for name in _SAMPLING if name in obj}
    if text_format is not None:  # a JSON Schema: the output is guided (refusals name 'text')
        sampling["guided_json"] = text_format
    logprobs, top_logprobs = _logprobs(obj)
    completion = completion_of(sampling, model, "", sent_max or max_tokens_limit, messages, logprobs)
    if sent_max is None:
        completion = fit_default_max_tokens(completion, kept_streamed=True)  # (kept for the .done events)
    if text_format is not None:
        completion = replace(completion, params=replace(completion.params, guided_field="text"))
    user = obj.get("user")
    if user is not None and type(user) is not str:
        raise ParamError("user", f"'user' must be a string, got {json_type(user)}")
    parallel = obj.get("parallel_tool_calls")
    if parallel is not None and type(parallel) is not bool:
        raise ParamError("parallel_tool_calls", f"'parallel_tool_calls' must be a boolean, got {json_type(parallel)}")
    store = obj.get("store")
    if store is not None and type(store) is not bool:
        raise ParamError("store", f"'store' must be a boolean, got {json_type(store)}")
    return ResponseRequest(completion=completion, instructions=instructions, max_output_tokens=sent_max,
                           metadata=_metadata(obj.get("metadata")), user=user,
                           parallel_tool_calls=True if parallel is None else parallel, top_logprobs=top_logprobs,
                           text_format=(obj.get("text") or {}).get("format") or {"type": "text"})


def _logprobs(obj: dict[str, Any]) -> tuple[int | None, int]:
    """``include`` (an array of strings, only :data:`INCLUDE_LOGPROBS`) and ``top_logprobs`` (0 to
    :data:`~wsserve.protocol.MAX_LOGPROBS`, default 0): :class:`~wsserve.protocol.GenerationParams`'s
    ``logprobs`` (``top_logprobs`` alternatives per token, or None when not included: then
    ``top_logprobs`` alone asks for nothing, as vLLM takes it) and the ``top_logprobs`` echoed."""
    include = obj.get("include")
    if include is not None and type(include) is not list:
        raise ParamError("include", f"'include' must be an array of strings, got {json_type(include)}")
    for i, item in enumerate(include or ()):
        if type(item) is not str:
            raise ParamError("include", f"'include[{i}]' must be a string, got {json_type(item)}")
        if item != INCLUDE_LOGPROBS:
            raise ParamError("include", f"'include' value {shown(item, 64)} is not supported: only "
                                        f"\"{INCLUDE_LOGPROBS}\" (wsserve's models have no tool results, images or "
                                        "reasoning to include)")
    top = obj.get("top_logprobs")
    if top is not None and (type(top) is not int or not 0 <= top <= MAX_LOGPROBS):
        raise ParamError("top_logprobs", f"'top_logprobs' must be an integer in [0, {MAX_LOGPROBS}], "
                                         f"got {shown(top, 40)}")
    top = top or 0
    return (top if include else None), top


def _check_reasoning(value: Any) -> None:
    """``reasoning``: only absent, ``{}`` or all-null (wsserve's models do not reason apart)."""
    if value is None or (type(value) is dict and all(v is None for v in value.values())):
        return
    raise ParamError("reasoning", "'reasoning' is not supported: wsserve's models have no reasoning settings; got "
                                  f"{shown(value, 80)}")


def _text_format(value: Any) -> dict[str, Any] | None:
    """``text``: ``{"format": ...}`` of type ``text`` (or no format; None), ``json_schema``
    (``{"type": "json_schema", "name": ..., "schema": {...}, "strict": ...}``: its schema) or
    ``json_object`` (any JSON object: ``{"type": "object"}``), without ``verbosity``."""
    if value is None:
        return None
    if type(value) is not dict:
        raise ParamError("text", f"'text' must be an object, got {json_type(value)}")
    if value.get("verbosity") is not None:
        raise ParamError("text", "'text.verbosity' is not supported: wsserve's models take no verbosity; got "
                                 f"{shown(value['verbosity'], 40)}")
    fmt = value.get("format")
    if fmt is None or fmt == {"type": "text"}:
        return None
    kind = fmt.get("type") if type(fmt) is dict else None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        if type(fmt.get("schema")) is not dict:
            raise ParamError("text", "'text.format' of type 'json_schema' needs 'schema': a JSON Schema object")
        return fmt["schema"]
    raise ParamError("text", "'text.format' must be of type 'text', 'json_schema' or 'json_object'; got "
                             f"{shown(fmt, 80)}")


def _metadata(value: Any) -> dict[str, str]:
    """``metadata``: at most :data:`MAX_METADATA_KEYS` string pairs within OpenAI's lengths."""
    if value is None:
        return {}
    if type(value) is not dict:
        raise ParamError("metadata", f"'metadata' must be an object of strings, got {json_type(value)}")
    if len(value) > MAX_METADATA_KEYS:
        raise ParamError("metadata", f"'metadata' holds {len(value)} keys; at most {MAX_METADATA_KEYS}")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise ParamError("metadata", f"'metadata' key {shown(key, 40)} has {len(key)} characters; at most "
                                         f"{MAX_METADATA_KEY_CHARS}")
        if type(item) is not str:
            raise ParamError("metadata", f"'metadata.{key}' must be a string, got {json_type(item)}")
        if len(item) > MAX_METADATA_VALUE_CHARS:
            raise ParamError("metadata", f"'metadata.{key}' has {len(item)} characters; at most "
                                         f"{MAX_METADATA_VALUE_CHARS}")
    return value


def _input_messages(value: Any) -> tuple[ChatMessage, ...]:
    """``input``: a string (one user message) or a non-empty list of text message items."""
    if type(value) is str:
        return (ChatMessage("user", value),)
    if type(value) is not list:
        raise ParamError("input", f"'input' must be a string or an array of message items, got {json_type(value)}")
    if not value:
        raise ParamError("input", "'input' must hold at least one message item")
    out = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if type(item) is not dict:
            raise ParamError("input", f"'{where}' must be a message item object, got {json_type(item)}")
        kind = item.get("type")
        if kind is not None and kind != "message":
            raise ParamError("input", f"'{where}.type' {shown(kind, 64)} is not supported: only message items "
                                      "(wsserve's models call no tools and take text only)")
        role = item.get("role")
        if type(role) is not str:
            raise ParamError("input", f"'{where}.role' must be a string, got {json_type(role)}")
        if role not in ROLES:
            raise ParamError("input", f"'{where}.role' must be one of {', '.join(ROLES)}; got {shown(role, 64)}")
        out.append(ChatMessage(role, _content(item.get("content"), f"{where}.content")))
    return tuple(out)


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or a non-empty list of text parts (joined)."""
    if type(value) is str:
        return value
    if type(value) is not list:
        raise ParamError("input", f"'{where}' must be a string or an array of text parts, got {json_type(value)}")
    try:
        return text_parts(value, where, _TEXT_PARTS)
    except BadRequest as exc:
        raise ParamError("input", exc.message) from None


class ResponsesEncoder:
    """Bodies and events of one response (``id``: ``resp_...``; its one output message ``msg_...``).

    Stateful: a stream's events are numbered (``sequence_number``) and the streamed text (and,
    with logprobs, each token's record) is kept for the ``.done`` events and the last response.
    ``usage`` is the chat's: ``input_tokens`` the prompt's tokens given to the model,
    ``output_tokens`` the tokens generated as vLLM counts them (a stop string's and a stop token's
    included); a failed response's counts what was generated before the failure.  With logprobs (``include``: :data:`INCLUDE_LOGPROBS`),
    the ``output_text`` part's ``logprobs`` are :func:`~wsserve.rest.openai.token_logprobs`'s
    (a chat's ``logprobs.content``), and a delta event's (and ``response.output_text.done``'s)
    the same without ``bytes``, as the SDK's event types have them; without, ``[]``."""

    __slots__ = ("_id", "_message_id", "_created", "_model", "_request", "_seq", "_texts", "_logged", "_reason",
                 "_delta_head")

    def __init__(self, response_id: str, message_id: str, created: int, model: str, request: ResponseRequest) -> None:
        self._id = response_id
        self._message_id = message_id
        self._created = created
        self._model = model
        self._request = request
        self._seq = 0
        self._texts: list[str] = []
        #: streamed with logprobs: each token's text and record, for the ``.done`` events
        self._logged: list[tuple[str, TokenLogprobs]] | None = (
            [] if request.completion.params.logprobs is not None else None)
        self._reason = "stop"
        self._delta_head = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                            b'"item_id":' + orjson.dumps(message_id) + b',"output_index":0,"content_index":0,'
                            b'"logprobs":[],"delta":')

    # -- the objects

    def _response(self, status: str, text: str | None, prompt_tokens: int | None, tokens: int,
                  logprobs: list[dict[str, Any]] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        """The Response object; ``text`` None: no output yet (in progress); ``logprobs``: its text's."""
        req = self._request
        params = req.completion.params
        incomplete = status == "incomplete"
        return {
            "id": self._id, "object": "response", "created_at": self._created, "status": status,
            "background": False, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "max_tool_calls": None,
            "metadata": req.metadata, "model": self._model,
            "output": [] if text is None else [
                self._message(text, "completed" if status == "completed" else "incomplete", logprobs)],
            "parallel_tool_calls": req.parallel_tool_calls, "previous_response_id": None, "reasoning": None,
            "store": False, "temperature": params.temperature, "text": {"format": req.text_format},
            "tool_choice": "none", "tools": [], "top_logprobs": req.top_logprobs, "top_p": params.top_p,
            "truncation": "disabled",
            "usage": None if prompt_tokens is None else {
                "input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt_tokens + tokens},
            "user": req.user,
        }

    def _message(self, text: str | None, status: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The output message item (``text`` None: no content part yet)."""
        return {"id": self._message_id, "type": "message", "status": status, "role": "assistant",
                "content": [] if text is None else [_part(text, logprobs)]}

    @staticmethod
    def _status(reason: str) -> str:
        return "incomplete" if reason == "length" else "completed"

    def response(self, choices: list[Choice], prompt_tokens: int, tokens: int) -> bytes:
        """The whole (non-streamed) Response object of the one choice (``logged``: its tokens'
        records, when logprobs were included)."""
        text, reason, logged = choices[0]
        logprobs = None if logged is None else token_logprobs(logged)  # type: ignore[arg-type]
        return orjson.dumps(self._response(self._status(reason), text, prompt_tokens, tokens, logprobs))

    # -- the stream

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        """One numbered event."""
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def start_events(self, index: int = 0) -> bytes:
        """What the stream begins with: the response created and in progress, its message and text part added."""
        pending = self._response("in_progress", None, None, 0)
        where = {"item_id": self._message_id, "output_index": 0, "content_index": 0}
        return (self._event("response.created", {"response": pending})
                + self._event("response.in_progress", {"response": pending})
                + self._event("response.output_item.added",
                              {"output_index": 0, "item": self._message(None, "in_progress")})
                + self._event("response.content_part.added", {**where, "part": _part("")}))

    def token_event(self, text: str, index: int = 0) -> bytes:
        """One token's ``response.output_text.delta``."""
        self._texts.append(text)
        seq = self._seq
        self._seq += 1
        return self._delta_head + orjson.dumps(text) + b',"sequence_number":%d}\n\n' % seq

    def token_event_logprobs(self, text: str, logprobs: TokenLogprobs, index: int = 0) -> bytes:
        """One token's ``response.output_text.delta`` with its ``logprobs`` (when included)."""
        if self._logged is None:
            return self.token_event(text, index)
        self._texts.append(text)
        self._logged.append((text, logprobs))
        return self._event("response.output_text.delta", {
            "item_id": self._message_id, "output_index": 0, "content_index": 0,
            "logprobs": token_logprobs(((text, logprobs),), with_bytes=False), "delta": text})

    def choice_end_event(self, finish_reason: str, index: int = 0, unsent: int = 0) -> bytes:
        """The text, its part and its message done."""
        self._reason = finish_reason
        text = "".join(self._texts)
        logged = self._logged or ()
        logprobs = token_logprobs(logged) if self._logged is not None else None
        where = {"item_id": self._message_id, "output_index": 0, "content_index": 0}
        return (self._event("response.output_text.done",
                            {**where, "text": text, "logprobs": token_logprobs(logged, with_bytes=False)})
                + self._event("response.content_part.done", {**where, "part": _part(text, logprobs)})
                + self._event("response.output_item.done",
                              {"output_index": 0, "item": self._message(text, self._status(finish_reason), logprobs)}))

    def _streamed_logprobs(self) -> list[dict[str, Any]] | None:
        return None if self._logged is None else token_logprobs(self._logged)

    def tail_events(self, prompt_tokens: int, tokens: int, include_usage: bool) -> bytes:
        """The last event: ``response.completed`` (or ``response.incomplete``) with the whole response."""
        status = self._status(self._reason)
        whole = self._response(status, "".join(self._texts), prompt_tokens, tokens, self._streamed_logprobs())
        return self._event(f"response.{status}", {"response": whole})

    def error_event(self, exc: WsserveError, prompt_tokens: int | None = None, tokens: int = 0) -> bytes:
        """A failure after the stream started: OpenAI's last event then, ``response.failed``, whose
        response has ``status`` ``"failed"``, its message as far as it went (``"incomplete"``),
        ``usage`` the tokens of the prompt (``prompt_tokens``; None: not known, then ``usage`` is
        null) and of what was generated before the failure (``tokens``), and ``error``: ``{"code",
        "message", "param", "type"}``, ``code`` one of OpenAI's (:func:`_failure_code`) and
        ``type`` the wire code (e.g. ``shutting_down``)."""
        error = {"code": _failure_code(exc.code), "message": exc.message, "param": getattr(exc, "param", None),
                 "type": exc.code}
        failed = self._response("failed", "".join(self._texts), prompt_tokens, tokens, self._streamed_logprobs(),
                                error)
        return self._event("response.failed", {"response": failed})


def _failure_code(code: str) -> str:
    """The Responses API's ``error.code`` of a response that failed with wire error ``code``:
    ``rate_limit_exceeded`` for ``rate_limited``, else ``server_error`` (OpenAI's codes name its
    own failures: images, policies...; the rest of wsserve's are the server's)."""
    return "rate_limit_exceeded" if code == "rate_limited" else "server_error"


def _part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}
