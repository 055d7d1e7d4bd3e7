"""``mlp`` trained data-parallel on Dask: synchronous minibatch Adam by map/reduce.

The training rows of :func:`wsserve.models.mlp.make_mlp_data` are cut into
``partitions`` contiguous row ranges, each scattered to a worker once.  Every
step draws the same minibatch as :func:`wsserve.models.mlp.train_mlp` (same
seeds, same permutation per epoch); the minibatch's rows are split by the
partition that holds them, each partition computes the summed loss and
gradients of its share where it lives (map,
:func:`.tasks.mlp_gradient_sums`), the sums are added (reduce) and the client
divides by the batch size and takes one Adam step with the same learning-rate
schedule.  So each step's gradient is the single-process one up to float32
summation order, and the held-out accuracy agrees with ``train_mlp`` (the tests
ask +-1 point).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from ..models.mlp import (
    MLPConfig,
    MLPModel,
    Params,
    cross_entropy,
    forward,
    init_params,
    make_mlp_data,
)
from ..models.optim import Adam
from .cluster import (
    DEFAULT_NO_WORKERS_TIMEOUT_S,
    check_workers,
    map_reduce,
    scatter_partitions,
)
from .data import check_seed, row_ranges
from .tasks import mlp_gradient_sums, sum_gradients

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

__all__ = ["train_mlp_dask"]


def _accuracy_and_loss(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    logits, _ = forward(params, x)  # [n, C]
    return float((logits.argmax(axis=1) == y).mean()), cross_entropy(logits.astype(np.float64), y)


def split_minibatch(idx: np.ndarray, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
    """Rows ``idx`` (global, any order) as per-partition local indices, in ``idx`` order."""
    stops = np.array([b for _, b in ranges])
    owner = np.searchsorted(stops, idx, side="right")  # [k] partition of each row
    return [idx[owner == p] - a for p, (a, _) in enumerate(ranges)]


def train_mlp_dask(
    client: Client, *, seed: int = 0, partitions: int = 2, config: MLPConfig | None = None,
    no_workers_timeout_s: float = DEFAULT_NO_WORKERS_TIMEOUT_S,
) -> MLPModel:
    """Train ``mlp`` like ``train_mlp(seed=seed, config=config)``, data-parallel on Dask.

    ``info.metrics``: train/held-out accuracy and loss, chance level, epochs,
    steps, row counts, train time, seconds per step, and ``trained_with``,
    ``partitions``, ``workers``, ``seed``.
    Raises ``ValueError`` for a bad seed or partition count (``1..n_train``),
    :class:`.cluster.WorkerMismatch` for an unusable cluster, :class:`.cluster.NoWorkers` when it has had
    no worker for ``no_workers_timeout_s`` seconds during the run.
    """
    cfg = config or MLPConfig()
    seed = check_seed(seed)
    ranges = row_ranges(cfg.n_train, partitions)
    t0 = time.perf_counter()
    workers = check_workers(client)
    (x64, y), (x_held64, y_held) = make_mlp_data(seed, cfg)
    x = x64.astype(np.float32)
    x_held = x_held64.astype(np.float32)
    parts = scatter_partitions(client, workers, [(x[a:b], y[a:b]) for a, b in ranges])

    train_rng = np.random.default_rng([seed, 1])
    params = init_params(train_rng, [cfg.n_features, *cfg.hidden, cfg.n_classes])
    adam = Adam(params, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps)
    total_steps = cfg.epochs * -(-cfg.n_train // cfg.batch_size)
    t_fit = time.perf_counter()
    try:
        for _epoch in range(cfg.epochs):
            order = train_rng.permutation(cfg.n_train)
            for start in range(0, cfg.n_train, cfg.batch_size):
                local = split_minibatch(order[start : start + cfg.batch_size], ranges)
                used = [p for p, rows in enumerate(local) if len(rows)]
                rows, _, sums = map_reduce(
                    client, mlp_gradient_sums, sum_gradients, [parts[p] for p in used], params,
                    per_part=[local[p] for p in used], no_workers_timeout_s=no_workers_timeout_s,
                )
                grads = [(gw / rows, gb / rows) for gw, gb in sums]  # the minibatch's mean gradient
                frac = adam.t / max(1, total_steps - 1)  # linear decay to final_lr_fraction
                adam.step(grads, cfg.learning_rate * (1 - (1 - cfg.final_lr_fraction) * frac))
    finally:
        client.cancel(parts)
    fit_s = time.perf_counter() - t_fit

    train_acc, train_loss = _accuracy_and_loss(params, x, y)
    held_acc, held_loss = _accuracy_and_loss(params, x_held, y_held)
    metrics = {
        "train_accuracy": train_acc,
        "heldout_accuracy": held_acc,
        "train_loss": train_loss,
        "heldout_loss": held_loss,
        "chance_accuracy": 1.0 / cfg.n_classes,
        "epochs": cfg.epochs,
        "steps": total_steps,
        "n_train": cfg.n_train,
        "n_heldout": cfg.n_heldout,
        "train_time_s": time.perf_counter() - t0,
        "seconds_per_step": fit_s / max(1, total_steps),
        "trained_with": "dask",
        "partitions": len(ranges),
        "workers": len(workers),
        "seed": seed,
    }
    return MLPModel(params, metrics=metrics)
