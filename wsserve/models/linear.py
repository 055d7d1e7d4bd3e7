"""The ``linear`` default model: y = w*x + b fitted by full-batch gradient descent.

Data exactly as the original design: ``X ~ U(0,1)^{100x1}``, ``y = 3X + U(0,1)``
(so the fit is about ``y = 3x + 0.5``), drawn from ``np.random.default_rng(seed)``;
a held-out set is drawn afterwards from the same generator and distribution.
Gradient descent on the mean squared error uses the *mean* gradient over the
whole batch and stops when every gradient component is below ``tol`` (so the
fit agrees with the closed-form least-squares solution to ~tol/curvature).

>>> m = train_linear(seed=0)
>>> m.predict(np.array([[0.5]])).shape
(1, 1)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .base import ModelInfo, PredictiveModel

__all__ = [
    "LinearConfig", "LinearModel", "train_linear", "linear_config", "make_linear_data", "mse_and_grad",
]

NAME = "linear"
VERSION = "1"
#: Bump when the training code changes in a way the config does not show.
ALGORITHM = "gd-mean-grad/1"


@dataclass(frozen=True, slots=True)
class LinearConfig:
    """Hyperparameters of :func:`train_linear` (everything but the seed)."""

    n_train: int = 100
    n_heldout: int = 1000
    learning_rate: float = 0.5
    tol: float = 1e-10
    max_epochs: int = 100_000


def linear_config(seed: int = 0, config: LinearConfig | None = None) -> dict[str, Any]:
    """The full training config (the cache key): seed, hyperparameters, versions."""
    cfg = config or LinearConfig()
    return {"seed": int(seed), "version": VERSION, "algorithm": ALGORITHM, **asdict(cfg)}


class LinearModel(PredictiveModel):
    """``[n, 1] -> [n, 1]``: ``y = x * weight + bias`` (float64, elementwise, so exactly row-pure)."""

    def __init__(self, weight: float, bias: float, *, metrics: dict[str, Any] | None = None) -> None:
        self.weight = float(weight)
        self.bias = float(bias)
        self._w = np.array([self.weight], dtype=np.float64)
        self.info = ModelInfo(
            name=NAME,
            version=VERSION,
            task="regression",
            input_shape=(1,),
            output_shape=(1,),
            parameters=2,
            metrics=dict(metrics or {}),
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``[n, 1] -> [n, 1]`` float64. Raises ``ValueError`` on another shape."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != 1:
            raise ValueError(f"linear expects inputs of shape [n, 1], got {list(x.shape)}")
        return x * self._w + self.bias  # [n, 1] * [1] + scalar -> [n, 1]

    def flops_per_row(self) -> int:
        return 2

    # -- persistence (see wsserve.modelstore) ---------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` for :func:`wsserve.modelstore.save`."""
        return {"weight": np.array([self.weight]), "bias": np.array([self.bias])}, {
            "metrics": self.info.metrics
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> LinearModel:
        """Inverse of :meth:`to_arrays`. Raises ``KeyError``/``ValueError`` on bad contents."""
        w = np.asarray(arrays["weight"], dtype=np.float64).reshape(-1)
        b = np.asarray(arrays["bias"], dtype=np.float64).reshape(-1)
        if w.shape != (1,) or b.shape != (1,) or not np.isfinite(np.r_[w, b]).all():
            raise ValueError("linear weights must be one finite weight and one finite bias")
        return cls(w[0], b[0], metrics=dict(meta.get("metrics", {})))


def make_linear_data(
    rng: np.random.Generator, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``X ~ U(0,1)^{n x 1}``, ``y = 3X + U(0,1)^{n x 1}`` (the original design)."""
    x = rng.uniform(0, 1, (n, 1))
    y = 3 * x + rng.uniform(0, 1, (n, 1))
    return x, y


def mse_and_grad(w: float, b: float, x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Mean squared error of ``x*w + b`` against ``y`` and its mean gradient ``(dw, db)``."""
    err = x[:, 0] * w + b - y[:, 0]  # [n]
    return float(np.mean(err * err)), float(2 * np.mean(err * x[:, 0])), float(2 * np.mean(err))


def train_linear(*, seed: int = 0, config: LinearConfig | None = None) -> LinearModel:
    """Fit ``linear`` by full-batch gradient descent; deterministic for a seed.

    ``info.metrics`` reports train/held-out MSE, weight, bias, the closed-form
    least-squares fit on the same data and the largest |difference| from it,
    epochs, whether it converged, and the train time.  Raises ``RuntimeError``
    if it does not converge within ``max_epochs``.
    """
    cfg = config or LinearConfig()
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    x, y = make_linear_data(rng, cfg.n_train)
    x_held, y_held = make_linear_data(rng, cfg.n_heldout)

    w = b = 0.0
    epochs = 0
    converged = False
    while epochs < cfg.max_epochs:
        _, dw, db = mse_and_grad(w, b, x, y)
        if max(abs(dw), abs(db)) < cfg.tol:
            converged = True
            break
        w -= cfg.learning_rate * dw
        b -= cfg.learning_rate * db
        epochs += 1
    if not converged:
        raise RuntimeError(f"linear did not converge in {cfg.max_epochs} epochs")
    train_time_s = time.perf_counter() - t0

    design = np.hstack([x, np.ones_like(x)])  # [n, 2]
    (lw, lb), *_ = np.linalg.lstsq(design, y[:, 0], rcond=None)
    metrics = {
        "train_mse": mse_and_grad(w, b, x, y)[0],
        "heldout_mse": mse_and_grad(w, b, x_held, y_held)[0],
        "weight": w,
        "bias": b,
        "lstsq_weight": float(lw),
        "lstsq_bias": float(lb),
        "max_abs_diff_vs_lstsq": max(abs(w - lw), abs(b - lb)),
        "epochs": epochs,
        "converged": converged,
        "n_train": cfg.n_train,
        "n_heldout": cfg.n_heldout,
        "train_time_s": train_time_s,
    }
    return LinearModel(w, b, metrics=metrics)
