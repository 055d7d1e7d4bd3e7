"""The Open Inference Protocol's gRPC messages, sans-I/O: protobuf in, checked values out, and back.

The messages are KServe v2's (Triton's ``GRPCInferenceService``, as the stubs
``tritonclient.grpc.service_pb2`` / ``model_config_pb2`` define them).  Every
check is the HTTP route's (:mod:`wsserve.rest.oip`): a request's id and
parameters through :func:`~wsserve.rest.oip.infer_head`, each input's shape and
datatype through :func:`~wsserve.rest.oip.input_header`, its values (finite,
in range) through :func:`~wsserve.rest.oip.input_array`, the requested outputs
through :func:`~wsserve.rest.oip.requested`; what is gRPC's own is where the
values come from:

- ``raw_input_contents``: one entry per input, in the order of ``inputs`` (then
  every input's values come raw), little-endian, exactly ``count × size`` bytes;
- else each input's typed ``contents``: ``bool_contents`` (BOOL),
  ``int_contents`` (INT8, INT16, INT32), ``int64_contents``, ``uint_contents``
  (UINT8, UINT16, UINT32), ``uint64_contents``, ``fp32_contents``,
  ``fp64_contents``, ``bytes_contents`` (BYTES, a model's string tensor); FP16
  only raw (no typed field holds it).  A raw BYTES entry holds each element as a
  4-byte little-endian length then its bytes
  (:func:`~wsserve.rest.oip.bytes_elements`).

Outputs go out as ``raw_output_contents`` (one entry per answered output, in
order; BYTES length-prefixed, as tritonclient's ``deserialize_bytes_tensor``
reads it), as Triton answers them.  Errors map to status codes by :func:`status_of`.

The model repository RPCs' messages go through the HTTP routes' rules too
(:mod:`wsserve.rest.modelrepo`): :func:`repository_op` reads a load/unload
request (its ``map<string, ModelRepositoryParameter>`` as the HTTP body's
``parameters`` object), :func:`repository_index` writes the index.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import grpc
import numpy as np
import orjson
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from ..errors import BadRequest, InvalidInput, WsserveError
from ..generation.logprobs import TokenLogprobs
from ..jsontypes import shown
from ..logcontrol import LOG_SETTINGS
from ..protocol import MAX_MODEL_NAME_LENGTH
from ..repository.pbtxt import completed_model_config_class
from ..rest import modelrepo, oip, sharedmem, tritongen
from ..rest.tritongen import GenerateOutputs, OutputValues, WithOutputValues
from ..sequences import sequence_of
from ..tracesettings import TRACE_SETTINGS

__all__ = ["GENERATE_OUTPUTS", "OUTPUT_TENSORS", "STATUS", "StreamEncoder", "StreamOutputsEncoder", "generate_request", "infer_response",
           "json_message", "parameters_of", "parse_infer", "repository_index", "repository_op", "requested_outputs", "shm_status", "status_of",
           "stream_error", "stream_flag", "stream_text", "token_bytes"]

#: wsserve's error code -> the gRPC status code it is answered with.
STATUS: Mapping[str, grpc.StatusCode] = {
    "bad_json": grpc.StatusCode.INVALID_ARGUMENT,
    "bad_request": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_input": grpc.StatusCode.INVALID_ARGUMENT,
    "duplicate_id": grpc.StatusCode.INVALID_ARGUMENT,
    "unknown_model": grpc.StatusCode.NOT_FOUND,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "rate_limited": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
    "cancelled": grpc.StatusCode.CANCELLED,
    "unauthorized": grpc.StatusCode.UNAUTHENTICATED,
    "forbidden": grpc.StatusCode.PERMISSION_DENIED,
    "shutting_down": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
}


def status_of(exc: WsserveError) -> grpc.StatusCode:
    """The status code of ``exc``: the one it names (``grpc_status``, a ``grpc.StatusCode`` name: a
    Triton Python model's error code), else :data:`STATUS` by its code, except a model (version)
    that exists but is not ready (HTTP's 503 ``unknown_model``): ``UNAVAILABLE``."""
    named = getattr(exc, "grpc_status", None)
    if named is not None:
        return grpc.StatusCode[named]
    if exc.code == "unknown_model" and getattr(exc, "http_status", None) == 503:
        return grpc.StatusCode.UNAVAILABLE
    return STATUS.get(exc.code, grpc.StatusCode.INTERNAL)


def parameters_of(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as the JSON request's ``parameters`` object
    (each value the one field it sets: bool, int, float or string)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(value, which)
    return out


def _set_parameters(target: Any, params: Mapping[str, Any]) -> None:
    for key, value in params.items():
        if type(value) is bool:
            target[key].bool_param = value
        elif type(value) is int:
            target[key].int64_param = value
        elif type(value) is float:
            target[key].double_param = value
        else:
            target[key].string_param = str(value)


#: OIP datatype -> (the typed ``contents`` field holding it, that field's numpy dtype).
_TYPED: Mapping[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(bool)),
    "INT8": ("int_contents", np.dtype("<i4")), "INT16": ("int_contents", np.dtype("<i4")),
    "INT32": ("int_contents", np.dtype("<i4")), "INT64": ("int64_contents", np.dtype("<i8")),
    "UINT8": ("uint_contents", np.dtype("<u4")), "UINT16": ("uint_contents", np.dtype("<u4")),
    "UINT32": ("uint_contents", np.dtype("<u4")), "UINT64": ("uint64_contents", np.dtype("<u8")),
    "FP32": ("fp32_contents", np.dtype("<f4")), "FP64": ("fp64_contents", np.dtype("<f8")),
}


def _typed_values(tensor: Any, wire: np.dtype, shape: list[int], count: int) -> np.ndarray:
    """An input's values from its typed ``contents`` field, as ``wire`` (integers range-checked)."""
    name, datatype = tensor.name, tensor.datatype
    if datatype == "BYTES":
        elements = tensor.contents.bytes_contents
        if len(elements) != count:
            raise InvalidInput(f"input {name!r}: shape {shape} needs {count} values in 'contents.bytes_contents'; "
                               f"it holds {len(elements)}")
        flat = np.empty(count, dtype=object)
        flat[:] = list(elements)
        return flat
    found = _TYPED.get(datatype)
    if found is None:
        raise BadRequest(f"input {name!r}: {datatype} values can only be sent in raw_input_contents")
    field, dtype = found
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} values in 'contents.{field}'; it holds "
                           f"{len(values)}")
    flat = np.array(values, dtype=dtype)
    if dtype != wire:
        flat = oip.integers_in_range(flat, wire, name)
    return flat


def parse_infer(request: Any, inputs: tuple[oip.Tensor, ...], outputs: tuple[oip.Tensor, ...], *, max_rows: int,
                explain_refusal: str | None, shm: oip.ShmAccess | None = None,
                max_message_bytes: int = 0) -> oip.InferRequest:
    """Check a ``ModelInferRequest`` against the model's tensors, as :func:`wsserve.rest.oip.parse_infer`
    checks an HTTP body (same rules, same messages where the field is the same); raises
    :class:`~wsserve.errors.BadRequest` or :class:`~wsserve.errors.InvalidInput`.

    The counts (inputs, raw entries, requested outputs) are checked first, before anything is
    copied out of the message, and each input's dimensions and byte count before its values are
    read, so the work done for a refused request is bounded whatever it holds.

    ``shm``: the shared memory regions an input's or output's ``shared_memory_*`` parameters may
    name (Triton's system shared memory extension); such an input has no ``contents`` and no
    ``raw_input_contents`` entry (the entries are the other inputs', in order, as
    ``tritonclient`` sends them); the inputs take at most ``max_message_bytes`` from shared
    memory in all (:class:`~wsserve.rest.oip.ShmInputs`; 0, the default: none may)."""
    given, raw = request.inputs, request.raw_input_contents
    if len(given) > oip.MAX_TENSORS:
        raise BadRequest(f"'inputs' holds {len(given)} tensors; at most {oip.MAX_TENSORS}")
    # inputs that name a region: a region parameter set to no value names none (shm_ref reads it as absent)
    in_shm = sum(1 for t in given if sharedmem.REGION in t.parameters
                 and t.parameters[sharedmem.REGION].WhichOneof("parameter_choice") is not None)
    _check_input_counts(len(given), len(raw), in_shm)
    if len(request.outputs) > oip.MAX_TENSORS:
        raise BadRequest(f"'outputs' must be an array of at most {oip.MAX_TENSORS} requested outputs")
    obj: dict[str, Any] = {"parameters": parameters_of(request.parameters)}
    if request.id:
        obj["id"] = request.id
    if request.outputs:
        obj["outputs"] = [{"name": o.name, "parameters": parameters_of(o.parameters)} for o in request.outputs]
    rid, priority, timeout, _binary, explain, attributions = oip.infer_head(obj, inputs, outputs, explain_refusal)
    by_name = {t.name: t for t in inputs}
    arrays: dict[str, np.ndarray] = {}
    rows = -1
    in_shm = oip.ShmInputs(shm, max_message_bytes)
    raw_index = 0
    for i, tensor in enumerate(given):
        name = tensor.name
        if not 0 < len(name) <= oip.MAX_NAME_LENGTH:
            raise BadRequest(f"'inputs' item {i} needs a 'name' (a string of 1 to {oip.MAX_NAME_LENGTH} characters)")
        spec = oip.input_spec(by_name, arrays, name)
        if len(tensor.shape) > oip.MAX_DIMS:  # input_header's check, before the dimensions are copied
            raise BadRequest(f"input {name!r}: 'shape' must be an array of 1 to {oip.MAX_DIMS} non-negative integers")
        shape = list(tensor.shape)
        count, wire = oip.input_header(spec, shape, tensor.datatype, max_rows)
        ref = sharedmem.shm_ref(parameters_of(tensor.parameters), f"input {name!r}") if tensor.parameters else None
        if ref is not None:
            if tensor.HasField("contents"):
                raise BadRequest(f"input {name!r} names a shared memory region and has 'contents': send its values once")
            array = oip.shm_input(ref, in_shm, shape, spec, count, wire, tensor.datatype)
        elif raw:
            if tensor.HasField("contents"):
                raise BadRequest(f"input {name!r} has 'contents' and raw_input_contents: send its values once")
            data = raw[raw_index]
            if wire.kind == "O":  # BYTES: length-prefixed elements
                raw_index += 1
                array = oip.input_array(oip.bytes_elements(data, count, name), shape, spec, borrowed=False)
                rows = oip.add_input(arrays, name, array, rows)
                continue
            if len(data) != count * wire.itemsize:
                raise InvalidInput(f"input {name!r}: raw_input_contents[{raw_index}] holds {len(data)} bytes; shape "
                                   f"{shape} of {tensor.datatype} needs {count * wire.itemsize}")
            raw_index += 1
            array = oip.input_array(np.frombuffer(data, dtype=wire), shape, spec, borrowed=True)
        else:
            array = oip.input_array(_typed_values(tensor, wire, shape, count), shape, spec, borrowed=False)
        rows = oip.add_input(arrays, name, array, rows)
    oip.require_all(arrays, inputs)
    shm_outputs: dict[int, sharedmem.ShmRef] = {}
    wanted = oip.requested(obj, outputs, False, attributions, shm_outputs)
    if shm_outputs:
        in_shm.check_outputs(shm_outputs, (*outputs, *attributions))
    return oip.InferRequest(rid, arrays, rows, wanted, priority, timeout, explain, shm_outputs,
                            sequence_of(obj["parameters"]))


def _check_input_counts(inputs: int, raw: int, in_shm: int = 0) -> None:
    """A request's ``inputs`` count (1 to :data:`~wsserve.rest.oip.MAX_TENSORS`) and its
    ``raw_input_contents`` count (none, or one per input not in shared memory, ``in_shm`` of
    them); raises :class:`~wsserve.errors.BadRequest`."""
    if not inputs:
        raise BadRequest("'inputs' must hold at least one input tensor")
    if inputs > oip.MAX_TENSORS:
        raise BadRequest(f"'inputs' holds {inputs} tensors; at most {oip.MAX_TENSORS}")
    if raw and raw != inputs - in_shm:
        counted = f"{inputs - in_shm} (not counting those in shared memory)" if in_shm else str(inputs)
        raise BadRequest(f"raw_input_contents holds {raw} tensors and 'inputs' {counted}: send every input's "
                         "values raw (one entry per input, in order) or every input's in its 'contents'")


def infer_response(model: str, version: str, rid: str | None, outputs: tuple[oip.Tensor, ...],
                   requested: list[tuple[int, bool]], values: list[np.ndarray],
                   parameters: Mapping[str, Any] | None,
                   shm_written: Collection[int] = ()) -> Any:
    """The ``ModelInferResponse``: each requested output (``values[i]`` is output ``i``, ``[n, *shape]``)
    in its declared datatype as one ``raw_output_contents`` entry; ``id`` echoed.  An output
    written into shared memory (its index in ``shm_written``) has an empty entry, as Triton
    answers it (the entries stay one per output, in order)."""
    response = service_pb2.ModelInferResponse(model_name=model, model_version=version, id=rid or "")
    for index, _binary in requested:
        spec = outputs[index]
        array = np.ascontiguousarray(values[index], dtype=oip.DATATYPES[spec.datatype])
        tensor = response.outputs.add()
        tensor.name = spec.name
        tensor.datatype = spec.datatype
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(b"" if index in shm_written else oip.bytes_raw(array)
                                            if spec.datatype == "BYTES" else array.tobytes())
    if parameters:
        _set_parameters(response.parameters, parameters)
    return response


def json_message(body: bytes, message: Any) -> Any:
    """``message`` (a protobuf message) filled from a JSON body the HTTP routes answer, by the
    protobuf JSON mapping: the OIP and Triton JSON shapes are these messages' (fields the message
    does not have, e.g. the metadata's ``parameters``, are left out)."""
    return json_format.Parse(body, message, ignore_unknown_fields=True)


def shm_status(regions: list[dict[str, Any]]) -> Any:
    """The ``SystemSharedMemoryStatusResponse`` of :meth:`~wsserve.rest.sharedmem.SystemSharedMemory.status`."""
    response = service_pb2.SystemSharedMemoryStatusResponse()
    for region in regions:
        entry = response.regions[region["name"]]
        entry.name, entry.key = region["name"], region["key"]
        entry.offset, entry.byte_size = region["offset"], region["byte_size"]
    return response


def model_config(body: bytes) -> Any:
    """Triton's ``ModelConfig`` from :func:`wsserve.rest.triton.model_config`'s JSON.  Read into the
    message class holding Triton's newer fields (:func:`~wsserve.repository.pbtxt.completed_model_config_class`:
    an ensemble's ``max_inflight_requests``) and carried into tritonclient's own class by the wire
    form, so a field an older tritonclient lacks still reaches the client (an unknown field to it)."""
    complete = completed_model_config_class(model_config_pb2)
    if complete is model_config_pb2.ModelConfig:
        return json_message(body, complete())
    return model_config_pb2.ModelConfig.FromString(json_message(body, complete()).SerializeToString())


# --------------------------------------------------------------------------- model repository


def repository_index(rows: list[dict[str, str]]) -> Any:
    """The ``RepositoryIndexResponse`` of :func:`wsserve.rest.modelrepo.index_rows`' rows, in order."""
    response = service_pb2.RepositoryIndexResponse()
    for row in rows:
        response.models.add(name=row["name"], version=row["version"], state=row["state"], reason=row["reason"])
    return response


def log_changes(settings: Any) -> dict[str, Any]:
    """A ``LogSettingsRequest``'s ``settings`` (name -> ``SettingValue``, each one of
    ``bool_param``, ``uint32_param``, ``string_param``) as the plain values ``POST /v2/logging``
    takes (:func:`~wsserve.logcontrol.updated` checks their names and types).  A setting that
    sets none of the three is refused naming it; so are more settings than there are names."""
    if len(settings) > len(LOG_SETTINGS):
        raise BadRequest(f"the request holds {len(settings)} log settings; there are {len(LOG_SETTINGS)}")
    changes: dict[str, Any] = {}
    for name, value in settings.items():
        which = value.WhichOneof("parameter_choice")
        if which is None:
            raise BadRequest(f"log setting {name[:64]!r} has no value")
        changes[name] = getattr(value, which)
    return changes


def log_settings(settings: Mapping[str, Any]) -> Any:
    """The ``LogSettingsResponse`` of ``GET /v2/logging``'s body: booleans as ``bool_param``,
    integers as ``uint32_param``, strings as ``string_param`` (what tritonclient reads)."""
    response = service_pb2.LogSettingsResponse()
    for name, value in settings.items():
        entry = response.settings[name]
        if type(value) is bool:
            entry.bool_param = value
        elif type(value) is int:
            entry.uint32_param = value
        else:
            entry.string_param = value
    return response


def trace_changes(settings: Any) -> dict[str, Any]:
    """A ``TraceSettingRequest``'s ``settings`` (name -> ``SettingValue`` holding a list of strings)
    as ``POST .../trace/setting`` takes them: ``trace_level`` a list, the others its one string, a
    setting with no value None (cleared).  Bounded: at most as many settings as there are names,
    each of at most 4 values of at most 64 characters."""
    if len(settings) > len(TRACE_SETTINGS):
        raise BadRequest(f"the request holds {len(settings)} trace settings; there are {len(TRACE_SETTINGS)}")
    changes: dict[str, Any] = {}
    for name, value in settings.items():
        values = list(value.value)
        if len(values) > 4 or any(len(v) > 64 for v in values):
            raise BadRequest(f"trace setting {name[:64]!r} holds too many or too long values")
        changes[name] = None if not values else values if name == "trace_level" else values[0] if len(values) == 1 else values
    return changes


def trace_settings(settings: Mapping[str, Any]) -> Any:
    """The ``TraceSettingResponse`` of ``GET .../trace/setting``'s body (each value as a list of strings)."""
    response = service_pb2.TraceSettingResponse()
    for name, value in settings.items():
        response.settings[name].value.extend(value if type(value) is list else [value])
    return response


def repository_op(op: str, request: Any) -> tuple[str, str | None, str | None]:
    """The model, version (None: every version) and config (None: the model's file) of ``op``'s
    ``RepositoryModelLoadRequest`` or
    ``RepositoryModelUnloadRequest``: ``repository_name`` must be empty
    (:func:`~wsserve.rest.modelrepo.check_repository_name`), ``model_name`` given (at most
    :data:`~wsserve.protocol.MAX_MODEL_NAME_LENGTH` characters), and its
    ``parameters`` (each the one field it sets: ``bool_param``, ``int64_param``, ``string_param``
    or ``bytes_param``) are checked as the HTTP body's by
    :func:`~wsserve.rest.modelrepo.admin_params`: ``version`` (``int64_param`` or ``string_param``),
    ``unload_dependents`` (``bool_param``, what ``tritonclient``'s ``unload_model`` sends), a
    load's ``config`` (``string_param``: what ``tritonclient``'s ``load_model(config=...)`` sends);
    ``file:...`` refused by name.  Raises :class:`~wsserve.errors.BadRequest`."""
    modelrepo.check_repository_name(request.repository_name)
    name = request.model_name
    if not name:
        raise BadRequest("'model_name' is required")
    if len(name) > MAX_MODEL_NAME_LENGTH:  # as the WebSocket's 'model' and HTTP's path segment
        raise BadRequest(f"'model_name' has {len(name)} characters; the limit is {MAX_MODEL_NAME_LENGTH}")
    params: dict[str, Any] = {}
    for key, value in request.parameters.items():
        which = value.WhichOneof("parameter_choice")
        if which is None:
            raise BadRequest(f"parameter {key[:64]!r} sets no value")
        params[key] = getattr(value, which)
    return (name, *modelrepo.admin_params(op, params))


# --------------------------------------------------------------------------- ModelStreamInfer (generation)


def _element(tensor: Any, raw: bytes | None) -> Any:
    """The one value of a small input of a generation request (``text_input``, ``stream``...):
    BYTES as ``bytes`` (raw: a 4-byte little-endian length, then its bytes), others as a Python
    scalar.  Raises :class:`~wsserve.errors.BadRequest` unless it holds exactly one element,
    counted before any is copied (a raw BYTES entry: its first element must end the entry)."""
    name, datatype = tensor.name, tensor.datatype
    if datatype == "BYTES":
        if raw is None:
            values = tensor.contents.bytes_contents
            _one(name, len(values))
            return values[0]
        if len(raw) < 4:
            if raw:
                raise BadRequest(f"input {name!r}: raw BYTES data ends inside an element's length")
            _one(name, 0)
        size = int.from_bytes(raw[:4], "little")
        if 4 + size > len(raw):
            raise BadRequest(f"input {name!r}: raw BYTES data ends inside an element")
        if 4 + size < len(raw):
            raise BadRequest(f"input {name!r} must hold one element; its raw BYTES data goes on past the first")
        return raw[4:]
    wire = oip.DATATYPES.get(datatype)
    if wire is None:
        raise BadRequest(f"input {name!r}: unsupported datatype {datatype!r}")
    if raw is not None:
        if len(raw) % wire.itemsize:
            raise BadRequest(f"input {name!r}: {len(raw)} raw bytes are not whole {datatype} values")
        _one(name, len(raw) // wire.itemsize)
        return np.frombuffer(raw, dtype=wire)[0].item()
    found = _TYPED.get(datatype)
    if found is None:
        raise BadRequest(f"input {name!r}: {datatype} values can only be sent in raw_input_contents")
    values = getattr(tensor.contents, found[0])
    _one(name, len(values))
    return values[0]


def _one(name: str, count: int) -> None:
    if count != 1:
        raise BadRequest(f"input {name!r} must hold one element, got {count}")


def generate_request(request: Any) -> dict[str, Any]:
    """A ``ModelStreamInferRequest`` to a generative model as the JSON body of Triton's generate
    extension (:func:`wsserve.rest.tritongen.parse_generate` checks it): each input of one element
    (Triton's vLLM backend's ``text_input`` BYTES, ``stream`` BOOL, ...) a field, the JSON object
    of one ``sampling_parameters`` BYTES input's fields too (sampling fields: not ``id`` or
    ``parameters``), and the request's ``parameters`` its
    ``parameters`` (so a field given twice is refused by name).  An input naming a shared memory
    region is refused naming it (a generation's inputs are never read from one)."""
    raw = request.raw_input_contents
    if len(request.inputs) > oip.MAX_TENSORS:  # counted before anything is copied out of the message
        raise BadRequest(f"'inputs' holds {len(request.inputs)} tensors; at most {oip.MAX_TENSORS}")
    for tensor in request.inputs:  # (before the raw count, which leaves out an input in a region)
        if sharedmem.REGION in tensor.parameters:
            raise BadRequest(f"input {tensor.name[:64]!r} names a shared memory region: a generation's inputs are "
                             "sent in the request")
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents holds {len(raw)} tensors and 'inputs' {len(request.inputs)}")
    obj: dict[str, Any] = {"parameters": parameters_of(request.parameters)}
    if request.id:
        obj["id"] = request.id
    fields: dict[str, Any] = {}
    seen: set[str] = set()
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in fields or name in seen:
            raise BadRequest(f"input {name!r} is given twice")
        seen.add(name)
        value = _element(tensor, raw[i] if raw else None)
        if type(value) is bytes:
            try:
                value = value.decode()
            except UnicodeDecodeError:
                raise BadRequest(f"input {name!r} is not UTF-8 text") from None
        if name == "sampling_parameters":  # the vLLM backend's JSON object of sampling fields
            try:
                sampling = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise BadRequest("input 'sampling_parameters' must be a JSON object") from None
            if type(sampling) is not dict:
                raise BadRequest("input 'sampling_parameters' must be a JSON object")
            for key, item in sampling.items():
                if key in ("parameters", "id"):  # the request's own, not sampling fields
                    raise BadRequest(f"'sampling_parameters' may not hold {key!r}")
                if key in fields:
                    raise BadRequest(f"'{key}' is given twice (an input and in 'sampling_parameters')")
                fields[key] = item
            continue
        if name in ("parameters", "id"):
            raise BadRequest(f"an input may not be named {name!r}")
        fields[name] = value
    obj.update(fields)
    return obj


def stream_flag(obj: Mapping[str, Any]) -> bool:
    """Whether a :func:`generate_request` body asks for one response per token: its ``stream``
    field (the BOOL input) or request parameter, false when absent.  Raises
    :class:`~wsserve.errors.BadRequest` for a value that is not a boolean (``parse_generate``
    refuses one given both ways)."""
    value = obj["stream"] if "stream" in obj else obj["parameters"].get("stream")
    if value is not None and type(value) is not bool:
        raise BadRequest(f"'stream' must be a boolean (a BOOL input or a bool_param parameter), got {shown(value)}")
    return value is True


class StreamEncoder:
    """The events of a generation (the encoder interface of :class:`~wsserve.rest.calls.CompletionCall`)
    as values for the gRPC front end: ``("token", its UTF-8 bytes, outputs)``, ``("end", reason,
    outputs)``, ``("tail",)``, ``("error", exc)``, and for an answer not streamed ``("full", text,
    outputs)``; ``outputs`` is None here (no additional output asked for), the
    :class:`~wsserve.rest.tritongen.OutputValues` of the event in :class:`StreamOutputsEncoder`
    (its strings UTF-8 encoded, as the text: once, counted by :func:`token_bytes`, then sent).
    ``prepend`` (:func:`~wsserve.rest.tritongen.prepended`: the prompt, or ``""``) comes before the
    generated text of the ``"full"`` answer."""

    __slots__ = ("prepend",)

    def __init__(self, prepend: str = "") -> None:
        self.prepend = prepend

    def start_events(self, index: int = 0) -> bytes:
        return b""

    def token_event(self, text: str, index: int = 0) -> tuple[str, bytes, Any]:
        return ("token", text.encode(), None)  # encoded once: counted, then sent as it is

    def choice_end_event(self, finish_reason: str, index: int = 0, unsent: int = 0) -> tuple[str, str, Any]:
        return ("end", finish_reason, None)

    def tail_events(self, prompt_tokens: int, tokens: int, include_usage: bool) -> tuple[str]:
        return ("tail",)

    def response(self, choices: list[Any], prompt_tokens: int, tokens: int) -> tuple[str, str, Any]:
        return ("full", self.prepend + choices[0][0], None)

    @staticmethod
    def error_event(exc: WsserveError, prompt_tokens: int | None = None, tokens: int = 0) -> tuple[str, WsserveError]:
        return ("error", exc)


class StreamOutputsEncoder(WithOutputValues, StreamEncoder):
    """A :class:`StreamEncoder` whose token, end and full events carry the values of the vLLM
    backend's additional outputs (the ``return_*`` flags), computed by the HTTP generate's
    :class:`~wsserve.rest.tritongen.OutputValues`; :func:`stream_text` writes them as output
    tensors.  :attr:`prompt_tokens` must be set before the first event."""

    __slots__ = ("values",)

    def __init__(self, outputs: GenerateOutputs, prepend: str = "") -> None:
        super().__init__(prepend)
        self.values = OutputValues(outputs)

    def token_event(self, text: str, index: int = 0) -> tuple[str, bytes, Any]:
        return ("token", text.encode(), _encoded(self.values.token(None)))

    def token_event_logprobs(self, text: str, logprobs: TokenLogprobs, index: int = 0) -> tuple[str, bytes, Any]:
        return ("token", text.encode(), _encoded(self.values.token(logprobs)))

    def choice_end_event(self, finish_reason: str, index: int = 0, unsent: int = 0) -> tuple[str, str, Any]:
        return ("end", finish_reason, _encoded(self.values.end(finish_reason, unsent)))

    def response(self, choices: list[Any], prompt_tokens: int, tokens: int) -> tuple[str, str, Any]:
        return ("full", self.prepend + choices[0][0], _encoded(self.values.response(choices[0], prompt_tokens, tokens)))


def _encoded(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each string UTF-8 encoded (the BYTES outputs' elements)."""
    return {name: value.encode() if type(value) is str else value for name, value in values.items()}


def token_bytes(text: bytes, outputs: Mapping[str, Any] | None) -> int:
    """What a streamed token's response holds until it is written, as the slow-consumer bound
    (``--max-write-buffer-bytes``) counts it: its text's bytes and its additional outputs' (a
    BYTES element's bytes, a number's 4), as an HTTP stream's event counts with its outputs."""
    if not outputs:
        return len(text)
    return len(text) + sum(len(value) if type(value) is bytes else 4 for value in outputs.values())


#: The vLLM backend's additional output tensors: name -> (datatype, shape) as the backend makes them
#: in a response (the declared datatypes, :data:`wsserve.rest.tritongen.GENERATE_OUTPUTS`';
#: ``num_input_tokens`` is a 0-d ``uint32``, the others one element per output sequence).
OUTPUT_TENSORS: Mapping[str, tuple[str, tuple[int, ...]]] = {
    t.name: (t.datatype, () if t.name == "num_input_tokens" else (1,)) for t in tritongen.GENERATE_OUTPUTS[1:]
}


#: A generation's outputs, as Triton's vLLM backend declares them: the text, then the additional ones.
GENERATE_OUTPUTS: tuple[str, ...] = tuple(t.name for t in tritongen.GENERATE_OUTPUTS)


def requested_outputs(request: Any) -> frozenset[str] | None:
    """The outputs a ``ModelStreamInferRequest`` to a generative model names in ``outputs``: only
    those are answered (as Triton answers a request that names its outputs; an additional output
    still needs its ``return_*`` flag to be produced); None when it names none (every output
    produced).  Raises :class:`~wsserve.errors.BadRequest` for a name not among
    :data:`GENERATE_OUTPUTS`, one named twice, or one naming a shared memory region (never written
    into one)."""
    if not request.outputs:
        return None
    names: set[str] = set()
    for requested in request.outputs:
        name = requested.name
        if name not in GENERATE_OUTPUTS:
            raise BadRequest(f"unknown output {name[:64]!r}; the model produces: {', '.join(GENERATE_OUTPUTS)}")
        if name in names:
            raise BadRequest(f"output {name!r} is requested twice")
        if sharedmem.REGION in requested.parameters:
            raise BadRequest(f"output {name!r} names a shared memory region: a generation's outputs are answered in "
                             "its responses")
        names.add(name)
    return frozenset(names)


def _bytes_element(data: bytes) -> bytes:
    """One raw BYTES element: its 4-byte little-endian length, then its bytes."""
    return len(data).to_bytes(4, "little") + data


def stream_text(model: str, version: str, rid: str | None, text: str | bytes, outputs: Mapping[str, Any] | None = None,
                *, final: bool, wanted: frozenset[str] | None = None) -> Any:
    """One ``ModelStreamInferResponse`` of a generation: ``text_output`` (BYTES ``[1]``, raw: ``text``
    UTF-8 encoded, or as it is when bytes), then each of ``outputs`` (the additional outputs'
    values, :data:`OUTPUT_TENSORS`: strings or bytes as BYTES, ``cumulative_logprob`` FP32, counts UINT32),
    the ``triton_final_response`` parameter (true on the last one, as Triton marks it).  ``wanted``
    (:func:`requested_outputs`): only those outputs, when the request named some."""
    response = service_pb2.ModelInferResponse(model_name=model, model_version=version, id=rid or "")
    if wanted is None or "text_output" in wanted:
        data = text.encode() if type(text) is str else text
        tensor = response.outputs.add()
        tensor.name, tensor.datatype = "text_output", "BYTES"
        tensor.shape.append(1)
        response.raw_output_contents.append(_bytes_element(data))
    for name, value in (outputs or {}).items():
        if wanted is not None and name not in wanted:
            continue
        datatype, shape = OUTPUT_TENSORS[name]
        tensor = response.outputs.add(name=name, datatype=datatype, shape=shape)
        if datatype == "BYTES":
            raw = _bytes_element(value if type(value) is bytes else value.encode())
        else:
            raw = np.asarray(value, dtype=oip.DATATYPES[datatype]).tobytes()
        response.raw_output_contents.append(raw)
    response.parameters["triton_final_response"].bool_param = final
    return service_pb2.ModelStreamInferResponse(infer_response=response)


def stream_error(exc: WsserveError, model: str, rid: str | None) -> Any:
    """A request's error on the stream (the stream goes on, as Triton's): ``error_message`` is
    wsserve's message, the response names the model and the request's id."""
    response = service_pb2.ModelInferResponse(model_name=model, id=rid or "")
    return service_pb2.ModelStreamInferResponse(error_message=exc.message, infer_response=response)
