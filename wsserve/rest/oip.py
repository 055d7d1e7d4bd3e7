"""The Open Inference Protocol v2 (KServe / Triton REST), sans-I/O: bytes in, values out, and back.

- :func:`signature` - a served model's input and output tensors
  (:class:`Tensor`: name, OIP datatype, per-row shape), from the model's own
  specs when it has them (repository models), else the built-in defaults
  (one ``FP64`` input :data:`DEFAULT_INPUT`, one ``FP64`` output
  :data:`DEFAULT_OUTPUT`).
- :func:`model_metadata`, :func:`server_metadata` - the metadata bodies.
- :func:`parse_infer` - an inference request (JSON, or JSON followed by binary
  tensor data when ``Inference-Header-Content-Length`` is given) checked
  against the signature; every number from the wire is bounded before it
  reaches numpy.  Raises :class:`~wsserve.errors.BadJson`,
  :class:`~wsserve.errors.BadRequest` or :class:`~wsserve.errors.InvalidInput`.
- :func:`encode_infer` - the response, JSON or JSON + binary outputs.
- :func:`attribution_tensors`, :func:`explain_parameters` - explanations
  (wsserve's extension, request parameter ``"explain": true``): one extra
  ``FP64`` output ``<output>_attributions`` of the input's per-row shape per
  model output, and the flat ``explain_*`` parameters that say how the
  attributions were computed (OIP parameter values are strings, numbers or
  booleans, so the WebSocket ``explanation`` object is spread over keys).

Datatypes: a float model (``FP16``/``FP32``/``FP64``) accepts ``FP16``,
``FP32`` and ``FP64`` input (rounded to the declared input type first) and
answers in its own output datatype; other models take exactly their
datatype.

``BYTES`` (string tensors: a Triton Python model's ``TYPE_STRING``) is taken by
a model that declares it, and only there: in JSON each element is a JSON string
(its UTF-8 bytes reach the model), in binary data (and gRPC's raw contents)
each element is a 4-byte little-endian length then its bytes, any bytes
(:func:`bytes_elements`: the element count is checked against the bytes given
before anything is allocated, a length running past the data is refused naming
the input and the element).  A BYTES output answered in JSON is a JSON string
per element, its bytes decoded as UTF-8 with each invalid byte replaced by
U+FFFD; ask for it with ``binary_data`` to get the exact bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..dtypes import OIP_DTYPES, OIP_NAMES, float_max, is_float, json_ready
from ..errors import BadRequest, InvalidInput
from ..explain import ATTRIBUTIONS_SUFFIX, DEFAULT_OUTPUT
from ..jsontypes import json_type, shown
from ..protocol import MAX_ID_LENGTH, loads
from ..sequences import sequence_of
from ..shapes import MAX_VALUES, VARIABLE, fits
from .sharedmem import ShmRef, SystemSharedMemory, shm_ref

__all__ = [
    "DATATYPES",
    "DEFAULT_INPUT",
    "DEFAULT_OUTPUT",
    "ATTRIBUTIONS_SUFFIX",
    "InferRequest",
    "ShmAccess",
    "Tensor",
    "attribution_tensors",
    "encode_infer",
    "add_input",
    "bytes_elements",
    "bytes_raw",
    "explain_parameters",
    "infer_head",
    "input_spec",
    "input_array",
    "input_header",
    "integers_in_range",
    "model_metadata",
    "parse_infer",
    "require_all",
    "requested",
    "server_metadata",
    "ShmInputs",
    "shm_input",
    "signature",
]

#: OIP datatype -> numpy dtype (little-endian, as the binary extension sends them): the model
#: dtypes of :mod:`wsserve.dtypes` under their OIP names, plus the integer and half-float
#: types the OIP may send (converted to the model's input dtype when it fits).
DATATYPES: Mapping[str, np.dtype] = OIP_DTYPES  # BF16: ml_dtypes.bfloat16, imported when first read
_FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})

#: Bounds on what a request may declare.
MAX_TENSORS = 64
MAX_DIMS = 8
MAX_NAME_LENGTH = 256
#: Values of one input of a model without a batch dimension, and of one row where a batching model's
#: dimension is variable (-1): the repository's bound on a row's values (``max_row_values`` in ``hello``).
MAX_WHOLE_VALUES = MAX_VALUES


@dataclass(frozen=True, slots=True)
class Tensor:
    """One model input or output as the OIP describes it: per-row ``shape`` (no batch dimension).

    ``batched`` false: the model has no batch dimension (a repository model with
    ``max_batch_size`` 0): ``shape`` is the tensor's whole shape on the wire, as
    Triton and KServe v2 take it (a request's shape must equal it; one row runs)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    batched: bool = True
    #: An input a request may leave out (config.pbtxt's ``optional: true``).
    optional: bool = False

    def wire_shape(self) -> list[int]:
        """The shape a request's tensor must have: ``[-1, *shape]`` (any rows), or ``shape`` unbatched."""
        return [-1, *self.shape] if self.batched else list(self.shape)

    def to_json(self, batched: bool = True) -> dict[str, Any]:
        """The metadata's tensor object: :meth:`wire_shape`, or (``batched`` false: a model without a batch
        dimension, e.g. a generative model's) ``shape`` itself."""
        return {"name": self.name, "datatype": self.datatype,
                "shape": self.wire_shape() if batched else list(self.shape)}


#: The input / output of the built-in models (a float64 ``[n, d]`` -> ``[n, k]`` map); the output's
#: name, and ``<output>`` + :data:`ATTRIBUTIONS_SUFFIX`, are :mod:`wsserve.explain`'s (one naming rule
#: with the WebSocket's binary frames: :func:`wsserve.explain.tensor_names`).
DEFAULT_INPUT = "input"


def signature(model: Any) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``(inputs, outputs)`` of a served model.

    A model with ``inputs``/``outputs`` tensor specs (``name``, ``shape``,
    ``dtype``: a repository model) is described by them; a built-in predictive
    model by its ``info.input_shape``/``output_shape`` as one ``FP64`` tensor
    each; a generative model has none (it takes no inference: its metadata and config list the
    generate extension's tensors, :data:`wsserve.rest.tritongen.GENERATE_INPUTS`)."""
    specs_in, specs_out = getattr(model, "inputs", None), getattr(model, "outputs", None)
    if specs_in is not None and specs_out is not None:
        batched = getattr(model, "batching", True)  # a repository model's: False for max_batch_size 0
        return (tuple(Tensor(s.name, OIP_NAMES[s.dtype], tuple(s.shape), batched, getattr(s, "optional", False))
                      for s in specs_in),
                tuple(Tensor(s.name, OIP_NAMES[s.dtype], tuple(s.shape), batched) for s in specs_out))
    info = getattr(model, "info", None)
    if info is None or info.task == "generation":
        return (), ()
    return (Tensor(DEFAULT_INPUT, "FP64", tuple(info.input_shape)),), (Tensor(DEFAULT_OUTPUT, "FP64", tuple(info.output_shape)),)


#: What :func:`parse_infer` answers ``"explain": true`` with unless the caller says the model can be explained.
_NOT_EXPLAINED = "explanations are not available for this model"


def attribution_tensors(inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The extra outputs of an explained inference: ``<output>_attributions`` per output, ``FP64``,
    the per-row shape of the model's one input (feature ``j`` of row ``i`` is its share of the
    row's explained output).  Empty unless the model has exactly one input (the only kind
    :mod:`wsserve.explain` explains)."""
    if len(inputs) != 1:
        return ()
    return tuple(Tensor(t.name + ATTRIBUTIONS_SUFFIX, "FP64", inputs[0].shape, inputs[0].batched) for t in outputs)


def explain_parameters(explanation: Mapping[str, Any] | None) -> dict[str, Any]:
    """OIP ``parameters`` describing explanations: ``{"explain": false}`` for a model that cannot be
    explained, else ``{"explain": true, "explain_method": ..., "explain_baseline": ...,
    "explain_target": ..., "explain_steps": ...}`` (the keys of the WebSocket ``explanation``
    object, prefixed: OIP parameter values may not be objects)."""
    if explanation is None:
        return {"explain": False}
    return {"explain": True, **{f"explain_{key}": value for key, value in explanation.items()}}


def server_metadata(version: str, extensions: list[str]) -> bytes:
    return orjson.dumps({"name": "wsserve", "version": version, "extensions": extensions})


def model_metadata(name: str, versions: list[str], platform: str, inputs: tuple[Tensor, ...],
                   outputs: tuple[Tensor, ...], parameters: Mapping[str, Any] | None = None, *,
                   batched: bool = True) -> bytes:
    """The model metadata body; ``parameters`` (e.g. :func:`explain_parameters`) is added when given
    (not in the spec's metadata: clients that do not know it ignore it).  ``batched``: the tensors'
    shapes are per row (the batch dimension, -1, is prepended); false: whole (a generative model's,
    :data:`wsserve.rest.tritongen.GENERATE_INPUTS`)."""
    body: dict[str, Any] = {
        "name": name, "versions": versions, "platform": platform,
        "inputs": [t.to_json(batched) for t in inputs], "outputs": [t.to_json(batched) for t in outputs],
    }
    if parameters is not None:
        body["parameters"] = parameters
    return orjson.dumps(body)


class InferRequest:
    """A checked inference request.

    ``arrays`` maps each model input to its ``[n, *shape]`` array (in the
    input's declared dtype), ``rows`` is ``n``; ``outputs`` lists
    ``(output index, binary)`` for the outputs to return, in order; with
    ``explain`` an index ``len(model outputs) + i`` is output ``i``'s
    attributions (:func:`attribution_tensors`).
    """

    __slots__ = ("id", "arrays", "rows", "outputs", "priority", "timeout_us", "explain", "shm_outputs", "sequence")

    def __init__(self, rid: str | None, arrays: dict[str, np.ndarray], rows: int, outputs: list[tuple[int, bool]],
                 priority: int, timeout_us: int | None, explain: bool = False,
                 shm_outputs: dict[int, ShmRef] | None = None,
                 sequence: tuple[int | str, bool, bool] | None = None) -> None:
        self.id = rid
        self.arrays = arrays
        self.rows = rows
        self.outputs = outputs
        self.priority = priority
        self.timeout_us = timeout_us
        self.explain = explain
        #: the outputs (by index, as in ``outputs``) to write into a shared memory region
        self.shm_outputs = shm_outputs or {}
        #: the request's sequence (parameters ``sequence_id``, ``sequence_start``, ``sequence_end``:
        #: :func:`~wsserve.sequences.sequence_of`), None: none
        self.sequence = sequence


#: How a request reaches the registered shared memory regions: called (once per request, when a
#: tensor names a region) it checks the caller may use them and returns them; None: refused.
ShmAccess = Callable[[], SystemSharedMemory]
#: What a tensor naming a region gets when the transport offers none.
_NO_SHM = "shared memory regions are not available here"


class ShmInputs:
    """One request's way to the shared memory regions (every transport's): ``access`` is called
    once, when a tensor first names a region (it checks the caller may use them); the bytes the
    request's inputs take from regions are counted, at most ``limit`` in all
    (``max_message_bytes``: what a request body could carry instead, so a request holds no more
    of the server's memory one way than the other)."""

    __slots__ = ("access", "limit", "used", "_regions")

    def __init__(self, access: ShmAccess | None, limit: int) -> None:
        self.access = access
        self.limit = limit
        #: bytes the request's inputs took from regions so far
        self.used = 0
        self._regions: SystemSharedMemory | None = None

    def regions(self) -> SystemSharedMemory:
        """The regions through ``access`` (checked once per request);
        :class:`~wsserve.errors.BadRequest` when ``access`` is None."""
        if self._regions is None:
            if self.access is None:
                raise BadRequest(_NO_SHM)
            self._regions = self.access()
        return self._regions

    def read(self, ref: ShmRef, name: str) -> bytearray:
        """A copy of input ``name``'s bytes ``ref`` names, counted: refused
        (:class:`~wsserve.errors.InvalidInput` naming the input and the limit) before anything is
        read or allocated when they would take the request past ``limit``; else raises as
        :meth:`~wsserve.rest.sharedmem.SystemSharedMemory.read`."""
        if self.used + ref.size > self.limit:
            before = f" after the {self.used} bytes of the inputs before it" if self.used else ""
            raise InvalidInput(f"input {name!r}: {ref.size} bytes in shared memory{before}; a request's inputs may "
                               f"take at most {self.limit} bytes from shared memory (max_message_bytes, the bound "
                               "on a request's body)")
        data = self.regions().read(ref, f"input {name!r}")
        self.used += ref.size
        return data

    def check_outputs(self, shm_outputs: Mapping[int, ShmRef], answerable: tuple[Tensor, ...]) -> None:
        """The caller may use the regions, and each output to be written into one (``shm_outputs``,
        by index into ``answerable``) names a registered region and a place that fits it (its
        ``shared_memory_offset`` + ``shared_memory_byte_size``), checked before the model runs;
        raises as :meth:`~wsserve.rest.sharedmem.SystemSharedMemory.check`."""
        regions = self.regions()
        for index, ref in shm_outputs.items():
            regions.check(ref, f"output {answerable[index].name!r}")


_NO_PARAMS: Mapping[str, Any] = {}


def _params(obj: Mapping[str, Any], what: str, which: Any = "") -> Mapping[str, Any]:
    """``obj["parameters"]`` ({} when absent); ``what`` and ``which`` name ``obj`` in the error
    (formatted only then: this runs for every tensor)."""
    params = obj.get("parameters")
    if params is None:
        return _NO_PARAMS
    if type(params) is not dict:
        label = f"{what} {which!r}" if which else what
        raise BadRequest(f"{label}: 'parameters' must be an object, got {json_type(params)}")
    return params


def _name(obj: Mapping[str, Any], what: str, index: int) -> str:
    name = obj.get("name")
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_LENGTH:
        raise BadRequest(f"{what} item {index} needs a 'name' (a string of 1 to {MAX_NAME_LENGTH} characters)")
    return name


def infer_head(obj: Mapping[str, Any], inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...],
               explain_refusal: str | None = _NOT_EXPLAINED) -> tuple[str | None, int, int | None, bool, bool, tuple[Tensor, ...]]:
    """What an inference request says besides its input tensors, checked (every transport's: the
    HTTP body's JSON object, or the gRPC request's fields as one): ``(id, priority, timeout in
    microseconds or None, binary_data_output, explain, the attribution tensors to answer)``.
    ``obj`` holds ``id`` and ``parameters`` (priority, timeout, binary_data_output, explain;
    the sequence's are :func:`~wsserve.sequences.sequence_of`'s; others are ignored).  Raises :class:`~wsserve.errors.BadRequest`; see :func:`parse_infer`."""
    rid = obj.get("id")
    if rid is not None and (type(rid) is not str or len(rid) > MAX_ID_LENGTH):
        raise BadRequest(f"'id' must be a string of at most {MAX_ID_LENGTH} characters")
    params = _params(obj, "the request")
    priority = params.get("priority", 0)
    if type(priority) is not int or priority < 0:
        raise BadRequest(f"parameter 'priority' must be an integer >= 0, got {shown(priority)}")
    timeout = params.get("timeout")
    if timeout is not None and (type(timeout) is not int or not 0 < timeout <= (1 << 31) * 1000):
        raise BadRequest(f"parameter 'timeout' (microseconds) must be an integer in (0, {(1 << 31) * 1000}], got {shown(timeout)}")
    binary_out = params.get("binary_data_output", False)
    if type(binary_out) is not bool:
        raise BadRequest("parameter 'binary_data_output' must be a boolean")
    explain = params.get("explain", False)
    if type(explain) is not bool:
        raise BadRequest(f"parameter 'explain' must be a boolean, got {json_type(explain)}")
    if explain and explain_refusal is not None:
        raise BadRequest(explain_refusal)
    attributions = attribution_tensors(inputs, outputs) if explain else ()
    if explain and not attributions:
        raise BadRequest("explanations need a model with one input")
    return rid, priority, timeout, binary_out, explain, attributions


def parse_infer(body: bytes, header_length: int | None, inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...],
                *, max_rows: int, explain_refusal: str | None = _NOT_EXPLAINED,
                shm: ShmAccess | None = None, max_message_bytes: int = 0) -> InferRequest:
    """Check an inference request body against the model's tensors (see the module docstring).

    ``header_length``: the ``Inference-Header-Content-Length`` value (the JSON
    part's size; the rest of ``body`` is binary tensor data), or None for a
    JSON-only body.  ``max_rows`` bounds the batch dimension.

    ``explain_refusal``: why the model cannot be explained (raised as
    :class:`~wsserve.errors.BadRequest` for a request with parameter
    ``"explain": true``, before its inputs are read), or None if it can: then
    such a request may also ask for the :func:`attribution_tensors`, and gets
    each one after its output unless ``outputs`` names it.

    ``shm``: the shared memory regions (Triton's system shared memory extension) an input's or
    output's ``shared_memory_*`` parameters may name; an input's bytes are copied out of its
    region here, at most ``max_message_bytes`` for all the inputs (:class:`ShmInputs`; 0, the
    default: none may), and an output's place is checked against its region."""
    if header_length is None:
        obj, binary = loads(body), None
    else:
        if not 0 < header_length <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length is {header_length}; the body has {len(body)} bytes")
        obj, binary = loads(body[:header_length]), memoryview(body)[header_length:]
    if type(obj) is not dict:
        raise BadRequest(f"the inference request must be a JSON object, got {json_type(obj)}")
    rid, priority, timeout, binary_out, explain, attributions = infer_head(obj, inputs, outputs, explain_refusal)
    given = obj.get("inputs")
    if type(given) is not list or not given:
        raise BadRequest("'inputs' must be a non-empty array of input tensors")
    if len(given) > MAX_TENSORS:
        raise BadRequest(f"'inputs' holds {len(given)} tensors; at most {MAX_TENSORS}")
    by_name = {t.name: t for t in inputs}
    arrays: dict[str, np.ndarray] = {}
    rows = -1
    offset = 0
    in_shm = ShmInputs(shm, max_message_bytes)
    for i, tensor in enumerate(given):
        if type(tensor) is not dict:
            raise BadRequest(f"'inputs' item {i} must be an object, got {json_type(tensor)}")
        name = _name(tensor, "'inputs'", i)
        spec = input_spec(by_name, arrays, name)
        array, used = _input(tensor, spec, binary, offset, max_rows, in_shm)
        offset += used
        rows = add_input(arrays, name, array, rows)
    require_all(arrays, inputs)
    if binary is not None and offset != len(binary):
        raise BadRequest(f"the body holds {len(binary)} bytes of binary tensor data; the inputs use {offset}")
    shm_outputs: dict[int, ShmRef] = {}
    wanted = requested(obj, outputs, binary_out, attributions, shm_outputs)
    if shm_outputs:
        in_shm.check_outputs(shm_outputs, (*outputs, *attributions))
    return InferRequest(rid, arrays, rows, wanted, priority, timeout, explain, shm_outputs,
                        sequence_of(_params(obj, "the request")))


def input_spec(by_name: Mapping[str, Tensor], arrays: Mapping[str, np.ndarray], name: str) -> Tensor:
    """The model's tensor for input ``name``, not given before (``arrays``: the inputs read so far);
    :class:`~wsserve.errors.BadRequest` naming an unknown or repeated input."""
    spec = by_name.get(name)
    if spec is None:
        raise BadRequest(f"unknown input {name!r}; the model takes: {', '.join(by_name) or 'none'}")
    if name in arrays:
        raise BadRequest(f"input {name!r} is given twice")
    return spec


def add_input(arrays: dict[str, np.ndarray], name: str, array: np.ndarray, rows: int) -> int:
    """Put input ``name``'s ``array`` in ``arrays``; its rows must be the other inputs' ``rows``
    (-1: it is the first).  Returns the rows; raises :class:`~wsserve.errors.InvalidInput`."""
    if rows >= 0 and array.shape[0] != rows:
        raise InvalidInput(f"input {name!r} has {array.shape[0]} rows; the other inputs have {rows}")
    arrays[name] = array
    return array.shape[0]


def require_all(arrays: Mapping[str, np.ndarray], inputs: tuple[Tensor, ...]) -> None:
    """Every input of the model but an ``optional`` one was given, and at least one:
    :class:`~wsserve.errors.BadRequest` names the first missing."""
    if len(arrays) != len(inputs):
        missing = next((t.name for t in inputs if t.name not in arrays and not t.optional), None)
        if missing is None and not arrays:
            missing = inputs[0].name
        if missing is not None:
            raise BadRequest(f"missing input {missing!r}; the model takes: "
                             + ", ".join(t.name + (" (optional)" if t.optional else "") for t in inputs))


def requested(obj: Mapping[str, Any], outputs: tuple[Tensor, ...], binary_default: bool,
              attributions: tuple[Tensor, ...], shm_outputs: dict[int, ShmRef] | None = None) -> list[tuple[int, bool]]:
    """``(index, binary)`` of the tensors to answer, in order (``obj["outputs"]``: the requested
    outputs, each ``{"name", "parameters"}``; absent or empty: all, as Triton answers both, and as
    gRPC, which cannot tell them apart, reads them): indexes past the model's outputs are
    ``attributions`` (each follows its output, in the output's form, unless named itself).
    An output whose parameters name a shared memory region (:func:`~wsserve.rest.sharedmem.shm_ref`)
    goes in ``shm_outputs`` by index (None: refused)."""
    wanted = obj.get("outputs")
    answerable = (*outputs, *attributions)
    if wanted is None or wanted == []:
        return [(i, binary_default) for i in range(len(answerable))]
    if type(wanted) is not list or len(wanted) > MAX_TENSORS:
        raise BadRequest(f"'outputs' must be an array of at most {MAX_TENSORS} requested outputs")
    index = {t.name: i for i, t in enumerate(answerable)}
    out = []
    for i, item in enumerate(wanted):
        if type(item) is not dict:
            raise BadRequest(f"'outputs' item {i} must be an object, got {json_type(item)}")
        name = _name(item, "'outputs'", i)
        if name not in index:
            if not attributions and name.endswith(ATTRIBUTIONS_SUFFIX) and \
                    any(t.name + ATTRIBUTIONS_SUFFIX == name for t in outputs):
                raise BadRequest(f"output {name!r} is only answered with parameter 'explain': true")
            raise BadRequest(f"unknown output {name!r}; the model produces: {', '.join(index)}")
        params = _params(item, "output", name)
        if "classification" in params:
            raise BadRequest("the classification extension is not supported")
        binary = params.get("binary_data", binary_default)
        if type(binary) is not bool:
            raise BadRequest(f"output {name!r}: parameter 'binary_data' must be a boolean")
        if any(j == index[name] for j, _ in out):  # (at most MAX_TENSORS of them)
            raise BadRequest(f"output {name!r} is requested twice")
        ref = shm_ref(params, f"output {name!r}") if params else None
        if ref is not None:
            if shm_outputs is None:
                raise BadRequest(_NO_SHM)
            if answerable[index[name]].datatype == "BYTES":
                raise BadRequest(f"output {name!r} is BYTES: it is answered in the response, not in shared memory")
            shm_outputs[index[name]] = ref
        out.append((index[name], binary))
    if attributions:
        named = {i for i, _ in out}
        with_attr = []
        for i, binary in out:
            with_attr.append((i, binary))
            if i < len(outputs) and len(outputs) + i not in named:
                with_attr.append((len(outputs) + i, binary))
        out = with_attr
    return out


def input_header(spec: Tensor, shape: Any, datatype: Any, max_rows: int) -> tuple[int, np.dtype]:
    """Check one input's declared ``shape`` (``[n, *spec.shape]``, ``1 <= n <= max_rows``; for a
    tensor that is not ``batched``, exactly ``spec.shape``: one row) and
    ``datatype`` (the spec's, or any float type for a float model) against ``spec`` - every
    transport's check; return ``(values it holds, the dtype its data comes in)``.  Raises
    :class:`~wsserve.errors.BadRequest` or :class:`~wsserve.errors.InvalidInput` naming the input."""
    name = spec.name
    least = 1 if spec.batched else 0
    if type(shape) is not list or not least <= len(shape) <= MAX_DIMS:
        raise BadRequest(f"input {name!r}: 'shape' must be an array of {least} to {MAX_DIMS} non-negative integers")
    for d in shape:
        if type(d) is not int or d < 0:
            raise BadRequest(f"input {name!r}: 'shape' must be an array of {least} to {MAX_DIMS} non-negative integers")
    if not spec.batched:
        if not fits(shape, spec.shape):
            raise InvalidInput(f"input {name!r} has shape {shape}; the model takes {list(spec.shape)} (it has no "
                               "batch dimension: max_batch_size 0)")
        if 0 in shape:  # a variable (-1) dimension given no size
            raise InvalidInput(f"input {name!r} has shape {shape}; every dimension must be at least 1")
        if math.prod(shape) > MAX_WHOLE_VALUES:  # a variable (-1) dimension: the request's size, bounded here
            raise InvalidInput(f"input {name!r} has shape {shape}: {math.prod(shape)} values; at most {MAX_WHOLE_VALUES}")
        n = 1
    else:
        if not fits(shape[1:], spec.shape):
            raise InvalidInput(f"input {name!r} has shape {shape}; the model takes {[-1, *spec.shape]}")
        n = shape[0]
        if not 1 <= n <= max_rows:
            raise InvalidInput(f"input {name!r} has {n} rows; between 1 and {max_rows} are accepted")
        if VARIABLE in spec.shape:  # the request sizes a row: every dimension >= 1, its values bounded
            if 0 in shape:
                raise InvalidInput(f"input {name!r} has shape {shape}; every dimension must be at least 1")
            if math.prod(shape[1:]) > MAX_WHOLE_VALUES:
                raise InvalidInput(f"input {name!r} has shape {shape}: {math.prod(shape[1:])} values per row; "
                                   f"at most {MAX_WHOLE_VALUES}")
    count = math.prod(shape)
    if type(datatype) is not str or datatype not in DATATYPES:  # a list or object is unhashable
        raise BadRequest(f"input {name!r}: unsupported datatype {shown(datatype)}; supported: {', '.join(DATATYPES)}")
    if datatype != spec.datatype and not (datatype in _FLOATS and spec.datatype in _FLOATS):
        raise InvalidInput(f"input {name!r} is {spec.datatype}; got {datatype}")
    return count, DATATYPES[datatype]


def input_array(flat: np.ndarray, shape: list[int], spec: Tensor, borrowed: bool, finite: bool = False) -> np.ndarray:
    """The model's ``[n, *spec.shape]`` array (its declared dtype) from ``flat``, the input's values
    as they came (:func:`input_header` checked ``shape``; ``flat`` holds exactly their count):
    floats must be finite (unless ``finite``: already known), a float narrowed to the model's
    type must fit it.  ``borrowed``: ``flat`` is a view of a request's bytes (copied: the model
    gets an array of its own).  Raises :class:`~wsserve.errors.InvalidInput` naming the input."""
    name = spec.name
    if not finite and is_float(flat.dtype) and not np.isfinite(flat).all():
        raise InvalidInput(f"input {name!r} holds a value that is not finite")
    want = DATATYPES[spec.datatype]
    array = flat.reshape(shape if spec.batched else [1, *shape])  # one row of an unbatched model
    if array.dtype != want:
        # FP64 into FP32, FP32 into BF16 (whose range is a little narrower), ...
        if is_float(array.dtype) and is_float(want) and float_max(array.dtype) > float_max(want):
            limit = float_max(want)
            if array.size and not (np.abs(array.astype(np.float64)) <= limit).all():
                raise InvalidInput(f"input {name!r} holds a value out of the {spec.datatype} range")
        array = array.astype(want)
    elif borrowed:
        array = array.copy()
    return array


def integers_in_range(values: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """Integers that came in a wider type (e.g. gRPC's ``int_contents`` for ``INT8``) as ``dtype``;
    raises :class:`~wsserve.errors.InvalidInput` naming input ``name`` (as the JSON check does)
    for one outside ``dtype``'s range."""
    info = np.iinfo(dtype)
    if values.size:
        lo, hi = values.min(), values.max()
        bad = lo if lo < info.min else hi if hi > info.max else None
        if bad is not None:
            raise InvalidInput(f"input {name!r} holds {int(bad)}, which is not an integer in "
                               f"[{int(info.min)}, {int(info.max)}]")
    return values.astype(dtype)


def shm_input(ref: ShmRef, shm: ShmInputs, shape: list[int], spec: Tensor, count: int,
              wire: np.dtype, datatype: str) -> np.ndarray:
    """An input's values from a shared memory region (every transport's): ``ref.size`` must be
    ``count`` values of ``wire``; copied out (counted against the request's bound,
    :meth:`ShmInputs.read`), then checked as raw values are (:func:`input_array`).  Raises
    :class:`~wsserve.errors.BadRequest` or :class:`~wsserve.errors.InvalidInput` naming the input."""
    name = spec.name
    if wire.kind == "O":
        raise BadRequest(f"input {name!r} is BYTES: send its strings in the request, not in shared memory")
    if ref.size != count * wire.itemsize:
        raise InvalidInput(f"input {name!r}: 'shared_memory_byte_size' must be {count * wire.itemsize} "
                           f"({count} {datatype} values), got {ref.size}")
    data = shm.read(ref, name)
    return input_array(np.frombuffer(data, dtype=wire), shape, spec, False)  # a copy of its own already


def _input(tensor: Mapping[str, Any], spec: Tensor, binary: memoryview | None, offset: int,
           max_rows: int, shm: ShmInputs) -> tuple[np.ndarray, int]:
    """One input of a JSON (or JSON + binary, or shared memory) request as ``[n, *spec.shape]``
    in the spec's dtype, and the binary bytes it used."""
    name = spec.name
    shape = tensor.get("shape")
    datatype = tensor.get("datatype")
    count, wire = input_header(spec, shape, datatype, max_rows)
    params = _params(tensor, "input", name)
    ref = shm_ref(params, f"input {name!r}") if params else None
    if ref is not None:
        if "data" in tensor or "binary_data_size" in params:
            raise BadRequest(f"input {name!r} names a shared memory region and has data: send its values once")
        return shm_input(ref, shm, shape, spec, count, wire, datatype), 0
    size = params.get("binary_data_size")
    if size is not None:
        if binary is None:
            raise BadRequest(f"input {name!r} has 'binary_data_size' but the request has no "
                             "Inference-Header-Content-Length header")
        if wire.kind == "O":
            return _binary_strings(binary, offset, size, name, count, shape, spec), size
        if type(size) is not int or size != count * wire.itemsize:
            raise InvalidInput(f"input {name!r}: 'binary_data_size' must be {count * wire.itemsize} "
                               f"({count} {datatype} values), got {shown(size)}")
        if offset + size > len(binary):
            raise BadRequest(f"input {name!r}: the body ends before its {size} bytes of binary data")
        flat = np.frombuffer(binary[offset : offset + size], dtype=wire)
        return input_array(flat, shape, spec, True), size  # borrowed: a view of the body
    data = tensor.get("data")
    if type(data) is not list:
        raise BadRequest(f"input {name!r} needs 'data' (an array) or a 'binary_data_size' parameter")
    flat = _json_data(data, shape, wire, DATATYPES[spec.datatype], name, count)
    return input_array(flat, shape, spec, False, True), 0  # not borrowed; finite: JSON numbers are


def _binary_strings(binary: memoryview, offset: int, size: Any, name: str, count: int, shape: list[int],
                    spec: Tensor) -> np.ndarray:
    """A BYTES input's ``size`` bytes of binary data at ``offset`` (``count`` length-prefixed
    elements) as the model's ``[n, *spec.shape]`` object array."""
    if type(size) is not int or size < 4 * count:
        raise InvalidInput(f"input {name!r}: 'binary_data_size' must be an integer of at least {4 * count} "
                           f"({count} BYTES elements, each a 4-byte length then its bytes), got {shown(size)}")
    if offset + size > len(binary):
        raise BadRequest(f"input {name!r}: the body ends before its {size} bytes of binary data")
    return input_array(bytes_elements(binary[offset : offset + size], count, name), shape, spec, False)


def bytes_elements(data: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """``count`` BYTES elements from ``data`` (each a 4-byte little-endian length, then that many
    bytes; together exactly ``data``) as a flat object array of ``bytes``.  Every transport's
    binary form (HTTP's binary data extension, gRPC's ``raw_input_contents``).  ``count`` is
    checked against ``len(data)`` (4 bytes per element at least) before anything is allocated;
    raises :class:`~wsserve.errors.InvalidInput` naming input ``name`` (and the element) for data
    that does not hold exactly ``count`` elements."""
    total = len(data)
    if 4 * count > total:
        raise InvalidInput(f"input {name!r}: {total} bytes of BYTES data cannot hold {count} elements "
                           "(each is a 4-byte length then its bytes)")
    b = data if type(data) is bytes else bytes(data)  # slices of bytes are the elements (one copy each)
    unpack = _LENGTH.unpack_from
    elements: list[bytes] = [b""] * count
    pos = 0
    for i in range(count):  # ~0.2 us an element: a 1 MiB request holds at most 262,144 of them
        if pos + 4 > total:
            raise InvalidInput(f"input {name!r}: its BYTES data ends inside element {i}'s 4-byte length")
        (length,) = unpack(b, pos)
        pos += 4
        if length > total - pos:
            raise InvalidInput(f"input {name!r}: element {i}'s length prefix is {length} bytes; only "
                               f"{total - pos} remain in its BYTES data")
        elements[i] = b[pos : pos + length]
        pos += length
    if pos != total:
        raise InvalidInput(f"input {name!r}: {total - pos} bytes of its BYTES data follow its {count} elements")
    out = np.empty(count, dtype=object)
    out[:] = elements
    return out


_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix


def _json_data(data: list[Any], shape: list[int], dtype: np.dtype, want: np.dtype, name: str, count: int) -> np.ndarray:
    """Tensor data from JSON, flat or nested as ``shape``; element types checked (no strings, no
    booleans for numbers, integers in range)."""
    if data and type(data[0]) is list:
        data = _flatten(data, shape, name)
    if len(data) != count:
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} values; 'data' holds {len(data)}")
    kind = dtype.kind
    if kind == "O":  # BYTES: JSON strings, their UTF-8 bytes to the model
        out = np.empty(count, dtype=object)
        for i, v in enumerate(data):
            if type(v) is not str:
                raise InvalidInput(f"input {name!r} is BYTES: every element must be a string, got {shown(v)}")
            out[i] = v.encode()
        return out
    if is_float(dtype):
        for v in data:
            t = type(v)
            if t is not float and t is not int:
                raise InvalidInput(f"input {name!r} holds {shown(v)}, which is not a number")
        # JSON numbers are finite doubles (orjson refuses 1e400 and integers past 64 bits): only a
        # narrower type can overflow, so check its range on the Python values (no numpy warnings).
        narrow = dtype if float_max(dtype) <= float_max(want) else want
        if narrow.itemsize < 8 and data:
            limit = float_max(narrow)
            if max(data) > limit or min(data) < -limit:
                raise InvalidInput(f"input {name!r} holds a value out of the {OIP_NAMES[narrow.name]} range")
        return np.array(data, dtype=dtype)
    if kind == "b":
        if any(type(v) is not bool for v in data):
            raise InvalidInput(f"input {name!r} is BOOL: every value must be true or false")
        return np.array(data, dtype=dtype)
    info = np.iinfo(dtype)
    lo, hi = int(info.min), int(info.max)
    for v in data:
        if type(v) is not int or not lo <= v <= hi:
            raise InvalidInput(f"input {name!r} holds {shown(v)}, which is not an integer in [{lo}, {hi}]")
    return np.array(data, dtype=dtype)


def _flatten(data: list[Any], shape: list[int], name: str) -> list[Any]:
    """Row-major flattening of nested lists that must match ``shape`` exactly."""
    out: list[Any] = []

    def walk(node: Any, depth: int) -> None:
        if depth == len(shape):
            if type(node) is list:
                raise InvalidInput(f"input {name!r}: 'data' is nested deeper than shape {shape}")
            out.append(node)
            return
        if type(node) is not list or len(node) != shape[depth]:
            raise InvalidInput(f"input {name!r}: 'data' does not have shape {shape}")
        for child in node:
            walk(child, depth + 1)

    walk(data, 0)
    return out


def encode_infer(model: str, version: str, rid: str | None, outputs: tuple[Tensor, ...],
                 requested: list[tuple[int, bool]], values: list[np.ndarray],
                 parameters: Mapping[str, Any] | None = None,
                 shm_written: Collection[int] = ()) -> tuple[bytes, int | None]:
    """The response body, and the JSON part's length when binary outputs follow it (the
    ``Inference-Header-Content-Length`` header), else None.

    ``values[i]`` is output ``i`` as ``[n, *shape]`` (any float or int dtype); it is
    answered in the output's declared datatype.  ``outputs`` may go on past the model's
    own (the :func:`attribution_tensors`).  ``parameters``: the response's, if any.
    ``shm_written``: the outputs (by index) written into a shared memory region: answered with
    their name, datatype and shape only, as Triton answers them (its HTTP clients read an output's
    ``parameters`` as binary data's)."""
    described = []
    binary: list[bytes] = []
    for index, as_binary in requested:
        spec = outputs[index]
        array = np.ascontiguousarray(values[index], dtype=DATATYPES[spec.datatype])
        item: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if index in shm_written:  # in its region already
            pass
        elif spec.datatype == "BYTES":
            if as_binary:
                raw = bytes_raw(array)
                item["parameters"] = {"binary_data_size": len(raw)}
                binary.append(raw)
            else:
                item["data"] = json_ready(array.reshape(-1))
        elif as_binary:
            raw = array.tobytes()
            item["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            item["data"] = json_ready(array.reshape(-1))  # (BF16 as float32, which holds each value)
        described.append(item)
    head: dict[str, Any] = {"model_name": model, "model_version": version}
    if rid is not None:
        head["id"] = rid
    if parameters is not None:
        head["parameters"] = parameters
    head["outputs"] = described
    text = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return text, None
    return b"".join((text, *binary)), len(text)


def bytes_raw(array: np.ndarray) -> bytes:
    """A BYTES tensor (an object array of ``bytes``) in its binary form, row-major: each element's
    4-byte little-endian length, then its bytes (what tritonclient's ``deserialize_bytes_tensor``
    reads)."""
    return b"".join(len(v).to_bytes(4, "little") + v for v in array.flat)
