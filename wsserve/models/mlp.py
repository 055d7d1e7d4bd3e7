"""The ``mlp`` default model: a 32 -> 256 -> 256 -> 10 ReLU classifier in numpy.

The task (generated deterministically from the seed by :func:`make_mlp_data`):
10 classes, each a mixture of ``clusters_per_class`` gaussian blobs whose
centres lie in an ``informative_dims``-dimensional subspace, plus unit gaussian
noise in all 32 dimensions, then a fixed random rotation.  A class is a union
of far-apart blobs, so no linear classifier separates them (the least-squares
linear baseline gets ~0.45 held-out accuracy) while the MLP gets ~0.94 and the
Bayes-optimal rule ~0.96; chance is 0.10.

Training: minibatch Adam (:class:`wsserve.models.optim.Adam`, shared with
``charlm``) on mean cross-entropy, float32, with a linear learning-rate decay.
The numerics are small pure functions with shape comments, generic over float
dtype, so the tests can check :func:`loss_and_grads` against finite
differences in float64.

Inference (:meth:`MLPModel.predict`) computes in float32 with contiguous
weights and no per-row Python, and is exactly row-pure: a single row is padded
to two so BLAS never switches to its gemv kernel (whose summation order differs).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .base import ModelInfo, PredictiveModel
from .optim import Adam
from .rowpure import row_block, rowpure_matmul

__all__ = [
    "MLPConfig",
    "MLPModel",
    "Params",
    "train_mlp",
    "mlp_config",
    "make_mlp_data",
    "init_params",
    "forward",
    "softmax",
    "cross_entropy",
    "loss_and_grads",
]

NAME = "mlp"
VERSION = "1"
#: Bump when the training code changes in a way the config does not show.
ALGORITHM = "adam-linear-decay/1"

#: ``[(W [d_in, d_out], b [d_out]), ...]`` one pair per layer.
Params = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, slots=True)
class MLPConfig:
    """Task and hyperparameters of :func:`train_mlp` (everything but the seed)."""

    # task
    n_features: int = 32
    n_classes: int = 10
    informative_dims: int = 8
    clusters_per_class: int = 3
    class_sep: float = 2.0
    n_train: int = 12_000
    n_heldout: int = 4_000
    # model
    hidden: tuple[int, ...] = (256, 256)
    # optimiser
    epochs: int = 4
    batch_size: int = 256
    learning_rate: float = 3e-3
    final_lr_fraction: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


def mlp_config(seed: int = 0, config: MLPConfig | None = None) -> dict[str, Any]:
    """The full training config (the cache key): seed, task, hyperparameters, versions."""
    cfg = config or MLPConfig()
    d = asdict(cfg)
    d["hidden"] = list(cfg.hidden)
    return {"seed": int(seed), "version": VERSION, "algorithm": ALGORITHM, **d}


# ---------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Task:
    centres: np.ndarray  # [n_classes * clusters_per_class, n_features], already rotated
    n_classes: int


def _make_task(rng: np.random.Generator, cfg: MLPConfig) -> _Task:
    k, d = cfg.informative_dims, cfg.n_features
    n_clusters = cfg.n_classes * cfg.clusters_per_class
    centres = np.zeros((n_clusters, d))
    centres[:, :k] = rng.standard_normal((n_clusters, k)) * cfg.class_sep
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))  # [d, d] orthogonal
    return _Task(centres=centres @ rotation, n_classes=cfg.n_classes)


def _draw(rng: np.random.Generator, task: _Task, n: int) -> tuple[np.ndarray, np.ndarray]:
    cluster = rng.integers(0, len(task.centres), n)                     # [n]
    x = task.centres[cluster] + rng.standard_normal((n, task.centres.shape[1]))  # [n, d]
    return x, cluster % task.n_classes                                  # cluster j is class j % C


def _bayes_predict(task: _Task, x: np.ndarray) -> np.ndarray:
    """Bayes-optimal labels under the known mixture (equal priors, unit noise)."""
    d2 = ((x[:, None, :] - task.centres[None]) ** 2).sum(-1)           # [n, clusters]
    lik = np.exp(-0.5 * (d2 - d2.min(axis=1, keepdims=True)))          # [n, clusters]
    per_class = lik.reshape(len(x), -1, task.n_classes).sum(axis=1)    # [n, C]
    return per_class.argmax(axis=1)


def make_mlp_data(
    seed: int = 0, config: MLPConfig | None = None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((x_train [n, d] f64, y_train [n] int), (x_heldout, y_heldout))`` for a seed.

    Deterministic; the held-out rows are a separate draw from the same mixture.
    Handy for load tests that want realistic ``mlp`` inputs.
    """
    cfg = config or MLPConfig()
    rng = np.random.default_rng([seed, 0])
    task = _make_task(rng, cfg)
    return _draw(rng, task, cfg.n_train), _draw(rng, task, cfg.n_heldout)


# ---------------------------------------------------------------------------
# the network: pure functions, generic over float dtype
# ---------------------------------------------------------------------------

def init_params(rng: np.random.Generator, sizes: list[int], dtype: Any = np.float32) -> Params:
    """He-normal weights, zero biases: ``sizes = [d_in, h1, ..., n_classes]``."""
    return [
        ((rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(dtype), np.zeros(b, dtype))
        for a, b in zip(sizes[:-1], sizes[1:])
    ]


def forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and the per-layer inputs for backprop: ``[n, d] -> [n, C]``.

    ``acts[i]`` is the input of layer i (``acts[0] is x``; later ones are ReLU outputs).
    """
    acts = [x]
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w + b                     # [n, d_i] -> [n, d_{i+1}]
        if i < len(params) - 1:
            np.maximum(h, 0, out=h)       # ReLU in place
            acts.append(h)
    return h, acts


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable: ``[n, C] -> [n, C]``."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of integer labels ``y [n]`` under ``logits [n, C]``."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def loss_and_grads(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
    """Mean cross-entropy and its gradient w.r.t. every ``(W, b)``, same layout as ``params``."""
    logits, acts = forward(params, x)                  # [n, C]
    n = len(y)
    loss = cross_entropy(logits, y)
    delta = softmax(logits)                            # d loss / d logits = (p - onehot) / n
    delta[np.arange(n), y] -= 1
    delta /= n
    grads: Params = []
    for i in range(len(params) - 1, -1, -1):
        w, _ = params[i]
        a = acts[i]                                    # [n, d_i]
        grads.append((a.T @ delta, delta.sum(axis=0)))  # [d_i, d_{i+1}], [d_{i+1}]
        if i > 0:
            delta = delta @ w.T                        # [n, d_{i+1}] -> [n, d_i]
            delta *= a > 0                             # ReLU'(pre) == (post > 0)
    grads.reverse()
    return loss, grads


# ---------------------------------------------------------------------------
# the served model
# ---------------------------------------------------------------------------

class MLPModel(PredictiveModel):
    """``[n, 32] -> [n, 10]`` class probabilities (float64 out, float32 inside)."""

    def __init__(self, params: Params, *, metrics: dict[str, Any] | None = None) -> None:
        if not params:
            raise ValueError("an MLP needs at least one layer")
        self.params: Params = [
            (np.ascontiguousarray(w, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32))
            for w, b in params
        ]
        for i, (w, b) in enumerate(self.params):
            if w.ndim != 2 or b.ndim != 1:
                raise ValueError(
                    f"MLP layer {i} needs a 2-d weight and a 1-d bias, got {list(w.shape)}, {list(b.shape)}")
            if b.shape != (w.shape[1],):
                raise ValueError(f"MLP layer {i}: bias shape {list(b.shape)} does not match weight {list(w.shape)}")
            if i and w.shape[0] != self.params[i - 1][0].shape[1]:
                raise ValueError(f"MLP layer {i} takes {w.shape[0]} inputs but layer {i - 1} "
                                 f"gives {self.params[i - 1][0].shape[1]}")
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ValueError(f"MLP layer {i} holds non-finite weights")
        self._blocks = [row_block(w) for w, _ in self.params]  # rows per GEMM call (see wsserve.models.rowpure)
        n_in = self.params[0][0].shape[0]
        n_out = self.params[-1][0].shape[1]
        self.info = ModelInfo(
            name=NAME,
            version=VERSION,
            task="classification",
            input_shape=(n_in,),
            output_shape=(n_out,),
            parameters=int(sum(w.size + b.size for w, b in self.params)),
            metrics=dict(metrics or {}),
            extra={
                "description": f"{n_in} features -> {n_out} class probabilities "
                "(synthetic gaussian-mixture task)",
                "layers": [n_in] + [w.shape[1] for w, _ in self.params],
            },
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``[n, d] -> [n, C]`` probabilities; row i depends only on input row i (exactly).

        Raises ``ValueError`` on a wrong shape.
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.info.input_shape[0]:
            raise ValueError(
                f"mlp expects inputs of shape [n, {self.info.input_shape[0]}], got {list(x.shape)}"
            )
        h = np.array(x, dtype=np.float32, order="C")
        last = len(self.params) - 1
        for i, ((w, b), block) in enumerate(zip(self.params, self._blocks, strict=True)):
            h = rowpure_matmul(h, w, block)  # [n, d_i] -> [n, d_{i+1}], float32 gemm in same-shaped blocks
            h += b
            if i < last:
                np.maximum(h, 0, out=h)
        return softmax(h.astype(np.float64))  # [n, C]

    def predict_labels(self, x: np.ndarray) -> np.ndarray:
        """``[n, d] -> [n]`` argmax class."""
        return self.predict(x).argmax(axis=1)

    # -- persistence (see wsserve.modelstore) ---------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` for :func:`wsserve.modelstore.save`."""
        arrays: dict[str, np.ndarray] = {}
        for i, (w, b) in enumerate(self.params):
            arrays[f"w{i}"] = w
            arrays[f"b{i}"] = b
        return arrays, {"layers": len(self.params), "metrics": self.info.metrics}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> MLPModel:
        """Inverse of :meth:`to_arrays`. Raises ``KeyError``/``ValueError`` on bad contents."""
        layers = int(meta["layers"])
        if layers < 1 or len(arrays) != 2 * layers:
            raise ValueError(f"expected {2 * layers} arrays for {layers} layers, got {len(arrays)}")
        params = [(arrays[f"w{i}"], arrays[f"b{i}"]) for i in range(layers)]
        return cls(params, metrics=dict(meta.get("metrics", {})))


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------

def _accuracy_and_loss(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    logits, _ = forward(params, x)
    return float((logits.argmax(axis=1) == y).mean()), cross_entropy(logits.astype(np.float64), y)


def _linear_baseline_accuracy(
    x: np.ndarray, y: np.ndarray, x_held: np.ndarray, y_held: np.ndarray, n_classes: int
) -> float:
    """Held-out accuracy of the least-squares linear classifier (one-hot targets)."""
    design = np.hstack([x, np.ones((len(x), 1))])            # [n, d+1]
    w, *_ = np.linalg.lstsq(design, np.eye(n_classes)[y], rcond=None)  # [d+1, C]
    scores = np.hstack([x_held, np.ones((len(x_held), 1))]) @ w
    return float((scores.argmax(axis=1) == y_held).mean())


def train_mlp(*, seed: int = 0, config: MLPConfig | None = None) -> MLPModel:
    """Train ``mlp`` on the synthetic task; deterministic for a seed (one BLAS thread).

    ``info.metrics`` reports train/held-out accuracy and loss, chance level, the
    least-squares linear baseline and the Bayes-optimal held-out accuracy,
    epochs, steps and train time.  The caller should limit BLAS to one thread
    (the trainer does) for speed on a shared machine and bit-for-bit repeatability.
    """
    cfg = config or MLPConfig()
    t0 = time.perf_counter()
    data_rng = np.random.default_rng([seed, 0])
    task = _make_task(data_rng, cfg)
    x64, y = _draw(data_rng, task, cfg.n_train)
    x_held64, y_held = _draw(data_rng, task, cfg.n_heldout)
    x = x64.astype(np.float32)
    x_held = x_held64.astype(np.float32)

    train_rng = np.random.default_rng([seed, 1])
    sizes = [cfg.n_features, *cfg.hidden, cfg.n_classes]
    params = init_params(train_rng, sizes)
    adam = Adam(params, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps)
    steps_per_epoch = -(-cfg.n_train // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    for _epoch in range(cfg.epochs):
        order = train_rng.permutation(cfg.n_train)
        for start in range(0, cfg.n_train, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            _, grads = loss_and_grads(params, x[idx], y[idx])
            frac = adam.t / max(1, total_steps - 1)   # linear decay to final_lr_fraction
            adam.step(grads, cfg.learning_rate * (1 - (1 - cfg.final_lr_fraction) * frac))
    train_time_s = time.perf_counter() - t0

    train_acc, train_loss = _accuracy_and_loss(params, x, y)
    held_acc, held_loss = _accuracy_and_loss(params, x_held, y_held)
    metrics = {
        "train_accuracy": train_acc,
        "heldout_accuracy": held_acc,
        "train_loss": train_loss,
        "heldout_loss": held_loss,
        "chance_accuracy": 1.0 / cfg.n_classes,
        "linear_baseline_heldout_accuracy": _linear_baseline_accuracy(
            x64, y, x_held64, y_held, cfg.n_classes
        ),
        "bayes_heldout_accuracy": float((_bayes_predict(task, x_held64) == y_held).mean()),
        "epochs": cfg.epochs,
        "steps": total_steps,
        "n_train": cfg.n_train,
        "n_heldout": cfg.n_heldout,
        "train_time_s": train_time_s,
    }
    return MLPModel(params, metrics=metrics)
