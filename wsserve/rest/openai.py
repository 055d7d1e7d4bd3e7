"""OpenAI-compatible completions (``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/models?format=openai``), sans-I/O.

- :func:`parse_completion` - a request body into :class:`Completion` (the
  engine's :class:`~wsserve.protocol.GenerationParams` plus the stream
  options).  OpenAI's defaults apply (``max_tokens`` 16, ``temperature`` 1);
  parameters wsserve cannot honour are refused by name with ``bad_request``
  rather than ignored: ``n``/``best_of`` other than 1,
  ``echo``, ``logprobs``, ``suffix``, vLLM's ``repetition_penalty``,
  token-id
  prompts, several prompts.  ``top_p`` (nucleus sampling, in (0, 1] as vLLM
  takes it), vLLM's ``min_p`` (in [0, 1]), ``presence_penalty`` and ``frequency_penalty`` (in [-2, 2]),
  ``logit_bias`` (token ids of the model's vocabulary) and
  ``top_k`` (an extension several servers accept; -1 is off) are taken;
  ``user`` and unknown fields are ignored.
- :func:`parse_chat_completion` - the same for a chat: ``messages``
  (:mod:`wsserve.chat`) instead of ``prompt``, ``max_completion_tokens``, and
  tools, audio, logprobs, JSON output and per-request templates refused by name.
- :class:`CompletionEncoder` - the response object, and the Server-Sent Events
  of a streamed one: one ``text_completion`` chunk per token, a last chunk with
  ``finish_reason``, an optional usage chunk, then ``data: [DONE]``;
  :class:`ChatCompletionEncoder` - the same in ``chat.completion`` shapes.
- :func:`models_list` - the OpenAI list shape of the served models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson

from ..chat import ChatMessage, parse_messages
from ..errors import BadRequest, WsserveError
from ..jsontypes import described, json_type
from ..protocol import (
    MAX_MODEL_NAME_LENGTH,
    MAX_TEMPERATURE,
    SAMPLING_FIELDS,
    GenerationParams,
    logit_bias_tuple,
    sampling_fields,
    stop_tuple,
)
from .errors import error_response

__all__ = ["ChatCompletionEncoder", "Completion", "CompletionEncoder", "DONE", "ParamError", "error_event",
           "models_list", "parse_chat_completion", "parse_completion"]

#: The event that ends a stream.
DONE = b"data: [DONE]\n\n"

#: Sent as is when the field holds one of these (OpenAI's defaults / "off").
_NEUTRAL = {
    "n": (None, 1), "best_of": (None, 1), "echo": (None, False), "logprobs": (None,), "suffix": (None, ""),
    "repetition_penalty": (None, 1, 1.0),
}
#: The same for chat completions (tools and audio off; ``chat_template``, vLLM's per-request
#: template, refused: the model's own template applies).
_NEUTRAL_CHAT = {
    "n": (None, 1), "logprobs": (None, False), "top_logprobs": (None, 0), "repetition_penalty": (None, 1, 1.0),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,), "chat_template": (None,),
}


class ParamError(BadRequest):
    """A refused request field; ``param`` names it (OpenAI's error envelope carries it)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Completion:
    """A checked completion request."""

    model: str
    params: GenerationParams
    stream: bool
    include_usage: bool  # stream_options.include_usage: a usage chunk before [DONE]
    #: A chat completion's conversation (``params.prompt`` is then empty until :meth:`with_prompt`).
    messages: tuple[ChatMessage, ...] | None = None

    def with_prompt(self, prompt: str) -> Completion:
        """The same request generating from ``prompt`` (a chat's, from the model's template)."""
        return replace(self, params=replace(self.params, prompt=prompt))


def parse_completion(obj: Any, *, max_tokens_limit: int) -> Completion:
    """Check a decoded ``/v1/completions`` body; raises :class:`ParamError` (a ``BadRequest``)
    naming the field."""
    model = _model(obj)
    prompt = obj.get("prompt")
    if type(prompt) is list:
        if len(prompt) == 1 and type(prompt[0]) is str:
            prompt = prompt[0]
        elif prompt and all(type(p) is str for p in prompt):
            raise ParamError("prompt", "one prompt per request: a list of several prompts is not supported")
        else:
            raise ParamError("prompt", "'prompt' must be a string (token-id prompts are not supported)")
    if type(prompt) is not str:
        raise ParamError("prompt", f"'prompt' must be a string, got {json_type(prompt)}")
    _refuse_unsupported(obj, _NEUTRAL)
    max_tokens = _max_tokens(obj, "max_tokens", min(16, max_tokens_limit), max_tokens_limit)
    return _completion(obj, model, prompt, max_tokens, None)


def parse_chat_completion(obj: Any, *, max_tokens_limit: int) -> Completion:
    """Check a decoded ``/v1/chat/completions`` body; raises :class:`ParamError` naming the field.

    The result's ``params.prompt`` is empty: the served model's chat template makes the prompt
    from ``messages`` (:meth:`Completion.with_prompt`).  ``max_completion_tokens`` (or the older
    ``max_tokens``) defaults to ``max_tokens_limit``, as vLLM's default is what the context
    leaves: a chat ends at a stop string or the limit."""
    model = _model(obj)
    try:
        messages = parse_messages(obj.get("messages"))
    except BadRequest as exc:
        raise ParamError("messages", exc.message) from None
    _refuse_unsupported(obj, _NEUTRAL_CHAT)
    fmt = obj.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise ParamError("response_format", "'response_format' is not supported (only {\"type\": \"text\"}): "
                                            "wsserve does not constrain output to JSON")
    max_tokens = _max_tokens(obj, "max_completion_tokens", None, max_tokens_limit)
    if max_tokens is None:
        max_tokens = _max_tokens(obj, "max_tokens", max_tokens_limit, max_tokens_limit)
    return _completion(obj, model, "", max_tokens, messages)


def _model(obj: Any) -> str:
    if type(obj) is not dict:
        raise BadRequest(f"the body must be a JSON object, got {json_type(obj)}")
    model = obj.get("model")
    if type(model) is not str or not 0 < len(model) <= MAX_MODEL_NAME_LENGTH:
        raise ParamError("model", f"'model' must be a string of 1 to {MAX_MODEL_NAME_LENGTH} characters")
    return model


def _refuse_unsupported(obj: dict[str, Any], neutral: dict[str, tuple[Any, ...]]) -> None:
    """Refuse, by name, a field holding anything but one of its neutral values."""
    for name, values in neutral.items():
        value = obj.get(name)
        if value is not None and not any(value == v and type(value) is type(v) for v in values if v is not None):
            shown = repr(value)
            raise ParamError(name, f"'{name}' is not supported (only its default); got "
                                   f"{shown if len(shown) <= 80 else shown[:77] + '...'}")


def _max_tokens(obj: dict[str, Any], name: str, default: int | None, limit: int) -> int | None:
    value = obj.get(name)
    if value is None:
        return default
    if type(value) is not int or not 1 <= value <= limit:
        raise ParamError(name, f"'{name}' must be an integer in [1, {limit}], got {value!r}")
    return value


def _completion(obj: dict[str, Any], model: str, prompt: str, max_tokens: int,
                messages: tuple[ChatMessage, ...] | None) -> Completion:
    """The sampling and streaming fields both endpoints share, checked, and the result."""
    try:
        logit_bias = logit_bias_tuple(obj.get("logit_bias"))
    except BadRequest as exc:
        raise ParamError("logit_bias", exc.message) from None
    temperature = obj.get("temperature")
    if temperature is None:
        temperature = 1.0
    elif type(temperature) not in (int, float) or not 0 <= temperature <= MAX_TEMPERATURE:
        raise ParamError("temperature", f"'temperature' must be a number in [0, {MAX_TEMPERATURE:g}], got {temperature!r}")
    top_k = obj.get("top_k")
    if top_k is None or top_k == -1:  # -1: "off", as vLLM spells it
        top_k = 0
    seed = obj.get("seed")
    if seed is not None and type(seed) is not int:
        raise ParamError("seed", f"'seed' must be an integer, got {described(seed)}")
    stop = stop_tuple(obj.get("stop"))
    if stop is None:
        raise ParamError("stop", f"'stop' must be a string or an array of strings, got {json_type(obj.get('stop'))}")
    stream = obj.get("stream")
    if stream is None:
        stream = False
    elif type(stream) is not bool:
        raise ParamError("stream", f"'stream' must be a boolean, got {json_type(stream)}")
    include_usage = False
    options = obj.get("stream_options")
    if options is not None:
        if type(options) is not dict:
            raise ParamError("stream_options", "'stream_options' must be an object")
        if not stream:
            raise ParamError("stream_options", "'stream_options' is only allowed with 'stream': true")
        include_usage = options.get("include_usage")
        if include_usage is None:
            include_usage = False
        elif type(include_usage) is not bool:
            raise ParamError("stream_options", "'stream_options.include_usage' must be a boolean, "
                                               f"got {json_type(include_usage)}")
    try:
        params = GenerationParams(
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=float(temperature),
            top_k=top_k,
            logit_bias=logit_bias,
            **sampling_fields(obj),
            seed=seed & 0xFFFF_FFFF_FFFF_FFFF if seed is not None else None,
            stop=stop,
        )
    except BadRequest as exc:  # GenerationParams names the field as 'field ...'
        named = ("top_k", *SAMPLING_FIELDS, "logit_bias", "stop", "prompt")
        field = next((f for f in named if f"'{f}'" in exc.message), None)
        raise ParamError(field or "", exc.message) from None
    return Completion(model=model, params=params, stream=stream, include_usage=include_usage, messages=messages)


class CompletionEncoder:
    """Bodies and events of one completion (``id``: ``cmpl-...``; ``created``: Unix seconds).

    ``usage`` counts tokens: ``prompt_tokens`` is the number of token ids the model was given
    for the prompt (the generation's ``Sequence.prompt_tokens``), ``tokens`` the tokens sent."""

    __slots__ = ("_head", "_token_prefix")

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self._head = (b'{"id":' + orjson.dumps(completion_id) + b',"object":"text_completion","created":'
                      + str(created).encode() + b',"model":' + orjson.dumps(model))
        self._token_prefix = b"data: " + self._head + b',"choices":[{"text":'

    @staticmethod
    def _usage(prompt_tokens: int, tokens: int) -> bytes:
        return (b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}'
                % (prompt_tokens, tokens, prompt_tokens + tokens))

    def start_events(self) -> bytes:
        """What a stream begins with before its first token (nothing, for a text completion)."""
        return b""

    @staticmethod
    def error_event(exc: WsserveError) -> bytes:
        """An error after the stream started (see :func:`error_event`)."""
        return error_event(error_response(exc, "openai").body)

    def response(self, text: str, finish_reason: str, prompt_tokens: int, tokens: int) -> bytes:
        """The whole (non-streamed) response."""
        return (self._head + b',"choices":[{"text":' + orjson.dumps(text) + b',"index":0,"logprobs":null,'
                b'"finish_reason":' + orjson.dumps(finish_reason) + b"}]," + self._usage(prompt_tokens, tokens)
                + b"}")

    def token_event(self, text: str) -> bytes:
        """One streamed token as an SSE event."""
        return self._token_prefix + orjson.dumps(text) + b',"index":0,"logprobs":null,"finish_reason":null}]}\n\n'

    def final_events(self, finish_reason: str, prompt_tokens: int, tokens: int, include_usage: bool) -> bytes:
        """The chunk carrying ``finish_reason``, the usage chunk if asked, and ``[DONE]``."""
        out = (self._token_prefix + b'"","index":0,"logprobs":null,"finish_reason":'
               + orjson.dumps(finish_reason) + b"}]}\n\n")
        if include_usage:
            out += b"data: " + self._head + b',"choices":[],' + self._usage(prompt_tokens, tokens) + b"}\n\n"
        return out + DONE


class ChatCompletionEncoder:
    """Bodies and events of one chat completion (``id``: ``chatcmpl-...``), as OpenAI's:

    - the response: ``{"object": "chat.completion", "choices": [{"index": 0, "message": {"role":
      "assistant", "content": ...}, "logprobs": null, "finish_reason": ...}], "usage": {...}}``;
    - a stream: ``chat.completion.chunk`` events: first ``"delta": {"role": "assistant", "content":
      ""}``, then ``"delta": {"content": token}`` per token, then ``"delta": {}`` with the
      ``finish_reason``, the usage chunk (``"choices": []``) if asked, and ``[DONE]``."""

    __slots__ = ("_head", "_chunk", "_token_prefix")

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        tail = b',"created":' + str(created).encode() + b',"model":' + orjson.dumps(model)
        self._head = b'{"id":' + orjson.dumps(completion_id) + b',"object":"chat.completion"' + tail
        self._chunk = b'data: {"id":' + orjson.dumps(completion_id) + b',"object":"chat.completion.chunk"' + tail
        self._token_prefix = self._chunk + b',"choices":[{"index":0,"delta":{"content":'

    error_event = CompletionEncoder.error_event

    def start_events(self) -> bytes:
        """The first chunk: the reply's role."""
        return (self._chunk + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}]}\n\n')

    def response(self, text: str, finish_reason: str, prompt_tokens: int, tokens: int) -> bytes:
        """The whole (non-streamed) response."""
        return (self._head + b',"choices":[{"index":0,"message":{"role":"assistant","content":' + orjson.dumps(text)
                + b'},"logprobs":null,"finish_reason":' + orjson.dumps(finish_reason) + b"}],"
                + CompletionEncoder._usage(prompt_tokens, tokens) + b"}")

    def token_event(self, text: str) -> bytes:
        """One streamed token as an SSE event."""
        return self._token_prefix + orjson.dumps(text) + b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def final_events(self, finish_reason: str, prompt_tokens: int, tokens: int, include_usage: bool) -> bytes:
        """The chunk carrying ``finish_reason``, the usage chunk if asked, and ``[DONE]``."""
        out = (self._chunk + b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":'
               + orjson.dumps(finish_reason) + b"}]}\n\n")
        if include_usage:
            out += self._chunk + b',"choices":[],' + CompletionEncoder._usage(prompt_tokens, tokens) + b"}\n\n"
        return out + DONE


def error_event(body: bytes) -> bytes:
    """An error after the stream started: OpenAI clients raise on an event holding ``error``."""
    return b"data: " + body + b"\n\n" + DONE


def models_list(names: list[str], created: int) -> bytes:
    """``GET /v1/models?format=openai``: ``{"object": "list", "data": [{"id", "object", "created", "owned_by"}]}``."""
    return orjson.dumps({
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "wsserve"} for name in names],
    })
