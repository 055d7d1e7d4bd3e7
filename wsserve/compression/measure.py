"""Figures of a model version: held-out accuracy, non-zero parameters, batch latency.

Timing uses ``time.perf_counter`` around single ``predict`` calls with BLAS
limited to one thread; the models are timed interleaved (A, B, A, B, ...)
after a warm-up so that machine noise hits them alike, and the median is kept.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from ..models.base import PredictiveModel
from ..models.mlp import MLPModel

__all__ = ["LATENCY_BATCH", "heldout_accuracy", "nonzero_parameters", "latency_medians_ms"]

#: The batch size of the recorded latency figures.
LATENCY_BATCH = 256


def heldout_accuracy(model: PredictiveModel, x: np.ndarray, y: np.ndarray, *, chunk: int = 4096) -> float:
    """Fraction of rows whose argmax of ``model.predict`` equals ``y``."""
    correct = 0
    for i in range(0, len(y), chunk):
        correct += int((model.predict(x[i:i + chunk]).argmax(axis=1) == y[i:i + chunk]).sum())
    return correct / max(1, len(y))


def nonzero_parameters(model: PredictiveModel) -> int:
    """Non-zero weights and biases: ``model.nonzero_parameters()`` if it has one, else counted
    for ``MLPModel``, else ``info.parameters``."""
    own = getattr(model, "nonzero_parameters", None)
    if callable(own):
        return int(own())
    if isinstance(model, MLPModel):
        return int(sum(np.count_nonzero(w) + np.count_nonzero(b) for w, b in model.params))
    return int(model.info.parameters)


def latency_medians_ms(models: Sequence[PredictiveModel], x: np.ndarray, *, runs: int = 21,
                       warmup: int = 3) -> list[float]:
    """Median milliseconds of ``m.predict(x)`` per model, timed interleaved, one BLAS thread.

    Raises ``ValueError`` if ``runs`` < 1.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    times: list[list[float]] = [[] for _ in models]
    with threadpool_limits(limits=1):
        for _ in range(warmup):
            for m in models:
                m.predict(x)
        for _ in range(runs):
            for m, t in zip(models, times):
                t0 = time.perf_counter()
                m.predict(x)
                t.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]
