"""The Python backend: ``model.py`` defining ``class Model``, served as a :class:`RepositoryModel`.

**model.py runs arbitrary code with the server's rights.** Load it only from
the operator's own repository directory, never from a path a client can
influence.

Interface (see docs/repository.md for a worked example)::

    class Model:
        task = "regression"                 # optional; config.toml's task wins
        def __init__(self, version_dir: pathlib.Path): ...
        def predict(self, batch):           # [n, *input_shape] -> [n, *output_shape]
            ...                             # dicts by name for several inputs/outputs
        def flops_per_row(self) -> int      # optional cost estimate (default: 1_000_000_000, i.e. "unknown": off the loop)
        def input_gradient(self, x, target) # optional: makes "explain": true work (integrated gradients)
        def close(self) -> None             # optional

Shapes and dtypes come from config.toml (``input_shape``/``output_shape``, or
``[[inputs]]``/``[[outputs]]``; dtypes default to float64).  Outputs are
checked on every call: an array (or a dict by name) of exactly ``[n,
*output_shape]``; a numeric dtype of the same kind is cast to the declared
one.  With ``max_batch_size = 0`` predict is called with one row at a time.

The file is executed under a unique module name (``_wsserve_model_<name>_<version>_<random>``)
with no package and without adding the repository to ``sys.path``; the module is
in ``sys.modules`` only while it executes (so dataclasses and the like work).

``input_gradient(x [n, d] float64, target [n] int64) -> [n, d]``: row i is
the gradient of ``predict(x)[i, target[i]]`` with respect to ``x[i]`` (row-pure,
thread-safe); checked on every call (shape, finite).  Only for one flat input
and one flat output; see :mod:`wsserve.explain`.

A model whose task is ``"generation"`` (config.toml or ``Model.task``) is
loaded and exposed as :attr:`PythonModel.model` with no tensor specs; serving
it is the generation engine's business, and :meth:`PythonModel.predict`
refuses it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import threading
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..models.base import PredictiveModel, call_model_code
from .backend import Batch, RepositoryModel, check_outputs, make_info
from .config import TASKS, ModelConfig, TensorConfig
from .errors import ModelLoadError
from .tensors import TensorSpec

__all__ = ["PythonModel", "DEFAULT_FLOPS_PER_ROW", "exec_model_file"]

#: Cost assumed for Python code that does not say: high enough that the pool always runs it off
#: the event loop (one row is far above any sensible ``--inline-max-flops``); its cost is unknown.
DEFAULT_FLOPS_PER_ROW = 1_000_000_000


def exec_model_file(path: Path, name: str, version: int) -> ModuleType:
    """Execute ``path`` as a fresh module and return it. Raises :class:`ModelLoadError` with the exception text."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", name)
    module_name = f"_wsserve_model_{safe}_{version}_{uuid.uuid4().hex[:12]}"
    if not path.is_file():
        raise ModelLoadError(path, "does not exist")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(path, "cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ModelLoadError(path, f"SyntaxError: {exc.msg} (line {exc.lineno})") from None
    except BaseException as exc:  # noqa: BLE001 - sys.exit() or KeyboardInterrupt included
        raise ModelLoadError(path, f"executing it raised {type(exc).__name__}: {exc}") from exc
    finally:
        sys.modules.pop(module_name, None)
    return module


def _specs(side: str, configured: tuple[TensorConfig, ...] | None, path: Path) -> tuple[TensorSpec, ...]:
    if configured is None:
        raise ModelLoadError(path, f"model.py models need {side}_shape (or [[{side}s]]) in config.toml")
    out = []
    for tc in configured:
        if tc.shape is None:
            raise ModelLoadError(path, f"config.toml must give the shape of {side} {tc.name or side!r} for model.py")
        out.append(TensorSpec(tc.name or side, tc.shape, tc.dtype or "float64"))
    return tuple(out)


class PythonModel(RepositoryModel):
    """``Model(version_dir)`` from ``model.py``. Raises :class:`ModelLoadError` naming the file on any problem."""

    backend = "python"

    def __init__(self, name: str, version: int, path: Path, config: ModelConfig) -> None:
        self.name, self.version, self.path, self.config = name, version, Path(path), config
        module = exec_model_file(self.path, name, version)
        cls = getattr(module, "Model", None)
        if not isinstance(cls, type):
            raise ModelLoadError(self.path, "defines no class Model")
        task = config.task or getattr(cls, "task", None) or "regression"
        if task not in TASKS:
            raise ModelLoadError(self.path, f"Model.task must be one of {', '.join(TASKS)}; got {task!r}")
        self.generative = task == "generation"
        if not self.generative:
            if not callable(getattr(cls, "predict", None)):
                raise ModelLoadError(self.path, "class Model has no predict(batch) method")
            self.inputs = _specs("input", config.inputs, self.path)
            self.outputs = _specs("output", config.outputs, self.path)
        else:
            self.inputs = self.outputs = ()
        try:
            self.model: Any = cls(self.path.parent)
        except BaseException as exc:  # noqa: BLE001 - sys.exit() or KeyboardInterrupt included
            raise ModelLoadError(self.path, f"Model({str(self.path.parent)!r}) raised {type(exc).__name__}: {exc}") from exc
        self._flops = config.flops_per_row or self._model_flops()
        params = getattr(self.model, "parameters", 0)  # may be a method (torch): then unknown
        metrics = getattr(self.model, "metrics", None) or {}
        if not isinstance(metrics, dict):
            raise ModelLoadError(self.path, f"Model.metrics must be a dict, got {type(metrics).__name__}")
        try:  # read once, here in the load's thread: the server asks for it on the event loop
            gradient = None if self.generative else getattr(self.model, "input_gradient", None)
        except BaseException as exc:  # noqa: BLE001 - a property of the model's: sys.exit() included
            raise ModelLoadError(self.path, f"Model.input_gradient raised {type(exc).__name__}: {exc}") from exc
        self._gradient = gradient if callable(gradient) else None
        self.info = make_info(
            self,
            task=task,
            parameters=params if type(params) is int and params >= 0 else 0,
            metrics=dict(metrics),
        )

    def _model_flops(self) -> int:
        value = getattr(self.model, "flops_per_row", None)
        if callable(value):
            try:
                value = value()
            except Exception as exc:
                raise ModelLoadError(self.path, f"Model.flops_per_row() raised {type(exc).__name__}: {exc}") from exc
        if value is None:
            return DEFAULT_FLOPS_PER_ROW
        if type(value) is not int or value < 1:
            raise ModelLoadError(self.path, f"Model.flops_per_row must be a positive integer, got {value!r}")
        return value

    def _call(self, batch: Batch) -> Batch:
        n = len(batch) if not isinstance(batch, dict) else len(next(iter(batch.values())))
        return check_outputs(call_model_code(self.model.predict, batch), self.outputs, n)

    def predict(self, batch: Batch) -> Batch:
        """Calls ``Model.predict`` and checks its result (``ValueError`` naming the output if wrong)."""
        self._require_open()
        if self.generative:
            raise RuntimeError(f"model {self.name!r} is generative: it serves generate, not predict")
        if self.config.max_batch_size == 0:
            return self._per_row(self._call, batch)
        return self._call(batch)

    def warmup(self, batch: Batch | None = None, *, stop: threading.Event | None = None) -> None:
        if not self.generative:
            super().warmup(batch, stop=stop)

    def flops_per_row(self) -> int:
        return self._flops

    def explain_model(self) -> PredictiveModel | None:
        """A view whose ``input_gradient`` calls ``Model.input_gradient`` (checked), if the class has one."""
        if self._gradient is None:
            return None
        return _GradientView(self)

    def close(self) -> None:
        """Calls ``Model.close()`` if it has one (once; its exceptions propagate)."""
        if self.closed:
            return
        super().close()
        close = getattr(self.model, "close", None)
        if callable(close):
            close()


class _GradientView(PredictiveModel):
    """A :class:`PythonModel` seen by :mod:`wsserve.explain`: its predict, and ``Model.input_gradient`` checked."""

    def __init__(self, outer: PythonModel) -> None:
        self._outer = outer
        self.info = outer.info

    def predict(self, x: np.ndarray) -> np.ndarray:
        spec = self._outer.inputs[0]
        return np.asarray(self._outer.predict(np.asarray(x, dtype=spec.np_dtype)), dtype=np.float64)

    def flops_per_row(self) -> int:
        return self._outer.flops_per_row()

    def input_gradient(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``Model.input_gradient(x, target)`` as float64 ``[n, d]``; ``ValueError`` if it returns anything else."""
        g = call_model_code(self._outer._gradient, x, target)
        if not isinstance(g, np.ndarray) or g.shape != x.shape or g.dtype.kind not in "fiu":
            got = f"{g.dtype} {list(g.shape)}" if isinstance(g, np.ndarray) else type(g).__name__
            raise ValueError(f"Model.input_gradient must return a numeric array of shape {list(x.shape)}, got {got}")
        g = g.astype(np.float64)
        if not np.isfinite(g).all():
            raise ValueError("Model.input_gradient returned non-finite values")
        return g
