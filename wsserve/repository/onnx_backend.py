"""The ONNX Runtime backend: ``model.onnx`` served as a :class:`RepositoryModel`.

Needs the ``onnx`` extra (``pip install 'wsserve[onnx]'``); without
onnxruntime a model.onnx fails to load with a message saying so.

- One ``InferenceSession`` per loaded version, CPU provider, sequential
  execution, ``inter_op_num_threads = 1`` and ``intra_op_num_threads`` from
  config.toml's ``[onnx] intra_op_num_threads`` (default 1; one thread per
  instance, the pool runs instances side by side).  Thread pools do not spin
  between runs (``allow_spinning = 0``): the server shares its cores.
- Shapes and dtypes come from the graph.  The first dimension of every input
  and output must be dynamic: it is the batch.  A graph whose first dimension
  is fixed or absent is refused, unless config.toml says ``max_batch_size =
  0``: then the graph's whole shape is the row shape and wsserve runs it once
  per row.  A config.pbtxt left to Triton's auto-complete
  (``ModelConfig.autofill_batching``) batches exactly when every input's and
  output's first dimension is dynamic, else runs the graph once per row.
  Other dimensions are fixed in the graph, or given by config.toml
  (``input_shape``/``[[inputs]] shape``) or config.pbtxt's dims; where both
  give a dimension they must agree.  config.toml's dtypes must equal the graph's.
  A config.pbtxt's dims are first compared with the graph's shape by Triton's
  onnxruntime backend's rule (:mod:`.tritondims`): a disagreement fails the
  version, naming the model, the tensor and both shapes.  A dynamic graph
  dimension no config fixes (config.pbtxt's ``-1``, or left to the graph)
  stays variable (:data:`~wsserve.shapes.VARIABLE`), as in Triton: each
  request gives its size there.  Without a batch dimension the graph runs
  whole on it; with one (``[batch, seq]``), requests are batched only with
  requests of the same size (Triton's dynamic batcher, :mod:`wsserve.worker`).  A graph scalar (rank
  0) with config.pbtxt dims of 1s (Triton's scalar rule, no batching) is served
  in those dims: :meth:`OnnxModel.predict` feeds the value as a scalar and
  reshapes a scalar output to them.
- Supported tensor types: float16, float32, float64, int8, int16, int32, int64, uint8,
  uint16, uint32, uint64, bool (:data:`ONNX_TYPES`).  Several named
  inputs/outputs are supported; config.toml's ``[[outputs]]`` may select a
  subset of the graph's outputs to return.
- A stateful model (config.pbtxt ``sequence_batching``, served by :mod:`wsserve.sequence_worker`):
  its control inputs and state inputs are graph inputs the requests do not send
  (:attr:`OnnxModel.sequence_inputs`, checked against the graph at load: present, of the
  configured type, dims agreeing by Triton's rule); its state outputs are computed every run and
  returned by name beside the answered outputs (:attr:`OnnxModel.state_outputs`, for the sequence
  worker to keep); :attr:`OnnxModel.initial_states` holds each state's START value (zeros, or the
  model directory's ``initial_state/<data_file>``).  It is not warmed up.
- ``InferenceSession.run`` is thread-safe, so :meth:`OnnxModel.predict` may be
  called from several threads at once (each call is one ``run``).
- wsserve's own metadata: the graph's ``metadata_props`` entry ``wsserve``
  (:data:`METADATA_KEY`), when present, is a JSON object; its ``metrics``
  object is reported as the model's metrics and its ``compression`` object
  (written by ``wsserve compress --int8``) as the version's compression
  figures.  A malformed one fails the load, naming the file.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import BFLOAT16, TENSOR_DTYPES
from ..shapes import VARIABLE
from ..worker import Ragged, RequestOutputs
from .backend import Batch, RepositoryModel, make_info, merge_specs
from .config import ModelConfig, TensorConfig
from .errors import ModelLoadError
from .ragged import batch_input_value, concat_flat, scatter
from .tensors import MAX_DIM, MAX_DIMS, MAX_ROW_ELEMENTS, TensorSpec
from .tritondims import compare_dims, graph_dims, scalar_dims, show_dims

__all__ = ["OnnxModel", "ONNX_TYPES", "METADATA_KEY", "read_wsserve_metadata"]

log = logging.getLogger("wsserve.repository")

#: ``metadata_props`` key of the JSON object wsserve writes into an ONNX file.
METADATA_KEY = "wsserve"
#: Upper bound on that JSON (characters).
MAX_METADATA_CHARS = 1 << 20

#: ONNX Runtime type string -> wsserve dtype name.
ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bfloat16)": "bfloat16",  # fed and read as OrtValues (onnxruntime's numpy bridge has no bfloat16)
}


def _fixed(d: Any) -> bool:
    return type(d) is int and d > 0


def _configured(name: str, configured: Sequence[TensorConfig] | None, count: int) -> TensorConfig | None:
    if configured is None:
        return None
    for tc in configured:
        if tc.name == name or (tc.name is None and count == 1):
            return tc
    return None


def _graph_spec(arg: Any, side: str, batching: bool, tc: TensorConfig | None, path: Path,
                source: str = "config.toml", model: str = "", why_batched: str = "max_batch_size > 0") -> TensorSpec:
    """A graph input/output -> its per-row TensorSpec (symbolic dims filled from the config file ``source``).

    config.pbtxt's dims (``tc.triton_dims``) are first compared with the graph's shape by Triton's
    rule (:func:`.tritondims.compare_dims`, the message naming ``model``)."""
    name = arg.name
    dtype = ONNX_TYPES.get(arg.type)
    if dtype is None:
        raise ModelLoadError(path, f"{side} {name!r} has type {arg.type}; supported: {', '.join(ONNX_TYPES)}")
    shape = arg.shape
    if shape is None:
        if tc is None or tc.shape is None:
            raise ModelLoadError(path, f"the graph does not give the shape of {side} {name!r}; set it in {source}")
        shape = ([None] if batching else []) + list(tc.shape)
    shape = list(shape)
    if side == "input" and any(type(d) is int and d == 0 for d in shape):  # (not _fixed: it would be taken as variable)
        shown = "[" + ", ".join(str(d) if type(d) is int and d >= 0 else "?" for d in shape) + "]"
        raise ModelLoadError(path, f"input {name!r} has a dimension fixed at 0 (its shape in the graph: {shown}): no "
                                   "request can give it values (a request's every dimension is at least 1)")
    if not shape and tc is not None and tc.triton_dims is not None:  # a graph scalar: Triton's rule
        why = scalar_dims(model, side, name, tc.triton_dims, batching=batching, source=source)
        if why is not None:
            raise ModelLoadError(path, why)
        return TensorSpec(name, tc.triton_dims, dtype)  # OnnxModel.predict reshapes: dims of 1s <-> a scalar
    if batching:
        if not shape:
            raise ModelLoadError(path, f"{side} {name!r} is a scalar: it has no batch dimension "
                                       f"(set max_batch_size = 0 in {source} to run the model once per row)")
        if _fixed(shape[0]):
            raise ModelLoadError(
                path,
                f"{side} {name!r} has a fixed first dimension {shape[0]}; wsserve needs it dynamic (the batch). "
                f"Export with a dynamic batch axis, or set max_batch_size = 0 in {source} to run it once per row "
                f"with row shape {shape}",
            )
    if tc is not None and tc.triton_dims is not None and arg.shape is not None:
        why = compare_dims(model, side, name, graph_dims(shape), tc.triton_dims, batching=batching, source=source,
                           why_batched=why_batched)
        if why is not None:
            raise ModelLoadError(path, why)
    if batching:
        shape = shape[1:]
    if len(shape) > MAX_DIMS:
        raise ModelLoadError(path, f"{side} {name!r} has {len(shape)} dimensions per row; at most {MAX_DIMS}")
    want = tc.shape if tc is not None else None
    if want is not None and len(want) != len(shape):
        raise ModelLoadError(path, f"{source} says {side} {name!r} has shape {list(want)}; the graph's row shape is {_show(shape)}")
    dims: list[int] = []
    for j, d in enumerate(shape):
        if _fixed(d):
            if d > MAX_DIM:
                raise ModelLoadError(path, f"{side} {name!r} dimension {d} exceeds {MAX_DIM}")
            dims.append(d)
        elif want is not None:
            dims.append(want[j])
        elif tc is not None and tc.triton_dims is not None and tc.triton_dims[j] != -1:
            dims.append(tc.triton_dims[j])  # config.pbtxt fixes it (another of its dims is -1: refused below)
        else:  # Triton's -1 (written in config.pbtxt, or left dynamic by every config): each request sizes it
            dims.append(VARIABLE)  # batched only with requests of the same size (wsserve.worker)
    least = math.prod(max(d, 1) for d in dims)  # a variable dimension counts 1 here; a request's size is bounded
    if least > MAX_ROW_ELEMENTS:
        raise ModelLoadError(path, f"{side} {name!r} has {least} values per row; at most {MAX_ROW_ELEMENTS}")
    return TensorSpec(name, tuple(dims), dtype)


def _show(shape: list[Any]) -> str:
    return "[" + ", ".join(str(d) if _fixed(d) else "?" for d in shape) + "]"


def _count_parameters(path: Path, data: bytes | None = None) -> tuple[int, int | None]:
    """``(elements, non-zero elements)`` of the graph's initializers (via the ``onnx`` package;
    from ``data`` when the graph came as bytes), else ``(size estimate, None)``."""
    try:
        import onnx
        from onnx import numpy_helper

        proto = onnx.load_from_string(data) if data is not None else onnx.load(str(path), load_external_data=False)
        total = sum(math.prod(init.dims) for init in proto.graph.initializer)
        nonzero = sum(int(np.count_nonzero(numpy_helper.to_array(init))) for init in proto.graph.initializer)
        return total, nonzero
    except Exception:  # onnx missing, or a graph ONNX Runtime reads but this onnx cannot: estimate
        return max(1, (len(data) if data is not None else path.stat().st_size) // 4), None


def read_wsserve_metadata(metadata: dict[str, str], label: str) -> dict[str, Any]:
    """The :data:`METADATA_KEY` JSON object of an ONNX model's custom metadata (``{}`` if absent).

    Raises ``ValueError`` naming ``label`` if it is too long, not JSON (NaN, or
    nesting too deep to parse, included), not an object, or has a ``metrics``/``compression`` that is not an object.
    """
    text = metadata.get(METADATA_KEY)
    if text is None:
        return {}
    if len(text) > MAX_METADATA_CHARS:
        raise ValueError(f"{label}: metadata {METADATA_KEY!r} has {len(text)} characters; at most {MAX_METADATA_CHARS}")

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except ValueError as exc:
        raise ValueError(f"{label}: metadata {METADATA_KEY!r} is not JSON ({exc})") from None
    except RecursionError:  # json recurses per nested array/object
        raise ValueError(f"{label}: metadata {METADATA_KEY!r} is not JSON (arrays or objects nested too deeply)") from None
    if not isinstance(value, dict):
        raise ValueError(f"{label}: metadata {METADATA_KEY!r} must be a JSON object")
    for key in ("metrics", "compression"):
        if key in value and not isinstance(value[key], dict):
            raise ValueError(f"{label}: metadata {METADATA_KEY!r}: {key!r} must be a JSON object")
    return value


class OnnxModel(RepositoryModel):
    """``model.onnx`` run by ONNX Runtime. Raises :class:`ModelLoadError` naming the file on any problem.

    ``data``: the serialized graph, already in memory (``wsserve.onnx_model`` for embedding
    programs); ``path`` then only names it in messages.
    """

    backend = "onnx"

    def __init__(self, name: str, version: int, path: Path, config: ModelConfig, *, data: bytes | None = None) -> None:
        self.name, self.version, self.path, self.config = name, version, Path(path), config
        self.in_memory = data is not None
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelLoadError(self.path, "serving model.onnx needs onnxruntime: pip install 'wsserve[onnx]'") from None
        if config.task == "generation":  # it would be listed as generative and refuse every generate
            raise ModelLoadError(self.path, 'config.toml says task = "generation", but an ONNX model is not generative '
                                            "(wsserve serves it with predict)")
        so = ort.SessionOptions()
        so.intra_op_num_threads = config.onnx_intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._session: Any = ort.InferenceSession(data if data is not None else str(self.path), sess_options=so,
                                                      providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(self.path, f"ONNX Runtime cannot load it: {type(exc).__name__}: {exc}") from None
        parameters, self._nonzero = _count_parameters(self.path, data)
        graph_in, graph_out = self._session.get_inputs(), self._session.get_outputs()
        if not graph_in or not graph_out:
            raise ModelLoadError(self.path, "the graph has no inputs or no outputs")
        self._batching = config.batching
        if config.autofill_batching:  # Triton's AutoCompleteMaxBatch: batch when every first dimension is dynamic
            self._batching = all(a.shape and not _fixed(a.shape[0]) for a in (*graph_in, *graph_out))
        why_batched = ("max_batch_size auto-completed as Triton does: every graph input and output has a dynamic "
                       "first dimension" if config.autofill_batching else "max_batch_size > 0")
        scattered = {t for bo in config.batch_outputs for t in bo.targets}

        def spec(arg: Any, side: str, tc: TensorConfig | None) -> TensorSpec:
            """The graph's tensor as the wire sees it: in config.pbtxt's ``dims`` when it reshapes it (the
            graph then compared with its ``reshape``), else as :func:`_graph_spec` reads it; a ragged
            input or a scattered output (:mod:`.ragged`) in its ``dims`` (:meth:`_ragged_spec`)."""
            if tc is not None and (tc.ragged or (side == "output" and arg.name in scattered)):
                return self._ragged_spec(arg, side, tc)
            if tc is None or tc.model_dims is None:
                return _graph_spec(arg, side, self.batching, tc, self.path, config.source, name, why_batched)
            md = tc.model_dims
            inner = TensorConfig(tc.name, None if -1 in md else md, tc.dtype, md)
            model_spec = _graph_spec(arg, side, self.batching, inner, self.path, f"{config.source} reshape", name,
                                     why_batched)  # (its messages name the reshape, not dims)
            wire = tc.triton_dims or ()
            (self._reshape_in if side == "input" else self._reshape_out)[arg.name] = (md, wire)
            return TensorSpec(arg.name, tuple(VARIABLE if d == -1 else d for d in wire), model_spec.dtype)

        #: config.pbtxt's ``reshape``: input name -> (the model's per-row dims, the wire's), and outputs'
        self._reshape_in: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._reshape_out: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        sequence = config.sequence
        #: a stateful model's (``sequence_batching``) control and state inputs, fed by the sequence
        #: worker (:mod:`wsserve.sequence_worker`), never by a request; its state outputs no
        #: config.pbtxt ``output`` lists (kept by the server, never answered); the initial states
        self.sequence_inputs: tuple[TensorSpec, ...] = ()
        self.state_outputs: tuple[str, ...] = ()
        self.initial_states: dict[str, np.ndarray] = {}
        if sequence is not None:
            self._sequence_tensors(sequence, graph_in, graph_out, name)
            hidden = {s.name for s in self.sequence_inputs}
            graph_in = [a for a in graph_in if a.name not in hidden]
            if not graph_in:
                raise ModelLoadError(self.path, "the graph has no inputs but its control and state inputs")
        if config.batch_inputs:  # fed by the server (computed per batch), never by a request
            self._check_batch_inputs(config, graph_in)
            hidden = {b.target for b in config.batch_inputs}
            graph_in = [a for a in graph_in if a.name not in hidden]
        own_in = [spec(a, "input", _configured(a.name, config.inputs, len(graph_in))) for a in graph_in]
        # An optional input that is no graph input but an initializer a request may override (ONNX
        # Runtime lists those apart): config.pbtxt's dims and type are its shape; left out, the
        # initializer's value is used.
        # An optional graph input with no initializer behind it cannot be left out: refused here, not
        # by ONNX Runtime on each request leaving it out.
        overridable = {a.name: a for a in self._session.get_overridable_initializers()}
        for tc in config.inputs or ():
            if tc.optional and any(a.name == tc.name for a in graph_in):
                raise ModelLoadError(self.path, f"{config.source} says optional input {tc.name!r}, but the graph "
                                                "cannot run without it: an ONNX model's optional input must be an "
                                                "initializer a request may override (a graph input with an "
                                                "initializer of the same name)")
            if tc.optional and tc.name in overridable:
                dtype = ONNX_TYPES.get(overridable[tc.name].type)
                if dtype is None or (tc.dtype is not None and tc.dtype != dtype):
                    raise ModelLoadError(self.path, f"{config.source} says optional input {tc.name!r} is {tc.dtype}; "
                                                    f"the graph's initializer is {overridable[tc.name].type}")
                own_in.append(TensorSpec(tc.name, tuple(VARIABLE if d == -1 else d for d in tc.triton_dims or ()),
                                         dtype, optional=True))
                if tc.model_dims is not None:  # config.pbtxt's reshape: the graph's rows
                    self._reshape_in[tc.name] = (tc.model_dims, tc.triton_dims or ())
        out_cfg = config.outputs
        if out_cfg is None and sequence is not None:  # auto-complete: the state outputs are not answered
            graph_out = [a for a in graph_out if a.name not in {st.output_name for st in sequence.states}]
        chosen = [a for a in graph_out if out_cfg is None or _configured(a.name, out_cfg, len(graph_out)) is not None]
        own_out = [spec(a, "output", _configured(a.name, out_cfg, len(graph_out))) for a in (chosen or graph_out)]
        self.inputs = merge_specs("input", own_in, config.inputs, self.path, source=config.source)
        self.outputs = merge_specs("output", own_out, config.outputs, self.path, source=config.source)
        self._output_names = [s.name for s in self.outputs]
        #: A bfloat16 tensor among the graph's: run through OrtValues (:meth:`_run`).  Every graph
        #: tensor counts, a stateful model's control and state tensors included (fed and run too,
        #: though taken out of ``graph_in`` / ``graph_out`` above).
        self._bfloat16 = any(a.type == "tensor(bfloat16)"
                             for a in (*self._session.get_inputs(), *self._session.get_outputs()))
        if sequence is not None:
            self.state_outputs = tuple(st.output_name for st in sequence.states
                                       if st.output_name not in self._output_names)
        #: what each run asks the graph for: the answered outputs, then the state outputs kept
        self._run_names = [*self._output_names, *self.state_outputs]
        #: per output (in order): the wire's per-row dims where config.pbtxt reshapes it, else None
        self._out_wire = [self._reshape_out[n][1] if n in self._reshape_out else None for n in self._output_names]
        #: graph scalars (rank 0) served in config.pbtxt's dims of 1s (Triton's rule): reshaped per row
        self._scalar_inputs = frozenset(a.name for a in graph_in if not a.shape)
        self._row_shapes = [s.shape for s in self.outputs]
        meta = self._session.get_modelmeta()
        try:
            own = read_wsserve_metadata(dict(meta.custom_metadata_map), "the graph")
        except ValueError as exc:
            raise ModelLoadError(self.path, str(exc)) from None
        self._compression = own.get("compression")
        self.info = make_info(
            self,
            task=config.task or "regression",
            parameters=parameters,
            metrics=dict(own.get("metrics", {})),
            extra={"producer": meta.producer_name, "intra_op_num_threads": config.onnx_intra_op_threads},
        )
        self._parameters = parameters
        #: config.pbtxt's ragged batching (:mod:`.ragged`): ragged inputs (the worker reads
        #: ``ragged_inputs``), batch inputs computed per batch, outputs scattered by a source's shapes
        self.ragged_inputs = frozenset(t.name for t in config.inputs or () if t.ragged)
        self._batch_inputs = config.batch_inputs
        self._scatter = {t: bo.source for bo in config.batch_outputs for t in bo.targets}
        self._scatter_dims = {s.name: tuple(-1 if d == VARIABLE else d for d in s.shape) for s in self.outputs
                              if s.name in self._scatter}
        #: the model has ragged batching: the worker never splits a request over batches
        self.ragged_batching = bool(self.ragged_inputs or self._batch_inputs or self._scatter)
        if self.ragged_batching:
            # each request's shapes matter: the worker passes the batch as its requests (Triton's batcher)
            self.predict_requests = self._predict_requests

    def _sequence_tensors(self, sequence: Any, graph_in: list[Any], graph_out: list[Any], model: str) -> None:
        """Check a stateful model's graph against config.pbtxt's ``sequence_batching`` (as Triton's
        onnxruntime backend does at load): each control input and each state's input is a graph
        input, each state's output a graph output, of the configured type and of dims that agree
        (a control: ``[1]`` per row; a state: its ``dims``, a ``-1`` where the graph's dimension is
        dynamic).  Sets :attr:`sequence_inputs`, reads the initial states.  Raises
        :class:`ModelLoadError` naming the tensor and the disagreement."""
        by_in = {a.name: a for a in graph_in}
        by_out = {a.name: a for a in graph_out}
        specs: list[TensorSpec] = []

        def graph_tensor(table: dict[str, Any], what: str, tname: str, dtype: np.dtype, dims: tuple[int, ...],
                         exact: bool) -> None:
            arg = table.get(tname)
            side = "input" if table is by_in else "output"
            if arg is None:
                raise ModelLoadError(self.path, f"config.pbtxt's sequence_batching names {what} {tname!r}, which "
                                                f"is not a graph {side} (its {side}s: {', '.join(map(repr, table))})")
            got = ONNX_TYPES.get(arg.type)
            if got is None or np.dtype(TENSOR_DTYPES[got]) != dtype:
                raise ModelLoadError(self.path, f"{what} {tname!r} is {dtype.name} in config.pbtxt's sequence_batching; "
                                                f"the graph's is {arg.type}")
            if arg.shape is not None and not arg.shape:
                raise ModelLoadError(self.path, f"{what} {tname!r} is a scalar in the graph; it needs dims "
                                                f"{show_dims(dims)}" + (" after the batch dimension" if self.batching else ""))
            if arg.shape is not None:
                why = compare_dims(model, what, tname, graph_dims(arg.shape), dims, batching=self.batching,
                                   source="config.pbtxt's sequence_batching", exact=exact)
                if why is not None:
                    raise ModelLoadError(self.path, why)

        for c in sequence.controls:
            graph_tensor(by_in, "control input", c.name, c.dtype, (1,), False)
            specs.append(TensorSpec(c.name, (1,), "bytes" if c.dtype == np.object_ else c.dtype.name))
        for st in sequence.states:
            graph_tensor(by_in, "state input", st.input_name, st.dtype, st.dims, False)
            graph_tensor(by_out, "state output", st.output_name, st.dtype, st.dims, True)
            specs.append(TensorSpec(st.input_name, tuple(VARIABLE if d == -1 else d for d in st.dims), st.dtype.name))
            self.initial_states[st.input_name] = self._initial_state(st)
        self.sequence_inputs = tuple(specs)

    def _ragged_spec(self, arg: Any, side: str, tc: TensorConfig) -> TensorSpec:
        """A ragged input's or a scattered output's spec: config.pbtxt's ``dims`` (per request row),
        the graph's tensor of any rank for an output, rank 1 for a ragged input (its requests'
        values in one dimension, Triton's onnxruntime backend's rule).  Raises
        :class:`ModelLoadError` naming the tensor."""
        dtype = ONNX_TYPES.get(arg.type)
        if dtype is None:
            raise ModelLoadError(self.path, f"{side} {arg.name!r} has type {arg.type}; supported: {', '.join(ONNX_TYPES)}")
        if side == "input" and arg.shape is not None and len(arg.shape) != 1:
            raise ModelLoadError(self.path, f"ragged input {arg.name!r} (allow_ragged_batch) has {len(arg.shape)} "
                                            f"dimensions in the graph ({_show(list(arg.shape))}); a ragged input is "
                                            "fed as its requests' values in one dimension: the graph takes [-1]")
        dims = tc.triton_dims or ()
        return TensorSpec(arg.name, tuple(VARIABLE if d == -1 else d for d in dims), dtype)

    def _check_batch_inputs(self, config: ModelConfig, graph_in: list[Any]) -> None:
        """Each config.pbtxt ``batch_input``'s target is a graph input of its ``data_type``, of rank 2 for
        ``BATCH_ITEM_SHAPE`` and 1 for the other kinds.  Raises :class:`ModelLoadError` naming it."""
        by_name = {a.name: a for a in graph_in}
        for b in config.batch_inputs:
            arg = by_name.get(b.target)
            if arg is None:
                raise ModelLoadError(self.path, f"config.pbtxt's batch_input {b.target!r} is not a graph input (its "
                                                f"inputs: {', '.join(map(repr, by_name))})")
            if ONNX_TYPES.get(arg.type) != b.dtype:
                raise ModelLoadError(self.path, f"batch input {b.target!r} is {b.dtype} in config.pbtxt; the graph's "
                                                f"is {arg.type}")
            rank = 2 if b.kind == "BATCH_ITEM_SHAPE" else 1
            if arg.shape is not None and len(arg.shape) != rank:
                raise ModelLoadError(self.path, f"batch input {b.target!r} ({b.kind}) has {len(arg.shape)} dimensions "
                                                f"in the graph; it is fed with {rank}")

    def _predict_requests(self, batch: Batch, rows: list[int], ids: list[str] | None = None) -> Any:
        """A batch of a model with ragged batching (:mod:`.ragged`), its requests of ``rows[i]`` rows in
        order (``ids`` unused): each ragged input (a :class:`~wsserve.worker.Ragged`, or one request's
        array) fed as its requests' values in one dimension, each batch input computed from its
        source's shapes, the other inputs as they are (in config.pbtxt's ``reshape``, if any).  Returns
        the outputs of every row, each in its wire dims (an
        output's first dimension must be the batch's rows), or, with a scattered output,
        :class:`~wsserve.worker.RequestOutputs` (each request's part).  Raises ``ValueError`` for
        outputs that do not fit."""
        self._require_open()
        x = dict(batch) if isinstance(batch, dict) else {self.inputs[0].name: batch}
        shapes: dict[str, list[tuple[int, ...]]] = {}
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            v = x.get(spec.name)
            if v is None:
                continue
            if spec.name in self.ragged_inputs:
                parts = v.parts if isinstance(v, Ragged) else (v,)
                shapes[spec.name] = [p.shape for p in parts]
                feeds[spec.name] = np.asarray(concat_flat(parts), dtype=spec.np_dtype)
            else:
                a = np.asarray(v, dtype=spec.np_dtype)
                shapes[spec.name] = [(r, *a.shape[1:]) for r in rows]  # the requests' (wire) shapes
                reshape = self._reshape_in.get(spec.name)  # config.pbtxt's reshape: the graph's rows
                feeds[spec.name] = a if reshape is None else a.reshape((len(a), *reshape[0]))
        for b in self._batch_inputs:
            feeds[b.target] = batch_input_value(b.kind, shapes[b.source], b.dtype)
        total = sum(rows)
        got = self._to_wire(self._run(self._session, self._output_names, feeds))  # (a scattered one: as it is)
        if not self._scatter:
            return self._pack(self._fitted(self._batch_rows(got, total)))
        plain = self._batch_rows([o for o, n in zip(got, self._output_names, strict=True) if n not in self._scatter],
                                 total, [n for n in self._output_names if n not in self._scatter])
        by_name = dict(zip([n for n in self._output_names if n not in self._scatter], plain, strict=True))
        parts: list[dict[str, np.ndarray]] = [{} for _ in rows]
        for o, name in zip(got, self._output_names, strict=True):
            if name in self._scatter:
                for i, p in enumerate(scatter(o, shapes[self._scatter[name]], self._scatter_dims[name], name)):
                    parts[i][name] = p
            else:
                start = 0
                for i, r in enumerate(rows):
                    parts[i][name] = by_name[name][start:start + r]
                    start += r
        return RequestOutputs(tuple(self._pack([p[n] for n in self._output_names]) for p in parts))

    def _batch_rows(self, outs: list[np.ndarray], total: int, names: list[str] | None = None) -> list[np.ndarray]:
        """``outs``, each checked to hold the batch's ``total`` rows first (an output of a ragged batch
        is scattered by rows unless a batch_output scatters it).  Raises ``ValueError`` naming it."""
        for o, name in zip(outs, names or self._output_names, strict=True):
            if o.ndim < 1 or o.shape[0] != total:
                raise ValueError(f"output {name!r} has shape {list(o.shape)}; the batch has {total} rows (an output "
                                 "not scattered by a batch_output holds one row per request row)")
        return outs

    def _initial_state(self, st: Any) -> np.ndarray:
        """State ``st``'s value at a sequence's START (one row, without the batch dimension): zeros
        in its initial dims, or the raw little-endian row-major values of the model directory's
        ``initial_state/<data_file>`` (exactly as many bytes as those dims hold)."""
        if st.initial_file is None:
            return np.zeros(st.initial_dims, dtype=st.dtype)
        from .warmup import _read_file

        want = math.prod(st.initial_dims) * st.dtype.itemsize
        where = self.config.path.parent / "initial_state" / st.initial_file
        label = f"state {st.input_name!r} initial_state"
        data = _read_file(where, want + 1, self.path, label)
        if len(data) != want:
            raise ModelLoadError(self.path, f"{label}: {where} holds "
                                            f"{len(data) if len(data) <= want else 'more than ' + str(want)} bytes; "
                                            f"{list(st.initial_dims)} {st.dtype.name} values are {want}")
        return np.frombuffer(data, dtype=st.dtype.newbyteorder("<")).astype(st.dtype).reshape(st.initial_dims)

    def warmup(self, batch: Batch | None = None, *, stop: Any = None) -> None:
        """As :meth:`RepositoryModel.warmup`, but a stateful model (``sequence_batching``: its runs
        need a sequence's control and state inputs) is not warmed up, as its Triton Python peer, nor is
        a model with ragged batching without ``model_warmup`` samples."""
        if self.config.sequence is not None:
            log.info("%s: not warmed up: the model is stateful (sequence_batching)", self.path)
            return
        if batch is None and not self.config.warmup and "predict_requests" in self.__dict__:
            # ragged batching: what a batch of zeros would mean to the graph is its own (Triton warms up
            # only what model_warmup says)
            log.info("%s: not warmed up: ragged batching (allow_ragged_batch, batch_input, batch_output)", self.path)
            return
        super().warmup(batch, stop=stop)

    def _feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        if isinstance(batch, np.ndarray):
            if len(self.inputs) != 1:
                raise ValueError(f"model {self.name!r} takes named inputs {[s.name for s in self.inputs]}")
            feeds = {self.inputs[0].name: np.asarray(batch, dtype=self.inputs[0].np_dtype)}
        else:
            feeds = {s.name: np.asarray(batch[s.name], dtype=s.np_dtype) for s in self.inputs
                     if s.name in batch}  # an optional input left out: the graph's default (its initializer)
        for s in self.sequence_inputs:  # a stateful model's control and state inputs (the sequence worker's)
            if s.name in batch:  # type: ignore[operator]
                feeds[s.name] = np.asarray(batch[s.name], dtype=s.np_dtype)  # type: ignore[index]
        for name, (model_dims, _) in self._reshape_in.items():  # config.pbtxt's reshape: the model's rows
            v = feeds.get(name)
            if v is not None:  # (an optional input left out has none)
                feeds[name] = v.reshape((len(v), *model_dims))
        return feeds

    def _to_wire(self, outs: list[np.ndarray], batched: bool = True) -> list[np.ndarray]:
        """``outs`` (in output order) with each output config.pbtxt reshapes in its wire ``dims`` (rows
        first when ``batched``).  Raises ``ValueError`` naming an output whose values do not fit them."""
        if not self._reshape_out:
            return outs
        fixed = []
        for o, wire, name in zip(outs, self._out_wire, self._output_names, strict=True):
            if wire is not None:
                try:
                    o = o.reshape((len(o), *wire) if batched else wire)
                except ValueError:
                    raise ValueError(f"output {name!r} has shape {list(o.shape)}, which config.pbtxt's dims "
                                     f"{list(wire)} cannot hold (reshaped from the model's)") from None
            fixed.append(o)
        return fixed

    def _pack(self, outs: list[np.ndarray], states: list[np.ndarray] | None = None) -> Batch:
        """The outputs answered (one array, or by name), with the state outputs kept (by name, for
        the sequence worker to take out: :attr:`state_outputs`)."""
        if not self.state_outputs:
            return outs[0] if len(outs) == 1 else dict(zip(self._output_names, outs, strict=True))
        return {**dict(zip(self._output_names, outs, strict=True)),
                **dict(zip(self.state_outputs, states or (), strict=True))}

    def predict(self, batch: Batch) -> Batch:
        self._require_open()
        if "predict_requests" in self.__dict__:  # ragged batching: one request (a warm-up's batch)
            x = batch if isinstance(batch, dict) else {self.inputs[0].name: batch}
            y = self._predict_requests(batch, [len(next(iter(x.values())))])
            return y.parts[0] if isinstance(y, RequestOutputs) else y
        session = self._session  # one reference for the whole call, even if close() runs meanwhile
        names = self._run_names
        answered = len(self._output_names)
        if not self.batching:  # max_batch_size = 0: the graph has no batch dimension
            scalars, shapes = self._scalar_inputs, self._row_shapes

            def one_row(row: Batch) -> Batch:
                # (a scalar's one-row batch whole: v[0] of a reshape's [1] would be a numpy scalar, not an array)
                feeds = {k: v.reshape(()) if k in scalars else v[0] for k, v in self._feeds(row).items()}
                got = self._run(session, names, feeds)
                outs = self._to_wire(got[:answered], batched=False)
                return self._pack([(o.reshape(shape) if o.ndim == 0 else o)[None]  # a scalar in its dims (of 1s)
                                   for o, shape in zip(outs, shapes, strict=True)], [o[None] for o in got[answered:]])

            return self._per_row(one_row, batch)
        got = self._run(session, names, self._feeds(batch))
        return self._pack(self._fitted(self._to_wire(got[:answered])), got[answered:])

    def _run(self, session: Any, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``session.run``; a graph with a bfloat16 tensor runs on OrtValues instead: onnxruntime's
        numpy bridge knows no bfloat16 (``ml_dtypes.bfloat16`` arrays are fed as their 16-bit
        patterns with ONNX's BFLOAT16 type, and bfloat16 outputs read back from the OrtValue's
        buffer: 2 bytes a value, as the CPU provider holds them)."""
        if not self._bfloat16:
            return session.run(names, feeds)
        import onnxruntime as ort

        bf16 = TENSOR_DTYPES[BFLOAT16]
        values = {k: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(v).view(np.uint16), 16)
                  if v.dtype == bf16 else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
                  for k, v in feeds.items()}
        outs = []
        for out in session.run_with_ort_values(names, values):
            if out.data_type() != "tensor(bfloat16)":
                outs.append(out.numpy())
                continue
            shape = tuple(out.shape())
            count = math.prod(shape)
            if not count:
                outs.append(np.zeros(shape, bf16))
                continue
            raw = (ctypes.c_uint16 * count).from_address(out.data_ptr())
            outs.append(np.frombuffer(raw, dtype=np.uint16).copy().view(bf16).reshape(shape))  # a copy: the OrtValue goes
        return outs

    def _fitted(self, outs: list[np.ndarray]) -> list[np.ndarray]:
        """``outs`` (a batch's, in output order), each checked to fit its declared row shape: a
        config may fix a dimension the graph leaves dynamic (config.toml's ``[[outputs]] shape``
        against a graph dimension that follows a variable input's).  Raises ``ValueError`` naming
        the output and both shapes (the batch's requests then fail, none answered in a shape
        other than the model declares)."""
        for out, spec in zip(outs, self.outputs, strict=True):
            if not spec.fits(out.shape[1:]):
                raise ValueError(f"output {spec.name!r} has shape {list(out.shape)}; the model declares "
                                 f"{[-1, *spec.shape]}")
        return outs

    def flops_per_row(self) -> int:
        return self.config.flops_per_row or max(1, self._parameters)

    def _backend_figures(self) -> dict[str, Any]:
        """``parameters_nonzero`` (initializer elements; when the ``onnx`` package could read the graph)
        and, for a ``wsserve compress`` output, its ``compression`` figures."""
        out: dict[str, Any] = {}
        if self._nonzero is not None:
            out["parameters_nonzero"] = self._nonzero
        if self._compression is not None:
            out["compression"] = self._compression
        return out

    def close(self) -> None:
        self._session = None
        super().close()
