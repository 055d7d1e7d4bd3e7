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
  ``stop_words``; a string or a list of strings), and vLLM's ``stop_token_ids``, ``min_tokens`` and
  ``include_stop_str_in_output`` (as the WebSocket ``generate``: :class:`~wsserve.protocol.GenerationParams`);
- ``logit_bias`` (token ids to biases) and vLLM's guided decoding, ``guided_choice``, ``guided_regex``,
  ``guided_json``, or ``structured_outputs`` / the vLLM backend's ``guided_decoding`` (an object,
  or a string holding one, as the backend reads them: :data:`STRUCTURED_FIELDS`), one form per
  request (:data:`GUIDED_FIELDS`), read and checked by the code the OpenAI routes use
  (:func:`~wsserve.protocol.logit_bias_tuple`, :func:`~wsserve.rest.openai.guided_fields`,
  :class:`~wsserve.protocol.GenerationParams`), with their messages (a regex or a JSON Schema
  refused naming the field on a server without outlines-core);
- ``stream``: must agree with the route when given (``true`` only on ``generate_stream``);
- ``exclude_input_in_output`` (a boolean, as Triton's vLLM backend reads it): not streamed, the
  answer's ``text_output`` is the prompt (``text_input`` as given) followed by the generated text
  unless it is true (absent: the prompt is prepended); streamed, the events hold the generated
  text only (absent or true), and false is refused (the backend's "When streaming,
  ``exclude_input_in_output`` = False is not allowed."); the additional outputs (token counts,
  log-probabilities) are the generated text's either way, as the backend's;
- ``id``: echoed in the answer, as OIP does;
- the additional outputs of Triton's vLLM backend (its ``docs/additional_outputs.md``), each
  asked for by a boolean ``return_*`` flag (:data:`OUTPUT_FLAGS`; anything but a boolean or null
  is refused naming the flag), and ``logprobs``, vLLM's sampling parameter: how many likeliest
  alternatives each token's ``logprobs`` entry lists (0 to :data:`~wsserve.protocol.MAX_LOGPROBS`).

Sampling fields wsserve cannot honour are refused by name unless at their neutral value: beam
search and several outputs (``beam_width``, ``num_beams``, ``n``, ``best_of``), vLLM's fields the
OpenAI routes refuse (:data:`~wsserve.rest.openai.NEUTRAL_VLLM`: ``use_beam_search``,
``guided_grammar``, ``prompt_logprobs``...), and the vLLM backend's ``lora_name`` and
``detokenize`` (:data:`_NEUTRAL_VLLM`).  Other parameters are ignored: those that
change nothing here (vLLM's ``ignore_eos``, ``skip_special_tokens``...), Triton's own request
parameters (``priority``, ``timeout``: not applied to a generation) and unknown names.  A
generative model's OIP metadata and Triton config (every transport's) list the backend's declared
tensors, :data:`GENERATE_INPUTS` and :data:`GENERATE_OUTPUTS`.

Answers: ``{"id"?, "model_name", "model_version", "text_output"}`` (the prompt, then the generated
text, unless ``exclude_input_in_output``); each streamed event is that
object with one token's ``text_output``, and the last event has an empty ``text_output`` and
``finish_reason`` (``length`` or ``stop``; an extension field).  Errors are OIP's
``{"error": "message"}``: the response's body before the stream starts, an event after.

Each flag that is true adds its field to the answer and to every event, with the backend's
values (one element of each of its output tensors, so a JSON scalar):

- ``return_finish_reason`` -> ``finish_reason``: ``length`` or ``stop``; on a streamed token's
  event the string ``"None"`` (the backend's ``str(None)``: not finished);
- ``return_cumulative_logprob`` -> ``cumulative_logprob``: the sum of the log-probabilities of
  the tokens generated so far (the whole text's, when not streamed), whether or not ``logprobs``
  is given (vLLM 0.6's semantics);
- ``return_logprobs`` -> ``logprobs``: a string holding JSON, the backend's serialisation: ``null``
  without the ``logprobs`` parameter, else a list with, per token of this answer (or event), an
  object mapping token ids (strings) to ``{"logprob", "rank", "decoded_token"}``: the token
  generated (its rank in the distribution: the tokens at least as likely) and the ``logprobs``
  likeliest tokens (ranks 1, 2, ...; the generated one, when among them, keeps its place and
  takes its rank there), so ``logprobs`` + 1 entries at most;
- ``return_num_input_tokens`` -> ``num_input_tokens``: the token ids the model was given for
  the prompt;
- ``return_num_output_tokens`` -> ``num_output_tokens``: the tokens of this answer: all of them
  (vLLM's output token ids: a stop string's tokens and a stop token count, sent or not), or,
  streamed, 1 per token's event and, on the last event (it carries no token), the tokens
  generated but not sent, so the events add up to the answer's.

The log-probabilities are the engine's (:mod:`wsserve.generation.logprobs`: the model's raw
log-softmax, vLLM's default), computed only when ``cumulative_logprob``, or ``logprobs`` with the
``logprobs`` parameter, is asked for; a request with no flag takes the plain path
(:class:`GenerateEncoder`), unchanged.  Tokens of a stop string, and a stop token (unless
``include_stop_str_in_output``), are not sent, so neither listed nor summed (but counted in
``num_output_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import BadRequest, WsserveError
from ..generation.logprobs import TokenLogprobs
from ..jsontypes import described, json_type, shown
from ..protocol import (
    MAX_LOGPROBS,
    MAX_TEMPERATURE,
    SAMPLING_FIELDS,
    STOP_FIELDS,
    GenerationParams,
    logit_bias_tuple,
    sampling_fields,
    stop_fields,
    stop_tuple,
)
from .oip import Tensor
from .openai import NEUTRAL_VLLM, Completion, guided_fields, refuse_unsupported

__all__ = ["EXCLUDE_INPUT", "GENERATE_INPUTS", "GENERATE_OUTPUTS", "GUIDED_FIELDS", "OUTPUT_FLAGS", "REQUIRED_INPUT",
           "STRUCTURED_FIELDS", "GenerateEncoder", "GenerateOutputs", "GenerateOutputsEncoder", "OutputValues", "WithOutputValues", "generate_encoder",
           "parse_generate", "prepended"]

#: The vLLM backend's additional outputs: ``return_<name>`` asks for the output ``<name>``.
OUTPUT_FLAGS = ("return_finish_reason", "return_cumulative_logprob", "return_logprobs", "return_num_input_tokens",
                "return_num_output_tokens")
#: The vLLM backend's input saying whether a non-streamed answer's text omits the prompt.
EXCLUDE_INPUT = "exclude_input_in_output"
#: The one input a generation needs (the prompt); the other :data:`GENERATE_INPUTS` are optional.
REQUIRED_INPUT = "text_input"
#: A generative model's inputs as Triton's vLLM backend declares them (its ``auto_complete_config``;
#: not ``image`` and ``embedding_request``, which wsserve does not serve): each shape whole (the
#: model has no batch dimension: ``max_batch_size`` 0).  Its OIP metadata and Triton config list them.
GENERATE_INPUTS: tuple[Tensor, ...] = (
    Tensor(REQUIRED_INPUT, "BYTES", (1,)), Tensor("stream", "BOOL", (1,)), Tensor("sampling_parameters", "BYTES", (1,)),
    Tensor(EXCLUDE_INPUT, "BOOL", (1,)), *(Tensor(flag, "BOOL", (1,)) for flag in OUTPUT_FLAGS),
)
#: A generative model's outputs as the backend declares them: ``text_output``, then the additional
#: outputs (``return_<name>`` asks for ``<name>``), in :data:`OUTPUT_FLAGS`' order; shapes whole.
#: (The gRPC responses' shapes are the tensors the backend makes: :data:`wsserve.oipgrpc.convert.OUTPUT_TENSORS`.)
GENERATE_OUTPUTS: tuple[Tensor, ...] = (
    Tensor("text_output", "BYTES", (-1,)), Tensor("finish_reason", "BYTES", (-1,)),
    Tensor("cumulative_logprob", "FP32", (-1,)), Tensor("logprobs", "BYTES", (-1,)),
    Tensor("num_input_tokens", "UINT32", (1,)), Tensor("num_output_tokens", "UINT32", (-1,)),
)
#: The fields holding vLLM's structured-outputs object (``{"choice" | "regex" | "json" | "json_object": ...}``):
#: vLLM's newer spelling and the vLLM backend's ``guided_decoding``; each may be a string holding it (JSON),
#: as the backend reads them (a request parameter holds a scalar).
STRUCTURED_FIELDS = ("structured_outputs", "guided_decoding")
#: vLLM's guided decoding fields, as the OpenAI routes take them (:func:`~wsserve.rest.openai.guided_fields`).
GUIDED_FIELDS = ("guided_choice", "guided_regex", "guided_json", *STRUCTURED_FIELDS)
_FIELDS = ("text_input", "max_tokens", "temperature", "top_k", *SAMPLING_FIELDS, "seed", "stop", "stop_words", "stream",
           "logprobs", *STOP_FIELDS, "logit_bias", *GUIDED_FIELDS, *OUTPUT_FLAGS, EXCLUDE_INPUT)
#: Refused unless they hold their neutral value (the sampling wsserve does not do).
_NEUTRAL = {"beam_width": (1,), "num_beams": (1,), "n": (1,), "best_of": (1,)}
#: vLLM's fields wsserve does not do, refused as the OpenAI routes refuse them (:data:`NEUTRAL_VLLM`:
#: beam search, ``guided_grammar``...), and those of Triton's vLLM backend: ``lora_name`` (no
#: adapters here) and ``detokenize`` false (the answer is text).  Not vLLM's ``priority``: on
#: Triton's routes ``priority`` is Triton's own request parameter.
_NEUTRAL_VLLM = {**{name: values for name, values in NEUTRAL_VLLM.items() if name != "priority"},
                 "lora_name": (None,), "detokenize": (None, True)}


@dataclass(frozen=True, slots=True)
class GenerateOutputs:
    """The additional outputs a request asked for (its true ``return_*`` flags), and ``top``:
    its ``logprobs`` parameter (alternatives per token's ``logprobs`` entry; ``None``: not
    given, the ``logprobs`` output is ``null``)."""

    finish_reason: bool = False
    cumulative_logprob: bool = False
    logprobs: bool = False
    num_input_tokens: bool = False
    num_output_tokens: bool = False
    top: int | None = None

    @property
    def engine_logprobs(self) -> int | None:
        """The ``logprobs`` the engine must compute for these outputs (``None``: none)."""
        if self.logprobs and self.top is not None:
            return self.top
        return 0 if self.cumulative_logprob else None


def parse_generate(obj: Any, *, model: str, stream: bool,
                   max_tokens_limit: int) -> tuple[Completion, Any, GenerateOutputs | None, str]:
    """Check a decoded body for ``model``; return the generation (:class:`~wsserve.rest.openai.Completion`,
    its ``stream`` the route's; its ``logprobs`` what the outputs need), the request ``id`` to
    echo (None without one), the additional outputs asked for (None: no ``return_*`` flag is
    true, the plain answer) and what the answer's ``text_output`` starts with, before the
    generated text (:func:`prepended`: the prompt, or ``""``).  Raises ``BadRequest`` naming the field."""
    if type(obj) is not dict:
        raise BadRequest(f"the body must be a JSON object, got {json_type(obj)}")
    params = obj.get("parameters")
    if params is None:
        params = {}
    elif type(params) is not dict:
        raise BadRequest(f"'parameters' must be an object, got {json_type(params)}")
    fields: dict[str, Any] = {}
    for name in (*_FIELDS, *_NEUTRAL, *_NEUTRAL_VLLM):
        if name in obj and name in params:
            raise BadRequest(f"'{name}' is given both as an input and in 'parameters'; give it once")
        value = obj[name] if name in obj else params.get(name)
        if value is not None:
            fields[name] = value
    for name, neutral in _NEUTRAL.items():
        value = fields.get(name)
        if value is not None and not (type(value) in (int, float) and value in neutral):
            raise BadRequest(f"'{name}' is not supported (only {neutral[0]}); got {shown(value)}")
    refuse_unsupported(fields, _NEUTRAL_VLLM)
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
    top = fields.get("logprobs")
    if top is not None and (type(top) is not int or not 0 <= top <= MAX_LOGPROBS):
        raise BadRequest(f"'logprobs' must be an integer in [0, {MAX_LOGPROBS}] (the likeliest tokens listed with each "
                         f"token's log-probability), got {shown(top)}")
    for name in (*OUTPUT_FLAGS, EXCLUDE_INPUT):
        if type(fields.get(name, False)) is not bool:
            raise BadRequest(f"'{name}' must be a boolean (true or false), got {shown(fields[name])}")
    prepend = prepended(prompt, fields.get(EXCLUDE_INPUT), stream=stream)
    outputs = None
    if any(fields.get(name) for name in OUTPUT_FLAGS):
        outputs = GenerateOutputs(**{name.removeprefix("return_"): fields.get(name, False) for name in OUTPUT_FLAGS},
                                  top=top)
    top_k = fields.get("top_k", 0)
    logit_bias = logit_bias_tuple(fields.get("logit_bias"))  # the OpenAI routes' checks and messages
    for name in STRUCTURED_FIELDS:
        if type(fields.get(name)) is str:
            fields[name] = _json_object(name, fields[name])
    guided = guided_fields(fields, structured=STRUCTURED_FIELDS)
    try:
        params_ = GenerationParams(  # raises BadRequest naming the field (top_k, top_p, stop, guided_regex...)
            prompt=prompt, max_tokens=max_tokens, temperature=float(temperature),
            top_k=0 if top_k == -1 else top_k, seed=seed & 0xFFFF_FFFF_FFFF_FFFF if seed is not None else None,
            stop=stop, logit_bias=logit_bias, **sampling_fields(fields), **stop_fields(fields),
            logprobs=None if outputs is None else outputs.engine_logprobs,
            logprob_ranks=outputs is not None and outputs.logprobs, **guided,
        )
    except BadRequest as exc:
        if stop_field == "stop_words":
            exc.message = exc.message.replace("field 'stop'", "field 'stop_words'")
        raise
    return Completion(model=model, params=params_, stream=stream, include_usage=False), rid, outputs, prepend


def _json_object(name: str, text: str) -> dict[str, Any]:
    """A field's JSON object sent as a string (``structured_outputs`` as the vLLM backend reads it);
    ``BadRequest`` naming the field for anything else."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if type(value) is not dict:
        raise BadRequest(f"'{name}' must be an object, or a string holding one (JSON), got {shown(text, 40)}")
    return value


def prepended(prompt: str, exclude: bool | None, *, stream: bool) -> str:
    """What a generation's ``text_output`` starts with, as Triton's vLLM backend decides it from
    its ``exclude_input_in_output`` input (``exclude``; None: not given): the prompt, as given,
    when not streamed unless ``exclude`` is true; ``""`` when streamed (the events hold the
    generated text only).  Raises ``BadRequest`` for ``exclude`` false with ``stream``."""
    if stream:
        if exclude is False:
            raise BadRequest(f"'{EXCLUDE_INPUT}' false (the prompt before the generated text) is not allowed when "
                             f"streaming: leave it out or set it true (as Triton's vLLM backend)")
        return ""
    return "" if exclude else prompt


class GenerateEncoder:
    """Bodies and events of one generate (the interface :class:`~wsserve.rest.calls.CompletionCall`
    drives: ``start_events``, ``token_event``, ``choice_end_event``, ``tail_events``, ``response``,
    ``error_event``; one choice).  ``prepend`` (:func:`prepended`) comes before the generated text
    in the ``text_output`` of an answer not streamed."""

    __slots__ = ("_head", "_prepend")

    def __init__(self, rid: str | None, model: str, version: str, prepend: str = "") -> None:
        head = b'{"id":' + orjson.dumps(rid) + b"," if rid is not None else b"{"
        self._head = head + b'"model_name":' + orjson.dumps(model) + b',"model_version":' + orjson.dumps(version)
        self._prepend = prepend

    def start_events(self, index: int = 0) -> bytes:
        return b""

    def token_event(self, text: str, index: int = 0) -> bytes:
        return b"data: " + self._head + b',"text_output":' + orjson.dumps(text) + b"}\n\n"

    def choice_end_event(self, finish_reason: str, index: int = 0, unsent: int = 0) -> bytes:
        return (b"data: " + self._head + b',"text_output":"","finish_reason":' + orjson.dumps(finish_reason)
                + b"}\n\n")

    def tail_events(self, prompt_tokens: int, tokens: int, include_usage: bool) -> bytes:
        return b""

    def response(self, choices: list[Any], prompt_tokens: int, tokens: int) -> bytes:
        return self._head + b',"text_output":' + orjson.dumps(self._prepend + choices[0][0]) + b"}"

    @staticmethod
    def error_event(exc: WsserveError, prompt_tokens: int | None = None, tokens: int = 0) -> bytes:
        return b"data: " + orjson.dumps({"error": exc.message}) + b"\n\n"


def generate_encoder(rid: str | None, model: str, version: str, outputs: GenerateOutputs | None,
                     prepend: str = "") -> GenerateEncoder | GenerateOutputsEncoder:
    """The encoder of one generate (``parse_generate``'s ``outputs`` and ``prepend``): the plain
    one without additional outputs."""
    if outputs is None:
        return GenerateEncoder(rid, model, version, prepend)
    return GenerateOutputsEncoder(rid, model, version, outputs, prepend)


class OutputValues:
    """The values of the additional ``outputs`` one generation's answer or events carry (see the
    module's docstring), whatever the transport writes them as: :class:`GenerateOutputsEncoder`
    as JSON fields, the gRPC front end as output tensors
    (:class:`wsserve.oipgrpc.convert.StreamOutputsEncoder`).  One generation: it keeps the
    stream's running ``cumulative_logprob``; :attr:`prompt_tokens` must be set (the generation's
    ``prompt_tokens``) before the first event.  Each method returns ``{output name: value}`` of
    the asked-for outputs, in :data:`OUTPUT_FLAGS`' order (``finish_reason`` and ``logprobs``
    strings, ``cumulative_logprob`` a float, the counts integers)."""

    __slots__ = ("outputs", "prompt_tokens", "_cumulative")

    def __init__(self, outputs: GenerateOutputs) -> None:
        self.outputs = outputs
        #: ``num_input_tokens`` of the stream's events (a response is given it)
        self.prompt_tokens = 0
        self._cumulative = 0.0

    def token(self, logprobs: TokenLogprobs | None) -> dict[str, Any]:
        """A streamed token's (``logprobs``: its record, None when the engine computes none)."""
        return self.values("None", None if logprobs is None else (logprobs,), self.prompt_tokens, 1)

    def end(self, finish_reason: str, unsent: int = 0) -> dict[str, Any]:
        """The stream's end (no token sent; ``unsent``: the tokens generated but not sent, a stop
        string's or a stop token's, which vLLM's output token ids hold: its ``num_output_tokens``)."""
        return self.values(finish_reason, (), self.prompt_tokens, unsent)

    def response(self, choice: Any, prompt_tokens: int, tokens: int) -> dict[str, Any]:
        """A whole answer's: ``choice`` is ``(text, finish_reason, logged)`` (``logged``: the
        ``(text, record)`` of each token, None when the engine computed none)."""
        _, finish_reason, logged = choice
        records = () if logged is None else tuple(record for _, record in logged)
        return self.values(finish_reason, records, prompt_tokens, tokens)

    def values(self, finish_reason: str, records: tuple[TokenLogprobs, ...] | None, prompt_tokens: int,
               tokens: int) -> dict[str, Any]:
        """The asked-for outputs of an answer or event of ``tokens`` tokens whose records are
        ``records`` (None: the engine computes none for this request)."""
        outputs = self.outputs
        out: dict[str, Any] = {}
        if outputs.finish_reason:
            out["finish_reason"] = finish_reason
        if outputs.cumulative_logprob:
            cumulative = self._cumulative
            for record in records or ():  # in order, one by one: a stream's sums are the response's
                cumulative += record.logprob
            self._cumulative = cumulative
            out["cumulative_logprob"] = cumulative
        if outputs.logprobs:
            out["logprobs"] = _logprobs_json(records if outputs.top is not None else None)
        if outputs.num_input_tokens:
            out["num_input_tokens"] = prompt_tokens
        if outputs.num_output_tokens:
            out["num_output_tokens"] = tokens
        return out


class WithOutputValues:
    """An encoder holding a generation's :class:`OutputValues` (``values``), whose
    :attr:`prompt_tokens` (the generation's, its ``num_input_tokens``) is set before the first event."""

    __slots__ = ()
    values: OutputValues

    @property
    def prompt_tokens(self) -> int:
        return self.values.prompt_tokens

    @prompt_tokens.setter
    def prompt_tokens(self, count: int) -> None:
        self.values.prompt_tokens = count


class GenerateOutputsEncoder(WithOutputValues, GenerateEncoder):
    """A :class:`GenerateEncoder` whose answer and events also carry the additional ``outputs``
    (:class:`OutputValues`, as JSON fields).  One generation: :attr:`prompt_tokens` must be set
    (the generation's ``prompt_tokens``) before the first event."""

    __slots__ = ("values",)

    def __init__(self, rid: str | None, model: str, version: str, outputs: GenerateOutputs, prepend: str = "") -> None:
        super().__init__(rid, model, version, prepend)
        self.values = OutputValues(outputs)

    def token_event(self, text: str, index: int = 0) -> bytes:
        return (b"data: " + self._head + b',"text_output":' + orjson.dumps(text)
                + _json_fields(self.values.token(None)) + b"}\n\n")

    def token_event_logprobs(self, text: str, logprobs: TokenLogprobs, index: int = 0) -> bytes:
        """One streamed token with its record (the engine computes them when the outputs need them)."""
        return (b"data: " + self._head + b',"text_output":' + orjson.dumps(text)
                + _json_fields(self.values.token(logprobs)) + b"}\n\n")

    def choice_end_event(self, finish_reason: str, index: int = 0, unsent: int = 0) -> bytes:
        fields = _json_fields(self.values.end(finish_reason, unsent))
        if not self.values.outputs.finish_reason:  # the last event carries it all the same (as without outputs)
            fields = b',"finish_reason":' + orjson.dumps(finish_reason) + fields
        return b"data: " + self._head + b',"text_output":""' + fields + b"}\n\n"

    def response(self, choices: list[Any], prompt_tokens: int, tokens: int) -> bytes:
        return (self._head + b',"text_output":' + orjson.dumps(self._prepend + choices[0][0])
                + _json_fields(self.values.response(choices[0], prompt_tokens, tokens)) + b"}")


def _json_fields(values: dict[str, Any]) -> bytes:
    """``values`` as the JSON object fields that follow others (each ``,"name":value``; a
    non-finite ``cumulative_logprob`` is ``null``)."""
    return b"".join(b',"' + name.encode() + b'":' + orjson.dumps(value) for name, value in values.items())


def _logprobs_json(records: tuple[TokenLogprobs, ...] | None) -> str:
    """The vLLM backend's ``logprobs`` output: per record, ``{token id: {"logprob", "rank",
    "decoded_token"}}``, the generated token first, then its alternatives, ranked from 1 (an
    alternative that is the generated token replaces its entry, as vLLM's dict does), as a JSON
    string (``null`` without records)."""
    if records is None:
        return "null"
    positions = []
    for record in records:
        position = {str(record.token_id): {"logprob": record.logprob, "rank": record.rank,
                                           "decoded_token": record.text}}
        for rank, (token_id, text, logprob) in enumerate(record.top, 1):
            position[str(token_id)] = {"logprob": logprob, "rank": rank, "decoded_token": text}
        positions.append(position)
    return orjson.dumps(positions).decode()
