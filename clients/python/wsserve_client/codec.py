"""Sans-I/O codec: request frames to bytes, server frames to result values.

Nothing here touches a socket or awaits. Requests are encoded with orjson into the exact bytes
sent as one text frame; numpy arrays (and numpy scalars) are serialized natively when numpy is
present. Frames are decoded by the connection's reader (``orjson.loads``); the ``parse_*``
functions turn those dicts into the frozen values of :mod:`wsserve_client.results`. Fields a
server adds are ignored.
"""

from __future__ import annotations

import array
import math
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .results import (
    Chunk,
    GenerationResult,
    Limits,
    ModelInfo,
    ModelStatus,
    PredictResult,
    ServerHello,
    StreamSummary,
    VersionStatus,
)
from .tensors import Tensor, as_tensor, encode_frame

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
    "Version",
    "ADMIN_OPS",
    "timeout_to_ms",
    "parse_hello",
    "parse_result",
    "parse_chunk",
    "split_attributions",
    "ATTRIBUTIONS_SUFFIX",
    "parse_stream_done",
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
) -> bytes:
    """Encode a ``predict`` frame. ``inputs`` is an ``[n, d]`` nested sequence or array;
    the server validates its shape and values. Optional fields are omitted when default.

    ``binary``: a binary tensor frame asking for binary outputs; ``inputs`` is then a numpy
    array, an ``array.array`` of one row, a :class:`~wsserve_client.tensors.Tensor`, or
    ``{name: any of those}`` (see :func:`wsserve_client.tensors.as_tensor`)."""
    frame: dict[str, Any] = {"type": "predict", "id": request_id, "model": model}
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
            return encode_frame(frame, {name: _binary_input(v) for name, v in inputs.items()})
        return encode_frame(frame, _binary_input(inputs))
    return encode(frame)


def _binary_input(value: Any) -> Tensor:
    """One binary input: an ``array.array`` is one row unless it is a Tensor already."""
    if isinstance(value, array.array):
        return as_tensor(value, shape=(1, len(value)))
    return as_tensor(value)


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
    seed: int | None = None,
    stop: Sequence[str] | str | None = None,
    timeout: float | None = None,
    priority: int = 0,
    version: Version | None = None,
) -> bytes:
    """Encode a ``generate`` frame; ``None`` leaves a field to the server's default. A single
    ``stop`` string is sent as a one-element list. ``prompt`` is the text to continue, or a
    conversation (a sequence of ``{"role": ..., "content": ...}`` mappings, OpenAI's chat
    messages) sent as ``messages``: the server makes the prompt with the model's chat template
    and checks the messages (``bad_request`` naming the field). Anything else is a ``TypeError``
    here, before a request is sent."""
    frame: dict[str, Any] = {"type": "generate", "id": request_id, "model": model}
    if isinstance(prompt, str):
        frame["prompt"] = prompt
    else:
        frame["messages"] = chat_messages(prompt)
    if check_version(version) is not None:
        frame["version"] = version
    if max_tokens is not None:
        frame["max_tokens"] = max_tokens
    if temperature is not None:
        frame["temperature"] = temperature
    if top_k is not None:
        frame["top_k"] = top_k
    if seed is not None:
        frame["seed"] = seed
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


def encode_admin(op: str, request_id: RequestId, model: str, version: Version | None = None) -> bytes:
    """Encode ``{"type": op, "id", "model"[, "version"]}`` for ``op`` in :data:`ADMIN_OPS`.

    Raises:
        ValueError: ``op`` is not an admin operation (or a bad ``version``).
    """
    if op not in ADMIN_OPS:
        raise ValueError(f"not an admin operation: {op!r}; known: {', '.join(ADMIN_OPS)}")
    frame: dict[str, Any] = {"type": op, "id": request_id, "model": model}
    if check_version(version) is not None:
        frame["version"] = version
    return orjson.dumps(frame)


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_hello(frame: dict[str, Any]) -> ServerHello:
    """Build :class:`ServerHello` from a ``hello`` frame; missing fields become defaults.

    Raises:
        ValueError: ``frame`` is not a ``hello``.
    """
    if frame.get("type") != "hello":
        raise ValueError(f"expected a hello frame, got type {frame.get('type')!r}")
    raw_limits = frame.get("limits")
    lim = raw_limits if isinstance(raw_limits, dict) else {}
    models = frame.get("models")
    return ServerHello(
        server=str(frame.get("server", "")),
        version=str(frame.get("version", "")),
        protocol=_opt_int(frame.get("protocol")) or 1,
        limits=Limits(
            max_message_bytes=_opt_int(lim.get("max_message_bytes")),
            max_inflight=_opt_int(lim.get("max_inflight")),
            max_rows=_opt_int(lim.get("max_rows")),
            max_tokens=_opt_int(lim.get("max_tokens")),
            max_binary_header_bytes=_opt_int(lim.get("max_binary_header_bytes")),
        ),
        models=tuple(str(m) for m in models) if isinstance(models, list) else (),
    )


def to_numpy(outputs: Any) -> Any:
    """Convert nested lists to a float64 ``numpy.ndarray`` (each of them, for named outputs
    ``{name: rows}``).

    Raises:
        RuntimeError: numpy is not installed.
    """
    try:
        import numpy as np  # optional dependency, imported on demand
    except ImportError as exc:  # pragma: no cover - numpy is present in the test env
        raise RuntimeError("as_numpy=True needs numpy installed") from exc
    if isinstance(outputs, dict):
        return {name: np.asarray(rows, dtype=np.float64) for name, rows in outputs.items()}
    return np.asarray(outputs, dtype=np.float64)


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


def parse_result(frame: dict[str, Any], *, as_numpy: bool = False, explain: bool = False) -> PredictResult:
    """Build :class:`PredictResult` from a ``result`` frame (JSON, or a decoded binary frame).
    ``explain``: the request asked for attributions (a binary frame's are its second tensor)."""
    outputs = frame.get("outputs")
    attributions = frame.get("attributions")
    if _decoded(outputs):
        as_numpy = False
        if explain and attributions is None:
            outputs, attributions = split_attributions(outputs)
    return PredictResult(
        outputs=to_numpy(outputs) if as_numpy else outputs,
        model=str(frame.get("model", "")),
        version=str(frame.get("version", "")),
        timing=frame.get("timing") or {},
        request_id=frame["id"],
        attributions=to_numpy(attributions) if as_numpy and attributions is not None else attributions,
        explanation=frame.get("explanation"),
    )


def parse_chunk(frame: dict[str, Any], *, as_numpy: bool = False, explain: bool = False) -> Chunk:
    """Build :class:`Chunk` from a ``chunk`` frame (JSON, or a decoded binary frame);
    ``explain`` as for :func:`parse_result`."""
    outputs = frame.get("outputs")
    attributions = frame.get("attributions")
    if _decoded(outputs):
        as_numpy = False
        if explain and attributions is None:
            outputs, attributions = split_attributions(outputs)
    return Chunk(
        seq=int(frame.get("seq", 0)),
        offset=int(frame.get("offset", 0)),
        outputs=to_numpy(outputs) if as_numpy else outputs,
        attributions=to_numpy(attributions) if as_numpy and attributions is not None else attributions,
    )


def parse_stream_done(frame: dict[str, Any]) -> StreamSummary:
    """Build :class:`StreamSummary` from the ``done`` frame of a streamed predict."""
    return StreamSummary(
        reason=str(frame.get("reason", "complete")),
        rows=int(frame.get("rows", 0)),
        timing=frame.get("timing") or {},
        request_id=frame["id"],
        version=_opt_str(frame.get("version")),
        explanation=frame.get("explanation"),
    )


def parse_generation_done(frame: dict[str, Any], text: str) -> GenerationResult:
    """Build :class:`GenerationResult` from a generation's ``done`` frame and its text."""
    return GenerationResult(
        reason=str(frame.get("reason", "")),
        tokens=int(frame.get("tokens", 0)),
        timing=frame.get("timing") or {},
        text=text,
        request_id=frame["id"],
        version=_opt_str(frame.get("version")),
        prompt_tokens=_opt_count(frame.get("prompt_tokens")),
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
    """Build the list of :class:`ModelInfo` from a ``models`` reply."""
    out: list[ModelInfo] = []
    for m in frame.get("models") or ():
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
