"""``linear`` trained data-parallel on Dask: full-batch gradient descent by map/reduce.

Each epoch: every partition computes the sums of its rows' gradient terms where it
lives (map, :func:`.tasks.linear_gradient_sums`), one task adds them up (reduce),
and the client divides by the row count and takes the step, exactly as
:func:`wsserve.models.linear.train_linear` does on one process (same learning
rate, same stopping rule: every mean-gradient component below ``tol``).  Only the
summation order differs, so on the same data the result matches the
single-process fit to ~1e-12 (the tests ask 1e-9).

Two data sets:

- :func:`train_linear_dask`: the original 100 rows of ``default_rng(seed)``,
  split over ``partitions`` and scattered from the client;
- :func:`train_linear_generated_dask`: :mod:`.data`'s generated set of up to
  :data:`.data.MAX_ROWS` rows, each partition generated on its worker and kept
  there (persisted) for the run. It is a *different* sample of the same
  distribution; the fit converges to that sample's least-squares line, which
  approaches ``y = 3x + 0.5`` as rows grow (standard error of the slope about
  ``0.29 / sqrt(rows / 12)``, 3e-4 at 10^7 rows).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..models.linear import LinearConfig, LinearModel, make_linear_data, mse_and_grad
from .cluster import (
    DEFAULT_NO_WORKERS_TIMEOUT_S,
    check_workers,
    make_partitions,
    map_reduce,
    scatter_partitions,
)
from .data import block_ranges, check_seed, linear_heldout, linear_partition, row_ranges
from .tasks import linear_gradient_sums, linear_normal_sums, sum_arrays

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client, Future

__all__ = ["train_linear_dask", "train_linear_generated_dask"]


@dataclass(frozen=True, slots=True)
class _Fit:
    weight: float
    bias: float
    epochs: int
    train_mse: float


def _descend(client: Client, parts: list[Future], n_rows: int, cfg: LinearConfig, no_workers_s: float) -> _Fit:
    """Gradient descent by map/reduce; mirrors ``train_linear``'s loop step for step.

    Raises ``RuntimeError`` if it does not converge within ``cfg.max_epochs`` or a
    partition's row count is wrong (a lost partition).
    """
    w = b = 0.0
    epochs = 0
    while epochs < cfg.max_epochs:
        sums = map_reduce(client, linear_gradient_sums, sum_arrays, parts, w, b, no_workers_timeout_s=no_workers_s)
        if int(sums[3]) != n_rows:
            raise RuntimeError(f"the partitions hold {int(sums[3])} rows, expected {n_rows}")
        dw, db = 2 * sums[0] / n_rows, 2 * sums[1] / n_rows  # the mean gradient
        if max(abs(dw), abs(db)) < cfg.tol:
            return _Fit(float(w), float(b), epochs, float(sums[2] / n_rows))
        w -= cfg.learning_rate * dw
        b -= cfg.learning_rate * db
        epochs += 1
    raise RuntimeError(f"linear did not converge in {cfg.max_epochs} epochs")


def _lstsq(client: Client, parts: list[Future], no_workers_s: float) -> tuple[float, float]:
    """The least-squares line of all partitions' rows, from the normal equations (map/reduce)."""
    n, sx, sxx, sy, sxy = map_reduce(client, linear_normal_sums, sum_arrays, parts, no_workers_timeout_s=no_workers_s)
    a = np.array([[sxx, sx], [sx, n]])
    lw, lb = np.linalg.solve(a, np.array([sxy, sy]))
    return float(lw), float(lb)


def _model(
    client: Client, parts: list[Future], n_rows: int, cfg: LinearConfig, held: tuple[np.ndarray, np.ndarray],
    *, workers: int, t0: float, extra: dict[str, Any], no_workers_s: float,
) -> LinearModel:
    t_fit = time.perf_counter()
    fit = _descend(client, parts, n_rows, cfg, no_workers_s)
    fit_s = time.perf_counter() - t_fit
    lw, lb = _lstsq(client, parts, no_workers_s)
    metrics = {
        "train_mse": fit.train_mse,
        "heldout_mse": mse_and_grad(fit.weight, fit.bias, *held)[0],
        "weight": fit.weight,
        "bias": fit.bias,
        "lstsq_weight": lw,
        "lstsq_bias": lb,
        "max_abs_diff_vs_lstsq": max(abs(fit.weight - lw), abs(fit.bias - lb)),
        "epochs": fit.epochs,
        "converged": True,
        "n_train": n_rows,
        "n_heldout": len(held[0]),
        "train_time_s": time.perf_counter() - t0,
        "seconds_per_epoch": fit_s / (fit.epochs + 1),
        "trained_with": "dask",
        "partitions": len(parts),
        "workers": workers,
        **extra,
    }
    return LinearModel(fit.weight, fit.bias, metrics=metrics)


def train_linear_dask(
    client: Client, *, seed: int = 0, partitions: int = 2, config: LinearConfig | None = None,
    no_workers_timeout_s: float = DEFAULT_NO_WORKERS_TIMEOUT_S,
) -> LinearModel:
    """Fit ``linear`` on the original data of ``seed`` split into ``partitions``.

    Same data, hyperparameters and stopping rule as ``train_linear(seed=seed)``;
    ``info.metrics`` has the same keys plus ``trained_with``, ``partitions``,
    ``workers``, ``data`` and ``seconds_per_epoch``.
    Raises ``ValueError`` for a bad seed or partition count (``1..n_train``),
    :class:`.cluster.WorkerMismatch` for an unusable cluster, :class:`.cluster.NoWorkers`
    when it has had no worker for ``no_workers_timeout_s`` seconds, ``RuntimeError``
    if it does not converge.
    """
    cfg = config or LinearConfig()
    seed = check_seed(seed)
    ranges = row_ranges(cfg.n_train, partitions)
    t0 = time.perf_counter()
    workers = check_workers(client)
    rng = np.random.default_rng(seed)
    x, y = make_linear_data(rng, cfg.n_train)
    held = make_linear_data(rng, cfg.n_heldout)
    parts = scatter_partitions(client, workers, [(x[a:b], y[a:b]) for a, b in ranges])
    try:
        return _model(client, parts, cfg.n_train, cfg, held, workers=len(workers), t0=t0,
                      extra={"data": "original", "seed": seed}, no_workers_s=no_workers_timeout_s)
    finally:
        client.cancel(parts)


def train_linear_generated_dask(
    client: Client, *, rows: int, seed: int = 0, partitions: int = 2, config: LinearConfig | None = None,
    no_workers_timeout_s: float = DEFAULT_NO_WORKERS_TIMEOUT_S,
) -> LinearModel:
    """Fit ``linear`` on the generated set of ``rows`` rows (see :mod:`.data`).

    Each partition is generated on a worker and stays there until this returns;
    the client holds only the parameters and a held-out set of
    ``config.n_heldout`` rows (``config.n_train`` is ignored: ``rows`` rules).
    The data, hence the fit, do not depend on ``partitions`` or the worker count.
    Raises ``ValueError`` for a bad seed, ``rows`` (``1..MAX_ROWS``) or
    ``partitions`` (``1..number of blocks``), :class:`.cluster.WorkerMismatch`,
    :class:`.cluster.NoWorkers` (as for :func:`train_linear_dask`), ``RuntimeError`` if it
    does not converge.
    """
    cfg = config or LinearConfig()
    seed = check_seed(seed)
    ranges = block_ranges(rows, partitions)
    t0 = time.perf_counter()
    workers = check_workers(client)
    parts = make_partitions(client, workers, linear_partition, [(seed, r) for r in ranges])
    try:
        return _model(client, parts, rows, cfg, linear_heldout(seed, cfg.n_heldout), workers=len(workers),
                      t0=t0, extra={"data": "generated", "seed": seed}, no_workers_s=no_workers_timeout_s)
    finally:
        client.cancel(parts)
