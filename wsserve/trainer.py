"""Make the default models at start-up: train them, or load cached weights.

:data:`TRAINERS` maps a model name to its :class:`CachedTrainer`, in serving
order (``linear``, ``mlp``, ``charlm``).  Weights are cached with
:mod:`wsserve.modelstore`, keyed by the model's full training config, so a
later start loads them in milliseconds.  Plugging a model in is one line::

    TRAINERS["mymodel"] = CachedTrainer(train_mymodel, mymodel_config, MyModel.from_arrays)

where the model implements ``to_arrays() -> (arrays, meta)`` (the inverse of
``from_arrays``) and ``info.metrics`` (a dict).  The trainer sets
``info.metrics["loaded_from_cache"]`` (True/False) on every model it returns.
:func:`train_default_models` runs every trainer with BLAS limited to one
thread and logs one line per model on the ``wsserve.trainer`` logger, e.g.
``trained mlp v1 in 0.45s: held-out acc 0.939 (chance 0.100)``.  A corrupt or
unreadable cache file is logged as a warning naming the file and the model is
retrained (and the file rewritten); a cache that cannot be written is a
warning too, never a crash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from . import modelstore
from .models.charlm import CharLM, charlm_config, train_charlm
from .models.linear import LinearModel, linear_config, train_linear
from .models.mlp import MLPModel, mlp_config, train_mlp

__all__ = ["CachedTrainer", "TRAINERS", "train_default_models", "prepare_builtin_repository"]

log = logging.getLogger("wsserve.trainer")


@dataclass(frozen=True, slots=True)
class CachedTrainer:
    """How to train a model and how to cache it.

    ``train(seed=...)`` makes the model (which has ``to_arrays()``);
    ``config(seed)`` is its *full* training config - everything that affects
    the weights, including a code/algorithm version and a hash of any data
    read from outside the code (charlm's corpus) - used as the cache key;
    ``restore(arrays, meta)`` rebuilds the model from cached arrays and may
    raise ``KeyError``/``ValueError``/``TypeError`` on bad contents.
    Calling the object trains without any cache.
    """

    train: Callable[..., Any]
    config: Callable[[int], Mapping[str, Any]]
    restore: Callable[[dict[str, np.ndarray], dict[str, Any]], Any]

    def __call__(self, *, seed: int = 0) -> Any:
        return self.train(seed=seed)


#: name -> trainer, in serving order.  See the module docstring.
TRAINERS: dict[str, CachedTrainer] = {
    "linear": CachedTrainer(train_linear, linear_config, LinearModel.from_arrays),
    "mlp": CachedTrainer(train_mlp, mlp_config, MLPModel.from_arrays),
    "charlm": CachedTrainer(train_charlm, charlm_config, CharLM.from_arrays),
}


def train_default_models(
    *,
    seed: int = 0,
    names: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    cache: bool = True,
) -> dict[str, object]:
    """Return ``{name: model}`` for ``names`` (default: all of :data:`TRAINERS`), in TRAINERS order.

    ``cache_dir`` defaults to :func:`wsserve.modelstore.default_cache_dir`.
    With ``cache=False`` every model is trained and the cache is neither
    read nor written.  Raises ``ValueError`` naming the known models if a
    name is unknown; training errors propagate.
    """
    wanted = list(TRAINERS) if names is None else list(names)
    unknown = [n for n in wanted if n not in TRAINERS]
    if unknown:
        raise ValueError(
            f"unknown model {unknown[0]!r}; known: {', '.join(TRAINERS)}"
        )
    directory = Path(cache_dir) if cache_dir is not None else modelstore.default_cache_dir()
    models: dict[str, object] = {}
    with threadpool_limits(limits=1):
        for name, trainer in TRAINERS.items():
            if name in wanted:
                models[name] = _make(name, trainer, seed=seed, cache_dir=directory,
                                     cache=cache)
    return models


def _make(name: str, trainer: CachedTrainer, *, seed: int, cache_dir: Path,
          cache: bool) -> Any:
    """Load ``name`` from the cache if possible, else train (and cache) it."""
    config: Mapping[str, Any] = trainer.config(seed) if cache else {}
    if cache:
        t0 = time.perf_counter()
        model = _load(name, trainer, config, cache_dir)
        if model is not None:
            _metrics(model)["loaded_from_cache"] = True
            log.info("loaded %s from cache in %.3fs: %s", _label(name, model),
                     time.perf_counter() - t0, _summary(model))
            return model

    t0 = time.perf_counter()
    model = trainer(seed=seed)
    _metrics(model)["loaded_from_cache"] = False
    log.info("trained %s in %.2fs: %s", _label(name, model), time.perf_counter() - t0,
             _summary(model))
    if cache:
        try:
            arrays, meta = model.to_arrays()
            path = modelstore.save(cache_dir, name, config, arrays, meta)
            log.debug("cached %s weights in %s", name, path)
        except (OSError, TypeError, ValueError) as exc:
            log.warning("could not cache %s weights in %s: %s", name, cache_dir, exc)
    return model


def _load(name: str, trainer: CachedTrainer, config: Mapping[str, Any],
          cache_dir: Path) -> Any | None:
    """The cached model, or ``None`` (no file, or a bad one - which is logged)."""
    try:
        found = modelstore.load(cache_dir, name, config)
    except modelstore.ModelFileError as exc:
        log.warning("ignoring corrupt cache file for %s, retraining: %s", name, exc)
        return None
    except OSError as exc:
        log.warning("cannot read cache for %s in %s, retraining: %s", name, cache_dir, exc)
        return None
    if found is None:
        return None
    arrays, meta = found
    try:
        return trainer.restore(arrays, meta)
    except (KeyError, ValueError, TypeError) as exc:
        path = modelstore.model_path(cache_dir, name, config)
        log.warning("ignoring bad cache file %r for %s, retraining: %s: %s",
                    str(path), name, type(exc).__name__, exc)
        return None


def _metrics(model: Any) -> dict[str, Any]:
    """``model.info.metrics`` (a mutable dict), or a throwaway dict if it has none."""
    metrics = getattr(getattr(model, "info", None), "metrics", None)
    return metrics if isinstance(metrics, dict) else {}


def _label(name: str, model: Any) -> str:
    info = getattr(model, "info", None)
    version = getattr(info, "version", None)
    return f"{name} v{version}" if version is not None else name


def _summary(model: Any) -> str:
    """One human line of a model's quality from ``info.metrics``."""
    metrics = _metrics(model)
    if "heldout_accuracy" in metrics:
        text = f"held-out acc {metrics['heldout_accuracy']:.3f}"
        if "chance_accuracy" in metrics:
            text += f" (chance {metrics['chance_accuracy']:.3f}"
            if "linear_baseline_heldout_accuracy" in metrics:
                text += f", linear {metrics['linear_baseline_heldout_accuracy']:.3f}"
            text += ")"
        return text
    if "heldout_mse" in metrics:
        text = f"held-out mse {metrics['heldout_mse']:.4f}"
        if "weight" in metrics and "bias" in metrics:
            text += f", y = {metrics['weight']:.4f}x + {metrics['bias']:.4f}"
        if "max_abs_diff_vs_lstsq" in metrics:
            text += f" (|diff| vs least squares {metrics['max_abs_diff_vs_lstsq']:.1e})"
        return text
    if "heldout_bpc" in metrics:
        text = f"held-out {metrics['heldout_bpc']:.3f} bits/char"
        base = [f"{k.removesuffix('_bpc')} {metrics[k]:.3f}"
                for k in ("bigram_bpc", "unigram_bpc") if k in metrics]
        return text + (f" ({', '.join(base)})" if base else "")
    shown = [f"{k} {v:.4g}" for k, v in metrics.items()
             if isinstance(v, float) and ("heldout" in k or "loss" in k)][:3]
    return ", ".join(shown) or "no metrics"


def prepare_builtin_repository(
    names: Sequence[str],
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
    cache: bool = True,
    scratch: Path | None = None,
) -> Path | None:
    """Train (or load from the cache) the default models ``names`` and write them into a
    model repository in the ordinary layout (``<name>/config.toml``, ``<name>/1/model.npz``),
    so the server loads them like any repository model.  Returns that directory, or
    ``None`` when ``names`` is empty.

    The repository is ``<cache_dir>/repository/seed-<seed>`` (one per seed, so servers of
    different seeds sharing a cache never read each other's weights), or, with
    ``cache=False``, a directory under ``scratch``.  Files are replaced atomically.
    """
    from .repository import write_builtin_version

    if not names:
        return None
    models = train_default_models(seed=seed, names=names, cache_dir=cache_dir, cache=cache)
    if cache:
        base = Path(cache_dir) if cache_dir is not None else modelstore.default_cache_dir()
        repo = base / "repository" / f"seed-{int(seed)}"
    else:
        if scratch is None:
            raise ValueError("cache=False needs a scratch directory for the built-in repository")
        repo = Path(scratch) / "repository"
    repo.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        write_builtin_version(repo, name, model, 1)
    return repo
