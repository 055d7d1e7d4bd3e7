"""Triton's ``config.pbtxt`` of one repository model, mapped onto the :class:`~.config.ModelConfig`
config.toml gives (so loading, batching and serving do not know which file it came from).

The text is parsed by protobuf's own text-format parser
(``google.protobuf.text_format.Parse``) into Triton's ``ModelConfig`` message
(``tritonclient.grpc.model_config_pb2``, the ``triton`` extra: ``pip install
'wsserve[triton]'``), imported only when a config.pbtxt is read.  Unknown
fields and syntax errors are protobuf's errors, with line and column.

Mapped (Triton's semantics, triton-inference-server/server
``docs/user_guide/model_configuration.md``; docs/repository.md has the table):

- ``platform: "onnxruntime_onnx"`` / ``backend: "onnxruntime"`` (or neither:
  the ONNX backend) -> ``backend = "onnx"``; ``backend: "python"`` (Triton's
  Python backend, :mod:`.triton_backend`) -> ``backend = "python"`` with
  :attr:`ModelConfig.triton_model_config` (the JSON its model.py gets; ``input``
  and ``output`` required, ``-1`` dims served, ``parameters`` passed on, not warned
  about); ``platform: "ensemble"``: an ensemble (:mod:`.ensemble_config`); any
  other platform or backend is refused, naming it.
- ``name`` must equal the model's directory name when given.
- ``max_batch_size`` (0..65536; 0, the default, = no batch dimension).  Left 0
  in a config that does not list both ``input`` and ``output``, it is Triton's
  auto-complete (the onnxruntime backend's ``AutoCompleteMaxBatch``): the graph
  is batched when every input and output has a dynamic first dimension
  (:attr:`ModelConfig.autofill_batching`), else run whole.
- ``input`` / ``output``: ``name``, ``data_type`` (TYPE_FP16, TYPE_FP32, TYPE_FP64,
  TYPE_INT8, TYPE_INT16, TYPE_INT32, TYPE_INT64, TYPE_UINT8, TYPE_UINT16, TYPE_UINT32,
  TYPE_UINT64, TYPE_BOOL; TYPE_STRING for Triton Python models and ensembles only, refused
  for an ONNX model; TYPE_BF16 refused: numpy has no bfloat16), ``dims`` (per row: without the batch
  dimension when ``max_batch_size > 0``), kept as written
  (:attr:`TensorConfig.triton_dims`): the ONNX backend compares them with the
  graph at load by Triton's rule (:mod:`.tritondims`; with ``max_batch_size: 0``
  the dims are the whole shape, a leading ``-1`` included).  A ``-1`` dimension
  (variable) passes that check only against a dynamic graph dimension; the
  ONNX backend serves it as Triton does: each request gives its size there (with
  batching, requests are batched only with requests of the same size).  ``dims:
  [1]`` on a graph scalar is Triton's rule for scalars (:func:`.tritondims.scalar_dims`).
  ``output`` lists the outputs to return.
- ``version_policy`` ``latest``/``all``/``specific``; absent: ``latest { num_versions: 1 }``
  (Triton's default, not config.toml's ``all``).
- ``dynamic_batching { max_queue_delay_microseconds }`` -> ``max_delay_ms``;
  without ``dynamic_batching`` Triton runs each request as it comes: the
  batching window is 0 (greedy batching: a batch is what is queued when the
  model is free, no waiting).
- ``dynamic_batching { default_queue_policy { max_queue_size,
  default_timeout_microseconds, allow_timeout_override } }`` -> ``max_queue_requests``
  (0: no bound; it bounds each priority level, as Triton's), ``default_timeout_ms`` (0: none), ``allow_timeout_override``
  (protobuf's default, false, as Triton reads it) and ``timeout_action`` (``REJECT``, the default:
  a request past its queue timeout ends; ``DELAY``: it waits on behind its level's others,
  :class:`~wsserve.batching.QueuePolicy`).
- ``dynamic_batching { priority_levels, default_priority_level }`` -> ``priority_levels``
  (0..:data:`~wsserve.batching.MAX_PRIORITY_LEVELS`; 0, or no ``dynamic_batching``: one level,
  a request's priority is not used, as in Triton) and ``default_priority_level`` (1..levels when
  levels are set, Triton's check): the model's queue has that many classes, level 1 first
  (:class:`~wsserve.batching.PriorityLevels`).  ``preserve_ordering`` with more than one level is
  refused (as Triton does).
- ``dynamic_batching { priority_queue_policy [ { key: <level> value: { ... } } ] }`` ->
  ``priority_queue_policies``: a level's own queue policy (its fields read as
  ``default_queue_policy``'s, above; a field it leaves out is protobuf's default, not the default
  policy's, as in Triton), each key in 1..``priority_levels`` (Triton's check; others refused,
  naming them).
- ``instance_group``: the sum of ``count`` (default 1 per group) ->
  ``instances`` (1..64).  ``KIND_CPU``/``KIND_AUTO`` as they are;
  ``KIND_GPU`` runs on CPU (wsserve is CPU only), ``count`` per listed GPU, with
  a warning; ``KIND_MODEL`` is refused.
- ``default_model_filename`` -> the version directories' model file.
- ``response_cache { enable: true }`` -> ``response_cache = true`` (answered from the
  server's cache, ``--response-cache-bytes``; without one, a warning when served).
- ``parameters { key: "intra_op_thread_count" }`` (the onnxruntime backend's)
  -> ``[onnx] intra_op_num_threads`` (1..64; 0 = onnxruntime's default, here 1).

- per input ``optional: true`` (:attr:`TensorConfig.optional`): a request may leave it out; the
  model gets none (requests batch only with requests giving the same inputs).  Every listed input
  of a model must not be optional; an ensemble's own inputs may not be.
- per tensor ``reshape { shape }`` (:func:`check_reshape`): ``dims`` is what requests send and
  answers give, ``reshape`` what the model takes and gives (:attr:`TensorConfig.model_dims`; the
  ONNX backend compares the graph with it; the backends reshape each batch on the way in and out).

- ``sequence_batching`` (a Python or an ONNX model) -> :attr:`ModelConfig.sequence`
  (:func:`_sequence_batching`, served by :mod:`wsserve.sequence_worker`); its ``state`` (implicit
  state, :func:`_states`) for an ONNX model only.  ``iterative_sequence: true`` -> only
  :attr:`ModelConfig.iterative_sequence` (a Python model only, :func:`_iterative_sequence`:
  request rescheduling, served by :mod:`wsserve.decoupled`, or :mod:`wsserve.worker` for a
  non-decoupled model with ``max_batch_size > 0``).

- Ragged batching (:mod:`.ragged`, :func:`_ragged`): per input ``allow_ragged_batch`` ->
  :attr:`TensorConfig.ragged`; ``batch_input`` -> :attr:`ModelConfig.batch_inputs` (an ONNX model's);
  ``batch_output`` (``BATCH_SCATTER_WITH_INPUT_SHAPE``) -> :attr:`ModelConfig.batch_outputs` (an ONNX
  model's).  Each needs ``max_batch_size > 0`` and no ``sequence_batching``; a ragged input takes no
  ``reshape``; a Python model takes ``allow_ragged_batch`` only.

- ``runtime``: ``""`` for any model, or the library Triton on Linux loads for its backend:
  ``"libtriton_python.so"`` for a ``backend: "python"`` model, ``"libtriton_onnxruntime.so"`` for an
  ONNX one; any other is refused, naming the field (:func:`_runtime_refusal`: Triton's rule).

Refused (semantics wsserve cannot honour), naming the field:
``sequence_batching.state`` of a Python model, ``ensemble_scheduling`` (outside an ensemble),
``batch_input`` and ``batch_output`` of a Python model, ``model_transaction_policy { decoupled: true }``
but for a ``backend: "python"`` model (served streaming, :mod:`wsserve.decoupled`), and per
tensor ``is_shape_tensor``, ``is_non_linear_format_io: true`` (a TensorRT GPU layout; Triton takes it
for TensorRT models only).

Fields of current Triton that older tritonclient releases lack (:data:`_NEWER_FIELDS`:
``ensemble_scheduling.max_inflight_requests``, ``runtime``, ``model_metrics``, per tensor
``is_non_linear_format_io``) parse whatever tritonclient is installed: :func:`completed_model_config_class`.

``model_warmup`` is honoured (:mod:`.warmup`: a version runs its samples before it serves).
Accepted and ignored (hints): every other field set (``optimization``, ``model_metrics``: wsserve's
per-model histograms have fixed buckets, other ``parameters``, the other
``dynamic_batching`` and ``instance_group`` fields, ``label_filename``,
``format``...): listed in :attr:`ModelConfig.warnings`, which the server logs as
one warning.  Sans-I/O: :func:`parse_pbtxt` takes the text.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..batching import MAX_PRIORITY_LEVELS, TIMEOUT_ACTIONS, QueuePolicy
from ..config import MAX_DELAY_MS
from ..dtypes import BYTES, TENSOR_DTYPES
from ..jsontypes import shown
from ..sequences import Control, SequenceConfig, State
from .config import (
    _NAME_RE,
    MAX_BATCH_SIZE,
    MAX_DEFAULT_TIMEOUT_MS,
    MAX_INSTANCES,
    MAX_POLICY_VERSIONS,
    MAX_QUEUE_REQUESTS,
    MAX_TENSORS,
    MAX_THREADS,
    MAX_VERSION,
    ModelConfig,
    TensorConfig,
    VersionPolicy,
    config_text,
)
from .ensemble_config import ENSEMBLE_PLATFORM, parse_ensemble
from .errors import ConfigError
from .layout import PBTXT_FILE
from .ragged import BatchInput, BatchOutput
from .tensors import MAX_DIM, MAX_DIMS, MAX_ROW_ELEMENTS
from .warmup import parse_warmup

__all__ = ["PBTXT_FILE", "TRITON_TYPES", "INSTALL_HINT", "check_reshape", "completed_model_config_class",
           "parse_json_config", "parse_pbtxt"]

#: Triton ``data_type`` -> wsserve dtype (the ones wsserve serves).
TRITON_TYPES = {
    "TYPE_FP32": "float32",
    "TYPE_FP64": "float64",
    "TYPE_INT32": "int32",
    "TYPE_INT64": "int64",
    "TYPE_BOOL": "bool",
    "TYPE_FP16": "float16",
    "TYPE_INT8": "int8",
    "TYPE_INT16": "int16",
    "TYPE_UINT8": "uint8",
    "TYPE_UINT16": "uint16",
    "TYPE_UINT32": "uint32",
    "TYPE_UINT64": "uint64",
    "TYPE_BF16": "bfloat16",  # ml_dtypes.bfloat16 (wsserve.dtypes)
    "TYPE_STRING": BYTES,  # Triton Python models and ensembles only (:func:`_no_onnx_strings`)
}

INSTALL_HINT = "pip install 'wsserve[triton]'"

_PLATFORMS = ("onnxruntime_onnx",)
_BACKENDS = ("onnxruntime", "python")
_SERVED = 'platform "onnxruntime_onnx" or backend "onnxruntime" (ONNX models), backend "python" (Triton Python models)'
#: Fields whose meaning wsserve cannot give: the model is refused.
_REFUSED = {
    "ensemble_scheduling": 'ensemble steps outside an ensemble (set platform: "ensemble")',
}
_TENSOR_REFUSED = {
    "is_shape_tensor": "shape tensors",
    # (true only: false is protobuf's default, not listed) Triton itself takes it for TensorRT models only
    "is_non_linear_format_io": "non-linear format tensors (a TensorRT GPU layout; Triton takes it for "
                               "TensorRT models only)",
}


def _runtime_refusal(backend: str, value: str) -> str | None:
    """Why ``runtime: value`` is refused for a model of ``backend`` ("python", else ONNX); None: taken.

    Triton's rule (core ``src/backend_model.cc``, ``GetBackendLibraryProperties``): ``runtime`` names the
    backend's library file, looked for in the model's version folder, its folder and
    ``<backend directory>/<backend>``; empty is the default, ``libtriton_<backend>.so`` on Linux
    (``AssembleCPPRuntimeLibraryName``; ``triton_<backend>.dll`` on Windows only, a file Linux Triton does not
    find); ``model.py`` names a Python-based backend, run from ``<backend directory>/<backend>/model.py``,
    which neither the Python nor the ONNX Runtime backend ships.  wsserve (POSIX) takes what Triton on Linux
    loads with its own backends: ``""`` and ``libtriton_python.so`` / ``libtriton_onnxruntime.so``."""
    name = "python" if backend == "python" else "onnxruntime"
    library = f"libtriton_{name}.so"
    if value in ("", library):
        return None
    fix = f"leave it out, or {library!r}, the library Triton on Linux loads for backend {name!r}"
    if value == f"triton_{name}.dll":
        return f"{value!r} is Triton's library name on Windows, a file Triton on Linux (as wsserve) does not find: {fix}"
    if value == "model.py":
        return (f"{value!r} names a Python-based backend, run from <backend directory>/{name}/model.py, which the "
                f"{name} backend does not ship (Triton fails to load it): {fix}")
    return f"{value[:128]!r} is not served: wsserve runs its own runtime for each backend ({fix})"


_THREADS_PARAM = "intra_op_thread_count"


def _message_class() -> tuple[Any, str]:
    """``(Triton's ModelConfig message class, "")``; ``(None, why)`` when tritonclient[grpc] is not
    installed or does not import (protobuf's generated code raises ``VersionError``, an ``Exception``,
    for a protobuf older than it was generated for), or its ``model_config.proto`` cannot be completed
    (:func:`completed_model_config_class`).  The class is tritonclient's own when it has every field of
    :data:`_NEWER_FIELDS`; else one built once from its descriptor with the missing fields added."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None, ""
    except Exception as exc:  # the model is refused naming it; the scan goes on with the others
        return None, f" (it does not import: {type(exc).__name__}: {exc})"
    try:
        return completed_model_config_class(model_config_pb2), ""
    except Exception as exc:  # noqa: BLE001 - a descriptor protobuf refuses: the model is refused naming it
        return None, f" (its model_config.proto could not be completed: {type(exc).__name__}: {exc})"


#: Fields of Triton's ``model_config.proto`` that tritonclient releases before 2.63 lack (2.41 is
#: what pip resolves next to ``grpcio-health-checking`` >= 1.85), by message: ``(name, number, type)``
#: with Triton's numbers; ``ModelConfig.model_metrics`` is the message :func:`_add_model_metrics` adds.
_NEWER_FIELDS: dict[str, tuple[tuple[str, int, str], ...]] = {
    "ModelEnsembling": (("max_inflight_requests", 2, "TYPE_UINT32"),),
    "ModelConfig": (("runtime", 25, "TYPE_STRING"), ("model_metrics", 26, ".inference.ModelMetrics")),
    "ModelInput": (("is_non_linear_format_io", 9, "TYPE_BOOL"),),
    "ModelOutput": (("is_non_linear_format_io", 7, "TYPE_BOOL"),),
}


@functools.cache
def completed_model_config_class(module: Any) -> Any:
    """The ``ModelConfig`` message class of tritonclient's ``model_config_pb2`` ``module`` holding
    every field of :data:`_NEWER_FIELDS`: the module's own when it has them all; else built from a
    private ``DescriptorPool`` holding the module's ``FileDescriptorProto`` with the missing fields (and
    the ``ModelMetrics`` message) added, so a config written for a current Triton parses.  The default
    pool (and tritonclient's classes, which the gRPC service uses) is not touched.

    Cached per module (``functools.cache``): the result is a pure function of the imported module,
    which Python itself keeps for the process's life, so the cache holds what the import system
    already holds, built once rather than per config file (building a pool is milliseconds, a
    repository may hold hundreds of configs); it is never invalidated because its input cannot change."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = module.DESCRIPTOR
    missing = {message: [f for f in fields if f[0] not in file.message_types_by_name[message].fields_by_name]
               for message, fields in _NEWER_FIELDS.items()}
    if not any(missing.values()):
        return module.ModelConfig
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    messages = {m.name: m for m in proto.message_type}
    for message, fields in missing.items():
        for name, number, kind in fields:
            field = messages[message].field.add(name=name, number=number, json_name=_json_name(name),
                                                label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
            if kind.startswith("."):
                field.type, field.type_name = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, kind
            else:
                field.type = descriptor_pb2.FieldDescriptorProto.Type.Value(kind)
    if "ModelMetrics" not in messages:
        _add_model_metrics(proto)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName(f"{file.package}.ModelConfig")
    get = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22; before: MessageFactory
    return get(descriptor) if get is not None else message_factory.MessageFactory(pool).GetPrototype(descriptor)


def _json_name(name: str) -> str:
    """protobuf's JSON name of field ``name`` (lowerCamelCase)."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _add_model_metrics(proto: Any) -> None:
    """Add Triton's ``ModelMetrics`` message to ``proto`` (a ``FileDescriptorProto`` of
    ``model_config.proto``): ``repeated MetricControl metric_control = 1``; ``MetricControl {
    MetricIdentifier metric_identifier = 1 { string family = 1 }; oneof metric_options {
    HistogramOptions histogram_options = 2 { repeated double buckets = 1 } } }``."""
    from google.protobuf import descriptor_pb2

    F = descriptor_pb2.FieldDescriptorProto
    metrics = proto.message_type.add(name="ModelMetrics")
    control = metrics.nested_type.add(name="MetricControl")
    identifier = control.nested_type.add(name="MetricIdentifier")
    identifier.field.add(name="family", number=1, json_name="family", type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    histogram = control.nested_type.add(name="HistogramOptions")
    histogram.field.add(name="buckets", number=1, json_name="buckets", type=F.TYPE_DOUBLE, label=F.LABEL_REPEATED)
    control.oneof_decl.add(name="metric_options")
    prefix = f".{proto.package}.ModelMetrics.MetricControl"
    control.field.add(name="metric_identifier", number=1, json_name="metricIdentifier", type=F.TYPE_MESSAGE,
                      type_name=f"{prefix}.MetricIdentifier", label=F.LABEL_OPTIONAL)
    control.field.add(name="histogram_options", number=2, json_name="histogramOptions", type=F.TYPE_MESSAGE,
                      type_name=f"{prefix}.HistogramOptions", label=F.LABEL_OPTIONAL, oneof_index=0)
    metrics.field.add(name="metric_control", number=1, json_name="metricControl", type=F.TYPE_MESSAGE,
                      type_name=f".{proto.package}.ModelMetrics.MetricControl", label=F.LABEL_REPEATED)


def _enum_name(path: Path, key: str, message: Any, field: str) -> str:
    """The name of enum field ``field`` of ``message``. proto3 enums are open: protobuf's text parser
    takes any number (``data_type: 99``), which has no name; that is refused naming the field."""
    number = getattr(message, field)
    value = message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number.get(number)
    if value is None:
        raise ConfigError(path, key, f"{number} is not one of Triton's values")
    return str(value.name)


def _dims(path: Path, key: str, dims: Any) -> tuple[int, ...] | None:
    """Per-row dims -> a shape, or ``None`` when a dim is -1 (the graph gives it)."""
    if not dims:
        raise ConfigError(path, key, "is required (the per-row shape; Triton's dims)")
    if len(dims) > MAX_DIMS:
        raise ConfigError(path, key, f"has {len(dims)} dimensions; at most {MAX_DIMS}")
    for d in dims:
        if d != -1 and not 0 < d <= MAX_DIM:
            raise ConfigError(path, key, f"dimension {d} is out of range [1, {MAX_DIM}] (or -1: variable)")
    if -1 in dims:
        return None
    total = 1
    for d in dims:
        total *= d
    if total > MAX_ROW_ELEMENTS:
        raise ConfigError(path, key, f"shape {list(dims)} has {total} values per row; at most {MAX_ROW_ELEMENTS}")
    return tuple(dims)


def _tensors(path: Path, key: str, tensors: Any, warnings: list[str]) -> tuple[TensorConfig, ...] | None:
    if not tensors:
        return None  # the graph's own
    if len(tensors) > MAX_TENSORS:
        raise ConfigError(path, key, f"has {len(tensors)} entries; at most {MAX_TENSORS}")
    out: list[TensorConfig] = []
    for i, t in enumerate(tensors):
        where = f"{key}[{i}]"
        for field, value in t.ListFields():
            if field.name in _TENSOR_REFUSED:
                raise ConfigError(path, f"{where}.{field.name}", f"is not supported: wsserve does not serve {_TENSOR_REFUSED[field.name]}")
            if field.name in ("label_filename", "format"):
                warnings.append(f"{where}.{field.name}")
        if not _NAME_RE.match(t.name):
            if not t.name:
                raise ConfigError(path, f"{where}.name", "is required")
            raise ConfigError(path, f"{where}.name", f"must be 1-128 printable characters without spaces or quotes, got {t.name!r}")
        if any(o.name == t.name for o in out):
            raise ConfigError(path, f"{where}.name", f"duplicate name {t.name!r}")
        type_name = _enum_name(path, f"{where}.data_type", t, "data_type")
        if type_name == "TYPE_INVALID":
            raise ConfigError(path, f"{where}.data_type", f"is required (one of {', '.join(TRITON_TYPES)})")
        if type_name not in TRITON_TYPES:
            raise ConfigError(path, f"{where}.data_type", f"{type_name} is not served by wsserve (it serves {', '.join(TRITON_TYPES)})")
        dims = list(t.dims)
        shape = _dims(path, f"{where}.dims", dims)
        model_dims = check_reshape(path, where, dims, list(t.reshape.shape)) if t.HasField("reshape") else None
        optional = bool(getattr(t, "optional", False))  # inputs only (Triton's ModelOutput has no such field)
        ragged = bool(getattr(t, "allow_ragged_batch", False))  # inputs only, too
        if ragged and model_dims is not None:
            raise ConfigError(path, f"{where}.allow_ragged_batch", "is not served with reshape (a ragged input is "
                              "fed to the model as its requests' values in one dimension)")
        out.append(TensorConfig(t.name, shape, TRITON_TYPES[type_name], tuple(dims), model_dims, optional, ragged))
    return tuple(out)


def check_reshape(path: Path, where: str, dims: list[int], reshape: list[int]) -> tuple[int, ...]:
    """A tensor's ``reshape { shape }`` checked against its ``dims`` by Triton's rule: split at the
    variable (``-1``) dimensions, both hold as many parts, each of the same number of values (so
    ``[2, 2]`` -> ``[4]``, ``[1]`` -> ``[]``, ``[2, -1]`` -> ``[1, 2, -1]``; not ``[3, -1]`` -> ``[-1]``);
    returned as the model's per-row shape.  ``shape: []`` is a scalar row (``dims: [ 1 ]`` on a model
    taking ``[batch]``).  wsserve takes at most one ``-1`` (its size on the other side is computed
    from it, both ways).  Raises :class:`ConfigError` naming ``where.reshape.shape``."""
    key = f"{where}.reshape.shape"
    if len(reshape) > MAX_DIMS:
        raise ConfigError(path, key, f"has {len(reshape)} dimensions; at most {MAX_DIMS}")
    for d in reshape:
        if d != -1 and not 0 < d <= MAX_DIM:
            raise ConfigError(path, key, f"dimension {d} is out of range [1, {MAX_DIM}] (or -1: variable)")
    if dims.count(-1) > 1 or reshape.count(-1) > 1:
        raise ConfigError(path, key, f"reshapes dims {dims} to {reshape}: wsserve takes at most one variable (-1) "
                                     "dimension")

    def parts(shape: list[int]) -> list[int]:
        out, count = [], 1
        for d in shape:
            if d == -1:
                out.append(count)
                count = 1
            else:
                count *= d
        return [*out, count]

    if len(parts(dims)) != len(parts(reshape)):
        raise ConfigError(path, key, f"reshapes dims {dims} to {reshape}: a variable (-1) dimension must be "
                                     "variable on both sides")
    if parts(dims) != parts(reshape):
        raise ConfigError(path, key, f"reshapes dims {dims} to {reshape}: the values must be the same (before "
                                     f"and after a variable dimension: {parts(dims)} against {parts(reshape)})")
    return tuple(reshape)


def _policy(path: Path, cfg: Any) -> VersionPolicy:
    if not cfg.HasField("version_policy"):
        return VersionPolicy("latest", count=1)  # Triton's default
    vp = cfg.version_policy
    kind = vp.WhichOneof("policy_choice")
    if kind == "latest":
        n = vp.latest.num_versions
        if not 1 <= n <= MAX_POLICY_VERSIONS:
            raise ConfigError(path, "version_policy.latest.num_versions", f"must be in [1, {MAX_POLICY_VERSIONS}], got {n}")
        return VersionPolicy("latest", count=n)
    if kind == "specific":
        versions = list(vp.specific.versions)
        if not versions:
            raise ConfigError(path, "version_policy.specific.versions", "must list at least one version")
        if len(versions) > MAX_POLICY_VERSIONS:
            raise ConfigError(path, "version_policy.specific.versions", f"lists {len(versions)} versions; at most {MAX_POLICY_VERSIONS}")
        for v in versions:
            if not 1 <= v <= MAX_VERSION:
                raise ConfigError(path, "version_policy.specific.versions", f"version {v} is out of range [1, {MAX_VERSION}]")
        return VersionPolicy("specific", versions=tuple(sorted(set(versions))))
    if kind == "all":
        return VersionPolicy("all")
    return VersionPolicy("latest", count=1)  # an empty version_policy {}: Triton's default too


def _instances(path: Path, cfg: Any, warnings: list[str]) -> int:
    if not cfg.instance_group:
        return 1
    total = 0
    for i, group in enumerate(cfg.instance_group):
        where = f"instance_group[{i}]"
        kind = _enum_name(path, f"{where}.kind", group, "kind")
        if kind == "KIND_MODEL":
            raise ConfigError(path, f"{where}.kind", "KIND_MODEL is not supported (wsserve runs ONNX models on CPU: KIND_CPU)")
        count = group.count or 1  # Triton: count defaults to 1
        if count < 0:
            raise ConfigError(path, f"{where}.count", f"must be at least 1, got {count}")
        if kind == "KIND_GPU":
            count *= max(1, len(group.gpus))
            warnings.append(f"{where}.kind KIND_GPU (runs on CPU: {count} instance{'s' if count != 1 else ''})")
        for field, _ in group.ListFields():
            if field.name not in ("name", "kind", "count", "gpus"):
                warnings.append(f"{where}.{field.name}")
        total += count
        if total > MAX_INSTANCES:
            raise ConfigError(path, "instance_group", f"asks for {total} instances in all; at most {MAX_INSTANCES}")
    return total


def _model_file(path: Path, name: str) -> str | None:
    if not name or name in ("model.onnx", "model.py"):
        return None
    if name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or "\0" in name or len(name) > 255:
        raise ConfigError(path, "default_model_filename", f"must be a plain file name in the version directory, got {name!r}")
    return name


def _parameters(path: Path, cfg: Any, warnings: list[str]) -> int:
    threads = 1
    for key in sorted(cfg.parameters):
        if key != _THREADS_PARAM:
            warnings.append(f"parameters.{key}")
            continue
        value = cfg.parameters[key].string_value.strip()
        digits = value.lstrip("0") or "0"  # (int() of more than 4300 digits, leading zeros too, raises ValueError)
        if not value.isascii() or not value.isdigit() or len(digits) > 20 or not 0 <= int(digits) <= MAX_THREADS:
            raise ConfigError(path, f"parameters.{key}", f"must be an integer in [0, {MAX_THREADS}] (0: the default, 1), "
                                                         f"got {shown(value)}")
        threads = int(digits) or 1
    return threads


def parse_pbtxt(text: str | bytes, path: Path | str = PBTXT_FILE, *, model_name: str | None = None) -> ModelConfig:
    """Parse a Triton config.pbtxt into a :class:`ModelConfig` (see the module docstring).

    ``path`` is only used in messages and stored in the result; ``model_name``,
    when given, is the model's directory name, which a ``name`` field must
    equal.  Raises :class:`ConfigError` naming ``path`` and the field for text
    that is too long, not UTF-8 or not a valid ``ModelConfig`` in text format,
    an unsupported platform/backend, data type or field, or a value out of
    bounds; and when tritonclient[grpc] is not installed (with the fix).
    """
    path = Path(path)
    text, cfg = _empty_message(text, path, "a Triton config.pbtxt")
    from google.protobuf import text_format

    try:
        text_format.Parse(text.removeprefix("\ufeff"), cfg)
    except text_format.ParseError as exc:
        raise ConfigError(path, None, f"is not a valid Triton model configuration ({exc})") from None
    except ValueError as exc:  # protobuf's own, for an enum number beyond 32 bits ("data_type: 9223372036854775807")
        raise ConfigError(path, None, f"is not a valid Triton model configuration ({exc})") from None
    except RecursionError:
        raise ConfigError(path, None, "is not a valid Triton model configuration (nested too deeply)") from None

    return _from_message(cfg, path, model_name)


def _empty_message(text: str | bytes, path: Path, what: str) -> tuple[str, Any]:
    """``text`` checked as a config file's (:func:`~.config.config_text`) and an empty Triton
    ``ModelConfig`` message to parse it into.  Raises :class:`ConfigError` naming ``path``, also
    when tritonclient[grpc] is not installed (reading ``what`` needs it)."""
    text = config_text(text, path)
    message_class, why = _message_class()
    if message_class is None:
        raise ConfigError(path, None, f"reading {what} needs tritonclient[grpc]: {INSTALL_HINT}{why}")
    return text, message_class()


def parse_json_config(text: str, path: Path | str, *, model_name: str) -> ModelConfig:
    """Parse a Triton model configuration in JSON (protobuf's JSON form of ``ModelConfig``, what
    a ``load`` request's ``config`` parameter carries: ``tritonclient``'s ``load_model(config=...)``)
    with config.pbtxt's rules (:func:`parse_pbtxt`).  ``path`` names the source in messages (and is
    stored in the result: the model directory's config.pbtxt, which the files are found beside).
    Raises :class:`ConfigError` as :func:`parse_pbtxt` does, and for JSON that is not a
    ``ModelConfig`` (an unknown field included)."""
    path = Path(path)
    text, cfg = _empty_message(text, path, "a Triton model configuration")
    from google.protobuf import json_format

    try:
        json_format.Parse(text, cfg)
    except json_format.ParseError as exc:
        raise ConfigError(path, None, f"is not a valid Triton model configuration in JSON ({str(exc)[:300]})") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(path, None, f"is not a valid Triton model configuration in JSON ({str(exc)[:300]})") from None
    return _from_message(cfg, path, model_name)


def _from_message(cfg: Any, path: Path, model_name: str | None) -> ModelConfig:
    """The :class:`ModelConfig` of a parsed Triton ``ModelConfig`` message (see :func:`parse_pbtxt`)."""
    if cfg.name and model_name is not None and cfg.name != model_name:
        raise ConfigError(path, "name", f"is {cfg.name!r} but the model's directory is {model_name!r} (Triton requires them equal)")
    if cfg.platform == ENSEMBLE_PLATFORM:
        ens_warnings: list[str] = []
        return parse_ensemble(
            cfg, path, model_name or cfg.name or path.parent.name, policy=_policy(path, cfg), warnings=ens_warnings,
            tensors=lambda key, tensors: _tensors(path, key, tensors, ens_warnings))
    if cfg.platform and cfg.platform not in _PLATFORMS:
        raise ConfigError(path, "platform", f"{cfg.platform!r} is not served by wsserve (it serves {_SERVED})")
    if cfg.backend and cfg.backend not in _BACKENDS:
        raise ConfigError(path, "backend", f"{cfg.backend!r} is not served by wsserve (it serves {_SERVED})")

    warnings: list[str] = []
    for field, value in cfg.ListFields():
        if field.name in _REFUSED:
            raise ConfigError(path, field.name, f"is not supported: wsserve does not serve {_REFUSED[field.name]}")
        if field.name == "model_transaction_policy" and value.decoupled and cfg.backend != "python":
            raise ConfigError(path, "model_transaction_policy.decoupled", "is served for a Python model "
                              "(backend: \"python\") only: another backend answers each infer request once")
        if field.name == "runtime" and (refusal := _runtime_refusal(cfg.backend, value)) is not None:
            raise ConfigError(path, "runtime", refusal)
        if field.name in ("optimization", "cc_model_filenames", "metric_tags", "model_operations",
                          "model_repository_agents", "model_metrics"):
            warnings.append(field.name)

    if not 0 <= cfg.max_batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(path, "max_batch_size", f"must be in [0, {MAX_BATCH_SIZE}], got {cfg.max_batch_size}")

    max_delay_ms = 0.0  # no dynamic_batching: each request runs as it comes (greedy batching)
    queue_policy: dict[str, Any] = {}
    if cfg.HasField("dynamic_batching"):
        db = cfg.dynamic_batching
        us = db.max_queue_delay_microseconds
        if us > MAX_DELAY_MS * 1000:
            raise ConfigError(path, "dynamic_batching.max_queue_delay_microseconds", f"must be in [0, {MAX_DELAY_MS * 1000}], got {us}")
        max_delay_ms = us / 1000
        warnings.extend(f"dynamic_batching.{f.name}" for f, _ in db.ListFields()
                        if f.name not in ("max_queue_delay_microseconds", "default_queue_policy", "priority_levels",
                                          "default_priority_level", "priority_queue_policy"))
        if db.HasField("default_queue_policy"):
            queue_policy = _queue_policy(path, db.default_queue_policy)
        queue_policy.update(_priority_levels(path, db))
    else:
        queue_policy["priority_levels"] = 0  # Triton: a model without dynamic_batching has no priority levels

    inputs = _tensors(path, "input", cfg.input, warnings)
    outputs = _tensors(path, "output", cfg.output, warnings)
    # what every backend's configuration says alike
    common = {"path": path, "inputs": inputs, "outputs": outputs, "max_batch_size": cfg.max_batch_size,
              "max_delay_ms": max_delay_ms, **queue_policy, "instances": _instances(path, cfg, warnings),
              "version_policy": _policy(path, cfg), "model_file": _model_file(path, cfg.default_model_filename),
              "response_cache": cfg.HasField("response_cache") and cfg.response_cache.enable,
              "warmup": parse_warmup(path, cfg.model_warmup, TRITON_TYPES, batching=cfg.max_batch_size > 0 or not (
                  cfg.input and cfg.output), max_batch_size=cfg.max_batch_size)}
    common.update(_ragged(path, cfg, inputs, outputs))
    if cfg.backend == "python":
        return _python_config(path, cfg, model_name, common, warnings)
    _no_onnx_strings(path, inputs, outputs)
    threads = _parameters(path, cfg, warnings)
    sequence = _sequence_batching(path, cfg, warnings) if cfg.HasField("sequence_batching") else None
    if sequence is not None and sequence.strategy == "oldest":  # its dynamic batcher's window
        common = {**common, "max_delay_ms": sequence.max_queue_delay_us / 1000}
    return ModelConfig(
        backend="onnx",
        **common,
        sequence=sequence,
        onnx_intra_op_threads=threads,
        warnings=tuple(warnings),
        # Triton's onnxruntime backend auto-completes a config that does not list both inputs and outputs
        autofill_batching=cfg.max_batch_size == 0 and not (cfg.input and cfg.output),
    )


def _ragged(path: Path, cfg: Any, inputs: tuple[TensorConfig, ...] | None,
            outputs: tuple[TensorConfig, ...] | None) -> dict[str, Any]:
    """Ragged batching (:mod:`.ragged`): ``batch_inputs`` and ``batch_outputs`` for :class:`ModelConfig`,
    checked as Triton's ``ValidateBatchIO`` checks them (one ``source_input``, a listed input; a batch
    input's ``data_type`` TYPE_INT32 or TYPE_FP32; a batch output's ``target_name`` listed outputs,
    each once) and where wsserve serves them: an input's ``allow_ragged_batch`` and batch inputs and
    outputs need ``max_batch_size > 0`` and no ``sequence_batching``; a Python model (Triton's Python
    backend computes no batch inputs) takes ``allow_ragged_batch`` only.  A batch input's
    ``target_name``: one name, not a listed input (the server feeds it).  Raises :class:`ConfigError`
    naming the field."""
    ragged = [i for i, t in enumerate(inputs or ()) if t.ragged]
    used = ragged or cfg.batch_input or cfg.batch_output
    if not used:
        return {}
    first = f"input[{ragged[0]}].allow_ragged_batch" if ragged else "batch_input" if cfg.batch_input else "batch_output"
    if cfg.max_batch_size == 0:
        raise ConfigError(path, first, "needs max_batch_size > 0 (ragged batching batches requests; a model without a "
                          "batch dimension runs each alone)")
    if cfg.HasField("sequence_batching"):
        raise ConfigError(path, first, "is not served for a stateful model (sequence_batching): wsserve serves "
                          "ragged batching with the dynamic batcher")
    if cfg.backend == "python":
        for key in ("batch_input", "batch_output"):
            if getattr(cfg, key):
                raise ConfigError(path, key, "is not served for a Python model (backend: \"python\"): Triton's "
                                  "Python backend gives each request's own tensors, it computes no batch inputs "
                                  "nor scatters outputs (allow_ragged_batch is served)")
    names = [t.name for t in inputs or ()]
    out_names = [t.name for t in outputs or ()]
    batch_inputs: list[BatchInput] = []
    for i, bi in enumerate(cfg.batch_input):
        where = f"batch_input[{i}]"
        kind, source = _kind_and_source(path, where, "batch input", bi, names)
        type_name = _enum_name(path, f"{where}.data_type", bi, "data_type")
        if type_name not in ("TYPE_INT32", "TYPE_FP32"):
            raise ConfigError(path, f"{where}.data_type", f"batch input data type must be TYPE_INT32 or TYPE_FP32, "
                              f"got {type_name}")
        if len(bi.target_name) != 1:
            raise ConfigError(path, f"{where}.target_name", f"must name exactly one model input, got {len(bi.target_name)}")
        target = bi.target_name[0]
        if not _NAME_RE.match(target):
            raise ConfigError(path, f"{where}.target_name", f"must be 1-128 printable characters without spaces or "
                              f"quotes, got {target[:128]!r}")
        if target in names or any(b.target == target for b in batch_inputs):
            raise ConfigError(path, f"{where}.target_name", f"{target!r} is already an input or a batch input (a batch "
                              "input is fed by the server, not listed in input)")
        batch_inputs.append(BatchInput(kind, target, TRITON_TYPES[type_name], source))
    batch_outputs: list[BatchOutput] = []
    scattered: set[str] = set()
    for i, bo in enumerate(cfg.batch_output):
        where = f"batch_output[{i}]"
        _, source = _kind_and_source(path, where, "batch output", bo, names)
        if not bo.target_name:
            raise ConfigError(path, f"{where}.target_name", "must name at least one output")
        for target in bo.target_name:
            if target not in out_names:
                raise ConfigError(path, f"{where}.target_name", f"unknown target output name {target[:128]!r} "
                                  "(not in output)")
            if target in scattered:
                raise ConfigError(path, f"{where}.target_name", f"target output name {target!r} can only be "
                                  "specified once")
            scattered.add(target)
        batch_outputs.append(BatchOutput(tuple(bo.target_name), source))
    return {"batch_inputs": tuple(batch_inputs), "batch_outputs": tuple(batch_outputs)}


def _kind_and_source(path: Path, where: str, what: str, entry: Any, names: list[str]) -> tuple[str, str]:
    """A ``batch_input`` / ``batch_output`` entry's kind and its one ``source_input``, which must be
    one of the model's inputs (``names``); else :class:`ConfigError` at ``where``, Triton's words."""
    kind = _enum_name(path, f"{where}.kind", entry, "kind")
    if len(entry.source_input) != 1:
        raise ConfigError(path, f"{where}.source_input", f"{what} kind '{kind}' expects 1 source input, "
                          f"got {len(entry.source_input)}")
    source = entry.source_input[0]
    if source not in names:
        raise ConfigError(path, f"{where}.source_input", f"unknown source input name {source[:128]!r} (not in input)")
    return kind, source


def _no_onnx_strings(path: Path, inputs: tuple[TensorConfig, ...] | None,
                     outputs: tuple[TensorConfig, ...] | None) -> None:
    """Refuse ``TYPE_STRING`` on an ONNX model's tensor, naming it: wsserve serves string tensors
    to Triton Python models and between an ensemble's steps, not to onnxruntime graphs."""
    for key, tensors in (("input", inputs), ("output", outputs)):
        for i, t in enumerate(tensors or ()):
            if t.dtype == BYTES:
                raise ConfigError(path, f"{key}[{i}].data_type", f"TYPE_STRING ({t.name!r}) is not served for ONNX "
                                  'models (string tensors: backend "python" models and ensembles only)')


def _queue_policy(path: Path, policy: Any, where: str = "dynamic_batching.default_queue_policy") -> dict[str, Any]:
    """``dynamic_batching.default_queue_policy`` (or the ``ModelQueuePolicy`` at ``where``) as
    :class:`ModelConfig`'s queue fields (Triton's meanings: ``max_queue_size`` 0 and
    ``default_timeout_microseconds`` 0 are "none"; an absent ``allow_timeout_override`` is protobuf's
    false; ``timeout_action`` REJECT = 0, the default, or DELAY = 1)."""
    action = _enum_name(path, f"{where}.timeout_action", policy, "timeout_action")  # REJECT or DELAY
    assert action in TIMEOUT_ACTIONS
    size = policy.max_queue_size
    if size > MAX_QUEUE_REQUESTS:
        raise ConfigError(path, f"{where}.max_queue_size", f"must be in [0, {MAX_QUEUE_REQUESTS}], got {size}")
    us = policy.default_timeout_microseconds
    if us > MAX_DEFAULT_TIMEOUT_MS * 1000:
        raise ConfigError(path, f"{where}.default_timeout_microseconds",
                          f"must be in [0, {MAX_DEFAULT_TIMEOUT_MS * 1000}], got {us}")
    return {"max_queue_requests": size or None, "default_timeout_ms": us / 1000 if us else None,
            "allow_timeout_override": policy.allow_timeout_override, "timeout_action": action}


def _priority_levels(path: Path, db: Any) -> dict[str, Any]:
    """``dynamic_batching``'s ``priority_levels`` / ``default_priority_level`` / ``priority_queue_policy``
    as :class:`ModelConfig`'s fields, checked as Triton's ``ValidateModelConfig`` does (the default,
    and each policy's level, within 1..levels) and bounded by
    :data:`~wsserve.batching.MAX_PRIORITY_LEVELS`; ``preserve_ordering`` with more than one level is
    refused (Triton refuses it too)."""
    where = "dynamic_batching"
    levels, default = db.priority_levels, db.default_priority_level
    if levels > MAX_PRIORITY_LEVELS:
        raise ConfigError(path, f"{where}.priority_levels", f"must be in [0, {MAX_PRIORITY_LEVELS}] (wsserve's bound), "
                          f"got {levels}")
    if levels and not 1 <= default <= levels:
        raise ConfigError(path, f"{where}.default_priority_level", f"must be in [1, {levels}] (priority_levels is "
                          f"{levels}), got {default}")
    policies: list[tuple[int, QueuePolicy]] = []
    outside = sorted(k for k in db.priority_queue_policy if not 1 <= k <= levels)
    if outside:
        raise ConfigError(path, f"{where}.priority_queue_policy", f"key{'s' if len(outside) > 1 else ''} "
                          f"{', '.join(map(str, outside))} not in [1, {levels}] (priority_levels is {levels}: "
                          "a policy's key is the level it applies to)")
    for level in sorted(db.priority_queue_policy):
        fields = _queue_policy(path, db.priority_queue_policy[level], f"{where}.priority_queue_policy[{level}]")
        policies.append((level, QueuePolicy(**fields)))
    if db.preserve_ordering and levels > 1:
        raise ConfigError(path, f"{where}.preserve_ordering", f"cannot be true with priority_levels {levels} "
                          "(Triton allows only one level then)")
    return {"priority_levels": levels, "default_priority_level": default,  # as written (unused without levels)
            "priority_queue_policies": tuple(policies)}


def _config_json(cfg: Any) -> str:
    """The configuration as the JSON string Triton gives a Python model (``args["model_config"]``):
    proto field names, every field (defaults too), 64-bit integers (``dims``) as numbers."""
    from google.protobuf import json_format

    try:
        doc = json_format.MessageToDict(cfg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                                        unquote_int64_if_possible=True)
    except TypeError:  # protobuf < 5.26 names the option differently and has no unquote_int64_if_possible
        doc = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
        for side in ("input", "output"):
            for t in doc.get(side, []):
                t["dims"] = [int(d) for d in t.get("dims", [])]
        if "max_batch_size" not in doc:
            doc["max_batch_size"] = 0
    return json.dumps(doc)


def _python_config(path: Path, cfg: Any, model_name: str | None, common: dict[str, Any],
                   warnings: list[str]) -> ModelConfig:
    """A ``backend: "python"`` config.pbtxt (a Triton Python backend model.py, :mod:`.triton_backend`):
    ``input`` and ``output`` are required (``-1`` dims served: :mod:`.triton_backend`);
    ``parameters`` are the model's own (in its ``args["model_config"]``), not warned about.
    ``common``: the fields read as for any backend."""
    for key in ("input", "output"):
        tensors = common[key + "s"]
        if tensors is None:
            raise ConfigError(path, key, "is required for a Python model (wsserve does not auto-complete it from model.py)")
    if not cfg.name and model_name is not None:
        cfg.name = model_name  # Triton fills it in
    iterative = cfg.HasField("sequence_batching") and cfg.sequence_batching.iterative_sequence
    if iterative:  # request rescheduling (wsserve.decoupled, or wsserve.worker for a non-decoupled model)
        _iterative_sequence(path, cfg)
        return ModelConfig(backend="python", **common, warnings=tuple(warnings), triton_model_config=_config_json(cfg),
                           decoupled=cfg.model_transaction_policy.decoupled, iterative_sequence=True)
    sequence = _sequence_batching(path, cfg, warnings) if cfg.HasField("sequence_batching") else None
    if sequence is not None and sequence.strategy == "oldest":  # its dynamic batcher's window
        common = {**common, "max_delay_ms": sequence.max_queue_delay_us / 1000}
    if sequence is not None and cfg.model_transaction_policy.decoupled:
        raise ConfigError(path, "sequence_batching", "is not served for a decoupled model (model_transaction_policy) "
                          "but with iterative_sequence: true (request rescheduling)")
    return ModelConfig(backend="python", **common, warnings=tuple(warnings), triton_model_config=_config_json(cfg),
                       decoupled=cfg.model_transaction_policy.decoupled, sequence=sequence)


def _iterative_sequence(path: Path, cfg: Any) -> None:
    """``sequence_batching { iterative_sequence: true }`` of a Python model (its requests rescheduled
    by :class:`wsserve.decoupled.DecoupledWorker`, or a non-decoupled model's by
    :class:`wsserve.worker.PredictWorker`; each request its own sequence, as Triton's), with none of
    the fields of a sequence of several requests (``control_input``, ``state``, ``oldest``: Triton
    fills an iterative sequence's controls itself); a non-decoupled model needs ``max_batch_size >
    0`` (each request one ``InferenceRequest``, given whole to each execute).  Raises
    :class:`ConfigError` naming the field otherwise."""
    key = "sequence_batching"
    if not cfg.model_transaction_policy.decoupled and cfg.max_batch_size < 1:
        raise ConfigError(path, f"{key}.iterative_sequence", "of a non-decoupled Python model needs max_batch_size "
                          ">= 1: with max_batch_size 0 wsserve gives such a model one InferenceRequest per row, "
                          "which it cannot reschedule apart from the request's other rows")
    sb = cfg.sequence_batching
    for name in ("control_input", "state"):
        if len(getattr(sb, name)):
            raise ConfigError(path, f"{key}.{name}", "is not served with iterative_sequence: true (each request is "
                              "its own sequence; its controls are not given to the model)")
    if sb.HasField("oldest"):
        raise ConfigError(path, f"{key}.oldest", "is not served with iterative_sequence: true (each request "
                          "is its own sequence, batched with the others as they come)")


#: config.pbtxt's control kinds -> :class:`~wsserve.sequences.Control` kinds.
_CONTROL_KINDS = {"CONTROL_SEQUENCE_START": "START", "CONTROL_SEQUENCE_END": "END",
                  "CONTROL_SEQUENCE_READY": "READY", "CONTROL_SEQUENCE_CORRID": "CORRID"}
_CORRID_TYPES = ("TYPE_UINT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_INT32", "TYPE_STRING")
#: The longest ``max_sequence_idle_microseconds`` taken (an hour; a sequence holds a slot that long).
MAX_SEQUENCE_IDLE_US = 3_600_000_000
#: The most ``oldest { max_candidate_sequences }`` taken (sequences holding a slot of one instance at once).
MAX_CANDIDATE_SEQUENCES = 4096


def _sequence_batching(path: Path, cfg: Any, warnings: list[str]) -> SequenceConfig:
    """config.pbtxt's ``sequence_batching`` (:mod:`wsserve.sequences`): ``max_sequence_idle_microseconds``
    (0: Triton's default, 1 s), ``control_input`` (one control each, a flag's ``*_false_true`` pair or
    CORRID's ``data_type``), ``direct`` (its fields warned about) / ``oldest`` (``max_candidate_sequences``
    at most :data:`MAX_CANDIDATE_SEQUENCES`, ``max_queue_delay_microseconds``; ``preferred_batch_size``
    and ``preserve_ordering`` warned about).  ``state`` (implicit state) is refused, naming it."""
    sb = cfg.sequence_batching
    key = "sequence_batching"
    if sb.state and cfg.backend == "python":
        raise ConfigError(path, f"{key}.state", "is not supported for a Python model: implicit state is served "
                          "for ONNX models (Triton's Python backend has none; a model.py keeps its sequences' state "
                          "itself)")
    if sb.iterative_sequence:  # (a Python model's is read by _iterative_sequence)
        raise ConfigError(path, f"{key}.iterative_sequence", f"is served for a Triton Python model only "
                          f"(backend \"python\"), not an {cfg.backend or cfg.platform or 'onnxruntime'!r} model: request "
                          "rescheduling is the Python backend's (pb_utils set_release_flags)")
    us = sb.max_sequence_idle_microseconds
    if us > MAX_SEQUENCE_IDLE_US:
        raise ConfigError(path, f"{key}.max_sequence_idle_microseconds", f"must be in [0, {MAX_SEQUENCE_IDLE_US}], got {us}")
    strategy = sb.WhichOneof("strategy_choice") or "direct"
    for f, _ in getattr(sb, strategy).ListFields() if sb.HasField(strategy) else ():
        if strategy != "oldest" or f.name not in ("max_candidate_sequences", "max_queue_delay_microseconds"):
            warnings.append(f"{key}.{strategy}.{f.name}")
    candidates = delay_us = 0
    if strategy == "oldest":
        candidates, delay_us = sb.oldest.max_candidate_sequences, sb.oldest.max_queue_delay_microseconds
        if not 0 <= candidates <= MAX_CANDIDATE_SEQUENCES:
            raise ConfigError(path, f"{key}.oldest.max_candidate_sequences",
                              f"must be in [0, {MAX_CANDIDATE_SEQUENCES}], got {candidates}")
        if delay_us > MAX_DELAY_MS * 1000:
            raise ConfigError(path, f"{key}.oldest.max_queue_delay_microseconds",
                              f"must be in [0, {MAX_DELAY_MS * 1000}], got {delay_us}")
    if len(sb.control_input) > MAX_TENSORS:
        raise ConfigError(path, f"{key}.control_input", f"holds {len(sb.control_input)} inputs; at most {MAX_TENSORS}")
    names = {t.name for t in cfg.input}
    controls: list[Control] = []
    for i, ci in enumerate(sb.control_input):
        where = f"{key}.control_input[{i}]"
        if not _NAME_RE.match(ci.name):
            raise ConfigError(path, f"{where}.name", f"must be 1-128 printable characters without spaces or quotes, got {ci.name!r}")
        if ci.name in names:
            raise ConfigError(path, f"{where}.name", f"{ci.name!r} is already an input or a control input")
        names.add(ci.name)
        if len(ci.control) != 1:
            raise ConfigError(path, f"{where}.control", f"must hold exactly one control, got {len(ci.control)}")
        c = ci.control[0]
        kind = _CONTROL_KINDS[_enum_name(path, f"{where}.control[0].kind", c, "kind")]
        if kind == "CORRID":
            type_name = _enum_name(path, f"{where}.control[0].data_type", c, "data_type")
            if type_name not in _CORRID_TYPES:
                raise ConfigError(path, f"{where}.control[0].data_type", f"must be one of {', '.join(_CORRID_TYPES)} "
                                  f"for CONTROL_SEQUENCE_CORRID, got {type_name}")
            if type_name == "TYPE_STRING" and cfg.backend != "python":
                raise ConfigError(path, f"{where}.control[0].data_type", "TYPE_STRING is not served for an ONNX "
                                  "model's CORRID (string tensors: backend \"python\" models only)")
            dtype = TENSOR_DTYPES[TRITON_TYPES[type_name]]
            controls.append(Control(ci.name, kind, dtype))
            continue
        pairs = [(name, list(getattr(c, name))) for name in ("int32_false_true", "fp32_false_true", "bool_false_true")
                 if len(getattr(c, name))]
        if len(pairs) != 1 or len(pairs[0][1]) != 2:
            raise ConfigError(path, f"{where}.control[0]", f"a {kind} control needs exactly one of int32_false_true, "
                              "fp32_false_true, bool_false_true with two values (false, true)")
        name, (false, true) = pairs[0]
        dtype = np.dtype({"int32_false_true": np.int32, "fp32_false_true": np.float32, "bool_false_true": np.bool_}[name])
        controls.append(Control(ci.name, kind, dtype, false, true))
    states = _states(path, sb, names, warnings)
    as_json = json.loads(_config_json(cfg))["sequence_batching"]  # every field, as Triton lists it
    as_json["max_sequence_idle_microseconds"] = str(us or 1_000_000)  # Triton's default filled in
    return SequenceConfig(max_idle_s=(us or 1_000_000) / 1e6, controls=tuple(controls), strategy=strategy,
                          as_json=as_json, max_candidate_sequences=candidates, max_queue_delay_us=delay_us,
                          states=states)


#: The folder of the model directory holding the ``initial_state { data_file }`` files (Triton's).
INITIAL_STATE_DIR = "initial_state"


def _states(path: Path, sb: Any, names: set[str], warnings: list[str]) -> tuple[State, ...]:
    """``sequence_batching.state`` (implicit state, :class:`~wsserve.sequences.State`), checked as
    Triton checks it: ``input_name`` / ``output_name`` valid names, the input not an ``input`` or a
    control input (``names``: those taken) nor another state's, ``data_type`` served (not
    ``TYPE_STRING``), ``dims`` at most :data:`~.tensors.MAX_DIMS` sizes in [1, MAX_DIM] or ``-1``;
    at most one ``initial_state``, of the state's ``data_type``, fixed ``dims`` of the state's rank
    agreeing with its fixed ones (at most :data:`~.tensors.MAX_ROW_ELEMENTS` values), ``zero_data:
    true`` or a ``data_file`` name in the model's ``initial_state/`` folder (read when a version
    loads).  ``use_same_buffer_for_input_output`` / ``use_growable_memory`` (GPU memory hints) are
    listed in the warning."""
    if len(sb.state) > MAX_TENSORS:
        raise ConfigError(path, "sequence_batching.state", f"holds {len(sb.state)} states; at most {MAX_TENSORS}")
    out: list[State] = []
    outputs: set[str] = set()
    for i, st in enumerate(sb.state):
        where = f"sequence_batching.state[{i}]"
        for fname in ("input_name", "output_name"):
            value = getattr(st, fname)
            if not _NAME_RE.match(value):
                raise ConfigError(path, f"{where}.{fname}", f"must be 1-128 printable characters without spaces or "
                                  f"quotes, got {value!r}")
        if st.input_name in names:
            raise ConfigError(path, f"{where}.input_name", f"{st.input_name!r} is already an input, a control input "
                              "or a state's input (a state input is fed by the server, not listed in input)")
        if st.output_name in outputs:
            raise ConfigError(path, f"{where}.output_name", f"{st.output_name!r} is already a state's output")
        names.add(st.input_name)
        outputs.add(st.output_name)
        type_name = _enum_name(path, f"{where}.data_type", st, "data_type")
        if type_name not in TRITON_TYPES or TRITON_TYPES[type_name] == BYTES:
            served = ", ".join(t for t, d in TRITON_TYPES.items() if d != BYTES)
            raise ConfigError(path, f"{where}.data_type", f"{type_name} is not served for a state (served: {served})")
        dtype = TENSOR_DTYPES[TRITON_TYPES[type_name]]
        dims = tuple(int(d) for d in st.dims)
        if len(dims) > MAX_DIMS or any(d != -1 and not 1 <= d <= MAX_DIM for d in dims):
            raise ConfigError(path, f"{where}.dims", f"must be at most {MAX_DIMS} sizes in [1, {MAX_DIM}] or -1, "
                              f"got {list(dims)}")
        initial_dims, initial_file = tuple(1 if d == -1 else d for d in dims), None
        if len(st.initial_state) > 1:
            raise ConfigError(path, f"{where}.initial_state", f"holds {len(st.initial_state)} initial states; "
                              "at most one")
        for init in st.initial_state:
            ikey = f"{where}.initial_state"
            init_type = _enum_name(path, f"{ikey}.data_type", init, "data_type")
            if init_type != type_name:
                raise ConfigError(path, f"{ikey}.data_type", f"is {init_type}; the state's data_type is {type_name}")
            initial_dims = tuple(int(d) for d in init.dims)
            if len(initial_dims) != len(dims) or any(d < 1 or d > MAX_DIM or (s != -1 and d != s)
                                                     for d, s in zip(initial_dims, dims, strict=False)):
                raise ConfigError(path, f"{ikey}.dims", f"must be fixed sizes agreeing with the state's dims "
                                  f"{list(dims)} (-1 there: any size), got {list(initial_dims)}")
            which = init.WhichOneof("state_data")
            if which == "data_file":
                initial_file = init.data_file
                if (not initial_file or Path(initial_file).name != initial_file or initial_file in (".", "..")
                        or "\0" in initial_file):
                    raise ConfigError(path, f"{ikey}.data_file", f"must be a file name in the model's "
                                      f"{INITIAL_STATE_DIR}/ folder, got {initial_file[:128]!r}")
            elif not (which == "zero_data" and init.zero_data):
                raise ConfigError(path, ikey, "needs its data: zero_data: true or data_file")
        if math.prod(initial_dims) > MAX_ROW_ELEMENTS:
            raise ConfigError(path, f"{where}.initial_state.dims", f"hold {math.prod(initial_dims)} values; at most "
                              f"{MAX_ROW_ELEMENTS}")
        warnings.extend(f"{where}.{f.name}" for f, _ in st.ListFields()
                        if f.name in ("use_same_buffer_for_input_output", "use_growable_memory"))
        out.append(State(st.input_name, st.output_name, dtype, dims, initial_dims, initial_file))
    return tuple(out)
