"""The one interface every repository backend implements: :class:`RepositoryModel`.

See the package docstring (:mod:`wsserve.repository`) for the contract.  This
module also holds the helpers the backends share: reconciling config.toml's
tensors with the model's own (:func:`merge_specs`), checking a model's
outputs (:func:`check_outputs`) and building the :class:`ModelInfo`.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
import stat
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..dtypes import BYTES, float_max, is_float
from ..models.base import ModelInfo, PredictiveModel
from .config import ModelConfig, TensorConfig
from .errors import ModelLoadError
from .tensors import TensorSpec
from .warmup import warmup_batches

log = logging.getLogger("wsserve.repository")

__all__ = ["Batch", "RepositoryModel", "merge_specs", "check_outputs", "make_info", "version_bytes"]

#: :func:`version_bytes` gives up (None) on a version directory with more entries than this.
MAX_VERSION_ENTRIES = 10_000

#: A batch: one array ``[n, *shape]`` for a single input/output, else ``{name: array}``.
Batch = np.ndarray | dict[str, np.ndarray]


class RepositoryModel(PredictiveModel):
    """A loaded version of a repository model (ONNX, npz or Python backend).

    Attributes (set by the constructor, immutable afterwards): ``name``,
    ``version`` (int), ``config`` (:class:`ModelConfig`), ``path`` (the model
    file; for a model that came from memory, ``in_memory`` is true and ``path``
    only names it in messages), ``inputs``/``outputs`` (tuples of :class:`TensorSpec`; empty for a
    generative model.py), ``info`` (:class:`ModelInfo`).  ``backend`` is the
    class's backend name.

    Call order: construct (the loader does; raises :class:`ModelLoadError`),
    then :meth:`warmup` once, then :meth:`predict` any number of times from any
    number of threads, then :meth:`close` once (idempotent; :meth:`predict`
    afterwards raises ``RuntimeError``).
    """

    backend: ClassVar[str]
    name: str
    version: int
    config: ModelConfig
    path: Path
    in_memory: bool = False
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    _closed: bool = False
    _figures: dict[str, Any] | None = None
    _batching: bool | None = None  # a backend that decides it at load (ONNX's auto-complete) sets it

    @property
    def batching(self) -> bool:
        """False when the model has no batch dimension (``max_batch_size = 0``, or Triton's
        auto-complete decided so): :meth:`predict` still takes ``[n, *shape]``, but the server runs
        each request alone and the OIP's shapes are the tensors' whole shapes (no row dimension)."""
        return self._batching if self._batching is not None else self.config.batching

    @abc.abstractmethod
    def predict(self, batch: Batch) -> Batch:  # type: ignore[override]
        """``[n, *input_shape]`` -> ``[n, *output_shape]`` (dicts by name when there are several).

        ``batch`` holds arrays of the input specs' dtypes and shapes (as
        :func:`~wsserve.repository.inputs.convert_inputs` makes them).  Returns
        arrays of the output specs' dtypes and shapes, row i depending only on
        input row i.  Raises whatever the model raises (the pool fails that
        batch's requests) and ``RuntimeError`` after :meth:`close`.
        """

    def flops_per_row(self) -> int:
        """Rough multiply-adds per row (config.toml's ``flops_per_row`` wins)."""
        return self.config.flops_per_row or max(1, self.info.parameters)

    def sample_batch(self, n: int = 2) -> Batch:
        """A batch of ``n`` zero rows for warm-up (``n`` is capped by ``max_batch_size`` when set)."""
        if self.config.max_batch_size:
            n = min(n, self.config.max_batch_size)
        arrays = {s.name: s.zeros((n, *s.shape)) for s in self.inputs}
        return arrays[self.inputs[0].name] if len(self.inputs) == 1 else arrays

    def warmup(self, batch: Batch | None = None, *, stop: threading.Event | None = None) -> None:
        """Run :meth:`predict` once on ``batch`` (default :meth:`sample_batch`; none, and no run, for a
        model with a variable input dimension) and check the outputs.  Config.pbtxt's
        ``model_warmup`` samples instead, when it lists some (:meth:`_configured_warmup`): ``stop``
        set (its load abandoned past its timeout) ends them before their next execution.

        Raises :class:`ModelLoadError` naming the model file if predict raises,
        or returns outputs of the wrong type, shape or dtype.  A float output
        holding NaN or an infinity is logged as a warning naming the output, the
        value and the row, and the version is served: the server refuses to send
        such a row (that request fails, ``invalid_input``), which for a model broken
        everywhere is every request, but a model that divides by a norm or a sum
        gives NaN for the warm-up's rows of zeros and is right for every other row.
        """
        if batch is None and self.config.warmup:
            self._configured_warmup(stop)
            return
        if batch is None:
            if any(s.variable for s in self.inputs):  # no size to try there: Triton warms up only what model_warmup says
                log.info("%s: not warmed up: input dims are variable (-1)", self.path)
                return
            batch = self.sample_batch()
        n = len(batch) if isinstance(batch, np.ndarray) else len(next(iter(batch.values())))
        try:
            out = check_outputs(self.predict(batch), self.outputs, n)
        except Exception as exc:
            raise ModelLoadError(self.path, f"warm-up failed: {type(exc).__name__}: {exc}") from exc
        for spec in self.outputs:
            problem = _non_finite_at(out[spec.name] if isinstance(out, dict) else out)
            if problem is not None:
                log.warning("%s: warm-up output %r has %s (the warm-up batch is %d rows of zeros); served "
                            "anyway: a request whose output is not finite fails", self.path, spec.name, problem, n)

    def _configured_warmup(self, stop: threading.Event | None = None) -> None:
        """config.pbtxt's ``model_warmup``: each sample's batch, ``count`` times, its outputs checked
        (:mod:`.warmup`).  Raises :class:`ModelLoadError` naming the sample: the version does not serve;
        also, before an execution, once ``stop`` is set (the load was abandoned: the rest of up to
        64 x 1000 executions would only burn CPU for a model that is discarded)."""
        assert self.config.path is not None
        for sample, arrays in warmup_batches(self.config.warmup, self.inputs, self.config.path.parent, self.path):
            batch: Batch = arrays[self.inputs[0].name] if len(self.inputs) == 1 else arrays
            for _ in range(sample.count):
                if stop is not None and stop.is_set():
                    raise ModelLoadError(self.path, f"model_warmup stopped at sample {sample.name!r}: its load was "
                                                    "abandoned (past its load timeout)")
                try:
                    check_outputs(self.predict(batch), self.outputs, sample.batch_size)
                except Exception as exc:
                    raise ModelLoadError(self.path, f"model_warmup sample {sample.name!r} failed: "
                                                    f"{type(exc).__name__}: {exc}") from exc
            del arrays, batch  # one sample's arrays at a time (see warmup_batches)
        log.info("%s: warmed up with %d model_warmup sample(s)", self.path, len(self.config.warmup))

    def version_figures(self) -> dict[str, Any]:
        """What ``models`` reports for this version, as JSON-ready values.

        ``bytes`` (the files of the version directory, :func:`version_bytes`;
        absent for a model that came from memory),
        ``parameters``, ``metrics``, plus the backend's own
        (:meth:`_backend_figures`: ``parameters_nonzero``, and ``compression``
        - the figures ``wsserve compress`` measured - when the version is a
        compressed one).  Computed on the first call (it reads the file
        system: make that call off the event loop, as the registry does after
        warm-up) and cached; returns a copy.
        """
        if self._figures is None:
            on_disk = {} if self.in_memory else {"bytes": version_bytes(self.path.parent)}
            self._figures = {**on_disk, "parameters": self.info.parameters,
                             "metrics": dict(self.info.metrics), **self._backend_figures()}
        return dict(self._figures)

    def _backend_figures(self) -> dict[str, Any]:
        """Figures only the backend knows (see :meth:`version_figures`); none by default."""
        return {}

    def explain_model(self) -> PredictiveModel | None:
        """The model :mod:`wsserve.explain` explains for this version (it must compute what
        :meth:`predict` computes), or None when the backend offers no input gradient (the default)."""
        return None

    def close(self) -> None:
        """Release the model (idempotent)."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"model {self.name!r} version {self.version} is closed")

    def _per_row(self, fn: Callable[[Batch], Batch], batch: Batch) -> Batch:
        """Run ``fn`` on one-row slices of ``batch`` and stack (``max_batch_size = 0`` models)."""
        if isinstance(batch, np.ndarray):
            parts = [fn(batch[i : i + 1]) for i in range(len(batch))]
        else:
            n = len(next(iter(batch.values())))
            parts = [fn({k: v[i : i + 1] for k, v in batch.items()}) for i in range(n)]
        if isinstance(parts[0], dict):
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # type: ignore[index]
        return np.concatenate(parts)  # type: ignore[arg-type]


def merge_specs(
    side: str,
    model_specs: Sequence[TensorSpec],
    configured: Sequence[TensorConfig] | None,
    path: Path,
    *,
    source: str = "config.toml",
) -> tuple[TensorSpec, ...]:
    """Reconcile the model's own specs (from an ONNX graph or an npz architecture) with the config
    file's (``source``: config.toml, or config.pbtxt, in messages).

    ``configured`` may name a subset of the model's tensors (for outputs: the
    ones to return) or be the single-tensor shorthand (``name=None``).  Every
    shape/dtype config.toml gives must equal the model's.  Raises
    :class:`ModelLoadError` naming ``path`` and the tensor on a disagreement
    or an unknown name.
    """
    if configured is None:
        return tuple(model_specs)
    by_name = {s.name: s for s in model_specs}
    out: list[TensorSpec] = []
    for tc in configured:
        if tc.name is None:
            if len(model_specs) != 1:
                names = ", ".join(repr(s.name) for s in model_specs)
                raise ModelLoadError(path, f"the model has {len(model_specs)} {side}s ({names}); name them with [[{side}s]] in {source}")
            spec = model_specs[0]
        elif tc.name not in by_name:
            names = ", ".join(repr(s.name) for s in model_specs)
            raise ModelLoadError(path, f"{source} names {side} {tc.name!r}, which the model does not have (it has {names})")
        else:
            spec = by_name[tc.name]
        if tc.shape is not None and tc.shape != spec.shape:
            raise ModelLoadError(path, f"{source} says {side} {spec.name!r} has shape {list(tc.shape)}; the model's is {list(spec.shape)}")
        if tc.dtype is not None and tc.dtype != spec.dtype:
            raise ModelLoadError(path, f"{source} says {side} {spec.name!r} is {tc.dtype}; the model's is {spec.dtype}")
        out.append(dataclasses.replace(spec, optional=True) if tc.optional and side == "input" else spec)
    if side == "input" and len(out) != len(model_specs):
        listed = {s.name for s in out}
        missing = [s.name for s in model_specs if s.name not in listed]
        raise ModelLoadError(path, f"{source} lists {len(out)} inputs but the model needs {len(model_specs)} (missing {missing[0]!r})")
    return tuple(out)


def check_outputs(y: Any, specs: Sequence[TensorSpec], n: int) -> Batch:
    """Check a model's result against ``specs`` for a batch of ``n`` rows; cast within a dtype kind.

    Accepts an array (one output) or a dict by name (several; a one-output
    model may also return ``{name: array}``).  Returns the outputs as
    :meth:`RepositoryModel.predict` must: arrays of exactly the spec dtypes.
    Raises ``ValueError`` naming the output and what is wrong (an integer value
    that the spec's narrower integer dtype cannot hold included: no wrap-around; and a
    finite value beyond the spec's float dtype's range, float64 1e6 for float16: no infinity).
    """
    if len(specs) == 1 and not isinstance(y, dict):
        return _check_one(y, specs[0], n)
    if not isinstance(y, dict):
        raise ValueError(f"expected a dict of outputs {[s.name for s in specs]}, got {type(y).__name__}")
    if set(y) != {s.name for s in specs}:
        raise ValueError(f"expected outputs {sorted(s.name for s in specs)}, got {sorted(map(str, y))}")
    out = {s.name: _check_one(y[s.name], s, n) for s in specs}
    return out[specs[0].name] if len(specs) == 1 else out


def _non_finite_at(y: np.ndarray) -> str | None:
    """The first value of a float array ``[n, ...]`` that is not finite and where, as
    ``"NaN at row 0"`` or ``"inf at row 3, element [1, 2]"``; None when every value is finite
    (or the array holds no floats)."""
    if not is_float(y.dtype):
        return None
    bad = ~np.isfinite(y)
    if not bad.any():
        return None
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    value = y[where]
    shown = "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    element = f", element {list(where[1:])}" if len(where) > 1 else ""
    return f"{shown} at row {where[0]}{element}"


def _check_one(y: Any, spec: TensorSpec, n: int) -> np.ndarray:
    if not isinstance(y, np.ndarray):
        raise ValueError(f"output {spec.name!r} is a {type(y).__name__}, not a numpy array")
    if y.shape[:1] != (n,) or not spec.fits(y.shape[1:]):
        raise ValueError(f"output {spec.name!r} has shape {list(y.shape)}; expected {[n, *spec.shape]}")
    if spec.dtype == BYTES:
        return _string_output(y, spec)
    if y.dtype != spec.np_dtype and (y.dtype.kind == "V" or spec.np_dtype.kind == "V"):  # bfloat16 on a side
        if not is_float(y.dtype) and y.dtype.kind not in "biu" or not is_float(spec.np_dtype) and spec.np_dtype.kind != "f":
            raise ValueError(f"output {spec.name!r} has dtype {y.dtype}; expected {spec.dtype}")
        if y.size and float_max(spec.np_dtype) < (float_max(y.dtype) if is_float(y.dtype) else 2.0**64):
            _check_float_range(y, spec)  # float32 3.4e38 -> bfloat16 (at most 3.39e38)
        return y.astype(spec.np_dtype)
    if y.dtype != spec.np_dtype:
        if y.dtype.kind not in "biuf" or not np.can_cast(y.dtype, spec.np_dtype, "same_kind"):
            raise ValueError(f"output {spec.name!r} has dtype {y.dtype}; expected {spec.dtype}")
        if spec.np_dtype.kind == "f" and y.size and not np.can_cast(y.dtype, spec.np_dtype, "safe"):
            _check_float_range(y, spec)  # the cast would make inf: float64 1e6 -> float16
        elif y.dtype.kind in "iu" and y.size and not np.can_cast(y.dtype, spec.np_dtype, "safe"):
            info = np.iinfo(spec.np_dtype)  # the cast would wrap around: int64 2**32 -> int32 0
            lo, hi = int(y.min()), int(y.max())
            if lo < info.min or hi > info.max:
                raise ValueError(f"output {spec.name!r} holds {lo if lo < info.min else hi}, "
                                 f"which does not fit its dtype {spec.dtype}")
        y = y.astype(spec.np_dtype)
    return y


def _check_float_range(y: np.ndarray, spec: TensorSpec) -> None:
    """``ValueError`` naming output ``spec`` and the first finite value of ``y`` (a wider float, or an
    integer) beyond the range of its float dtype (float16's 65,504): the cast would make it an
    infinity.  NaN and infinities pass (they are not finite before the cast either)."""
    limit = float_max(spec.np_dtype)
    wide = y.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        over = np.isfinite(wide) & (np.abs(wide) > limit)
    if over.any():
        value = y.reshape(-1)[int(np.argmax(over.reshape(-1)))]
        shown = int(value) if y.dtype.kind in "iu" else float(value)
        raise ValueError(f"output {spec.name!r} holds {shown}, which does not fit its dtype {spec.dtype}")


def _string_output(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """A string output (``bytes``) as an object array of ``bytes``: ``y`` is an object array of
    ``bytes`` or ``str`` (each ``str`` UTF-8 encoded), or a numpy ``S``/``U`` array, as Triton's
    Python backend takes them; ``ValueError`` naming the output and the first other element (or
    a ``str`` UTF-8 cannot encode: a lone surrogate)."""
    if y.dtype.kind not in "OSU":
        raise ValueError(f"output {spec.name!r} has dtype {y.dtype}; expected strings (an object array of bytes or str)")
    out = np.empty(y.shape, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(y.flat):
        if isinstance(v, bytes):
            flat[i] = bytes(v)
        elif isinstance(v, str):
            try:
                flat[i] = v.encode()
            except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 for it
                raise ValueError(f"output {spec.name!r} holds a str at element {i} that UTF-8 cannot encode "
                                 f"({exc.reason}: {v[exc.start:exc.end]!r} at character {exc.start})") from None
        else:
            raise ValueError(f"output {spec.name!r} holds a {type(v).__name__} at element {i}; expected bytes or str")
    return out


def make_info(
    model: RepositoryModel, *, task: str, parameters: int, metrics: dict[str, Any], extra: dict[str, Any] | None = None
) -> ModelInfo:
    """The :class:`ModelInfo` of a repository model.

    ``input_shape``/``output_shape`` are those of the first input/output (``()``
    when there are none); ``extra`` always carries ``backend``, ``inputs`` and
    ``outputs`` (lists of ``{"name", "shape", "dtype"}``) so several named
    tensors and their dtypes are reported too.
    """
    return ModelInfo(
        name=model.name,
        version=str(model.version),
        task=task,  # type: ignore[arg-type]
        input_shape=model.inputs[0].shape if model.inputs else (),
        output_shape=model.outputs[0].shape if model.outputs else (),
        parameters=int(parameters),
        metrics=dict(metrics),
        extra={
            **(extra or {}),
            "backend": model.backend,
            "inputs": [s.to_json() for s in model.inputs],
            "outputs": [s.to_json() for s in model.outputs],
        },
    )


def version_bytes(version_dir: Path) -> int | None:
    """Bytes of the regular files under ``version_dir`` (recursively, symlinks not followed).

    None if it cannot be listed or holds more than :data:`MAX_VERSION_ENTRIES` entries.
    """
    total = entries = 0
    try:
        for root, dirs, files in os.walk(version_dir, followlinks=False):
            entries += len(dirs) + len(files)
            if entries > MAX_VERSION_ENTRIES:
                return None
            for f in files:
                st = os.lstat(os.path.join(root, f))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    except OSError:
        return None
    return total
