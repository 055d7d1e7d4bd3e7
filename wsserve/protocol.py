"""Wire codec for protocol v1: bytes in, typed requests out; values in, frame bytes out.

Sans-I/O: nothing here touches a socket, a loop or a clock.  :func:`decode`
turns one received text message into a request object or raises a
:class:`~wsserve.errors.WsserveError` whose ``request_id`` is set when the id
could be read.  Model-dependent checks (does the model exist, is the input
width right) are the server's; :func:`validate_inputs` does the part of them
that needs only the model's input width.

Encoders return ``bytes`` holding one UTF-8 JSON object, ready to be sent as
a text frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np
import orjson

from .errors import BadJson, BadRequest, InvalidInput, WsserveError

__all__ = [
    "PROTOCOL_VERSION",
    "SUBPROTOCOL",
    "MAX_ID_LENGTH",
    "RequestId",
    "Predict",
    "Generate",
    "Cancel",
    "Models",
    "Ping",
    "Auth",
    "Request",
    "decode",
    "validate_inputs",
    "encode",
    "encode_error",
    "encode_hello",
]

PROTOCOL_VERSION = 1
SUBPROTOCOL = "wsserve.v1"

RequestId = Union[str, int]
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_MAX_STOP_STRINGS = 16
_MAX_STOP_CHARS = 256

# Bounds on every client-chosen value, checked before it reaches a slot, numpy or a timer.
#: Longest string id (characters); ids are repeated in every frame of their request.
MAX_ID_LENGTH = 128
#: Integer ids must fit a signed 64-bit integer.
_MIN_INT_ID, _MAX_INT_ID = -(1 << 63), (1 << 63) - 1
#: Largest ``top_k`` (values at or above the vocabulary size sample from every token).
MAX_TOP_K = (1 << 31) - 1
#: Largest ``timeout_ms`` (about 24.8 days, as JavaScript's ``setTimeout``).
MAX_TIMEOUT_MS = (1 << 31) - 1
#: Largest ``chunk_rows``.
MAX_CHUNK_ROWS = (1 << 31) - 1
#: Largest ``temperature``.
MAX_TEMPERATURE = 100.0
#: Longest ``model`` name, ``version`` and auth ``token`` (characters).
MAX_MODEL_NAME_LENGTH = 256
MAX_VERSION_LENGTH = 64
MAX_TOKEN_LENGTH = 4096


@dataclass(slots=True)
class Predict:
    """A ``predict`` (or the seed-compatible ``{"x": ...}`` form).

    ``inputs`` is the raw JSON value; :func:`validate_inputs` checks it against
    the model.  ``seed_form`` is ``"list"`` or ``"scalar"`` for the seed form
    (reply ``{"y_pred": ...}``, no id), else ``None``.
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


@dataclass(slots=True)
class Generate:
    """A ``generate`` request with defaults applied."""

    id: RequestId
    model: str
    prompt: str
    max_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    version: str | None = None
    timeout_ms: float | None = None
    priority: int = 0


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


Request = Union[Predict, Generate, Cancel, Models, Ping, Auth]


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
        raise BadRequest(
            f"field 'id' has {len(rid)} characters; the limit is {MAX_ID_LENGTH} (max_id_length)"
        )
    if t is int:
        if _MIN_INT_ID <= rid <= _MAX_INT_ID:
            return rid
        raise BadRequest("field 'id' must be an integer within a signed 64-bit range (-2**63 .. 2**63-1)")
    raise BadRequest(f"field 'id' must be a string or an integer, got {_jtype(rid)}")


def _loose_id(obj: dict[str, Any]) -> RequestId | None:
    """The id of a message that failed before its type was known, if it is a valid id."""
    try:
        return _read_id(obj, False)
    except BadRequest:
        return None


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _opt_str(obj: dict[str, Any], key: str, rid: RequestId | None, max_length: int) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not str:
        raise BadRequest(f"field '{key}' must be a string, got {_jtype(value)}", request_id=rid)
    if len(value) > max_length:
        raise BadRequest(f"field '{key}' has {len(value)} characters; the limit is {max_length}", request_id=rid)
    return value


def _opt_int(obj: dict[str, Any], key: str, rid: RequestId | None, lo: int, hi: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise BadRequest(f"field '{key}' must be an integer, got {_jtype(value)}", request_id=rid)
    if value < lo or value > hi:
        raise BadRequest(f"field '{key}' must be in [{lo}, {hi}], got {value}", request_id=rid)
    return value


def _opt_timeout(obj: dict[str, Any], rid: RequestId | None) -> float | None:
    value = obj.get("timeout_ms")
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 < value <= MAX_TIMEOUT_MS:  # also refuses NaN
        raise BadRequest(
            f"field 'timeout_ms' must be a number in (0, {MAX_TIMEOUT_MS}], got {value!r}", request_id=rid
        )
    return float(value)


def _priority(obj: dict[str, Any], rid: RequestId | None) -> int:
    value = obj.get("priority")
    if value is None:
        return 0
    if type(value) is int and (value == 0 or value == 1):
        return value
    raise BadRequest(f"field 'priority' must be 0 (normal) or 1 (high), got {value!r}", request_id=rid)


def _model(obj: dict[str, Any], rid: RequestId | None) -> str:
    model = obj.get("model")
    if type(model) is str:
        if len(model) > MAX_MODEL_NAME_LENGTH:
            raise BadRequest(
                f"field 'model' has {len(model)} characters; the limit is {MAX_MODEL_NAME_LENGTH}", request_id=rid
            )
        return model
    if model is None:
        raise BadRequest("missing field 'model'", request_id=rid)
    raise BadRequest(f"field 'model' must be a string, got {_jtype(model)}", request_id=rid)


def _decode_predict(obj: dict[str, Any]) -> Predict:
    rid = _read_id(obj, True)
    if len(obj) == 4:  # hot path: exactly type, id, model and inputs
        model = obj.get("model")
        if type(model) is str and "inputs" in obj and len(model) <= MAX_MODEL_NAME_LENGTH:
            return Predict(rid, model, obj["inputs"])
    try:
        model = _model(obj, rid)
        if "inputs" not in obj:
            raise BadRequest("missing field 'inputs' (an array of rows)")
        stream = obj.get("stream")
        if stream is None:
            stream = False
        elif type(stream) is not bool:
            raise BadRequest(f"field 'stream' must be a boolean, got {_jtype(stream)}")
        return Predict(
            id=rid,
            model=model,
            inputs=obj["inputs"],
            version=_opt_str(obj, "version", rid, MAX_VERSION_LENGTH),
            stream=stream,
            chunk_rows=_opt_int(obj, "chunk_rows", rid, 1, MAX_CHUNK_ROWS),
            timeout_ms=_opt_timeout(obj, rid),
            priority=_priority(obj, rid),
        )
    except WsserveError as exc:
        exc.request_id = rid
        raise


def _decode_generate(obj: dict[str, Any], max_tokens_limit: int) -> Generate:
    rid = _read_id(obj, True)
    assert rid is not None
    try:
        model = _model(obj, rid)
        prompt = obj.get("prompt")
        if type(prompt) is not str:
            if prompt is None:
                raise BadRequest("missing field 'prompt' (a string)")
            raise BadRequest(f"field 'prompt' must be a string, got {_jtype(prompt)}")
        max_tokens = _opt_int(obj, "max_tokens", rid, 1, max_tokens_limit)
        temperature = obj.get("temperature")
        if temperature is None:
            temperature = 0.0
        if type(temperature) not in (int, float) or not 0 <= temperature <= MAX_TEMPERATURE:  # refuses NaN
            raise BadRequest(f"field 'temperature' must be a number in [0, {MAX_TEMPERATURE:g}], got {temperature!r}")
        top_k = _opt_int(obj, "top_k", rid, 0, MAX_TOP_K)
        seed = obj.get("seed")
        if seed is not None and type(seed) is not int:
            raise BadRequest(f"field 'seed' must be an integer, got {_jtype(seed)}")
        stop_raw = obj.get("stop")
        if stop_raw is None:
            stop: tuple[str, ...] = ()
        elif type(stop_raw) is str:
            stop = (stop_raw,)
        elif type(stop_raw) is list:
            stop = tuple(stop_raw)
        else:
            raise BadRequest(f"field 'stop' must be a list of strings, got {_jtype(stop_raw)}")
        if len(stop) > _MAX_STOP_STRINGS:
            raise BadRequest(f"field 'stop' holds {len(stop)} strings; at most {_MAX_STOP_STRINGS}")
        for s in stop:
            if type(s) is not str or not s or len(s) > _MAX_STOP_CHARS:
                raise BadRequest(
                    f"field 'stop' must hold non-empty strings of at most {_MAX_STOP_CHARS} characters, got {s!r}"
                )
        return Generate(
            id=rid,
            model=model,
            prompt=prompt,
            max_tokens=min(64, max_tokens_limit) if max_tokens is None else max_tokens,
            temperature=float(temperature),
            top_k=top_k or 0,
            seed=None if seed is None else seed & 0xFFFF_FFFF_FFFF_FFFF,
            stop=stop,
            version=_opt_str(obj, "version", rid, MAX_VERSION_LENGTH),
            timeout_ms=_opt_timeout(obj, rid),
            priority=_priority(obj, rid),
        )
    except WsserveError as exc:
        exc.request_id = rid
        raise


def _decode_seed(obj: dict[str, Any]) -> Predict:
    x = obj["x"]
    if type(x) is list:
        if not x:
            raise InvalidInput("field 'x' must hold at least one number")
        return Predict(id=None, model="linear", inputs=[[v] for v in x], seed_form="list")
    if type(x) in (int, float):
        return Predict(id=None, model="linear", inputs=[[x]], seed_form="scalar")
    raise InvalidInput(f"field 'x' must be a number or an array of numbers, got {_jtype(x)}")


def decode(data: bytes | str, *, max_tokens: int = 100_000) -> Request:
    """Decode one text message into a request.

    Raises ``BadJson`` (unparseable, id ``None``; ``invalid_utf8`` set when the
    bytes are not UTF-8), ``BadRequest`` (not an
    object, unknown type, missing/mistyped/out-of-range field) or
    ``InvalidInput`` (seed form with a bad ``x``); ``request_id`` is set on the
    exception whenever the id could be read.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # orjson validates UTF-8, so only a failed parse can hide invalid UTF-8: check it
        # here, off the hot path, rather than decoding every message twice.
        if not isinstance(data, str):
            try:
                bytes(data).decode("utf-8")
            except UnicodeDecodeError as bad:
                raise BadJson(f"message is not valid UTF-8 (byte {bad.start})", invalid_utf8=True) from None
        raise BadJson(f"message is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise BadRequest(f"message must be a JSON object, got {_jtype(obj)}")
    kind = obj.get("type")
    if kind == "predict":
        return _decode_predict(obj)
    if kind == "generate":
        return _decode_generate(obj, max_tokens)
    if kind == "cancel":
        return Cancel(_read_id(obj, True))  # type: ignore[arg-type]
    if kind == "ping":
        return Ping(_read_id(obj, False))
    if kind == "models":
        return Models(_read_id(obj, False))
    if kind == "auth":
        token = obj.get("token")
        rid = _read_id(obj, False)
        if type(token) is not str or len(token) > MAX_TOKEN_LENGTH:
            raise BadRequest(f"field 'token' must be a string of at most {MAX_TOKEN_LENGTH} characters", request_id=rid)
        return Auth(token, rid)
    if kind is None and "x" in obj:
        return _decode_seed(obj)
    rid = _loose_id(obj)
    if kind is None:
        raise BadRequest("missing field 'type'", request_id=rid)
    raise BadRequest(
        f"unknown type {kind!r}; known: predict, generate, cancel, models, ping, auth",
        request_id=rid,
    )


def validate_inputs(inputs: Any, width: int, max_rows: int) -> np.ndarray:
    """Check ``inputs`` is ``[n, width]`` of numbers with ``1 <= n <= max_rows``.

    Returns the rows as a float64 array ``[n, width]`` (8 bytes a value, where the
    parsed JSON lists take about five times that).  Raises ``InvalidInput`` naming
    the first problem.  JSON cannot carry NaN or infinities (the decoder rejects
    them), so every number that passes is finite.
    """
    if type(inputs) is not list:
        raise InvalidInput(f"'inputs' must be an array of rows, got {_jtype(inputs)}")
    n = len(inputs)
    if n == 0:
        raise InvalidInput("'inputs' has no rows")
    if n > max_rows:
        raise InvalidInput(f"'inputs' has {n} rows; the limit is {max_rows}")
    for i, row in enumerate(inputs):
        if type(row) is not list:
            raise InvalidInput(f"'inputs' row {i} must be an array of {width} numbers, got {_jtype(row)}")
        if len(row) != width:
            raise InvalidInput(f"'inputs' row {i} has {len(row)} values; the model takes {width}")
        for v in row:
            t = type(v)
            if t is not float and t is not int:
                raise InvalidInput(f"'inputs' row {i} holds {v!r}, which is not a number")
    return np.array(inputs, dtype=np.float64)


# --------------------------------------------------------------------------- encode

def _encode_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # non-contiguous arrays, numpy scalars
    if tolist is None:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")
    return tolist()


def encode(frame: dict[str, Any]) -> bytes:
    """Serialise one frame (numpy arrays of any layout allowed) to JSON bytes."""
    return orjson.dumps(frame, option=_NUMPY, default=_encode_default)


def encode_error(exc: WsserveError, request_id: RequestId | None = None) -> bytes:
    """The ``error`` frame for ``exc`` (id from the argument, else from ``exc``)."""
    rid = request_id if request_id is not None else exc.request_id
    frame: dict[str, Any] = {"type": "error", "id": rid, "code": exc.code, "message": exc.message}
    if exc.retry_after_ms is not None:
        frame["retry_after_ms"] = exc.retry_after_ms
    return orjson.dumps(frame)


def encode_hello(*, version: str, limits: dict[str, int], models: list[str], auth_required: bool) -> bytes:
    """The ``hello`` frame sent on connect: ``limits`` plus the codec's own (``max_id_length``)."""
    frame: dict[str, Any] = {
        "type": "hello",
        "server": "wsserve",
        "version": version,
        "protocol": PROTOCOL_VERSION,
        "limits": {**limits, "max_id_length": MAX_ID_LENGTH},
        "models": models,
    }
    if auth_required:
        frame["auth_required"] = True
    return orjson.dumps(frame)
