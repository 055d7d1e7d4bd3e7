"""Wire codec for protocol v1: bytes in, typed requests out; values in, frame bytes out.

Sans-I/O: nothing here touches a socket, a loop or a clock.

- :func:`decode_binary` does the same for a binary tensor frame (a ``predict``
  whose inputs are raw tensor bytes, :mod:`wsserve.tensorframe`).
- :func:`decode` turns one received text message into a request object or
  raises a :class:`~wsserve.errors.WsserveError` whose ``request_id`` is set
  when the id could be read.  Every number and string a client controls is
  bounded here (ids, ``top_k``, ``timeout_ms``, ...), before anything else
  sees it.  Model-dependent checks (does the model exist, is the input width
  right) are the connection's; :func:`validate_inputs` does the part of them
  that needs only the model's input width.
- Every frame the server sends is encoded by a function here (``encode_*``);
  the hot ones (``result``, ``token``, ``pong``) are built by concatenation.
  Each returns ``bytes`` holding one UTF-8 JSON object, ready to be sent as a
  text frame.  :func:`encode_error` is the one place an exception becomes an
  ``error`` frame.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Union

import numpy as np
import orjson

from .chat import ChatMessage, parse_messages
from .dtypes import DTYPES, json_ready
from .errors import BadJson, BadRequest, InvalidInput, WsserveError
from .jsontypes import described, json_type, shown
from .sequences import sequence_of
from .shapes import MAX_VALUES
from .tensorframe import MAX_HEADER_BYTES, TensorPayload, read_tensors, split
from .tracecontext import MAX_TRACESTATE_CHARS, parse_traceparent

__all__ = [
    "PROTOCOL_VERSION",
    "SUBPROTOCOL",
    "MAX_ID_LENGTH",
    "MAX_TOP_K",
    "MAX_PENALTY",
    "MAX_LOGIT_BIAS",
    "MAX_LOGIT_BIAS_TOKENS",
    "MAX_LOGPROBS",
    "MAX_TEMPERATURE",
    "MAX_TIMEOUT_MS",
    "MAX_STOP_STRINGS",
    "MAX_STOP_CHARS",
    "MAX_STOP_TOKEN_IDS",
    "MAX_GUIDED_CHOICES",
    "MAX_GUIDED_CHOICE_CHARS",
    "guided_choice_tuple",
    "MAX_GUIDED_PATTERN_CHARS",
    "guided_pattern_fields",
    "RequestId",
    "GenerationParams",
    "Predict",
    "Generate",
    "Cancel",
    "Models",
    "Ping",
    "Auth",
    "Admin",
    "Request",
    "decode",
    "decode_predict_body",
    "loads",
    "decode_binary",
    "validate_inputs",
    "check_rows",
    "ms",
    "result_head",
    "ResultRows",
    "timing_fields",
    "stop_tuple",
    "logit_bias_tuple",
    "SAMPLING_FIELDS",
    "sampling_fields",
    "STOP_FIELDS",
    "stop_fields",
    "encode_error",
    "encode_hello",
    "encode_draining",
    "encode_pong",
    "encode_models",
    "encode_auth_ok",
    "encode_admin_ok",
    "encode_result",
    "encode_seed_result",
    "encode_chunk",
    "encode_response",
    "encode_responses_done",
    "encode_predict_done",
    "encode_generate_done",
    "token_prefix",
    "encode_token",
    "encode_token_logprobs",
]

PROTOCOL_VERSION = 1
SUBPROTOCOL = "wsserve.v1"

RequestId = Union[str, int]
_NUMPY = orjson.OPT_SERIALIZE_NUMPY

# Bounds on every client-chosen value, checked before it reaches a slot, numpy or a timer.
#: Longest string id (characters); ids are repeated in every frame of their request.
MAX_ID_LENGTH = 128
#: Integer ids must fit a signed 64-bit integer.
_MIN_INT_ID, _MAX_INT_ID = -(1 << 63), (1 << 63) - 1
#: Largest ``top_k`` (values at or above the vocabulary size sample from every token).
MAX_TOP_K = (1 << 31) - 1
#: Largest ``temperature``.
MAX_TEMPERATURE = 100.0
#: ``presence_penalty`` and ``frequency_penalty`` lie in [-MAX_PENALTY, MAX_PENALTY] (OpenAI's range);
#: ``repetition_penalty`` in (0, MAX_PENALTY] (vLLM's).
MAX_PENALTY = 2.0
#: A ``logit_bias`` names at most this many tokens (OpenAI's limit), each biased by at most
#: ±MAX_LOGIT_BIAS.
MAX_LOGIT_BIAS_TOKENS = 300
MAX_LOGIT_BIAS = 100.0
#: ``logprobs`` asks for at most this many likeliest alternatives per token (vLLM's default
#: ``max_logprobs``; OpenAI's chat ``top_logprobs`` limit).
MAX_LOGPROBS = 20
#: Largest ``timeout_ms`` (about 24.8 days, as JavaScript's ``setTimeout``).
MAX_TIMEOUT_MS = (1 << 31) - 1
#: Largest ``chunk_rows``.
MAX_CHUNK_ROWS = (1 << 31) - 1
#: At most this many stop strings, each of at most this many characters.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
#: ``stop_token_ids`` (vLLM's) names at most this many token ids.
MAX_STOP_TOKEN_IDS = 64
#: ``guided_choice`` (vLLM's) holds at most this many strings, each of 1 to this many characters.
MAX_GUIDED_CHOICES = 64
MAX_GUIDED_CHOICE_CHARS = 256
#: ``guided_regex`` and ``guided_json`` (vLLM's; the schema as JSON text) hold at most this many characters.
MAX_GUIDED_PATTERN_CHARS = 16384
#: What a server without outlines-core says about a guided_regex or guided_json.
STRUCTURED_EXTRA = "pip install 'wsserve[structured]'"
#: Longest ``model`` name, ``version`` and auth ``token`` (characters).
MAX_MODEL_NAME_LENGTH = 256
MAX_VERSION_LENGTH = 64
MAX_TOKEN_LENGTH = 4096
_MAX_VERSION_INT = (1 << 63) - 1
#: A load's ``config`` (Triton's JSON model configuration: the WebSocket ``load``'s field, the HTTP
#: and gRPC load's parameter) holds at most this many characters: a config file's own bound
#: (``wsserve.repository.config.MAX_CONFIG_BYTES``, equal to it).
MAX_CONFIG_PARAM_CHARS = 64 * 1024


# --------------------------------------------------------------------------- request values



@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationParams:
    """A ``generate`` request's generation fields, wire defaults applied (the one validator).

    - ``prompt``: conditioning text; characters outside the model's vocabulary
      are normalised by the model (see :func:`wsserve.models.charlm.normalize_text`).
    - ``max_tokens`` >= 1: tokens to generate at most (reason ``length``); its
      upper bound is the server's ``max_tokens`` limit, checked by :func:`decode`.
    - ``temperature`` in [0, :data:`MAX_TEMPERATURE`]: 0 is greedy (argmax);
      otherwise softmax(logits / T) sampling.
    - ``top_k`` in [0, :data:`MAX_TOP_K`]: sample only among the k most likely
      tokens (ties at the k-th value are kept); 0, or k >= the vocabulary, is off.
      Ignored when greedy.
    - ``top_p`` in (0, 1] (nucleus sampling): after top-k, sample only among the
      fewest most likely tokens whose probability sums to at least ``top_p``
      (ties ordered by token id); 1 is off.  Ignored when greedy.
    - ``min_p`` in [0, 1] (vLLM's): sample only among the tokens at least ``min_p``
      times as likely as the likeliest (after the temperature, before top-k and
      top-p); 0 is off.  Ignored when greedy.
    - ``presence_penalty`` and ``frequency_penalty`` in [-:data:`MAX_PENALTY`,
      :data:`MAX_PENALTY`] (OpenAI's): subtracted from a token's logit once if
      the request generated it before (presence) and once per time it did
      (frequency), before any other choice, greedy included; 0 is off.  Only
      the generated tokens count, not the prompt's (as vLLM does).
    - ``repetition_penalty`` in (0, :data:`MAX_PENALTY`] (vLLM's, from the CTRL paper): the
      logit of every token in the prompt (the part the model reads) or generated so far is
      divided by it when positive and multiplied by it otherwise, before the presence and
      frequency penalties and ``logit_bias``, greedy included; 1 is off, above 1 discourages
      repeats.
    - ``logit_bias`` (OpenAI's): ``(token id, bias)`` pairs, ids ascending and
      distinct, at most :data:`MAX_LOGIT_BIAS_TOKENS`, each bias in
      [-:data:`MAX_LOGIT_BIAS`, :data:`MAX_LOGIT_BIAS`], added to the token's
      logit after the penalties, greedy included (-100 bans a token, +100 all
      but forces it).  The ids' bound is the model's vocabulary, checked when the
      request is queued (:meth:`~wsserve.generation.Scheduler.add_request`).
    - ``seed``: per-request random generator seed (any int, taken modulo 2**64);
      ``None`` draws a fresh one.  Same seed, same prompt, same params -> same
      text, whatever else is batched with it.
    - ``stop``: at most :data:`MAX_STOP_STRINGS` non-empty strings of at most
      :data:`MAX_STOP_CHARS` characters; generation ends with reason ``stop``
      when one is produced, and the stop string is not streamed (unless
      ``include_stop_str_in_output``).
    - ``stop_token_ids`` (vLLM's): at most :data:`MAX_STOP_TOKEN_IDS` token ids (non-negative
      integers; repeats allowed); generation ends with reason ``stop`` when one of them is
      generated, and that token's text is not streamed (unless ``include_stop_str_in_output``).
      The ids' bound is the model's vocabulary, checked when the request is queued.
    - ``min_tokens`` (vLLM's) in [0, ``max_tokens``]: no stop string or stop token ends the
      generation within its first ``min_tokens`` tokens: the ``stop_token_ids`` are kept from
      being generated (their logits are ``-inf``) while fewer than ``min_tokens`` tokens were,
      and a stop string counts only if it ends in a later token (it may begin earlier), as
      vLLM v1 does; 0 is off.
    - ``include_stop_str_in_output`` (vLLM's, default false): the stop string (or the stop
      token's text) that ends the generation is streamed, and nothing after it; no text is
      held back then.
    - ``guided_choice`` (vLLM's): ``()`` (off), or 1 to :data:`MAX_GUIDED_CHOICES` non-empty
      strings of at most :data:`MAX_GUIDED_CHOICE_CHARS` characters: the generated text is one of
      them (:mod:`wsserve.generation.guided`: each token keeps it a prefix of a choice; it ends with
      reason ``stop`` at a choice by :mod:`wsserve.generation.structured`'s end rule, or
      ``length`` at ``max_tokens``).  Not with
      ``min_tokens`` above 0.  That the model's tokens can write each choice is checked when the
      request is queued.
    - ``guided_regex`` / ``guided_json`` (vLLM's): ``""`` (off), or a regular expression / a JSON
      Schema's JSON text of at most :data:`MAX_GUIDED_PATTERN_CHARS` characters: the generated text
      matches it (:mod:`wsserve.generation.structured`, which also states the end rule); at most one
      of ``guided_choice``, ``guided_regex``, ``guided_json``; not with ``min_tokens`` above 0.  Needs
      outlines-core (the ``wsserve[structured]`` extra; refused naming the field without it); the
      pattern is compiled when the request is queued (refused naming the field if it cannot be).
      ``guided_field`` (not a wire field) names the field the pattern came from in refusals
      (``response_format`` on the OpenAI routes); ``""``: ``guided_regex`` / ``guided_json``.
    - ``priority``: 0 normal, 1 high (admitted to the batch first).
    - ``logprobs``: ``None`` (off), or ``k`` in [0, :data:`MAX_LOGPROBS`]: each streamed token
      comes with its log-probability and the ``k`` likeliest tokens with theirs, from the
      model's raw logits (:mod:`wsserve.generation.logprobs`).
    - ``prompt_ids``: ``None`` (the prompt is ``prompt``'s text), or the prompt as token ids
      (OpenAI's token-id prompt; ``prompt`` is then ignored): non-negative integers, given to
      the model as they are.  Their bounds are the model's (ids below its vocabulary size, at
      most its ``prompt_chars`` ids), checked when the request is queued
      (:meth:`~wsserve.generation.Scheduler.add_request`).

    Raises :class:`~wsserve.errors.BadRequest` naming the bad field as the wire calls it.
    """

    prompt: str
    max_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    stop: tuple[str, ...] = ()
    priority: int = 0
    logprobs: int | None = None
    prompt_ids: tuple[int, ...] | None = None
    #: Internal, not a wire field: the token records also carry each token's rank
    #: (:attr:`~wsserve.generation.logprobs.TokenLogprobs.rank`; Triton's ``return_logprobs`` shows it).
    #: Off, a step computes no ranks.
    logprob_ranks: bool = False
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0
    include_stop_str_in_output: bool = False
    guided_choice: tuple[str, ...] = ()
    guided_regex: str = ""
    guided_json: str = ""
    guided_field: str = ""

    def __post_init__(self) -> None:
        if type(self.prompt) is not str:
            raise BadRequest(f"field 'prompt' must be a string, got {json_type(self.prompt)}")
        if type(self.max_tokens) is not int or self.max_tokens < 1:
            raise BadRequest(f"field 'max_tokens' must be an integer >= 1, got {shown(self.max_tokens)}")
        t = self.temperature
        if type(t) not in (int, float) or not 0 <= t <= MAX_TEMPERATURE:  # also refuses NaN
            raise BadRequest(f"field 'temperature' must be a number in [0, {MAX_TEMPERATURE:g}], got {shown(t)}")
        if type(self.top_k) is not int or not 0 <= self.top_k <= MAX_TOP_K:
            raise BadRequest(f"field 'top_k' must be an integer in [0, {MAX_TOP_K}], got {shown(self.top_k)}")
        p = self.top_p
        if type(p) not in (int, float) or not 0 < p <= 1:  # also refuses NaN
            raise BadRequest(f"field 'top_p' must be a number in (0, 1], got {shown(p)}")
        m = self.min_p
        if type(m) not in (int, float) or not 0 <= m <= 1:  # also refuses NaN
            raise BadRequest(f"field 'min_p' must be a number in [0, 1], got {shown(m)}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if type(v) not in (int, float) or not -MAX_PENALTY <= v <= MAX_PENALTY:  # also refuses NaN
                raise BadRequest(f"field '{name}' must be a number in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {shown(v)}")
        r = self.repetition_penalty
        if type(r) not in (int, float) or not 0 < r <= MAX_PENALTY:  # also refuses NaN
            raise BadRequest(f"field 'repetition_penalty' must be a number in (0, {MAX_PENALTY:g}] (1 is off), "
                             f"got {shown(r)}")
        for name in _FLOAT_FIELDS:  # a JSON integer (top_p 1) is the float it stands for
            if type(getattr(self, name)) is int:
                object.__setattr__(self, name, float(getattr(self, name)))
        bias = self.logit_bias
        if type(bias) is not tuple or len(bias) > MAX_LOGIT_BIAS_TOKENS:
            raise BadRequest(f"field 'logit_bias' must map at most {MAX_LOGIT_BIAS_TOKENS} token ids to biases")
        last = -1
        for pair in bias:
            if type(pair) is not tuple or len(pair) != 2 or type(pair[0]) is not int or pair[0] <= last:
                raise BadRequest("field 'logit_bias' must hold (token id, bias) pairs, ids ascending and distinct")
            last, b = pair
            if type(b) not in (int, float) or not -MAX_LOGIT_BIAS <= b <= MAX_LOGIT_BIAS:
                raise BadRequest(f"field 'logit_bias' must bias each token by a number in [-{MAX_LOGIT_BIAS:g}, "
                                 f"{MAX_LOGIT_BIAS:g}], got {shown(b)} for token {last}")
        if self.seed is not None and type(self.seed) is not int:
            raise BadRequest(f"field 'seed' must be an integer, got {described(self.seed)}")
        stop = self.stop
        if type(stop) is not tuple:
            raise BadRequest(f"field 'stop' must be a list of strings, got {json_type(stop)}")
        if len(stop) > MAX_STOP_STRINGS:
            raise BadRequest(f"field 'stop' holds {len(stop)} strings; at most {MAX_STOP_STRINGS}")
        for s in stop:
            if type(s) is not str or not s or len(s) > MAX_STOP_CHARS:
                raise BadRequest(
                    f"field 'stop' must hold non-empty strings of at most {MAX_STOP_CHARS} characters, got {shown(s)}"
                )
        if type(self.priority) is not int or self.priority not in (0, 1):
            raise BadRequest(f"field 'priority' must be 0 (normal) or 1 (high), got {shown(self.priority)}")
        lp = self.logprobs
        if lp is not None and (type(lp) is not int or not 0 <= lp <= MAX_LOGPROBS):
            raise BadRequest(f"field 'logprobs' must be an integer in [0, {MAX_LOGPROBS}] (the likeliest tokens to "
                             f"report with each token), got {shown(lp)}")
        stop_ids = self.stop_token_ids
        if type(stop_ids) is not tuple or len(stop_ids) > MAX_STOP_TOKEN_IDS:
            raise BadRequest(f"field 'stop_token_ids' must be a list of at most {MAX_STOP_TOKEN_IDS} token ids")
        for i in stop_ids:
            if type(i) is not int or i < 0:
                raise BadRequest(f"field 'stop_token_ids' must hold token ids (non-negative integers), got {shown(i)}")
        m = self.min_tokens
        if type(m) is not int or not 0 <= m <= self.max_tokens:
            raise BadRequest(f"field 'min_tokens' must be an integer in [0, max_tokens] ([0, {self.max_tokens}] "
                             f"here), got {shown(m)}")
        if type(self.include_stop_str_in_output) is not bool:
            raise BadRequest("field 'include_stop_str_in_output' must be a boolean, "
                             f"got {json_type(self.include_stop_str_in_output)}")
        self._check_guided_choice()
        if self.guided_regex or self.guided_json or type(self.guided_regex) is not str \
                or type(self.guided_json) is not str:
            self._check_guided_pattern()
        if type(self.logprob_ranks) is not bool:
            raise BadRequest(f"logprob_ranks must be a boolean, got {shown(self.logprob_ranks)}")
        ids = self.prompt_ids
        if ids is not None and (type(ids) is not tuple or not all(type(i) is int and i >= 0 for i in ids)):
            raise BadRequest("field 'prompt' must be a string or a list of token ids (non-negative integers)")

    def _check_guided_choice(self) -> None:
        choices = self.guided_choice
        if type(choices) is not tuple or len(choices) > MAX_GUIDED_CHOICES:
            raise BadRequest(f"field 'guided_choice' must be a list of at most {MAX_GUIDED_CHOICES} strings")
        for c in choices:
            if type(c) is not str or not 0 < len(c) <= MAX_GUIDED_CHOICE_CHARS:
                raise BadRequest(f"field 'guided_choice' must hold non-empty strings of at most "
                                 f"{MAX_GUIDED_CHOICE_CHARS} characters, got {shown(c, 40)}")
        if choices and self.min_tokens:
            raise BadRequest("field 'guided_choice' cannot be combined with 'min_tokens' above 0: a guided "
                             "generation ends as soon as its text is one of the choices")

    def _check_guided_pattern(self) -> None:
        given = [n for n in ("guided_choice", "guided_regex", "guided_json") if getattr(self, n)]
        name = self.guided_field or (given[-1] if given else "guided_regex")
        for field in ("guided_regex", "guided_json"):
            value = getattr(self, field)
            if type(value) is not str:
                raise BadRequest(f"field {field!r} must be a string, got {json_type(value)}")
            if len(value) > MAX_GUIDED_PATTERN_CHARS:
                raise BadRequest(f"field {self.guided_field or field!r} holds {len(value)} characters; at most "
                                 f"{MAX_GUIDED_PATTERN_CHARS}")
        if len(given) > 1:
            raise BadRequest(f"fields {given[0]!r} and {given[1]!r} cannot both be given: one guided form per request")
        if self.min_tokens:
            raise BadRequest(f"field {name!r} cannot be combined with 'min_tokens' above 0: a guided generation "
                             "ends when its text matches")
        import importlib.util

        if importlib.util.find_spec("outlines_core") is None:
            raise BadRequest(f"field {name!r} needs structured outputs, which this server lacks ({STRUCTURED_EXTRA})")

    @property
    def guided(self) -> bool:
        """True when the generation is constrained (``guided_choice``, ``guided_regex`` or ``guided_json``)."""
        return bool(self.guided_choice or self.guided_regex or self.guided_json)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(slots=True)
class Predict:
    """A ``predict`` (or the seed-compatible ``{"x": ...}`` form).

    ``inputs`` is the raw JSON value; :func:`validate_inputs` checks it against
    the model.  A binary tensor frame (:func:`decode_binary`) carries
    ``tensors`` instead (described and size-checked, converted after admission).  ``seed_form`` is ``"list"`` or ``"scalar"`` for the seed form
    (reply ``{"y_pred": ...}``, no id), else ``None``.  ``explain``: also
    return per-feature attributions with each output row (in JSON, or with
    ``binary_outputs`` as a second tensor of the binary frames).
    """

    id: RequestId | None
    model: str
    inputs: Any
    version: str | None = None
    stream: bool = False
    chunk_rows: int | None = None
    timeout_ms: float | None = None
    priority: int = 0
    seed_form: Literal["list", "scalar"] | None = None
    explain: bool = False
    #: A binary tensor frame's tensors (``inputs`` is then None).
    tensors: TensorPayload | None = None
    #: Answer with binary tensor frames (``result`` / ``chunk``).
    binary_outputs: bool = False
    #: A W3C ``traceparent`` for the request's span (``--otlp-traces-endpoint``); None when absent
    #: or malformed (ignored, as W3C says: :func:`~wsserve.tracecontext.parse_traceparent`).
    traceparent: str | None = None
    #: The W3C ``tracestate`` that goes with :attr:`traceparent`, as received (a string of at most
    #: :data:`~wsserve.tracecontext.MAX_TRACESTATE_CHARS` characters, else None; the tracer checks
    #: its members, dropping a malformed one whole); None without a usable ``traceparent``.
    tracestate: str | None = None
    #: Its sequence (Triton's stateful models: fields ``sequence_id``, ``sequence_start``,
    #: ``sequence_end``, as the OIP ``parameters`` of the same names): ``(id, start, end)``, None: none.
    sequence: tuple[int | str, bool, bool] | None = None


@dataclass(frozen=True, slots=True)
class Generate:
    """A ``generate`` request: routing fields plus the validated :class:`GenerationParams`."""

    id: RequestId
    model: str
    params: GenerationParams
    version: str | None = None
    timeout_ms: float | None = None
    #: The conversation of a ``messages`` generate (then ``params.prompt`` is empty: the served
    #: model's chat template makes the prompt, see :mod:`wsserve.chat`).
    messages: tuple[ChatMessage, ...] | None = None
    #: As :attr:`Predict.traceparent` and :attr:`Predict.tracestate`.
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    id: RequestId


@dataclass(frozen=True, slots=True)
class Models:
    id: RequestId | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: RequestId | None = None


@dataclass(frozen=True, slots=True)
class Auth:
    """``{"type":"auth","token":...}``: authenticate a browser socket."""

    token: str
    id: RequestId | None = None


@dataclass(frozen=True, slots=True)
class Admin:
    """``load``, ``unload`` or ``reload`` of a model (all its versions, or ``version``); a ``load``
    may carry ``config``, a model configuration in Triton's JSON form (as text) served instead of
    the model's config file, as the HTTP and gRPC load's ``config`` parameter."""

    op: Literal["load", "unload", "reload"]
    model: str
    version: str | None = None
    id: RequestId | None = None
    config: str | None = None


ADMIN_OPS = ("load", "unload", "reload")

Request = Union[Predict, Generate, Cancel, Models, Ping, Auth, Admin]


# --------------------------------------------------------------------------- decode


def _read_id(obj: dict[str, Any], required: bool) -> RequestId | None:
    """The request's id; raises ``BadRequest`` (with no request id: this one is unusable)."""
    rid = obj.get("id")
    if rid is None:
        if required:
            raise BadRequest("missing field 'id' (a string or an integer)")
        return None
    t = type(rid)
    if t is str:
        if len(rid) <= MAX_ID_LENGTH:
            return rid
        raise BadRequest(f"field 'id' has {len(rid)} characters; the limit is {MAX_ID_LENGTH} (max_id_length)")
    if t is int:
        if _MIN_INT_ID <= rid <= _MAX_INT_ID:
            return rid
        raise BadRequest("field 'id' must be an integer within a signed 64-bit range (-2**63 .. 2**63-1)")
    raise BadRequest(f"field 'id' must be a string or an integer, got {json_type(rid)}")


def _loose_id(obj: dict[str, Any]) -> RequestId | None:
    """The id of a message that failed before its type was known, if it is a valid id."""
    try:
        return _read_id(obj, False)
    except BadRequest:
        return None


def _opt_int(obj: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise BadRequest(f"field '{key}' must be an integer, got {described(value)}")
    if value < lo or value > hi:
        raise BadRequest(f"field '{key}' must be in [{lo}, {hi}], got {value}")
    return value


def _opt_timeout(obj: dict[str, Any]) -> float | None:
    value = obj.get("timeout_ms")
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 < value <= MAX_TIMEOUT_MS:  # also refuses NaN
        raise BadRequest(f"field 'timeout_ms' must be a number in (0, {MAX_TIMEOUT_MS}], got {shown(value)}")
    return float(value)


def _priority(obj: dict[str, Any]) -> int:
    value = obj.get("priority")
    if value is None:
        return 0
    if type(value) is int and (value == 0 or value == 1):
        return value
    raise BadRequest(f"field 'priority' must be 0 (normal) or 1 (high), got {shown(value)}")


def _predict_priority(obj: dict[str, Any]) -> int:
    """A predict's ``priority``: any non-negative integer here; the model's levels bound it when the
    request is queued (:meth:`~wsserve.batching.PriorityLevels.refusal`: 0 or 1 for a model without
    config.pbtxt, 0..``priority_levels`` for one with them)."""
    value = obj.get("priority")
    if value is None:
        return 0
    if type(value) is int and value >= 0:
        return value
    raise BadRequest("field 'priority' must be an integer >= 0 (0 normal, 1 high; 0..N for a model whose config.pbtxt "
                     f"sets dynamic_batching.priority_levels N), got {shown(value)}")


def _model(obj: dict[str, Any]) -> str:
    model = obj.get("model")
    if type(model) is str:
        if len(model) > MAX_MODEL_NAME_LENGTH:
            raise BadRequest(f"field 'model' has {len(model)} characters; the limit is {MAX_MODEL_NAME_LENGTH}")
        return model
    if model is None:
        raise BadRequest("missing field 'model'")
    raise BadRequest(f"field 'model' must be a string, got {json_type(model)}")


def _version(obj: dict[str, Any]) -> str | None:
    """``version``: a string, or an integer (a repository's version directories are numbers)."""
    value = obj.get("version")
    if value is None:
        return None
    if type(value) is int:
        if not 1 <= value <= _MAX_VERSION_INT:
            raise BadRequest(f"field 'version' must be a positive integer or a string, got {value}")
        return str(value)
    if type(value) is not str:
        raise BadRequest(f"field 'version' must be a string or an integer, got {json_type(value)}")
    if len(value) > MAX_VERSION_LENGTH:
        raise BadRequest(f"field 'version' has {len(value)} characters; the limit is {MAX_VERSION_LENGTH}")
    return value


def _load_config(obj: dict[str, Any], op: str) -> str | None:
    """A ``load``'s ``config`` as JSON text (None when absent): a JSON object (serialized here) or a
    string holding one (as the HTTP and gRPC load take it), of 1 to :data:`MAX_CONFIG_PARAM_CHARS`
    characters (an object nested past what orjson writes, 254 levels, is refused too); its content
    is checked when the model loads with it.  Another operation's is refused, as HTTP refuses it.
    Raises ``BadRequest``."""
    value = obj.get("config")
    if value is None:
        return None
    if op != "load":
        raise BadRequest(f"field 'config' is for load only, not {op}")
    if type(value) is dict:
        try:
            text = orjson.dumps(value).decode()  # (the message's bytes bound it already)
        except orjson.JSONEncodeError:  # parsed (1024 levels), but not written back: orjson writes 254
            raise BadRequest("field 'config' nests too deeply to be a model configuration (a JSON object of at "
                             "most 254 levels)") from None
    elif type(value) is str:
        text = value
    else:
        raise BadRequest(f"field 'config' must be a model configuration in JSON (an object, or a string of 1 to "
                         f"{MAX_CONFIG_PARAM_CHARS} characters), got {json_type(value)}")
    if not 0 < len(text) <= MAX_CONFIG_PARAM_CHARS:
        raise BadRequest(f"field 'config' must be a model configuration in JSON (an object, or a string of 1 to "
                         f"{MAX_CONFIG_PARAM_CHARS} characters); it has {len(text)} characters")
    return text


def _decode_predict(obj: dict[str, Any], rid: RequestId | None) -> Predict:
    """A predict message's fields (``rid`` None: a ``POST /predict`` body, which has no ``type`` or
    ``id``, so four fields there are ``model``, ``inputs`` and two optional ones)."""
    if len(obj) == 4 and rid is not None:  # hot path: exactly type, id, model and inputs
        model = obj.get("model")
        if type(model) is str and "inputs" in obj and len(model) <= MAX_MODEL_NAME_LENGTH:
            return Predict(rid, model, obj["inputs"])
    model = _model(obj)
    if "inputs" not in obj:
        raise BadRequest("missing field 'inputs' (an array of rows)")
    return _predict_fields(obj, rid, model, obj["inputs"], None)


def _flag(obj: dict[str, Any], key: str) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if type(value) is not bool:
        raise BadRequest(f"field '{key}' must be a boolean, got {json_type(value)}")
    return value


def _predict_fields(obj: dict[str, Any], rid: RequestId, model: str, inputs: Any,
                    tensors: TensorPayload | None) -> Predict:
    """A predict's optional fields (the same for a JSON message and a binary frame's header)."""
    return Predict(
        id=rid,
        model=model,
        inputs=inputs,
        version=_version(obj),
        stream=_flag(obj, "stream"),
        chunk_rows=_opt_int(obj, "chunk_rows", 1, MAX_CHUNK_ROWS),
        timeout_ms=_opt_timeout(obj),
        priority=_predict_priority(obj),
        explain=_flag(obj, "explain"),
        tensors=tensors,
        binary_outputs=_flag(obj, "binary_outputs"),
        sequence=sequence_of(obj),
        **_trace_fields(obj),
    )


def _trace_fields(obj: dict[str, Any]) -> Mapping[str, str | None]:
    """A request's ``traceparent`` (checked: None when absent or malformed) and the ``tracestate``
    that goes with it (a bounded string, or None; None without a usable traceparent, as W3C says)."""
    traceparent = parse_traceparent(obj.get("traceparent"))
    if traceparent is None:
        return _NO_TRACE
    state = obj.get("tracestate")
    return {"traceparent": traceparent,
            "tracestate": state if type(state) is str and len(state) <= MAX_TRACESTATE_CHARS else None}


_NO_TRACE: Mapping[str, str | None] = MappingProxyType({})


def stop_tuple(value: Any) -> tuple[Any, ...] | None:
    """A request's ``stop`` as a tuple: absent -> ``()``, one string -> ``(s,)``, a list -> its
    items (checked later, by :class:`GenerationParams`); None for any other JSON type (the caller
    raises its protocol's error)."""
    if value is None:
        return ()
    if type(value) is str:
        return (value,)
    if type(value) is list:
        return tuple(value)
    return None


#: The optional sampling fields every protocol's generate takes under the same name, with
#: :class:`GenerationParams`'s defaults when absent (or null): :func:`sampling_fields`.
SAMPLING_FIELDS = ("top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
_FLOAT_FIELDS = ("temperature", *SAMPLING_FIELDS)


def sampling_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`SAMPLING_FIELDS` ``obj`` gives (not null), as keyword arguments of
    :class:`GenerationParams`, which checks them and applies the defaults of the others."""
    return {name: obj[name] for name in SAMPLING_FIELDS if obj.get(name) is not None}


#: vLLM's stop controls every protocol's generate takes under the same name, with
#: :class:`GenerationParams`'s defaults when absent (or null): :func:`stop_fields`.
STOP_FIELDS = ("stop_token_ids", "min_tokens", "include_stop_str_in_output")


def stop_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`STOP_FIELDS` ``obj`` gives (not null), as keyword arguments of
    :class:`GenerationParams`, which checks them; ``stop_token_ids`` must be a JSON array
    (:class:`~wsserve.errors.BadRequest` naming it otherwise)."""
    out = {name: obj[name] for name in ("min_tokens", "include_stop_str_in_output") if obj.get(name) is not None}
    ids = obj.get("stop_token_ids")
    if ids is not None:
        if type(ids) is not list:
            raise BadRequest(f"field 'stop_token_ids' must be a list of token ids, got {json_type(ids)}")
        out["stop_token_ids"] = tuple(ids)
    return out


def guided_choice_tuple(value: Any) -> tuple[str, ...]:
    """A request's ``guided_choice`` (a JSON array of strings) as :class:`GenerationParams` takes
    it; absent (or null) -> ``()``.  Raises :class:`~wsserve.errors.BadRequest` naming the field
    for anything but a non-empty array (its strings are :class:`GenerationParams`'s to check)."""
    if value is None:
        return ()
    if type(value) is not list or not value:
        what = "an empty list" if type(value) is list else json_type(value)
        raise BadRequest(f"field 'guided_choice' must be a non-empty list of strings (at most {MAX_GUIDED_CHOICES}), "
                         f"got {what}")
    if len(value) > MAX_GUIDED_CHOICES:
        raise BadRequest(f"field 'guided_choice' holds {len(value)} strings; at most {MAX_GUIDED_CHOICES}")
    return tuple(value)


def guided_pattern_fields(obj: Mapping[str, Any]) -> dict[str, str]:
    """A request's ``guided_regex`` (a string) and ``guided_json`` (a JSON Schema: an object, or a
    string holding one) as :class:`GenerationParams`'s keyword arguments (absent or null: left
    out; the schema as JSON text).  Raises :class:`~wsserve.errors.BadRequest` naming the field."""
    out: dict[str, str] = {}
    regex = obj.get("guided_regex")
    if regex is not None:
        if type(regex) is not str or not regex:
            raise BadRequest(f"field 'guided_regex' must be a non-empty string, got {shown(regex, 40)}")
        out["guided_regex"] = regex
    schema = obj.get("guided_json")
    if schema is not None:
        out["guided_json"] = schema_text(schema, "guided_json")
    return out


def schema_text(value: Any, field: str) -> str:
    """A JSON Schema from the wire (an object, or a string holding one) as JSON text; raises
    :class:`~wsserve.errors.BadRequest` naming ``field`` otherwise (or when it is too long)."""
    if type(value) is str:
        if len(value) > MAX_GUIDED_PATTERN_CHARS:
            raise BadRequest(f"field {field!r} holds {len(value)} characters; at most {MAX_GUIDED_PATTERN_CHARS}")
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise BadRequest(f"field {field!r} must be a JSON Schema (an object, or a string holding one); "
                             f"the string is not JSON: {exc}") from None
        except RecursionError:  # json recurses per nested array/object: 16 KiB of "[" would escape
            raise BadRequest(f"field {field!r} must be a JSON Schema (an object, or a string holding one); "
                             "the string's JSON nests too deeply") from None
        if type(parsed) is not dict:
            raise BadRequest(f"field {field!r} must be a JSON Schema object, got {json_type(parsed)}")
        return value
    if type(value) is dict:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        except RecursionError:  # the frame's parser (orjson) takes 1024 levels, json.dumps fewer
            raise BadRequest(f"field {field!r} must be a JSON Schema; this object nests too deeply") from None
        if len(text) > MAX_GUIDED_PATTERN_CHARS:
            raise BadRequest(f"field {field!r} holds {len(text)} characters of JSON; at most "
                             f"{MAX_GUIDED_PATTERN_CHARS}")
        return text
    raise BadRequest(f"field {field!r} must be a JSON Schema (an object, or a string holding one), "
                     f"got {json_type(value)}")


def logit_bias_tuple(value: Any) -> tuple[tuple[int, float], ...]:
    """A request's ``logit_bias`` (OpenAI's form: a JSON object mapping token ids, written as
    decimal strings, to biases) as the ``(id, bias)`` pairs :class:`GenerationParams` takes,
    ids ascending; absent (or null) -> ``()``.  Raises :class:`~wsserve.errors.BadRequest`
    naming the field for anything else (the biases' range is :class:`GenerationParams`'s)."""
    if value is None:
        return ()
    if type(value) is not dict:
        raise BadRequest(f"field 'logit_bias' must be an object mapping token ids to biases, got {json_type(value)}")
    if len(value) > MAX_LOGIT_BIAS_TOKENS:
        raise BadRequest(f"field 'logit_bias' names {len(value)} tokens; at most {MAX_LOGIT_BIAS_TOKENS}")
    pairs = []
    for key, bias in value.items():
        if not (0 < len(key) <= 10 and key.isascii() and key.isdigit()):
            raise BadRequest(f"field 'logit_bias' keys must be token ids (decimal integers), got {shown(key)}")
        pairs.append((int(key), bias))  # the bias as sent: GenerationParams checks it
    pairs.sort(key=lambda pair: pair[0])
    if any(a[0] == b[0] for a, b in zip(pairs, pairs[1:])):  # "01" and "1"
        raise BadRequest("field 'logit_bias' names a token id twice")
    return tuple(pairs)


def _decode_generate(obj: dict[str, Any], rid: RequestId, max_tokens_limit: int) -> Generate:
    model = _model(obj)
    prompt = obj.get("prompt")
    messages = None
    if "messages" in obj:
        if prompt is not None:
            raise BadRequest("a generate takes 'prompt' or 'messages', not both")
        messages = parse_messages(obj["messages"])
        prompt = ""
    elif prompt is None:
        raise BadRequest("missing field 'prompt' (a string)")
    max_tokens = _opt_int(obj, "max_tokens", 1, max_tokens_limit)
    stop = stop_tuple(obj.get("stop"))
    if stop is None:
        raise BadRequest(f"field 'stop' must be a list of strings, got {json_type(obj.get('stop'))}")
    seed = obj.get("seed")
    temperature = obj.get("temperature")
    top_k = obj.get("top_k")
    params = GenerationParams(
        prompt=prompt,
        max_tokens=min(64, max_tokens_limit) if max_tokens is None else max_tokens,
        temperature=0.0 if temperature is None else temperature,
        top_k=0 if top_k is None else top_k,
        logit_bias=logit_bias_tuple(obj.get("logit_bias")),
        **sampling_fields(obj),
        seed=seed & 0xFFFF_FFFF_FFFF_FFFF if type(seed) is int else seed,
        stop=stop,
        priority=_priority(obj),
        logprobs=obj.get("logprobs"),
        **stop_fields(obj),
        guided_choice=guided_choice_tuple(obj.get("guided_choice")),
        **guided_pattern_fields(obj),
    )
    return Generate(id=rid, model=model, params=params, version=_version(obj), timeout_ms=_opt_timeout(obj),
                    messages=messages, **_trace_fields(obj))


def _decode_seed(obj: dict[str, Any]) -> Predict:
    """``{"x": 0.5}`` or ``{"x": [0.5]}`` -> a number; ``{"x": [0.5, 1.0]}`` -> a list (the original design)."""
    x = obj["x"]
    if type(x) is list:
        if not x:
            raise InvalidInput("field 'x' must hold at least one number")
        return Predict(id=None, model="linear", inputs=[[v] for v in x], seed_form="scalar" if len(x) == 1 else "list")
    if type(x) in (int, float):
        return Predict(id=None, model="linear", inputs=[[x]], seed_form="scalar")
    raise InvalidInput(f"field 'x' must be a number or an array of numbers, got {json_type(x)}")


def loads(data: bytes | str) -> Any:
    """Parse one JSON text (a message, or an HTTP body).  Raises ``BadJson`` with the
    protocol's messages (``invalid_utf8`` set when the bytes are not UTF-8)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # orjson validates UTF-8, so only a failed parse can hide invalid UTF-8: check it
        # here, off the hot path, rather than decoding every message twice.
        if not isinstance(data, str):
            try:
                bytes(data).decode("utf-8")
            except UnicodeDecodeError as bad:
                raise BadJson(f"message is not valid UTF-8 (byte {bad.start})", invalid_utf8=True) from None
        raise BadJson(f"message is not valid JSON: {exc}") from None


def decode_predict_body(data: bytes) -> Predict:
    """The body of HTTP ``POST /predict``: the seed form ``{"x": ...}`` (on ``linear``), or a
    predict without ``type`` and ``id`` (``{"model": ..., "inputs": ...}`` and its optional
    fields).  Raises like :func:`decode`."""
    obj = loads(data)
    if type(obj) is not dict:
        raise BadRequest(f"the body must be a JSON object, got {json_type(obj)}")
    if "x" in obj and "inputs" not in obj:
        return _decode_seed(obj)
    if "inputs" not in obj and "model" not in obj:
        raise BadRequest('the body must be {"x": ...} or {"model": ..., "inputs": [[...], ...]}')
    return _decode_predict(obj, None)


def decode(data: bytes | str, *, max_tokens: int = 100_000) -> Request:
    """Decode one text message into a request.

    Raises ``BadJson`` (unparseable, id ``None``; ``invalid_utf8`` set when the
    bytes are not UTF-8), ``BadRequest`` (not an object, unknown type,
    missing/mistyped/out-of-range field) or ``InvalidInput`` (seed form with a
    bad ``x``); ``request_id`` is set on the exception whenever the id could be
    read.  ``max_tokens`` is the server's limit on a generate's ``max_tokens``.
    """
    try:  # orjson directly: loads() (one call more per message) only makes the error
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = loads(data)  # raises BadJson
    if type(obj) is not dict:
        raise BadRequest(f"message must be a JSON object, got {json_type(obj)}")
    kind = obj.get("type")
    if kind == "predict" or kind == "generate":
        rid = _read_id(obj, True)  # an unusable id fails here, with no id to echo
        assert rid is not None
        try:
            return _decode_predict(obj, rid) if kind == "predict" else _decode_generate(obj, rid, max_tokens)
        except WsserveError as exc:
            exc.request_id = rid
            raise
    if kind == "cancel":
        return Cancel(_read_id(obj, True))  # type: ignore[arg-type]
    if kind == "ping":
        return Ping(_read_id(obj, False))
    if kind == "models":
        return Models(_read_id(obj, False))
    if kind == "auth":
        rid = _read_id(obj, False)
        token = obj.get("token")
        if type(token) is not str or len(token) > MAX_TOKEN_LENGTH:
            raise BadRequest(f"field 'token' must be a string of at most {MAX_TOKEN_LENGTH} characters", request_id=rid)
        return Auth(token, rid)
    if kind in ADMIN_OPS:
        rid = _read_id(obj, False)
        try:
            return Admin(kind, _model(obj), _version(obj), rid, _load_config(obj, kind))  # type: ignore[arg-type]
        except WsserveError as exc:
            exc.request_id = rid
            raise
    if kind is None and "x" in obj:
        return _decode_seed(obj)
    rid = _loose_id(obj)
    if kind is None:
        raise BadRequest("missing field 'type'", request_id=rid)
    raise BadRequest(
        f"unknown type {shown(kind)}; known: predict, generate, cancel, models, ping, auth, load, unload, reload",
        request_id=rid,
    )


def decode_binary(data: bytes | memoryview, *, max_rows: int, max_header_bytes: int = MAX_HEADER_BYTES) -> Predict:
    """Decode one binary message: a ``predict`` in a binary tensor frame (:mod:`wsserve.tensorframe`).

    The header takes every field of a JSON predict except ``inputs`` rows
    (``explain`` included: whether the model can be explained is checked at
    admission, as for JSON); the tensors are described by ``dtype``/``shape`` or a list
    ``inputs`` of ``{name, dtype, shape}``, checked against the payload's size
    here (nothing is allocated), converted later by the model's entry.  Raises
    ``BadRequest`` (malformed frame or header, a type other than ``predict``)
    or ``InvalidInput`` (sizes, shapes); ``request_id`` set once the id is read.
    """
    header, payload = split(data, max_header_bytes=max_header_bytes)
    kind = header.get("type")
    if kind != "predict":
        rid = _loose_id(header)
        if kind is None:
            raise BadRequest("binary frame header: missing field 'type' (binary frames carry predict requests)",
                             request_id=rid)
        raise BadRequest(f"binary frames carry only predict requests, got type {shown(kind)}; send it as a text frame",
                         request_id=rid)
    rid = _read_id(header, True)
    assert rid is not None
    try:
        model = _model(header)
        tensors = TensorPayload(read_tensors(header, len(payload), max_rows=max_rows), payload)
        if len(header) == 6 and header.get("binary_outputs") is True and "shape" in header:
            # hot path: exactly type, id, model, dtype, shape and binary_outputs
            return Predict(rid, model, None, tensors=tensors, binary_outputs=True)
        return _predict_fields(header, rid, model, None, tensors)
    except WsserveError as exc:
        exc.request_id = rid
        raise


def validate_inputs(inputs: Any, width: int, max_rows: int) -> np.ndarray:
    """Check ``inputs`` is ``[n, width]`` of numbers with ``1 <= n <= max_rows``
    (:func:`check_rows`) and return the rows as a float64 array ``[n, width]`` (8 bytes
    a value, where the parsed JSON lists take about four times that)."""
    check_rows(inputs, width, max_rows)
    return np.array(inputs, dtype=np.float64)


def check_rows(inputs: Any, width: int, max_rows: int) -> int:
    """Check ``inputs`` is ``[n, width]`` of numbers with ``1 <= n <= max_rows``; return ``n``.

    Raises ``InvalidInput`` naming the first problem.  JSON cannot carry NaN or
    infinities (the decoder rejects them) and its integers are 64-bit, so rows that
    pass always convert to finite float64 (``np.array(inputs, dtype=np.float64)``).
    """
    if type(inputs) is not list:
        raise InvalidInput(f"'inputs' must be an array of rows, got {json_type(inputs)}")
    n = len(inputs)
    if n == 0:
        raise InvalidInput("'inputs' has no rows")
    if n > max_rows:
        raise InvalidInput(f"'inputs' has {n} rows; the limit is {max_rows}")
    for i, row in enumerate(inputs):
        if type(row) is not list:
            raise InvalidInput(f"'inputs' row {i} must be an array of {width} numbers, got {json_type(row)}")
        if len(row) != width:
            raise InvalidInput(f"'inputs' row {i} has {len(row)} values; the model takes {width}")
        for v in row:
            t = type(v)
            if t is not float and t is not int:
                raise InvalidInput(f"'inputs' row {i} holds {shown(v)}, which is not a number")
    return n


def _rows_fit(inputs: Any, width: int, max_rows: int, lo: float, hi: float) -> bool:
    """Whether ``inputs`` passes :func:`check_rows` with every float in ``[lo, hi]`` (one pass)."""
    if type(inputs) is not list or not 0 < len(inputs) <= max_rows:
        return False
    for row in inputs:
        if type(row) is not list or len(row) != width:
            return False
        for v in row:
            t = type(v)
            if t is float:
                if not lo <= v <= hi:
                    return False
            elif t is not int:
                return False
    return True


def check_rows_within(inputs: Any, width: int, max_rows: int, limit: float, dtype: str) -> int:
    """:func:`check_rows` for a model that reads ``dtype`` (float32), in one pass: also refuses a
    float beyond ``±limit`` (the dtype's largest finite value) with ``InvalidInput`` naming the
    first such row, after any problem :func:`check_rows` names.  Integers are not range-checked:
    JSON's are 64-bit, well within float32's range."""
    if _rows_fit(inputs, width, max_rows, -limit, limit):
        return len(inputs)
    check_rows(inputs, width, max_rows)  # raises for anything but the range
    for i, row in enumerate(inputs):
        if not all(-limit <= v <= limit for v in row):
            raise InvalidInput(f"'inputs' row {i} holds a value beyond {dtype}'s range")
    raise AssertionError("unreachable: _rows_fit and check_rows disagree")


# --------------------------------------------------------------------------- encode


def ms(seconds: float) -> float:
    """``seconds`` as milliseconds rounded to 3 decimals (the wire's timing fields; 0.0 for
    anything not above 0).  ``int(x + 0.5)`` rather than ``round(x, 3)``: the same figures
    for non-negative times at a third of the cost, and it runs twice per predict."""
    return int(seconds * 1_000_000.0 + 0.5) / 1000.0 if seconds > 0 else 0.0


def timing_fields(queue_s: float, compute_s: float, batch_size: int) -> dict[str, float | int]:
    """The ``timing`` object of a predict's ``result`` or ``done`` (WebSocket and HTTP alike):
    ``queue_ms`` and ``compute_ms`` (:func:`ms`) and ``batch_size``."""
    return {"queue_ms": ms(queue_s), "compute_ms": ms(compute_s), "batch_size": batch_size}


def _id(rid: RequestId | None) -> bytes:
    """An id as JSON (ids are bounded by :func:`decode`, so this is short)."""
    if rid is None:
        return b"null"
    return orjson.dumps(rid)


def encode_error(exc: WsserveError, request_id: RequestId | None = None) -> bytes:
    """The ``error`` frame for ``exc`` (id from the argument, else from ``exc``)."""
    rid = request_id if request_id is not None else exc.request_id
    frame: dict[str, Any] = {"type": "error", "id": rid, "code": exc.code, "message": exc.message}
    if exc.retry_after_ms is not None:
        frame["retry_after_ms"] = exc.retry_after_ms
    return orjson.dumps(frame)


def encode_hello(*, version: str, limits: dict[str, int | float], models: list[str], auth_required: bool) -> bytes:
    """The ``hello`` frame sent on connect: ``limits`` plus the codec's own (``max_id_length``,
    ``max_binary_header_bytes``, ``max_stop_strings``, ``max_stop_chars``, ``max_logit_bias_tokens``,
    ``max_logprobs``, ``max_stop_token_ids``, ``max_guided_choices``, ``max_guided_choice_chars``,
    ``max_guided_pattern_chars``, ``max_row_values``: the values one row may hold where a model's
    dimension is variable, -1), and ``binary_dtypes``: the dtypes a binary tensor frame may carry
    (:data:`~wsserve.dtypes.DTYPES`; a client may send an array in its own dtype when listed, and
    must widen it otherwise: a server before the list knew float32, float64, int32, int64, bool)."""
    frame: dict[str, Any] = {
        "type": "hello",
        "server": "wsserve",
        "version": version,
        "protocol": PROTOCOL_VERSION,
        "limits": {**limits, "max_id_length": MAX_ID_LENGTH, "max_binary_header_bytes": MAX_HEADER_BYTES,
                   "max_stop_strings": MAX_STOP_STRINGS, "max_stop_chars": MAX_STOP_CHARS,
                   "max_logit_bias_tokens": MAX_LOGIT_BIAS_TOKENS, "max_logprobs": MAX_LOGPROBS,
                   "max_stop_token_ids": MAX_STOP_TOKEN_IDS, "max_guided_choices": MAX_GUIDED_CHOICES,
                   "max_guided_choice_chars": MAX_GUIDED_CHOICE_CHARS,
                   "max_guided_pattern_chars": MAX_GUIDED_PATTERN_CHARS, "max_row_values": MAX_VALUES},
        "models": models,
        "binary_dtypes": list(DTYPES),
    }
    if auth_required:
        frame["auth_required"] = True
    return orjson.dumps(frame)


def encode_draining(deadline_ms: int) -> bytes:
    """``{"type":"draining","deadline_ms":N}``: the server is shutting down."""
    return b'{"type":"draining","deadline_ms":' + str(int(deadline_ms)).encode() + b"}"


def encode_pong(rid: RequestId | None) -> bytes:
    return b'{"type":"pong","id":' + _id(rid) + b"}"


def encode_models(rid: RequestId | None, models_json: bytes) -> bytes:
    """The ``models`` reply; ``models_json`` is the JSON array of model descriptions."""
    return b'{"type":"models","id":' + _id(rid) + b',"models":' + models_json + b"}"


def encode_auth_ok(rid: RequestId | None) -> bytes:
    return b'{"type":"auth","id":' + _id(rid) + b',"ok":true}'


def encode_admin_ok(op: str, rid: RequestId | None, result: dict[str, Any]) -> bytes:
    """The reply to a ``load``/``unload``/``reload`` that succeeded: the model's versions afterwards."""
    return orjson.dumps({"type": op, "id": rid, "ok": True, **result})


def _contiguous(outputs: Any) -> Any:
    """Arrays orjson can serialise: C-contiguous (each of a ``{name: array}`` of named outputs); a
    string tensor as nested lists of strings (:func:`~wsserve.dtypes.json_ready`)."""
    if isinstance(outputs, dict):
        return {k: json_ready(v) for k, v in outputs.items()}
    return json_ready(outputs)


def _array(outputs: Any) -> bytes:
    return orjson.dumps(_contiguous(outputs), option=_NUMPY)


def encode_result(
    rid: RequestId | None, model: str, version: str, outputs: Any, timing: dict[str, Any],
    attributions: np.ndarray | None = None, explanation: dict[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> bytes:
    """``result`` of a predict: ``outputs`` is ``[n, ...]`` (any numeric dtype and layout),
    or ``{name: [n, ...]}`` for a model with named outputs.  With ``attributions``
    (``[n, d]``, an ``"explain": true`` predict) the frame also carries them and
    ``explanation`` (method, baseline, target, steps).  ``parameters``: the model's response
    parameters (a Triton Python model's), carried as ``parameters`` when not empty."""
    if type(outputs) is np.ndarray and outputs.dtype.kind not in "OV":  # the common case, without _contiguous's call (V: bfloat16)
        outputs = np.ascontiguousarray(outputs)
    else:
        outputs = _contiguous(outputs)
    frame: dict[str, Any] = {"type": "result", "id": rid, "model": model, "version": version, "outputs": outputs}
    if attributions is not None:
        frame["attributions"] = np.ascontiguousarray(attributions)
        frame["explanation"] = explanation
    if parameters:
        frame["parameters"] = dict(parameters)
    frame["timing"] = timing
    return orjson.dumps(frame, option=_NUMPY)


def result_head(model: str, version: str) -> bytes:
    """The part of a ``result`` frame between its id and its outputs' rows, for one model version
    (computed once per loaded version, :class:`ResultRows`)."""
    return b',"model":' + orjson.dumps(model) + b',"version":' + orjson.dumps(version) + b',"outputs":[['


class ResultRows:
    """One batch's 2-D outputs encoded for many ``result`` frames at once: the array in one
    ``orjson`` call, split into rows, and the batch's part of ``timing``.  :meth:`frame` gives
    the same bytes as :func:`encode_result` for a plain predict of rows ``a .. b`` (the property
    tests check this); it saves a dict, a timing dict and an ``orjson`` call per request.

    ``y`` must be a C-contiguous ``[n, c]`` numeric array with ``c >= 1``: its JSON text is then
    ``[[...],[...]]`` with ``],[`` only between rows, numbers holding no brackets.  Raises
    ``orjson.JSONEncodeError`` for a dtype ``orjson`` cannot write (as :func:`encode_result` would).
    """

    __slots__ = ("_rows", "_tail")

    def __init__(self, y: np.ndarray, compute_s: float, batch_size: int) -> None:
        if y.ndim != 2 or not y.shape[0] or not y.shape[1]:
            raise ValueError(f"ResultRows needs [n >= 1, c >= 1] outputs, got shape {list(y.shape)}")
        self._rows = orjson.dumps(json_ready(y), option=_NUMPY)[2:-2].split(b"],[")  # (bfloat16: as float32)
        self._tail = (b',"compute_ms":' + orjson.dumps(ms(compute_s)) + b',"batch_size":'
                      + orjson.dumps(batch_size) + b"}}")

    def frame(self, rid: RequestId | None, head: bytes, a: int, b: int, queue_s: float) -> bytes:
        """The ``result`` frame of rows ``a .. b`` for ``rid`` (``head``: :func:`result_head`)."""
        rows = self._rows[a] if b == a + 1 else b"],[".join(self._rows[a:b])
        return b"".join((b'{"type":"result","id":', _id(rid), head, rows, b']],"timing":{"queue_ms":',
                         orjson.dumps(ms(queue_s)), self._tail))


def encode_seed_result(outputs: np.ndarray, scalar: bool) -> bytes:
    """``{"y_pred": ...}`` of the seed-compatible form: the first output of each row,
    as a number when the input was one number (or a one-element list), else a list."""
    col = outputs[:, 0]
    value: Any = float(col[0]) if scalar else np.ascontiguousarray(col)
    return orjson.dumps({"y_pred": value}, option=_NUMPY)


def encode_chunk(rid: RequestId | None, seq: int, offset: int, outputs: Any,
                 attributions: np.ndarray | None = None) -> bytes:
    """One ``chunk`` of a streamed predict: rows ``offset .. offset + len(outputs)`` (and their
    ``attributions``, for an ``"explain": true`` predict)."""
    extra = b"" if attributions is None else b',"attributions":' + _array(attributions)
    return (
        b'{"type":"chunk","id":' + _id(rid) + b',"seq":' + str(seq).encode() + b',"offset":'
        + str(offset).encode() + b',"outputs":' + _array(outputs) + extra + b"}"
    )


def encode_response(rid: RequestId | None, seq: int, outputs: Any, final: bool,
                    parameters: Mapping[str, Any] | None = None) -> bytes:
    """One ``response`` of a predict to a decoupled model: its ``seq`` (0, 1, ...), its outputs
    (``[n, ...]``, or ``{name: [n, ...]}`` for a model with named outputs), its ``parameters``
    (the model's, when it gave any) and ``final`` (the model sent it with its FINAL flag; the
    request's ``done`` follows it)."""
    extra = b',"parameters":' + orjson.dumps(dict(parameters)) if parameters else b""
    return (
        b'{"type":"response","id":' + _id(rid) + b',"seq":' + str(seq).encode() + b',"outputs":' + _array(outputs)
        + extra + (b',"final":true}' if final else b',"final":false}')
    )


def encode_responses_done(rid: RequestId | None, responses: int, timing: dict[str, Any], version: str) -> bytes:
    """The terminal ``done`` of a predict to a decoupled model: ``responses`` frames were sent."""
    return orjson.dumps({"type": "done", "id": rid, "reason": "complete", "responses": responses, "timing": timing,
                         "version": version})


def encode_predict_done(rid: RequestId | None, rows: int, timing: dict[str, Any], version: str | None = None,
                        explanation: dict[str, Any] | None = None,
                        parameters: Mapping[str, Any] | None = None) -> bytes:
    """The terminal ``done`` of a streamed predict (``version``: the model version that computed it;
    ``explanation``: how the chunks' attributions were computed, for an ``"explain": true`` predict;
    ``parameters``: the model's response parameters, when not empty)."""
    frame: dict[str, Any] = {"type": "done", "id": rid, "reason": "complete", "rows": rows, "timing": timing}
    if version is not None:
        frame["version"] = version
    if explanation is not None:
        frame["explanation"] = explanation
    if parameters:
        frame["parameters"] = dict(parameters)
    return orjson.dumps(frame)


def encode_generate_done(
    rid: RequestId | None, reason: str, tokens: int, timing: dict[str, Any], version: str | None = None,
    prompt_tokens: int | None = None, completion_tokens: int | None = None,
) -> bytes:
    """The terminal ``done`` of a generate (``reason``: length, stop or cancelled; ``tokens``: the
    ``token`` frames sent; ``version``: who served it; ``prompt_tokens``: the token ids the model
    was given for the prompt; ``completion_tokens``: the tokens generated as vLLM counts its output
    token ids, a stop string's and a stop token's included, OpenAI's ``usage.completion_tokens``)."""
    frame: dict[str, Any] = {"type": "done", "id": rid, "reason": reason, "tokens": tokens, "timing": timing}
    if version is not None:
        frame["version"] = version
    if prompt_tokens is not None:
        frame["prompt_tokens"] = prompt_tokens
    if completion_tokens is not None:
        frame["completion_tokens"] = completion_tokens
    return orjson.dumps(frame)


def token_prefix(rid: RequestId) -> bytes:
    """The constant start of every ``token`` frame of one request (built once per request)."""
    return b'{"type":"token","id":' + _id(rid) + b',"seq":'


def encode_token(prefix: bytes, seq: int, text: str) -> bytes:
    """One ``token`` frame: ``prefix`` from :func:`token_prefix`, then seq and text."""
    return prefix + str(seq).encode() + _token_tail(text)


@functools.lru_cache(maxsize=4096)
def _token_tail(text: str) -> bytes:
    """The end of a ``token`` frame carrying ``text`` (a vocabulary's texts repeat: cached)."""
    return b',"text":' + orjson.dumps(text) + b"}"


def encode_token_logprobs(prefix: bytes, seq: int, text: str, logprobs: Any) -> bytes:
    """A ``token`` frame of a generate that asked for ``logprobs``: :func:`encode_token`'s fields,
    then ``"logprob"`` (the token's, a number, or null when the model's logits were not finite)
    and ``"top_logprobs"``: ``[{"id", "text", "logprob"}, ...]``, likeliest first (empty for
    ``logprobs: 0``).  ``logprobs`` is a :class:`~wsserve.generation.logprobs.TokenLogprobs`."""
    top = [{"id": i, "text": t, "logprob": _finite(lp)} for i, t, lp in logprobs.top]
    return (prefix + str(seq).encode() + b',"text":' + orjson.dumps(text) + b',"logprob":'
            + orjson.dumps(_finite(logprobs.logprob)) + b',"top_logprobs":' + orjson.dumps(top) + b"}")


def _finite(value: float) -> float | None:
    """``value``, or None (JSON null) for NaN (a model whose logits were not finite)."""
    return value if value == value else None
