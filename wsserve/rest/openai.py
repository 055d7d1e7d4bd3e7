"""OpenAI-compatible completions (``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/models?format=openai``), sans-I/O.

- :func:`parse_completion` - a request body into :class:`Completion` (the
  engine's :class:`~wsserve.protocol.GenerationParams` plus the stream
  options).  OpenAI's defaults apply (``max_tokens`` 16, ``temperature`` 1);
  parameters wsserve cannot honour are refused by name with ``bad_request``
  rather than ignored: ``best_of`` other than ``n``,
  ``suffix``, and vLLM's fields for what wsserve does not
  do (beam search, grammar-guided decoding, ``prompt_logprobs``...: :data:`NEUTRAL_VLLM`).  ``top_p`` (nucleus sampling, in (0, 1] as vLLM
  takes it), vLLM's ``min_p`` (in [0, 1]), ``presence_penalty`` and ``frequency_penalty`` (in [-2, 2]),
  ``logit_bias`` (token ids of the model's vocabulary) and
  ``top_k`` (an extension several servers accept; -1 is off) are taken, and
  ``logprobs`` (0 to :data:`~wsserve.protocol.MAX_LOGPROBS` likeliest alternatives per token,
  as vLLM takes it; OpenAI's own limit is 5), and ``echo`` (the prompt before the generated
  text; with ``logprobs``, the prompt's own tokens are scored too: the first one's values are
  null, as OpenAI's), and ``n`` (1 to :data:`MAX_N` choices, each a generation of its own; with a
  ``seed``, choice ``i`` is seeded ``seed + i``, so choice 0 is the answer to ``n: 1``), and a
  list of prompts (as vLLM: prompt ``a``'s choices are indexes ``a * n`` to ``a * n + n - 1``; at
  most :data:`MAX_CHOICES` choices in all), and token-id prompts (a list of ids, or a list of such
  lists: the ids go to the model as they are; their bounds, the model's vocabulary and
  ``prompt_chars``, are checked once the model is known), and ``max_tokens: 0`` with ``echo``
  (:attr:`Completion.echo_only`: the prompt, scored with ``logprobs``, nothing generated), and
  vLLM's stop controls (both endpoints): ``stop_token_ids`` (token ids of the model's vocabulary,
  at most :data:`~wsserve.protocol.MAX_STOP_TOKEN_IDS`: the generation ends with
  ``finish_reason`` ``stop`` at one of them, whose text is not sent), ``min_tokens`` (0 to
  ``max_tokens``: no stop within the first ones) and ``include_stop_str_in_output`` (the stop
  string or token text is sent, and nothing after it), as the WebSocket ``generate`` takes them
  (:class:`~wsserve.protocol.GenerationParams`), and guided decoding (:func:`guided_fields`):
  vLLM's ``guided_choice``, ``guided_regex``, ``guided_json`` (or its newer spelling
  ``structured_outputs: {"choice" | "regex" | "json": ...}``) and OpenAI's ``response_format``
  (``json_schema`` or ``json_object``), one of them per request;
  ``user`` and unknown fields are ignored.
- :func:`parse_chat_completion` - the same for a chat: ``messages``
  (:mod:`wsserve.chat`, tool calls and results taken) instead of ``prompt``,
  ``max_completion_tokens``, and ``logprobs`` (a boolean) with ``top_logprobs`` (0 to 20), and
  ``tools`` with a named or ``"required"`` ``tool_choice`` (a forced tool call by guided
  decoding, :mod:`wsserve.rest.tools`; answered by :class:`~wsserve.rest.toolcalls.ToolCallEncoder`),
  and audio, OpenAI's old ``functions`` and per-request templates refused by name.
- :class:`CompletionEncoder` - the response object, and the Server-Sent Events
  of a streamed one: one ``text_completion`` chunk per token, a last chunk with
  ``finish_reason``, an optional usage chunk, then ``data: [DONE]``;
  :class:`ChatCompletionEncoder` - the same in ``chat.completion`` shapes.  With logprobs, each
  token's chunk (and the response) carries them in the endpoint's shape: ``{"tokens",
  "token_logprobs", "top_logprobs", "text_offset"}`` for a completion (``text_offset`` counts
  characters of the generated text, from 0, as vLLM does without ``echo``; ``top_logprobs`` maps
  the likeliest tokens' texts, and the chosen one's, to their log-probabilities), ``{"content":
  [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}`` for a
  chat.  The values are the model's raw log-probabilities (:mod:`wsserve.generation.logprobs`).
- :func:`models_list` - the OpenAI list shape of the served models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from ..chat import ChatMessage, parse_messages
from ..errors import BadRequest, WsserveError
from ..generation.logprobs import MAX_SCORED_VALUES, TokenLogprobs
from ..jsontypes import described, json_type, shown
from ..protocol import (
    MAX_LOGPROBS,
    MAX_MODEL_NAME_LENGTH,
    MAX_TEMPERATURE,
    SAMPLING_FIELDS,
    STOP_FIELDS,
    GenerationParams,
    guided_choice_tuple,
    logit_bias_tuple,
    sampling_fields,
    schema_text,
    stop_fields,
    stop_tuple,
)
from .errors import ParamError, error_response
from .tools import ToolChoice, parse_tool_choice

__all__ = ["ChatCompletionEncoder", "Choice", "Completion", "CompletionEncoder", "DONE", "MAX_CHOICES", "MAX_N", "NEUTRAL_VLLM", "ParamError",
           "completion_of", "error_event", "fit_default_max_tokens", "guided_fields", "is_neutral", "kept_logprob_values", "max_tokens_field", "model_field", "models_list",
           "parse_chat_completion", "parse_completion", "refuse_unsupported", "token_logprobs"]

#: The event that ends a stream.
DONE = b"data: [DONE]\n\n"

#: Sent as is when the field holds one of these (OpenAI's defaults / "off").
#: ``n``: at most this many choices per prompt (each is a generation of its own in the batch).
MAX_N = 16
#: At most this many choices per request: prompts x ``n`` (a list of prompts, as vLLM takes it).
MAX_CHOICES = 256

#: vLLM's extra sampling and output fields wsserve does not do, both endpoints: beam search,
#: guided decoding by a grammar (``guided_grammar``; a choice, a regex and a JSON Schema are taken:
#: :func:`guided_fields`), per-request logits processors, banned words, a token allowlist,
#: prompt truncation, prompt logprobs, token ids in place of token texts, and scheduling priority
#: (vLLM's lower-is-first integer; wsserve's WebSocket ``priority`` is 0 or 1).  vLLM's
#: ``ignore_eos``, ``skip_special_tokens``, ``spaces_between_special_tokens`` and
#: ``add_special_tokens`` are taken whatever their value: wsserve's models have no end-of-sequence
#: or special tokens (a generation ends by length or a stop), so there is nothing for them to change.
NEUTRAL_VLLM = {
    "use_beam_search": (None, False), "length_penalty": (None, 1, 1.0), "early_stopping": (None, False),
    "guided_grammar": (None,),
    "guided_decoding_backend": (None,), "guided_whitespace_pattern": (None,),
    "logits_processors": (None, []), "bad_words": (None, []), "allowed_token_ids": (None,),
    "truncate_prompt_tokens": (None,), "prompt_logprobs": (None,), "return_tokens_as_token_ids": (None, False),
    "priority": (None, 0),
}
_NEUTRAL = {
    "suffix": (None, ""), **NEUTRAL_VLLM,
}
#: The same for chat completions (OpenAI's old ``functions`` and audio off; ``chat_template``,
#: vLLM's per-request template, refused: the model's own template applies).
_NEUTRAL_CHAT = {
    "functions": (None, []), "function_call": (None, "none"),  # (tools and tool_choice: .tools)
    "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,), "chat_template": (None,),
    # vLLM's chat-template controls: a model's chat_prompt() makes only the prompt a reply continues
    "add_generation_prompt": (None, True), "continue_final_message": (None, False), "echo": (None, False),
    "chat_template_kwargs": (None, {}), "documents": (None,), "mm_processor_kwargs": (None, {}),
    **NEUTRAL_VLLM,
}


@dataclass(frozen=True, slots=True)
class Completion:
    """A checked completion request."""

    model: str
    params: GenerationParams
    stream: bool
    include_usage: bool  # stream_options.include_usage: a usage chunk before [DONE]
    #: A chat completion's conversation (``params.prompt`` is then empty until :meth:`with_prompt`).
    messages: tuple[ChatMessage, ...] | None = None
    #: ``/v1/completions``' ``echo``: the answer's text begins with the prompt.
    echo: bool = False
    #: Choices to generate (``n``) per prompt: each a generation of its own, choice ``i`` seeded ``seed + i``.
    n: int = 1
    #: ``/v1/completions``' list of several prompts (``params.prompt`` is the first); empty: one prompt.
    #: Prompt ``a``'s choices have indexes ``a * n`` to ``a * n + n - 1``, as vLLM's.
    prompts: tuple[str, ...] = ()
    #: ``/v1/completions``' token-id prompts (one tuple of ids per prompt); empty: text prompts.
    #: Their texts (:attr:`prompts`, for ``echo``) are the model's, set by :meth:`with_prompt_texts`.
    prompt_ids: tuple[tuple[int, ...], ...] = ()
    #: ``max_tokens: 0`` with ``echo``: nothing is generated, each choice is its prompt (scored
    #: with ``logprobs``), finish reason ``length`` (OpenAI's legacy scoring form).
    echo_only: bool = False
    #: A chat's forced tool call (``tool_choice`` named or ``"required"``): the generation follows
    #: its schema (``params.guided_json``) and is answered as ``tool_calls`` (:mod:`.toolcalls`).
    tool_choice: ToolChoice | None = None

    def with_prompt(self, prompt: str) -> Completion:
        """The same request generating from ``prompt`` (a chat's, from the model's template)."""
        return replace(self, params=replace(self.params, prompt=prompt))

    def with_prompt_texts(self, texts: tuple[str, ...]) -> Completion:
        """Token-id prompts with their texts (the served model's tokens, joined)."""
        return replace(self, prompts=texts)


def parse_completion(obj: Any, *, max_tokens_limit: int) -> Completion:
    """Check a decoded ``/v1/completions`` body; raises :class:`ParamError` (a ``BadRequest``)
    naming the field."""
    model = model_field(obj)
    prompt = obj.get("prompt")
    prompts: tuple[str, ...] = ()
    prompt_ids: tuple[tuple[int, ...], ...] = ()
    if type(prompt) is list:
        several = bool(prompt) and type(prompt[0]) in (str, list)
        if several and len(prompt) > MAX_CHOICES:  # counted before the prompts are read
            raise ParamError("prompt", f"'prompt' holds {len(prompt)} prompts; at most {MAX_CHOICES} per request "
                                       "(each is one choice or more)")
        if prompt and all(type(p) is str for p in prompt):
            prompts = tuple(prompt)
            prompt = prompt[0]
        elif prompt and type(prompt[0]) is not str and type(prompt[0]) is not list:  # one token-id prompt
            prompt_ids = (_token_ids(prompt, None),)
            prompt = ""
        elif prompt and all(type(p) is list for p in prompt):  # several
            prompt_ids = tuple(_token_ids(p, i) for i, p in enumerate(prompt))
            prompt = ""
        else:
            raise ParamError("prompt", "'prompt' must be a string, a non-empty list of strings, a list of token ids "
                                       "or a list of lists of token ids, got "
                                       f"{'an empty list' if not prompt else 'a list holding other values'}")
    if type(prompt) is not str:
        raise ParamError("prompt", f"'prompt' must be a string, got {json_type(prompt)}")
    refuse_unsupported(obj, _NEUTRAL)
    echo = obj.get("echo")
    if echo is not None and type(echo) is not bool:
        raise ParamError("echo", f"'echo' must be a boolean, got {json_type(echo)}")
    echo_only = bool(echo) and obj.get("max_tokens") == 0 and type(obj.get("max_tokens")) is int
    max_tokens = 1 if echo_only else max_tokens_field(obj, "max_tokens", min(16, max_tokens_limit), max_tokens_limit,
                                                      zero="'echo': true")
    if echo_only and (guided := guided_fields(obj, response_format=True)):
        field = guided.get("guided_field") or next(k for k in ("guided_choice", "guided_regex", "guided_json")
                                                   if k in guided)
        raise ParamError(field, f"'{field}' needs a generation; 'max_tokens': 0 with 'echo' generates nothing")
    if echo_only and obj.get("min_tokens") not in (None, 0):
        raise ParamError("min_tokens", "'min_tokens' must be 0 with 'max_tokens': 0 (nothing is generated), "
                                       f"got {shown(obj.get('min_tokens'), 40)}")
    best_of = obj.get("best_of")
    n = _n(obj)
    if best_of is not None and best_of != n:
        raise ParamError("best_of", f"'best_of' is not supported other than equal to 'n' ({n}): wsserve returns "
                                    f"every choice it generates; got {shown(best_of)}")
    count = len(prompt_ids) or len(prompts)
    if count * n > MAX_CHOICES:
        raise ParamError("prompt", f"{count} prompts x n={n} make {count * n} choices; at most "
                                   f"{MAX_CHOICES} per request")
    completion = replace(completion_of(obj, model, prompt, max_tokens, None, obj.get("logprobs")), echo=bool(echo), n=n,
                         echo_only=echo_only, prompt_ids=prompt_ids)
    return replace(completion, prompts=prompts) if len(prompts) > 1 else completion


def _token_ids(ids: list[Any], index: int | None) -> tuple[int, ...]:
    """One token-id prompt (``index``: its place in a list of them), each id a non-negative
    integer; its upper bounds (the vocabulary, the model's length) are checked when it is queued."""
    where = "'prompt'" if index is None else f"'prompt[{index}]'"
    if not ids:
        raise ParamError("prompt", f"{where} must not be an empty list of token ids")
    for i in ids:
        if type(i) is not int or i < 0:
            raise ParamError("prompt", f"{where} must hold token ids (non-negative integers), got "
                                       f"{described(i) if type(i) is float else shown(i, 40)}")
    return tuple(ids)


def parse_chat_completion(obj: Any, *, max_tokens_limit: int) -> Completion:
    """Check a decoded ``/v1/chat/completions`` body; raises :class:`ParamError` naming the field.

    The result's ``params.prompt`` is empty: the served model's chat template makes the prompt
    from ``messages`` (:meth:`Completion.with_prompt`).  ``max_completion_tokens`` (or the older
    ``max_tokens``) defaults to ``max_tokens_limit``, as vLLM's default is what the context
    leaves: a chat ends at a stop string or the limit."""
    model = model_field(obj)
    try:
        messages = parse_messages(obj.get("messages"), tools=True)
    except BadRequest as exc:
        raise ParamError("messages", exc.message) from None
    refuse_unsupported(obj, _NEUTRAL_CHAT)
    tool_choice = parse_tool_choice(obj)
    max_tokens = max_tokens_field(obj, "max_completion_tokens", None, max_tokens_limit)
    older = max_tokens_field(obj, "max_tokens", max_tokens_limit, max_tokens_limit)  # checked even beside it
    if max_tokens is None:
        max_tokens = older
    completion = completion_of(obj, model, "", max_tokens, messages, _chat_logprobs(obj), tool_choice=tool_choice)
    completion = replace(completion, n=_n(obj), tool_choice=tool_choice)
    if "max_completion_tokens" not in obj and "max_tokens" not in obj:  # (a null one too: the default)
        completion = fit_default_max_tokens(completion)
    return completion


def kept_logprob_values(completion: Completion, choices: int, *, kept_streamed: bool = False) -> int:
    """The log-probability values an answer of ``choices`` choices keeps until it is answered:
    choices x max_tokens x (logprobs + 1) when it is not streamed and asks for logprobs (a streamed
    one keeps none, unless ``kept_streamed``: ``/v1/responses`` keeps them for its ``.done``
    events), else 0.  The HTTP API refuses more than
    :data:`~wsserve.generation.logprobs.MAX_SCORED_VALUES`."""
    k = completion.params.logprobs
    if k is None or (completion.stream and not kept_streamed):
        return 0
    return choices * completion.params.max_tokens * (k + 1)


def fit_default_max_tokens(completion: Completion, *, kept_streamed: bool = False) -> Completion:
    """A chat's (or a response's) ``max_tokens`` the client left to its default, the server's limit,
    lowered to what :func:`kept_logprob_values`' bound leaves (vLLM's default is what the model's
    context leaves), so that such a request is not refused for a limit it did not choose.  A
    ``max_tokens`` the client sent is never changed."""
    if kept_logprob_values(completion, completion.n, kept_streamed=kept_streamed) <= MAX_SCORED_VALUES:
        return completion
    params = completion.params
    assert params.logprobs is not None
    most = MAX_SCORED_VALUES // (completion.n * (params.logprobs + 1))
    return replace(completion, params=replace(params, max_tokens=max(1, most, params.min_tokens)))


def _n(obj: dict[str, Any]) -> int:
    """``n``: the number of choices, 1 to :data:`MAX_N` (default 1)."""
    n = obj.get("n")
    if n is None:
        return 1
    if type(n) is not int or not 1 <= n <= MAX_N:
        raise ParamError("n", f"'n' must be an integer in [1, {MAX_N}] (the choices to generate), got {shown(n)}")
    return n


def _chat_logprobs(obj: dict[str, Any]) -> int | None:
    """A chat's ``logprobs`` (a boolean) and ``top_logprobs`` (0 to :data:`MAX_LOGPROBS`, only
    with ``logprobs: true``, as OpenAI requires) as :class:`GenerationParams`'s ``logprobs``."""
    wanted = obj.get("logprobs")
    if wanted is not None and type(wanted) is not bool:
        raise ParamError("logprobs", f"'logprobs' must be a boolean, got {json_type(wanted)}")
    top = obj.get("top_logprobs")
    if top is not None and (type(top) is not int or not 0 <= top <= MAX_LOGPROBS):
        raise ParamError("top_logprobs", f"'top_logprobs' must be an integer in [0, {MAX_LOGPROBS}], got {shown(top)}")
    if top is not None and not wanted:
        raise ParamError("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    return (top or 0) if wanted else None



def model_field(obj: Any) -> str:
    """The body's ``model`` (the body must be an object); ``ParamError`` naming ``model``."""
    if type(obj) is not dict:
        raise BadRequest(f"the body must be a JSON object, got {json_type(obj)}")
    model = obj.get("model")
    if type(model) is not str or not 0 < len(model) <= MAX_MODEL_NAME_LENGTH:
        raise ParamError("model", f"'model' must be a string of 1 to {MAX_MODEL_NAME_LENGTH} characters")
    return model


def is_neutral(value: Any, allowed: tuple[Any, ...]) -> bool:
    """``value`` (not None) is one of ``allowed``, of the same JSON type (``1`` is not ``true``)."""
    return any(value == v and type(value) is type(v) for v in allowed if v is not None)


def refuse_unsupported(obj: Mapping[str, Any], neutral: dict[str, tuple[Any, ...]]) -> None:
    """Refuse, by name, a field holding anything but one of its neutral values (:class:`ParamError`:
    "'<name>' is not supported (only its default)"; the OpenAI routes' and Triton's generate's)."""
    for name, values in neutral.items():
        value = obj.get(name)
        if value is not None and not is_neutral(value, values):
            raise ParamError(name, f"'{name}' is not supported (only its default); got {shown(value, 80)}")


def max_tokens_field(obj: dict[str, Any], name: str, default: int | None, limit: int, zero: str = "") -> int | None:
    """``obj[name]`` in [1, ``limit``], else ``default`` when absent; ``zero``: the condition
    under which 0 is allowed (named in the error; the caller handles it)."""
    value = obj.get(name)
    if value is None:
        return default
    if type(value) is not int or not 1 <= value <= limit:
        when = f" (0 only with {zero})" if zero else ""
        raise ParamError(name, f"'{name}' must be an integer in [1, {limit}]{when}, got {shown(value, 40)}")
    return value


def completion_of(obj: dict[str, Any], model: str, prompt: str, max_tokens: int,
                  messages: tuple[ChatMessage, ...] | None, logprobs: int | None, *,
                  tool_choice: ToolChoice | None = None) -> Completion:
    """The sampling and streaming fields the OpenAI routes share, checked, and the result (the
    Responses API's parser, :mod:`wsserve.rest.responses`, gives it only the fields it takes).
    ``tool_choice``: the generation follows its schema (``guided_field`` ``tool_choice``); a
    guided decoding form besides is refused naming both."""
    try:
        logit_bias = logit_bias_tuple(obj.get("logit_bias"))
    except BadRequest as exc:
        raise ParamError("logit_bias", exc.message) from None
    temperature = obj.get("temperature")
    if temperature is None:
        temperature = 1.0
    elif type(temperature) not in (int, float) or not 0 <= temperature <= MAX_TEMPERATURE:
        raise ParamError("temperature", f"'temperature' must be a number in [0, {MAX_TEMPERATURE:g}], got {shown(temperature)}")
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
        if options.get("continuous_usage_stats") not in (None, False):  # vLLM's: usage in every chunk
            raise ParamError("stream_options", "'stream_options.continuous_usage_stats' is not supported: the usage "
                                               "comes once, in the chunk before [DONE] (include_usage)")
    guided = guided_fields(obj, response_format=True)
    if tool_choice is not None:
        if guided:
            other = guided.get("guided_field") or next(k for k in ("guided_choice", "guided_regex", "guided_json")
                                                       if k in guided)
            raise ParamError("tool_choice", f"'tool_choice' and '{other}' cannot both be given: a forced tool call "
                                            "is itself a guided decoding form (its JSON Schema), one per request")
        guided = {"guided_json": tool_choice.schema, "guided_field": "tool_choice"}
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
            logprobs=logprobs,
            **stop_fields(obj),
            **guided,
        )
    except BadRequest as exc:  # GenerationParams names the field as 'field ...'
        named = (guided.get("guided_field") or "", "guided_choice", "guided_regex", "guided_json", "top_k",
                 *SAMPLING_FIELDS, "logit_bias", *STOP_FIELDS, "stop", "prompt", "logprobs")
        # (not the empty name: every message quoting an empty value, "got ''", would match it)
        field = next((f for f in named if f and f"'{f}'" in exc.message), None)
        raise ParamError(field or "", exc.message) from None
    return Completion(model=model, params=params, stream=stream, include_usage=include_usage, messages=messages)


#: ``structured_outputs``' keys wsserve takes (vLLM's other ones, e.g. ``grammar``, are refused by name).
_STRUCTURED_KEYS = ("choice", "regex", "json", "json_object")


def guided_fields(obj: Mapping[str, Any], *, response_format: bool = False,
                  structured: tuple[str, ...] = ("structured_outputs",)) -> dict[str, Any]:
    """The guided decoding a body asks for, as :class:`GenerationParams`'s keyword arguments
    (empty when none): vLLM's ``guided_choice`` (a list of strings), ``guided_regex`` (a string),
    ``guided_json`` (a JSON Schema: an object or a string holding one), its newer spelling
    ``structured_outputs: {"choice" | "regex" | "json": ...}`` (or ``"json_object": true``; the
    ``structured`` fields each hold such an object: Triton's generate adds its vLLM backend's
    ``guided_decoding``), and, with ``response_format``, OpenAI's ``response_format: {"type":
    "json_schema", "json_schema": {"name", "schema", "strict"}}`` or ``{"type": "json_object"}``
    (any JSON object).  At most one of them.  Raises :class:`ParamError` naming the field (both,
    for two forms)."""
    forms: list[tuple[str, str, Any]] = []  # (field, kind, value)
    for name, kind in (("guided_choice", "choice"), ("guided_regex", "regex"), ("guided_json", "json")):
        if obj.get(name) is not None:
            forms.append((name, kind, obj[name]))
    for field in structured:
        forms.extend(_structured_forms(field, obj.get(field)))
    if response_format:
        form = _response_format(obj.get("response_format"))
        if form is not None:
            forms.append(("response_format", "json", form))
    if not forms:
        return {}
    if len(forms) > 1:
        first, second = forms[0][0], forms[1][0]
        what = f"'{first}' twice" if first == second else f"'{first}' and '{second}'"
        raise ParamError(second, f"one guided decoding form per request: {what} were given")
    field, kind, value = forms[0]
    try:
        if kind == "choice":
            return {"guided_choice": guided_choice_tuple(value)}
        if kind == "regex":
            if type(value) is not str or not value:
                raise BadRequest(f"field {field!r} must hold a non-empty regex string, got {shown(value, 40)}")
            return {"guided_regex": value, "guided_field": "" if field == "guided_regex" else field}
        return {"guided_json": schema_text(value, field), "guided_field": "" if field == "guided_json" else field}
    except BadRequest as exc:
        raise ParamError(field, exc.message) from None


def _structured_forms(field: str, structured: Any) -> list[tuple[str, str, Any]]:
    """The guided decoding forms (``(field, kind, value)``) of a ``structured_outputs`` object
    sent as ``field`` (None: none)."""
    if structured is None:
        return []
    if type(structured) is not dict:
        raise ParamError(field, f"'{field}' must be an object, got {json_type(structured)}")
    other = next((k for k, v in structured.items() if k not in _STRUCTURED_KEYS and v is not None), None)
    if other is not None:
        raise ParamError(field, f"'{field}' key {shown(other, 40)} is not supported: wsserve constrains output to "
                                "a choice, a regex or a JSON Schema ('choice', 'regex', 'json', 'json_object')")
    forms = []
    for key in _STRUCTURED_KEYS:
        value = structured.get(key)
        if key == "json_object" and value is not None:
            if value is not True:
                raise ParamError(field, f"'{field}.json_object' must be true (or absent)")
            forms.append((field, "json", _ANY_OBJECT))
        elif value is not None:
            forms.append((field if key != "choice" else "guided_choice", key, value))
    return forms


#: ``{"type": "json_object"}``: any JSON object.
_ANY_OBJECT = {"type": "object"}


def _response_format(fmt: Any) -> Any:
    """OpenAI's ``response_format``: None for text (or absent), else the JSON Schema it asks for."""
    if fmt is None or fmt == {"type": "text"}:
        return None
    kind = fmt.get("type") if type(fmt) is dict else None
    if kind == "json_object":
        return _ANY_OBJECT
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if type(spec) is not dict or type(spec.get("schema")) is not dict:
            raise ParamError("response_format", "'response_format' of type 'json_schema' needs 'json_schema': "
                                                "{\"name\": ..., \"schema\": {...}}")
        return spec["schema"]
    raise ParamError("response_format", "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} "
                                        f"or {{\"type\": \"json_schema\", ...}}, got {shown(fmt, 80)}")


#: One choice of a non-streamed answer: its text, its ``finish_reason`` and, when asked, each
#: token's text and logprobs (a ``None`` record: the first token of an echoed prompt).
Choice = tuple[str, str, "list[tuple[str, TokenLogprobs | None]] | None"]


class CompletionEncoder:
    """Bodies and events of one completion (``id``: ``cmpl-...``; ``created``: Unix seconds) and its
    ``n`` choices (``index`` 0 to n - 1).

    ``usage`` counts tokens: ``prompt_tokens`` is the number of token ids the model was given
    for the prompt (the generation's ``Sequence.prompt_tokens``, counted once whatever ``n``),
    ``tokens`` the tokens generated in all choices, as vLLM counts its output token ids (a stop
    string's and a stop token's included: ``Sequence.completion_tokens``)."""

    __slots__ = ("_head", "_token_prefix", "_offsets")

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self._head = (b'{"id":' + orjson.dumps(completion_id) + b',"object":"text_completion","created":'
                      + str(created).encode() + b',"model":' + orjson.dumps(model))
        self._token_prefix = b"data: " + self._head + b',"choices":[{"text":'
        self._offsets: dict[int, int] = {}  # per choice: characters whose logprobs went out (text_offset)

    @staticmethod
    def _usage(prompt_tokens: int, tokens: int) -> bytes:
        return (b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}'
                % (prompt_tokens, tokens, prompt_tokens + tokens))

    def start_events(self, index: int = 0) -> bytes:
        """What choice ``index`` of a stream begins with (nothing, for a text completion)."""
        return b""

    @staticmethod
    def error_event(exc: WsserveError, prompt_tokens: int | None = None, tokens: int = 0) -> bytes:
        """An error after the stream started (see :func:`error_event`; no usage in it, as vLLM's)."""
        return error_event(error_response(exc, "openai").body)

    def response(self, choices: list[Choice], prompt_tokens: int, tokens: int) -> bytes:
        """The whole (non-streamed) response, its choices in index order."""
        parts = []
        for index, (text, finish_reason, logged) in enumerate(choices):
            logprobs = b"null" if logged is None else self._logprobs(logged, index)
            parts.append(b'{"text":' + orjson.dumps(text) + b',"index":%d,"logprobs":' % index + logprobs
                         + b',"finish_reason":' + orjson.dumps(finish_reason) + b"}")
        return (self._head + b',"choices":[' + b",".join(parts) + b"]," + self._usage(prompt_tokens, tokens) + b"}")

    def token_event(self, text: str, index: int = 0) -> bytes:
        """One streamed token of choice ``index`` as an SSE event."""
        return (self._token_prefix + orjson.dumps(text) + b',"index":%d,"logprobs":null,"finish_reason":null}]}\n\n'
                % index)

    def token_event_logprobs(self, text: str, logprobs: TokenLogprobs, index: int = 0) -> bytes:
        """One streamed token of choice ``index`` with its ``logprobs``."""
        return (self._token_prefix + orjson.dumps(text) + b',"index":%d,"logprobs":' % index
                + self._logprobs([(text, logprobs)], index) + b',"finish_reason":null}]}\n\n')

    def echo_event(self, prompt: str, logged: list[tuple[str, TokenLogprobs | None]] | None, index: int = 0) -> bytes:
        """Choice ``index``'s first chunk with ``echo``: the prompt (and its tokens' logprobs, when asked)."""
        lp = b"null" if logged is None else self._logprobs(logged, index)
        return (self._token_prefix + orjson.dumps(prompt) + b',"index":%d,"logprobs":' % index + lp
                + b',"finish_reason":null}]}\n\n')

    def _logprobs(self, logged: list[tuple[str, TokenLogprobs | None]], index: int) -> bytes:
        """The legacy completions ``logprobs`` object of ``logged`` tokens of choice ``index``, after
        those already sent (a ``None`` record, the first token of an echoed prompt: null values)."""
        offsets = []
        offset = self._offsets.get(index, 0)
        for text, _ in logged:
            offsets.append(offset)
            offset += len(text)
        self._offsets[index] = offset
        top: list[dict[str, float] | None] = []
        for _, record in logged:
            if record is None:
                top.append(None)
                continue
            alternatives = {t: lp for _, t, lp in record.top}
            alternatives.setdefault(record.text, record.logprob)  # the chosen token is always there
            top.append(alternatives)
        return orjson.dumps({"tokens": [text for text, _ in logged],
                             "token_logprobs": [None if record is None else record.logprob for _, record in logged],
                             "top_logprobs": top, "text_offset": offsets})

    def choice_end_event(self, finish_reason: str, index: int = 0, unsent: int = 0) -> bytes:
        """The chunk carrying choice ``index``'s ``finish_reason``."""
        return (self._token_prefix + b'"","index":%d,"logprobs":null,"finish_reason":' % index
                + orjson.dumps(finish_reason) + b"}]}\n\n")

    def tail_events(self, prompt_tokens: int, tokens: int, include_usage: bool) -> bytes:
        """What a stream ends with after every choice's end: the usage chunk if asked, and ``[DONE]``."""
        if include_usage:
            return b"data: " + self._head + b',"choices":[],' + self._usage(prompt_tokens, tokens) + b"}\n\n" + DONE
        return DONE


class ChatCompletionEncoder:
    """Bodies and events of one chat completion (``id``: ``chatcmpl-...``) and its ``n`` choices, as OpenAI's:

    - the response: ``{"object": "chat.completion", "choices": [{"index": 0, "message": {"role":
      "assistant", "content": ...}, "logprobs": null, "finish_reason": ...}], "usage": {...}}``;
    - a stream: ``chat.completion.chunk`` events: per choice first ``"delta": {"role": "assistant",
      "content": ""}``, then ``"delta": {"content": token}`` per token, then ``"delta": {}`` with the
      ``finish_reason``; after every choice's end the usage chunk (``"choices": []``) if asked, and ``[DONE]``."""

    __slots__ = ("_head", "_chunk", "_token_prefix")

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        tail = b',"created":' + str(created).encode() + b',"model":' + orjson.dumps(model)
        self._head = b'{"id":' + orjson.dumps(completion_id) + b',"object":"chat.completion"' + tail
        self._chunk = b'data: {"id":' + orjson.dumps(completion_id) + b',"object":"chat.completion.chunk"' + tail
        self._token_prefix = self._chunk + b',"choices":[{"index":'

    # (a class attribute's lookup unwraps the staticmethod: wrapped again, or it binds ``self`` as ``exc``)
    error_event = staticmethod(CompletionEncoder.error_event)

    def start_events(self, index: int = 0) -> bytes:
        """Choice ``index``'s first chunk: the reply's role."""
        return (self._chunk + b',"choices":[{"index":%d,"delta":{"role":"assistant","content":""},' % index
                + b'"logprobs":null,"finish_reason":null}]}\n\n')

    def response(self, choices: list[Choice], prompt_tokens: int, tokens: int) -> bytes:
        """The whole (non-streamed) response, its choices in index order."""
        parts = []
        for index, (text, finish_reason, logged) in enumerate(choices):
            logprobs = b"null" if logged is None else _chat_logprobs_json(logged)  # type: ignore[arg-type]
            parts.append(b'{"index":%d,"message":{"role":"assistant","content":' % index + orjson.dumps(text)
                         + b'},"logprobs":' + logprobs + b',"finish_reason":' + orjson.dumps(finish_reason) + b"}")
        return (self._head + b',"choices":[' + b",".join(parts) + b"],"
                + CompletionEncoder._usage(prompt_tokens, tokens) + b"}")

    def token_event(self, text: str, index: int = 0) -> bytes:
        """One streamed token of choice ``index`` as an SSE event."""
        return (self._token_prefix + b'%d,"delta":{"content":' % index + orjson.dumps(text)
                + b'},"logprobs":null,"finish_reason":null}]}\n\n')

    def token_event_logprobs(self, text: str, logprobs: TokenLogprobs, index: int = 0) -> bytes:
        """One streamed token of choice ``index`` with its ``logprobs``."""
        return (self._token_prefix + b'%d,"delta":{"content":' % index + orjson.dumps(text) + b'},"logprobs":'
                + _chat_logprobs_json([(text, logprobs)]) + b',"finish_reason":null}]}\n\n')

    def choice_end_event(self, finish_reason: str, index: int = 0, unsent: int = 0) -> bytes:
        """The chunk carrying choice ``index``'s ``finish_reason``."""
        return (self._chunk + b',"choices":[{"index":%d,"delta":{},"logprobs":null,"finish_reason":' % index
                + orjson.dumps(finish_reason) + b"}]}\n\n")

    def tail_events(self, prompt_tokens: int, tokens: int, include_usage: bool) -> bytes:
        """What a stream ends with after every choice's end: the usage chunk if asked, and ``[DONE]``."""
        if include_usage:
            return self._chunk + b',"choices":[],' + CompletionEncoder._usage(prompt_tokens, tokens) + b"}\n\n" + DONE
        return DONE


def token_logprobs(logged: Iterable[tuple[str, TokenLogprobs]], *, with_bytes: bool = True) -> list[dict[str, Any]]:
    """OpenAI's per-token logprobs: ``[{"token", "logprob", "bytes", "top_logprobs": [{"token",
    "logprob", "bytes"}]}]`` (``bytes``: the token's UTF-8 bytes), one entry per ``(text, record)``
    of ``logged``, the alternatives likeliest first.  A chat's ``logprobs.content`` and the
    Responses API's ``output_text`` part's ``logprobs``; ``with_bytes`` false: the Responses API's
    streamed ``response.output_text.delta``/``.done`` events' shape, which has no ``bytes``."""
    if with_bytes:
        return [{"token": text, "logprob": record.logprob, "bytes": list(text.encode()),
                 "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for _, t, lp in record.top]}
                for text, record in logged]
    return [{"token": text, "logprob": record.logprob,
             "top_logprobs": [{"token": t, "logprob": lp} for _, t, lp in record.top]}
            for text, record in logged]


def _chat_logprobs_json(logged: list[tuple[str, TokenLogprobs]]) -> bytes:
    """A chat choice's ``logprobs``: ``{"content": [...]}`` (:func:`token_logprobs`)."""
    return orjson.dumps({"content": token_logprobs(logged)})


def error_event(body: bytes) -> bytes:
    """An error after the stream started: OpenAI clients raise on an event holding ``error``."""
    return b"data: " + body + b"\n\n" + DONE


def models_list(names: list[str], created: int) -> bytes:
    """``GET /v1/models?format=openai``: ``{"object": "list", "data": [{"id", "object", "created", "owned_by"}]}``."""
    return orjson.dumps({
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "wsserve"} for name in names],
    })
