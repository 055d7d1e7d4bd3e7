"""``compress``: make an int8 or pruned version of an ``mlp`` version, with measured figures.

One pure-on-files function, no CLI, no server.  Call order inside
:func:`compress`: validate every argument and the source (nothing written on
any error) -> build the compressed model -> read it back through its
``from_arrays`` (so the figures describe what is stored) -> measure -> write
``<out_version_dir>/model.npz`` atomically, its meta holding the figures.

Held-out data: ``make_mlp_data(seed)``'s held-out split (4000 rows), which the
source never trained on *if* it was trained with that seed.  The seed is, in
order: the ``data_seed`` argument; an integer ``seed`` in the source meta
(top level, ``config`` or ``metrics``); else 0, the server's default
``--seed``.  Fine-tuning uses the training split of the same seed.

Recorded figures (``meta["compression"]``, also returned), all measured now:

- ``bytes`` / ``source_bytes``: file sizes on disk (``bytes`` is the new
  file's own exact size); ``bytes_ratio`` (returned only, derived).
- ``parameters``: stored parameters (sparse: kept weights + biases);
  ``parameters_nonzero`` / ``source_parameters_nonzero``: non-zero effective
  weights + biases.
- ``heldout_accuracy`` / ``source_heldout_accuracy``: both recomputed on the
  same rows; ``heldout_accuracy_delta``: new - source as a fraction
  (-0.004 = -0.4 points).
- ``latency_ms_b256`` / ``source_latency_ms_b256``: median ms of one
  ``predict`` of 256 held-out rows, one BLAS thread, timed interleaved
  ``latency_runs`` times; ``latency_ratio_b256``: new / source (> 1 is slower).
- ``data_seed``, ``data_seed_from`` (``argument``/``source meta``/``default``), ``n_heldout``.
- the recipe: ``method``, ``architecture``, ``source_version`` (the source
  directory's name, or ``info.version`` of a model object - never a path),
  and for prune ``fraction``, ``scope``, ``finetune``, ``finetune_epochs``.

``meta["metrics"]`` holds ``heldout_accuracy``, ``n_heldout`` and ``data_seed``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..models import mlp_int8, mlp_sparse
from ..models.mlp import MLPConfig, MLPModel, make_mlp_data
from ..repository.layout import MODEL_FILES
from ..repository.npz import build_npz_model, encode_npz, read_npz, write_npz_bytes
from . import prune
from .architectures import architecture_of, version_file
from .measure import (
    LATENCY_BATCH,
    heldout_accuracy,
    latency_medians_ms,
    nonzero_parameters,
)

__all__ = ["Method", "METHODS", "compress"]

Method = Literal["int8", "prune"]
METHODS: tuple[str, ...] = ("int8", "prune")
MODEL_FILE = MODEL_FILES["npz"]
MAX_FINETUNE_EPOCHS = 50
MAX_LATENCY_RUNS = 1000


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_args(method: object, fraction: object, scope: object, finetune: object,
                finetune_epochs: object, data_seed: object, latency_runs: object) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; use one of {', '.join(METHODS)}")
    if method == "prune":
        if fraction is None:
            raise ValueError("prune needs a fraction in (0, 1)")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) \
                or not math.isfinite(float(fraction)) or not 0 < float(fraction) < 1:
            raise ValueError(f"pruning fraction must be a number in (0, 1), got {fraction!r}")
        if scope not in ("global", "layer"):
            raise ValueError(f"pruning scope must be 'global' or 'layer', got {scope!r}")
    else:
        if fraction is not None:
            raise ValueError("fraction only applies to method 'prune'")
        if finetune:
            raise ValueError("finetune only applies to method 'prune'")
    if not isinstance(finetune, bool):
        raise ValueError(f"finetune must be a bool, got {finetune!r}")
    if not _is_int(finetune_epochs) or not 1 <= int(finetune_epochs) <= MAX_FINETUNE_EPOCHS:  # type: ignore[arg-type]
        raise ValueError(f"finetune_epochs must be an integer in 1..{MAX_FINETUNE_EPOCHS}, got {finetune_epochs!r}")
    if data_seed is not None and (not _is_int(data_seed) or not 0 <= int(data_seed) < 2**63):  # type: ignore[arg-type]
        raise ValueError(f"data_seed must be a non-negative integer, got {data_seed!r}")
    if not _is_int(latency_runs) or not 1 <= int(latency_runs) <= MAX_LATENCY_RUNS:  # type: ignore[arg-type]
        raise ValueError(f"latency_runs must be an integer in 1..{MAX_LATENCY_RUNS}, got {latency_runs!r}")


def _seed_from_meta(meta: dict[str, Any]) -> int | None:
    for holder in (meta, meta.get("config"), meta.get("metrics")):
        if isinstance(holder, dict) and _is_int(holder.get("seed")) and 0 <= holder["seed"] < 2**63:
            return int(holder["seed"])
    return None


def _load_source(source: object) -> tuple[MLPModel, int, dict[str, Any], str]:
    """``(model, bytes, meta, version label)``; ``ValueError`` if missing or not a plain ``mlp``."""
    if isinstance(source, (str, os.PathLike)):
        contents = read_npz(version_file(source))  # ModelLoadError (a ValueError) if missing or corrupt
        if contents.architecture != "mlp":
            raise ValueError(f"cannot compress {str(contents.path)!r}: architecture {contents.architecture!r}; "
                             "only the fp32 'mlp' architecture can be compressed")
        model = build_npz_model(contents)
        assert isinstance(model, MLPModel)
        return model, contents.size_bytes, dict(contents.meta), contents.path.parent.name
    arch = architecture_of(source)
    if arch != "mlp":
        info = getattr(source, "info", None)
        name = getattr(info, "name", None)
        raise ValueError(f"cannot compress model {name!r} of type {type(source).__name__}"
                         f"{f' (architecture {arch!r})' if arch else ''}; "
                         "only the fp32 'mlp' architecture can be compressed")
    assert isinstance(source, MLPModel)
    arrays, meta = source.to_arrays()
    return source, len(encode_npz("mlp", arrays, meta)), meta, source.info.version


def compress(
    source: str | os.PathLike[str] | MLPModel,
    out_version_dir: str | os.PathLike[str],
    *,
    method: Method,
    fraction: float | None = None,
    scope: prune.Scope = prune.DEFAULT_SCOPE,
    finetune: bool = False,
    finetune_epochs: int = 2,
    data_seed: int | None = None,
    latency_runs: int = 21,
) -> dict[str, Any]:
    """Write a compressed version of ``source`` to ``out_version_dir/model.npz``; return its figures.

    ``source``: a version directory or ``.npz`` file of architecture ``mlp``,
    or an ``MLPModel`` (its ``source_bytes`` is then the size it would have
    as a version file).  ``method="int8"`` quantizes per output channel
    (``fraction``/``finetune`` must be left unset); ``method="prune"`` needs
    ``fraction`` in (0, 1), takes ``scope`` (``"global"`` default, or
    ``"layer"``) and optional ``finetune`` for ``finetune_epochs`` epochs.

    Raises ``ValueError`` (nothing written) on: an unknown method, a bad
    fraction/scope/epochs/seed/runs, a missing or corrupt source, a source
    that is not a plain ``mlp`` (int8/sparse/linear/charlm/...), an
    ``out_version_dir`` that already holds a model (the source's own
    directory included), a source whose widths do not fit the held-out data.
    Raises ``OSError`` if the file cannot be written (no partial file left).
    Returns the figures dict of the module docstring plus ``"path"``.
    """
    _check_args(method, fraction, scope, finetune, finetune_epochs, data_seed, latency_runs)
    src, src_bytes, src_meta, src_label = _load_source(source)
    out_dir = Path(out_version_dir)
    out_file = out_dir / MODEL_FILE
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {str(out_dir)!r} exists and is not a directory")
    if out_file.exists():
        raise ValueError(f"output {str(out_dir)!r} already holds a model ({MODEL_FILE}); pick a new version")
    cfg = MLPConfig()
    if src.info.input_shape != (cfg.n_features,) or src.info.output_shape != (cfg.n_classes,):
        raise ValueError(f"source mlp is {list(src.info.input_shape)} -> {list(src.info.output_shape)}; "
                         f"the held-out data is {cfg.n_features} -> {cfg.n_classes}")

    if data_seed is not None:
        seed, seed_from = int(data_seed), "argument"
    elif (meta_seed := _seed_from_meta(src_meta)) is not None:
        seed, seed_from = meta_seed, "source meta"
    else:
        seed, seed_from = 0, "default"
    (x_train, y_train), (x_held, y_held) = make_mlp_data(seed)

    recipe: dict[str, Any] = {"method": method, "source_version": src_label}
    if method == "int8":
        model: mlp_int8.MLPInt8Model | mlp_sparse.MLPSparseModel = mlp_int8.MLPInt8Model.from_params(src.params)
        reader = mlp_int8.MLPInt8Model.from_arrays
    else:
        assert fraction is not None
        masks = prune.prune_masks([w for w, _ in src.params], float(fraction), scope)
        if finetune:
            params = prune.finetune_masked(src.params, masks, x_train, y_train,
                                           epochs=int(finetune_epochs), seed=seed)
        else:
            params = [(w * m, b) for (w, b), m in zip(src.params, masks)]
        model = mlp_sparse.MLPSparseModel.from_pruned(params, masks)
        reader = mlp_sparse.MLPSparseModel.from_arrays  # type: ignore[assignment]
        recipe.update(fraction=float(fraction), scope=scope, finetune=finetune,
                      finetune_epochs=int(finetune_epochs) if finetune else 0)
    arrays, meta = model.to_arrays()
    stored = reader(arrays, meta)  # what the file will hold, validated

    acc_src = heldout_accuracy(src, x_held, y_held)
    acc_new = heldout_accuracy(stored, x_held, y_held)
    lat_src, lat_new = latency_medians_ms([src, stored], x_held[:LATENCY_BATCH], runs=int(latency_runs))
    figures: dict[str, Any] = {
        **recipe,
        "architecture": stored.architecture,
        "bytes": 0,  # filled in below: the file's own size
        "source_bytes": src_bytes,
        "parameters": stored.info.parameters,
        "parameters_nonzero": nonzero_parameters(stored),
        "source_parameters_nonzero": nonzero_parameters(src),
        "heldout_accuracy": acc_new,
        "source_heldout_accuracy": acc_src,
        "heldout_accuracy_delta": round(acc_new - acc_src, 10),
        "latency_ms_b256": round(lat_new, 4),
        "source_latency_ms_b256": round(lat_src, 4),
        "latency_ratio_b256": round(lat_new / lat_src, 4),
        "latency_runs": int(latency_runs),
        "data_seed": seed,
        "data_seed_from": seed_from,
        "n_heldout": int(len(y_held)),
    }
    meta = {**meta, "metrics": {"heldout_accuracy": acc_new, "n_heldout": int(len(y_held)), "data_seed": seed},
            "compression": figures}
    data = b""
    for _ in range(8):  # the size is written inside the file: iterate to the fixed point
        data = encode_npz(stored.architecture, arrays, meta)
        if figures["bytes"] == len(data):
            break
        figures["bytes"] = len(data)
    else:  # pragma: no cover - the digit count changes at most a few times
        raise RuntimeError("file size did not settle")

    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = write_npz_bytes(out_dir, data)
    except OSError:
        if created:
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise
    return {**figures, "bytes_ratio": figures["bytes"] / src_bytes, "path": str(path)}
