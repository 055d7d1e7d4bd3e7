"""Sans-I/O codec: request frames to bytes, server frames to result values.

Nothing here touches a socket or awaits. Requests are encoded with orjson into the exact bytes
sent as one text frame; numpy arrays (and numpy scalars) are serialized natively when numpy is
present. Frames are decoded by the connection's reader (``orjson.loads``); the ``parse_*``
functions turn those dicts into the frozen values of :mod:`wsserve_client.results`. Fields a
server adds are ignored.
"""

from __future__ import annotations

import array
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import orjson

from .errors import ProtocolError
from .results import (
    Chunk,
    GenerationResult,
    Limits,
    ModelInfo,
    ModelStatus,
    PredictResult,
    Response,
    ResponsesSummary,
    ServerHello,
    StreamSummary,
    TokenLogprob,
    TopLogprob,
    VersionStatus,
)
from .tensors import DTYPES, Tensor, as_tensor, encode_frame

__all__ = [
    "RequestId",
    "encode",
    "encode_predict",
    "encode_generate",
    "encode_cancel",
    "encode_models",
    "encode_ping",
    "encode_auth",
    "encode_admin",
    "check_version",
    "check_logprobs",
    "check_guided_choice",
    "check_guided_json",
    "check_guided_regex",
    "check_trace_context",
    "Version",
    "ADMIN_OPS",
    "timeout_to_ms",
    "parse_hello",
    "PROTOCOL_VERSION",
    "parse_result",
    "parse_chunk",
    "parse_token",
    "parse_token_logprobs",
    "split_attributions",
    "ATTRIBUTIONS_SUFFIX",
    "parse_stream_done",
    "parse_response",
    "parse_responses_done",
    "parse_generation_done",
    "parse_models",
    "parse_model_status",
    "to_numpy",
]

RequestId = int | str
#: A model version: its directory name as a string (``"2"``) or the number (``2``).
Version = str | int

#: The admin operations (``load``, ``unload``, ``reload``).
ADMIN_OPS = ("load", "unload", "reload")

_OPTS = orjson.OPT_SERIALIZE_NUMPY

log = logging.getLogger("wsserve_client")


def encode(frame: dict[str, Any]) -> bytes:
    """Serialize one frame. numpy arrays that orjson cannot take natively (non-contiguous,
    object or unusual dtypes) are converted with ``tolist()``.

    Raises:
        TypeError: a value is not JSON-serializable.
    """
    try:
        return orjson.dumps(frame, option=_OPTS)
    except TypeError:
        # orjson.JSONEncodeError is a TypeError. Retry once with numpy arrays made plain.
        fixed = {k: _plain(v) for k, v in frame.items()}
        return orjson.dumps(fixed, option=_OPTS)


def _plain(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if tolist is not None and type(value).__module__ == "numpy":
        return tolist()
    return value


def timeout_to_ms(timeout: float | None) -> int | None:
    """Seconds (``None`` = no deadline) to the wire's whole ``timeout_ms`` (at least 1).

    Raises:
        ValueError: ``timeout`` is not a positive finite number.
    """
    if timeout is None:
        return None
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return max(1, math.ceil(timeout * 1000.0))


def check_version(version: Version | None) -> Version | None:
    """``version`` checked: a string, or an integer >= 1 (``bool`` is refused).

    Raises:
        TypeError: not a string or an integer. ValueError: an integer < 1.
    """
    if version is None or isinstance(version, str):
        return version
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"version must be a string or an integer, got {type(version).__name__}")
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    return version


def check_logprobs(logprobs: int | None) -> int | None:
    """``logprobs`` checked: ``None`` (off) or an integer >= 0, the number of likeliest tokens to
    report with each generated token (``bool`` is refused: OpenAI's chat ``logprobs=True`` is
    ``logprobs=0`` here). The upper bound is the server's (``hello`` limit ``max_logprobs``, 20
    for wsserve): above it the server answers ``bad_request``.

    Raises:
        TypeError: not an integer. ValueError: negative.
    """
    if logprobs is None:
        return None
    if isinstance(logprobs, bool) or not isinstance(logprobs, int):
        raise TypeError(f"logprobs must be an integer >= 0 (how many likeliest tokens to report with each "
                        f"token) or None, got {type(logprobs).__name__} {logprobs!r:.40}")
    if logprobs < 0:
        raise ValueError(f"logprobs must be >= 0 (how many likeliest tokens to report with each token), "
                         f"got {logprobs}")
    return logprobs


#: The server's bounds on a request's ``traceparent`` and ``tracestate`` (longer ones it ignores).
MAX_TRACEPARENT_CHARS = 256
MAX_TRACESTATE_CHARS = 512


def check_trace_context(traceparent: str | None, tracestate: str | None) -> None:
    """Check a request's W3C trace context before it is sent: ``traceparent`` (the caller's span,
    ``version-traceid-parentid-flags``) and ``tracestate`` (vendor ``key=value`` list) are strings
    of at most :data:`MAX_TRACEPARENT_CHARS` / :data:`MAX_TRACESTATE_CHARS` characters, or None,
    and a ``tracestate`` comes with a ``traceparent`` (the server would ignore it otherwise).
    Their W3C syntax is the server's to check: it ignores a malformed value, never failing the
    request.  With OpenTelemetry, ``opentelemetry.propagate.inject(carrier)`` fills both.

    Raises:
        TypeError: a value that is not a string (or None).
        ValueError: a value over its bound, or a ``tracestate`` without a ``traceparent``.
    """
    for name, value, bound in (("traceparent", traceparent, MAX_TRACEPARENT_CHARS),
                               ("tracestate", tracestate, MAX_TRACESTATE_CHARS)):
        if value is None:
            continue
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None, not {type(value).__name__}")
        if len(value) > bound:
            raise ValueError(f"{name} has {len(value)} characters; the server takes at most {bound}")
    if tracestate is not None and traceparent is None:
        raise ValueError("tracestate needs a traceparent (W3C: the server ignores a tracestate alone)")


def _put_trace_context(frame: dict[str, Any], traceparent: str | None, tracestate: str | None) -> None:
    check_trace_context(traceparent, tracestate)
    if traceparent is not None:
        frame["traceparent"] = traceparent
        if tracestate is not None:
            frame["tracestate"] = tracestate


def encode_predict(
    request_id: RequestId,
    model: str,
    inputs: Any,
    *,
    version: Version | None = None,
    timeout: float | None = None,
    priority: int = 0,
    stream: bool = False,
    chunk_rows: int | None = None,
    explain: bool = False,
    binary: bool = False,
    traceparent: str | None = None,
    tracestate: str | None = None,
    dtypes: Collection[str] = (),
) -> bytes:
    """Encode a ``predict`` frame. ``inputs`` is an ``[n, d]`` nested sequence or array;
    the server validates its shape and values. Optional fields are omitted when default.

    ``binary``: a binary tensor frame asking for binary outputs; ``inputs`` is then a numpy
    array, an ``array.array`` of one row, a :class:`~wsserve_client.tensors.Tensor`, or
    ``{name: any of those}`` (see :func:`wsserve_client.tensors.as_tensor`). ``traceparent`` and
    ``tracestate``: see :func:`check_trace_context`.  ``dtypes``: the server's ``binary_dtypes``
    (numpy arrays in one of them go in their own dtype; see :func:`~wsserve_client.tensors.as_tensor`)."""
    frame: dict[str, Any] = {"type": "predict", "id": request_id, "model": model}
    _put_trace_context(frame, traceparent, tracestate)
    if not binary:
        frame["inputs"] = inputs
    if check_version(version) is not None:
        frame["version"] = version
    if explain:
        frame["explain"] = True
    if stream:
        frame["stream"] = True
        if chunk_rows is not None:
            frame["chunk_rows"] = chunk_rows
    ms = timeout_to_ms(timeout)
    if ms is not None:
        frame["timeout_ms"] = ms
    if priority:
        frame["priority"] = priority
    if binary:
        frame["binary_outputs"] = True
        if isinstance(inputs, Mapping):
            return encode_frame(frame, {name: _binary_input(v, dtypes) for name, v in inputs.items()})
        return encode_frame(frame, _binary_input(inputs, dtypes))
    return encode(frame)


def _binary_input(value: Any, dtypes: Collection[str] = ()) -> Tensor:
    """One binary input: an ``array.array`` is one row unless it is a Tensor already."""
    if isinstance(value, array.array):
        return as_tensor(value, shape=(1, len(value)))
    return as_tensor(value, keep=dtypes)


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """A conversation as a list of plain dicts; the contents are the server's to check."""
    if isinstance(messages, (bytes, bytearray, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(
            f"prompt must be a str or a sequence of chat messages, not {type(messages).__name__}")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"chat message {i} must be a mapping with 'role' and 'content', "
                            f"not {type(m).__name__}")
        out.append(dict(m))
    return out


def encode_generate(
    request_id: RequestId,
    model: str,
    prompt: str | Sequence[Mapping[str, Any]],
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    repetition_penalty: float | None = None,
    logit_bias: Mapping[int, float] | None = None,
    seed: int | None = None,
    stop: Sequence[str] | str | None = None,
    timeout: float | None = None,
    priority: int = 0,
    version: Version | None = None,
    logprobs: int | None = None,
    stop_token_ids: Sequence[int] | None = None,
    min_tokens: int | None = None,
    include_stop_str_in_output: bool | None = None,
    guided_choice: Sequence[str] | None = None,
    guided_regex: str | None = None,
    guided_json: Mapping[str, Any] | str | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> bytes:
    """Encode a ``generate`` frame; ``None`` leaves a field to the server's default. A single
    ``stop`` string is sent as a one-element list; ``stop_token_ids`` as a list, and it,
    ``min_tokens`` and ``include_stop_str_in_output`` (vLLM's stop controls) unchecked, like the
    sampling options. ``prompt`` is the text to continue, or a
    conversation (a sequence of ``{"role": ..., "content": ...}`` mappings, OpenAI's chat
    messages) sent as ``messages``: the server makes the prompt with the model's chat template
    and checks the messages (``bad_request`` naming the field). Anything else is a ``TypeError``
    here, before a request is sent. The sampling options (``temperature`` to ``seed``) are sent as
    given, unchecked: their ranges are the server's to enforce (``bad_request`` naming the field).
    ``logprobs`` (``k``, see :func:`check_logprobs`; 0 is sent)
    asks for each token's log-probability and the ``k`` likeliest tokens. ``guided_choice``
    (vLLM's: the text is one of these strings) is sent as a list (:func:`check_guided_choice`);
    ``guided_regex`` (the text matches this regex) and ``guided_json`` (the text is JSON following
    this JSON Schema, sent as JSON text: :func:`check_guided_json`) as given. ``traceparent`` and
    ``tracestate``: see :func:`check_trace_context`.

    Raises:
        TypeError, ValueError: a bad ``prompt``, ``version``, ``logprobs``, ``guided_choice``,
            ``guided_regex``, ``guided_json``, ``traceparent`` or ``tracestate``.
    """
    frame: dict[str, Any] = {"type": "generate", "id": request_id, "model": model}
    _put_trace_context(frame, traceparent, tracestate)
    if isinstance(prompt, str):
        frame["prompt"] = prompt
    else:
        frame["messages"] = chat_messages(prompt)
    if check_version(version) is not None:
        frame["version"] = version
    sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                "min_p": min_p, "presence_penalty": presence_penalty, "frequency_penalty": frequency_penalty,
                "repetition_penalty": repetition_penalty,
                "logit_bias": None if logit_bias is None else {str(t): b for t, b in logit_bias.items()},
                "seed": seed, "logprobs": check_logprobs(logprobs),
                "stop_token_ids": None if stop_token_ids is None else list(stop_token_ids),
                "min_tokens": min_tokens, "include_stop_str_in_output": include_stop_str_in_output,
                "guided_choice": check_guided_choice(guided_choice), "guided_regex": check_guided_regex(guided_regex),
                "guided_json": check_guided_json(guided_json)}
    frame.update((name, value) for name, value in sampling.items() if value is not None)
    if stop is not None:
        frame["stop"] = [stop] if isinstance(stop, str) else list(stop)
    ms = timeout_to_ms(timeout)
    if ms is not None:
        frame["timeout_ms"] = ms
    if priority:
        frame["priority"] = priority
    return encode(frame)


def encode_cancel(request_id: RequestId) -> bytes:
    """Encode ``{"type":"cancel","id":...}``."""
    return orjson.dumps({"type": "cancel", "id": request_id})


def encode_models(request_id: RequestId) -> bytes:
    """Encode ``{"type":"models","id":...}``."""
    return orjson.dumps({"type": "models", "id": request_id})


def encode_ping(request_id: RequestId) -> bytes:
    """Encode ``{"type":"ping","id":...}``."""
    return orjson.dumps({"type": "ping", "id": request_id})


def encode_auth(token: str) -> bytes:
    """Encode ``{"type":"auth","token":...}`` (the hardening issue's first-message auth)."""
    return orjson.dumps({"type": "auth", "token": token})


def encode_admin(op: str, request_id: RequestId, model: str, version: Version | None = None,
                 config: Mapping[str, Any] | str | None = None) -> bytes:
    """Encode ``{"type": op, "id", "model"[, "version"][, "config"]}`` for ``op`` in :data:`ADMIN_OPS`.

    ``config`` (``load`` only): a model configuration in Triton's JSON form, as a mapping or as
    JSON text (sent as given; the server bounds it, 65,536 characters, and checks it).

    Raises:
        ValueError: ``op`` is not an admin operation, a bad ``version``, or ``config`` with
        another operation than ``load``. TypeError: ``config`` is neither a mapping nor a string.
    """
    if op not in ADMIN_OPS:
        raise ValueError(f"not an admin operation: {op!r}; known: {', '.join(ADMIN_OPS)}")
    frame: dict[str, Any] = {"type": op, "id": request_id, "model": model}
    if check_version(version) is not None:
        frame["version"] = version
    if config is not None:
        if op != "load":
            raise ValueError(f"config is for load only, not {op}")
        if isinstance(config, Mapping):
            frame["config"] = dict(config)
        elif isinstance(config, str):
            frame["config"] = config
        else:
            raise TypeError(f"config must be a mapping or a JSON string, got {type(config).__name__}")
    return orjson.dumps(frame)


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


#: The protocol version this client speaks (``hello.protocol``).
PROTOCOL_VERSION = 1
#: The largest ``hello`` limit trusted (2**53, the largest integer a JSON number holds exactly
#: in every implementation); a larger one is as absurd as a negative one.
MAX_LIMIT = 2**53
#: The ``hello.limits`` the client reads; each must be an integer in ``[1, MAX_LIMIT]``.
LIMIT_NAMES = ("max_message_bytes", "max_inflight", "max_rows", "max_tokens", "max_binary_header_bytes")


def _limit(limits: dict[str, Any], name: str) -> int | None:
    """One ``hello`` limit, or ``None`` (logged) when absent or not a sane count."""
    value = limits.get(name)
    if value is None:
        return None
    if type(value) is int and 1 <= value <= MAX_LIMIT:
        return value
    log.warning("wsserve_client: ignoring the server's hello limit %s=%.40r (not an integer in "
                "[1, 2**53]); the client treats it as not announced", name, value)
    return None


def check_guided_regex(regex: str | None) -> str | None:
    """``guided_regex`` as the frame carries it, or None; its syntax and length (the server's
    ``max_guided_pattern_chars``, 16384) are the server's to check (``bad_request`` naming it).

    Raises:
        TypeError: not a string.
    """
    if regex is not None and not isinstance(regex, str):
        raise TypeError(f"guided_regex must be a string (a regular expression), got {type(regex).__name__}")
    return regex


def check_guided_json(schema: Mapping[str, Any] | str | None) -> str | None:
    """``guided_json`` (a JSON Schema: a mapping, or a string holding one) as the frame carries it:
    JSON text (a snapshot, so later edits of the mapping do not leak in), or None; the schema is
    the server's to check (``bad_request`` naming ``guided_json``).

    Raises:
        TypeError: neither a mapping nor a string, or a mapping that is not JSON.
    """
    if schema is None or isinstance(schema, str):
        return schema
    if not isinstance(schema, Mapping):
        raise TypeError(f"guided_json must be a JSON Schema (a mapping, or a string holding one), "
                        f"got {type(schema).__name__}")
    try:
        return orjson.dumps(dict(schema)).decode()
    except TypeError as exc:
        raise TypeError(f"guided_json must be JSON: {exc}") from None


def check_guided_choice(choices: Sequence[str] | None) -> list[str] | None:
    """``guided_choice`` as the frame carries it (a list), or None; the strings and their bounds
    are the server's to check (``bad_request`` naming ``guided_choice``).

    Raises:
        TypeError: a single string (not a sequence of them: it would be split into characters).
    """
    if choices is None:
        return None
    if isinstance(choices, str):
        raise TypeError("guided_choice must be a sequence of strings, not a single string")
    return list(choices)


def parse_hello(frame: dict[str, Any]) -> ServerHello:
    """Build :class:`ServerHello` from a ``hello`` frame.

    Missing fields become defaults; ``max_logprobs``, ``max_stop_token_ids``,
    ``max_guided_choices``, ``max_guided_choice_chars`` and ``max_guided_pattern_chars`` are kept when they are integers >= 0
    (the client does not enforce them: the server refuses a larger ``logprobs``, a longer
    ``stop_token_ids`` or ``guided_choice``). A limit the client relies on (:data:`LIMIT_NAMES`) that is
    not an integer in ``[1, 2**53]`` — a string, a float, a negative or zero count, an absurd
    size — is not trusted: it is logged as a warning and treated as not announced (``None``),
    exactly like a server that does not send it; ``limits`` that is not an object likewise.

    Raises:
        ValueError: ``frame`` is not a ``hello``.
        ProtocolError: its ``protocol`` is not :data:`PROTOCOL_VERSION` (1); a hello without
            ``protocol`` is taken as version 1, like any missing field.
    """
    if frame.get("type") != "hello":
        raise ValueError(f"expected a hello frame, got type {frame.get('type')!r}")
    protocol = frame.get("protocol", PROTOCOL_VERSION)
    if type(protocol) is not int or protocol != PROTOCOL_VERSION:
        raise ProtocolError(f"the server's hello says protocol {protocol!r:.40}; this client speaks "
                            f"wsserve protocol {PROTOCOL_VERSION} only")
    raw_limits = frame.get("limits")
    if raw_limits is not None and not isinstance(raw_limits, dict):
        log.warning("wsserve_client: ignoring the server's hello limits %.60r (not an object)", raw_limits)
    lim = raw_limits if isinstance(raw_limits, dict) else {}
    models = frame.get("models")
    return ServerHello(
        server=str(frame.get("server", "")),
        version=str(frame.get("version", "")),
        protocol=protocol,
        limits=Limits(**{name: _limit(lim, name) for name in LIMIT_NAMES},
                      max_logprobs=_opt_count(lim.get("max_logprobs")),
                      max_stop_token_ids=_opt_count(lim.get("max_stop_token_ids")),
                      max_guided_choices=_opt_count(lim.get("max_guided_choices")),
                      max_guided_choice_chars=_opt_count(lim.get("max_guided_choice_chars")),
                      max_guided_pattern_chars=_opt_count(lim.get("max_guided_pattern_chars"))),
        models=tuple(str(m) for m in models) if isinstance(models, list) else (),
        binary_dtypes=_binary_dtypes(frame.get("binary_dtypes")),
    )


def _binary_dtypes(value: Any) -> tuple[str, ...]:
    """``hello``'s ``binary_dtypes``: the ones this client knows (a name it does not, or anything but a
    list of strings, is ignored)."""
    if not isinstance(value, list):
        return ()
    return tuple(d for d in value[:64] if isinstance(d, str) and d in DTYPES)


def to_numpy(outputs: Any) -> Any:
    """Convert nested lists to a float64 ``numpy.ndarray`` (each of them, for named outputs
    ``{name: rows}``); a string output to an object array of ``str``.

    Raises:
        RuntimeError: numpy is not installed.
    """
    try:
        import numpy as np  # optional dependency, imported on demand
    except ImportError as exc:  # pragma: no cover - numpy is present in the test env
        raise RuntimeError("as_numpy=True needs numpy installed") from exc
    if isinstance(outputs, dict):
        return {name: _as_array(np, rows) for name, rows in outputs.items()}
    return _as_array(np, outputs)


def _as_array(np: Any, rows: Any) -> Any:
    """``rows`` as a float64 array, or for a string output (a model's BYTES tensor, answered as
    JSON strings) an object array of ``str`` (never strings read as numbers)."""
    leaf = rows
    while isinstance(leaf, list) and leaf:
        leaf = leaf[0]
    return np.asarray(rows, dtype=object if isinstance(leaf, str) else np.float64)


def _decoded(outputs: Any) -> bool:
    """Outputs of a binary frame: arrays or Tensors already (never converted again)."""
    if isinstance(outputs, dict):
        outputs = next(iter(outputs.values()), None)
    return isinstance(outputs, Tensor) or type(outputs).__module__ == "numpy"


#: A binary answer to an ``"explain": true`` predict names its attributions ``<output>`` + this.
ATTRIBUTIONS_SUFFIX = "_attributions"


def split_attributions(outputs: Any) -> tuple[Any, Any]:
    """``(outputs, attributions)`` of a decoded binary answer to an ``"explain": true`` predict:
    its named tensors ``{<output>: ..., <output>_attributions: ...}`` (the server's docs/PROTOCOL.md,
    "Binary tensor frames") as the output alone and its attributions; anything else is returned
    as it is, with ``None``."""
    if isinstance(outputs, dict) and len(outputs) == 2:
        name, attributions_name = outputs
        if attributions_name == name + ATTRIBUTIONS_SUFFIX:
            return outputs[name], outputs[attributions_name]
    return outputs, None


def _bad(frame: dict[str, Any], what: str) -> ProtocolError:
    rid = frame.get("id")
    return ProtocolError(f"the server's {frame.get('type')!r} frame has {what}",
                         request_id=rid if type(rid) is int or type(rid) is str else None)


def _numpy(frame: dict[str, Any], name: str, rows: Any) -> Any:
    """:func:`to_numpy` of the frame's field ``name``; rows numpy cannot hold (ragged, or holding
    objects) are the server's fault: :class:`ProtocolError` naming the field, not numpy's error."""
    try:
        return to_numpy(rows)
    except (ValueError, TypeError) as exc:
        raise _bad(frame, f"{name!r} that is not an array of numbers or strings: {exc}") from None


def _rows_field(frame: dict[str, Any], name: str, *, required: bool) -> Any:
    """``outputs``/``attributions``: rows (a list), named rows (an object), or decoded tensors."""
    value = frame.get(name)
    if value is None and not required:
        return None
    if isinstance(value, (list, dict)) or _decoded(value):
        return value
    raise _bad(frame, f"{name!r} of type {type(value).__name__}, not rows" if name in frame else f"no {name!r}")


def _count_field(frame: dict[str, Any], name: str, default: int) -> int:
    value = frame.get(name, default)
    if type(value) is int and value >= 0:
        return value
    raise _bad(frame, f"{name!r} = {value!r:.40}, not a count")


def _dict_field(frame: dict[str, Any], name: str) -> Any:
    value = frame.get(name)
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise _bad(frame, f"{name!r} of type {type(value).__name__}, not an object")


def _str_field(frame: dict[str, Any], name: str, default: str) -> str:
    value = frame.get(name, default)
    if isinstance(value, str):
        return value
    raise _bad(frame, f"{name!r} = {value!r:.40}, not a string")


def _version_field(frame: dict[str, Any]) -> str | None:
    value = frame.get("version")
    if value is None or isinstance(value, str) or type(value) is int:
        return _opt_str(value)
    raise _bad(frame, f"'version' = {value!r:.40}, not a string")


def _opt_dict_field(frame: dict[str, Any], name: str) -> Any:
    value = frame.get(name)
    if value is None or isinstance(value, dict):
        return value
    raise _bad(frame, f"{name!r} of type {type(value).__name__}, not an object")


def parse_result(frame: dict[str, Any], *, as_numpy: bool = False, explain: bool = False) -> PredictResult:
    """Build :class:`PredictResult` from a ``result`` frame (JSON, or a decoded binary frame).
    ``explain``: the request asked for attributions (a binary frame's are its second tensor).

    Raises:
        ProtocolError: a field has the wrong type (``outputs`` not rows, ``timing`` not an
            object, ...).
    """
    get = frame.get
    outputs, model, version, timing = get("outputs"), get("model"), get("version"), get("timing")
    if (type(outputs) is list and type(model) is str and type(version) is str and type(timing) is dict
            and get("attributions") is None and get("explanation") is None and get("parameters") is None):
        # the common JSON answer, every field of the right type: no field-by-field checks
        return PredictResult(outputs=_numpy(frame, "outputs", outputs) if as_numpy else outputs, model=model, version=version,
                             timing=timing, request_id=frame["id"])
    outputs = _rows_field(frame, "outputs", required=True)
    attributions = _rows_field(frame, "attributions", required=False)
    if _decoded(outputs):
        as_numpy = False
        if explain and attributions is None:
            outputs, attributions = split_attributions(outputs)
    return PredictResult(
        outputs=_numpy(frame, "outputs", outputs) if as_numpy else outputs,
        model=str(frame.get("model", "")),
        version=_version_field(frame) or "",
        timing=_dict_field(frame, "timing"),
        request_id=frame["id"],
        attributions=_numpy(frame, "attributions", attributions) if as_numpy and attributions is not None else attributions,
        explanation=_opt_dict_field(frame, "explanation"),
        parameters=_opt_dict_field(frame, "parameters"),
    )


def parse_chunk(frame: dict[str, Any], *, as_numpy: bool = False, explain: bool = False) -> Chunk:
    """Build :class:`Chunk` from a ``chunk`` frame (JSON, or a decoded binary frame);
    ``explain`` as for :func:`parse_result`.

    Raises:
        ProtocolError: a field has the wrong type.
    """
    outputs = _rows_field(frame, "outputs", required=True)
    attributions = _rows_field(frame, "attributions", required=False)
    if _decoded(outputs):
        as_numpy = False
        if explain and attributions is None:
            outputs, attributions = split_attributions(outputs)
    return Chunk(
        seq=_count_field(frame, "seq", 0),
        offset=_count_field(frame, "offset", 0),
        outputs=_numpy(frame, "outputs", outputs) if as_numpy else outputs,
        attributions=_numpy(frame, "attributions", attributions) if as_numpy and attributions is not None else attributions,
    )


def parse_token(frame: dict[str, Any], expected_seq: int) -> str:
    """The text of a ``token`` frame, the generation's ``expected_seq``-th (0, 1, 2, ...: the
    number of its token frames before this one).

    Raises:
        ProtocolError: ``seq`` is not ``expected_seq`` (a token lost, repeated or out of order,
            so the text would silently differ from the one generated), or ``text`` is missing or
            not a string.
    """
    seq = frame.get("seq")
    if type(seq) is not int or seq != expected_seq:
        raise _bad(frame, f"'seq' = {seq!r:.40}, expected {expected_seq} (token frames of a generation "
                          "are numbered 0, 1, 2, ...: a token was lost, repeated or reordered)")
    text = frame.get("text")
    if isinstance(text, str):
        return text
    raise _bad(frame, f"'text' = {text!r:.40}, not a string")


def parse_token_logprobs(frame: dict[str, Any], text: str) -> TokenLogprob:
    """The :class:`TokenLogprob` of a ``token`` frame of a generate that asked for ``logprobs``
    (``text``: the frame's, from :func:`parse_token`). ``logprob`` is a number or null;
    ``top_logprobs`` a list of ``{"id", "text", "logprob"}`` objects. Values are not checked
    (a ``logprob`` above 0 is the server's to answer for); extra fields are ignored.

    Raises:
        ProtocolError: a field is missing (a server that does not support ``logprobs`` ignores
            the request field and sends plain token frames) or has the wrong type.
    """
    if "logprob" not in frame or "top_logprobs" not in frame:
        raise _bad(frame, "no 'logprob'/'top_logprobs' though the generate asked for logprobs (a server without "
                          "logprobs support ignores the field: its hello has no limit 'max_logprobs')")
    logprob = _logprob(frame, frame["logprob"], "'logprob'")
    top = frame["top_logprobs"]
    if type(top) is not list:
        raise _bad(frame, f"'top_logprobs' of type {type(top).__name__}, not a list")
    alternatives = []
    for i, entry in enumerate(top):
        where = f"'top_logprobs'[{i}]"
        if type(entry) is not dict:
            raise _bad(frame, f"{where} of type {type(entry).__name__}, not an object")
        token_id, token_text = entry.get("id"), entry.get("text")
        if type(token_id) is not int or token_id < 0:
            raise _bad(frame, f"{where}.id = {token_id!r:.40}, not a token id")
        if type(token_text) is not str:
            raise _bad(frame, f"{where}.text = {token_text!r:.40}, not a string")
        if "logprob" not in entry:
            raise _bad(frame, f"no {where}.logprob")
        alternatives.append(TopLogprob(token_id, token_text, _logprob(frame, entry["logprob"], f"{where}.logprob")))
    return TokenLogprob(text, logprob, tuple(alternatives))


def _logprob(frame: dict[str, Any], value: Any, where: str) -> float | None:
    """A log-probability from a frame: a JSON number (as a float) or null."""
    if value is None or type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _bad(frame, f"{where} = {value!r:.40}, not a number or null")


def parse_response(frame: dict[str, Any], *, as_numpy: bool = False) -> Response:
    """Build :class:`Response` from a ``response`` frame (a decoupled model's).

    Raises:
        ProtocolError: a field has the wrong type.
    """
    outputs = _rows_field(frame, "outputs", required=True)
    final = frame.get("final", False)
    if type(final) is not bool:
            raise _bad(frame, f"'final' of type {type(final).__name__}, not a boolean")
    return Response(seq=_count_field(frame, "seq", 0), outputs=_numpy(frame, "outputs", outputs) if as_numpy else outputs,
                    final=final, parameters=_opt_dict_field(frame, "parameters"))


def parse_responses_done(frame: dict[str, Any]) -> ResponsesSummary:
    """Build :class:`ResponsesSummary` from the ``done`` frame of a predict to a decoupled model.

    Raises:
        ProtocolError: a field has the wrong type.
    """
    return ResponsesSummary(
        reason=_str_field(frame, "reason", "complete"),
        responses=_count_field(frame, "responses", 0),
        timing=_dict_field(frame, "timing"),
        request_id=frame["id"],
        version=_version_field(frame),
    )


def parse_stream_done(frame: dict[str, Any]) -> StreamSummary:
    """Build :class:`StreamSummary` from the ``done`` frame of a streamed predict.

    Raises:
        ProtocolError: a field has the wrong type.
    """
    return StreamSummary(
        reason=_str_field(frame, "reason", "complete"),
        rows=_count_field(frame, "rows", 0),
        timing=_dict_field(frame, "timing"),
        request_id=frame["id"],
        version=_version_field(frame),
        explanation=_opt_dict_field(frame, "explanation"),
    )


def parse_generation_done(frame: dict[str, Any], text: str,
                          logprobs: Sequence[TokenLogprob] | None = None) -> GenerationResult:
    """Build :class:`GenerationResult` from a generation's ``done`` frame, its text and (for a
    generate that asked for them) its tokens' :class:`TokenLogprob` records.

    Raises:
        ProtocolError: a field has the wrong type.
    """
    return GenerationResult(
        reason=_str_field(frame, "reason", ""),
        tokens=_count_field(frame, "tokens", 0),
        timing=_dict_field(frame, "timing"),
        text=text,
        request_id=frame["id"],
        version=_version_field(frame),
        prompt_tokens=_opt_count(frame.get("prompt_tokens")),
        logprobs=None if logprobs is None else tuple(logprobs),
        completion_tokens=_opt_count(frame.get("completion_tokens")),
    )


def _opt_count(value: Any) -> int | None:
    """A non-negative integer count from a frame, else ``None`` (absent or not a count)."""
    return value if type(value) is int and value >= 0 else None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _versions(value: Any) -> tuple[VersionStatus, ...]:
    out = []
    for v in value if isinstance(value, list) else ():
        if isinstance(v, dict) and "version" in v:
            out.append(VersionStatus(version=str(v["version"]), state=str(v.get("state", "")),
                                     reason=_opt_str(v.get("reason"))))
    return tuple(out)


def _shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def parse_models(frame: dict[str, Any]) -> list[ModelInfo]:
    """Build the list of :class:`ModelInfo` from a ``models`` reply (entries that are not
    objects are skipped).

    Raises:
        ProtocolError: ``models`` is not a list.
    """
    out: list[ModelInfo] = []
    models = frame.get("models")
    if models is not None and not isinstance(models, list):
        raise _bad(frame, f"'models' of type {type(models).__name__}, not a list")
    for m in models or ():
        if not isinstance(m, dict):
            continue
        out.append(
            ModelInfo(
                name=str(m.get("name", "")),
                version=_opt_str(m.get("version")),
                task=str(m.get("task", "")),
                input_shape=_shape(m.get("input_shape")),
                output_shape=_shape(m.get("output_shape")),
                parameters=_opt_int(m.get("parameters")),
                metrics=m.get("metrics") or {},
                raw=m,
                versions=_versions(m.get("versions")),
            )
        )
    return out


def parse_model_status(frame: dict[str, Any]) -> ModelStatus:
    """Build :class:`ModelStatus` from the reply to ``load``/``unload``/``reload``."""
    return ModelStatus(model=str(frame.get("model", "")), versions=_versions(frame.get("versions")))
