"""The model interfaces the pool and the generation engine serve.

A *predictive* model maps a float64 batch ``[n, *input_shape]`` to
``[n, *output_shape]``; it must be pure (same rows in, same rows out, whatever
else is in the batch) and thread-safe for concurrent reads, because batches run
in a worker thread.  A *generative* model (``charlm``) is defined in
:mod:`wsserve.models.charlm`; it shares :class:`ModelInfo`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

__all__ = ["ModelInfo", "PredictiveModel", "Task", "call_model_code"]

T = TypeVar("T")

Task = Literal["regression", "classification", "generation"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What ``models`` reports for one model (JSON-ready via :meth:`to_json`)."""

    name: str
    version: str
    task: Task
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    parameters: int
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "parameters": self.parameters,
            "metrics": self.metrics,
        }
        out.update(self.extra)
        return out


class PredictiveModel(abc.ABC):
    """A batchable model for ``predict``.

    Contract: ``predict(x)`` takes ``x`` of shape ``[n, d]`` (float64, finite,
    ``d == info.input_shape[0]``) and returns ``[n, k]`` float64 where row i
    depends only on input row i.  It may raise; the pool then fails only the
    requests in that batch with ``internal``.
    """

    info: ModelInfo

    @property
    def input_width(self) -> int:
        return int(np.prod(self.info.input_shape))

    @abc.abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """``[n, d] -> [n, k]``; pure and thread-safe."""

    def flops_per_row(self) -> int:
        """Rough multiply-adds per row; the pool uses it to decide whether a
        batch is worth a thread hop.  Default: the parameter count."""
        return max(1, self.info.parameters)


def call_model_code(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, where ``fn`` is the operator's own code (a ``model.py``'s ``predict``,
    ``encode``, ``logits``, ...).  An exception that is not an ``Exception`` (``sys.exit()``,
    ``KeyboardInterrupt``, another ``BaseException``) is raised as ``RuntimeError`` naming it, so
    callers handle it as any model failure: raised as such on the event loop, or awaited from an
    executor, asyncio would let it stop the server."""
    try:
        return fn(*args)
    except Exception:
        raise
    except BaseException as exc:  # noqa: BLE001 - see the docstring
        raise RuntimeError(f"the model raised {type(exc).__name__}: {exc}") from exc
