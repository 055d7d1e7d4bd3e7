"""A plain numpy function served as a model: :class:`FunctionModel` (no files, no config.toml).

For programs that embed wsserve (``wsserve.serve(models={"name": FunctionModel(...)})``)::

    def score(batch):                      # [n, 3] float64 -> [n, 1]
        return batch @ W

    model = FunctionModel(score, input_shape=(3,), output_shape=(1,))

The function is called with a batch ``[n, *input_shape]`` of ``dtype`` (rows
from many requests, batched like any repository model) and must return an
array ``[n, *output_shape]``, row ``i`` depending only on input row ``i``.
Its result is checked on every call as a ``model.py``'s is: a wrong shape, a
non-array or a dtype of another kind fails that batch; a numeric dtype of the
same kind (float32 for float64) is cast.

It runs in a worker thread (unless ``flops_per_row`` says it is cheap enough
to run on the event loop), and with ``instances > 1`` in several threads at
once: the function must be thread-safe (a pure numpy function is).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..models.base import call_model_code
from .backend import Batch, RepositoryModel, check_outputs, make_info
from .config import (
    MAX_BATCH_SIZE,
    MAX_DELAY_MS,
    MAX_FLOPS_PER_ROW,
    MAX_INSTANCES,
    MAX_VERSION,
    TASKS,
    ModelConfig,
)
from .layout import is_model_name
from .python_backend import DEFAULT_FLOPS_PER_ROW
from .tensors import DTYPES, TensorSpec

__all__ = ["FunctionModel"]


def _dtype(argument: str, value: Any) -> str:
    try:
        name = np.dtype(value).name
    except TypeError:
        name = str(value)
    if name not in DTYPES:
        raise ValueError(f"FunctionModel: {argument} must be one of {', '.join(DTYPES)}, got {value!r}")
    return name


def _shape(argument: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ValueError(f"FunctionModel: {argument} must be a non-empty tuple of positive integers, got {value!r}")
    if not all(type(d) is int for d in value):
        raise ValueError(f"FunctionModel: {argument} must hold integers, got {list(value)}")
    return tuple(value)


def _bounded(argument: str, value: Any, lo: float, hi: float, *, integer: bool = True) -> Any:
    ok_type = type(value) is int if integer else type(value) in (int, float)
    if not ok_type or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"FunctionModel: {argument} must be {kind} in [{lo:g}, {hi:g}], got {value!r}")
    return value


class FunctionModel(RepositoryModel):
    """``fn(batch) -> array`` with declared shapes and dtypes, served like a repository model.

    Raises ``TypeError`` if ``fn`` is not callable and ``ValueError`` naming the
    argument for a bad name, shape, dtype, task or limit.  The first call of
    ``fn`` is the server's warm-up (a batch of zeros): a function that fails
    or returns the wrong shape there is refused before anything is served
    (:class:`~wsserve.repository.ModelLoadError`).
    """

    backend = "function"

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        *,
        input_shape: Sequence[int] | int,
        output_shape: Sequence[int] | int,
        dtype: Any = "float64",
        output_dtype: Any = None,
        name: str | None = None,
        version: int = 1,
        task: str = "regression",
        # Batching
        max_batch_size: int | None = None,
        max_delay_ms: float | None = None,
        instances: int = 1,
        flops_per_row: int | None = None,
        # Reported in `models`
        parameters: int = 0,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """``dtype``: of the input rows (float64 by default; JSON numbers are checked and cast);
        ``output_dtype``: of the outputs (default: ``dtype`` when it is a float, else float64).
        ``name`` (default: the function's name) and ``version`` are what ``models`` reports
        (the server serves it under the name it is given).  ``max_batch_size``,
        ``max_delay_ms``: this model's batching (default: the server's); ``instances``: batches
        computed side by side; ``flops_per_row``: a per-row cost estimate (default 10⁹:
        always off the event loop; a cheap function can say less and run inline)."""
        if not callable(fn):
            raise TypeError(f"FunctionModel: fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        if name is None:
            name = getattr(fn, "__name__", "")
            name = name if is_model_name(name) else "function"  # a lambda's "<lambda>"
        elif not is_model_name(name):
            raise ValueError(f"FunctionModel: name must be 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit, got {name!r}")
        self.name = name
        self.version = _bounded("version", version, 1, MAX_VERSION)
        if task not in TASKS or task == "generation":
            raise ValueError(f"FunctionModel: task must be one of {', '.join(t for t in TASKS if t != 'generation')}, got {task!r}")
        in_dtype = _dtype("dtype", dtype)
        out_dtype = _dtype("output_dtype", output_dtype) if output_dtype is not None else (
            in_dtype if in_dtype.startswith("float") else "float64")
        try:
            self.inputs = (TensorSpec("input", _shape("input_shape", input_shape), in_dtype),)
            self.outputs = (TensorSpec("output", _shape("output_shape", output_shape), out_dtype),)
        except ValueError as exc:
            raise ValueError(f"FunctionModel: {exc}") from None
        if max_batch_size is not None:
            _bounded("max_batch_size", max_batch_size, 1, MAX_BATCH_SIZE)
        if max_delay_ms is not None:
            _bounded("max_delay_ms", max_delay_ms, 0, MAX_DELAY_MS, integer=False)
        if flops_per_row is not None:
            _bounded("flops_per_row", flops_per_row, 1, MAX_FLOPS_PER_ROW)
        self.config = ModelConfig(
            task=task,
            max_batch_size=max_batch_size,
            max_delay_ms=None if max_delay_ms is None else float(max_delay_ms),
            instances=_bounded("instances", instances, 1, MAX_INSTANCES),
            flops_per_row=flops_per_row,
        )
        self.in_memory = True
        self.path = Path(f"<function {getattr(fn, '__qualname__', type(fn).__name__)}>")
        if metrics is not None and not isinstance(metrics, Mapping):
            raise ValueError(f"FunctionModel: metrics must be a mapping, got {type(metrics).__name__}")
        self.info = make_info(self, task=task, parameters=_bounded("parameters", parameters, 0, 10**15),
                              metrics=dict(metrics or {}))

    def predict(self, batch: Batch) -> Batch:
        """Calls ``fn`` and checks its result (``ValueError`` naming the output if it is wrong)."""
        self._require_open()
        if isinstance(batch, dict):
            batch = batch["input"]
        return check_outputs(call_model_code(self.fn, batch), self.outputs, len(batch))

    def flops_per_row(self) -> int:
        return self.config.flops_per_row or DEFAULT_FLOPS_PER_ROW
