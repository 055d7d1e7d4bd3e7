"""The numpy backend: a ``model.npz`` of a built-in architecture, served as a :class:`RepositoryModel`.

The single input is named ``input`` and the single output ``output``
(config.toml may check their shapes/dtypes, not rename them).  ``linear``
takes float64 rows, ``mlp`` and its compressed forms (``mlp-int8``,
``mlp-sparse``) float32 rows (they compute in float32); all return float64.  Thread-safe: the wrapped models only read their weights.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from .backend import Batch, RepositoryModel, make_info, merge_specs
from .config import ModelConfig
from .errors import ModelLoadError
from .npz import GENERATIVE_ARCHITECTURES, MAX_NPZ_BYTES, build_npz_model, read_npz
from .tensors import TensorSpec

__all__ = ["NpzModel", "INPUT_DTYPES"]

#: architecture -> dtype of its input rows (outputs are float64); the mlp family computes in float32.
INPUT_DTYPES = {"linear": "float64", "mlp": "float32", "mlp-int8": "float32", "mlp-sparse": "float32"}


class NpzModel(RepositoryModel):
    """A built-in architecture loaded from ``model.npz``. Raises :class:`ModelLoadError` on any bad file."""

    backend = "npz"

    def __init__(self, name: str, version: int, path: Path, config: ModelConfig, *,
                 max_bytes: int = MAX_NPZ_BYTES) -> None:
        """``max_bytes``: of the file's arrays (:func:`~wsserve.repository.npz.read_npz`)."""
        self.name, self.version, self.path, self.config = name, version, Path(path), config
        contents = read_npz(self.path, max_bytes=max_bytes)
        self.architecture = contents.architecture
        compression = contents.meta.get("compression")
        self._compression = dict(compression) if isinstance(compression, dict) else None
        self.model: Any = build_npz_model(contents)
        self.generative = contents.architecture in GENERATIVE_ARCHITECTURES
        if self.generative:  # served by the generation engine through .model; no tensors
            inner = self.model.info
            self.inputs = self.outputs = ()
            self.info = make_info(self, task="generation", parameters=inner.parameters, metrics=inner.metrics,
                                  extra={"architecture": self.architecture, **inner.extra})
            return
        if config.max_batch_size == 0:
            raise ModelLoadError(self.path, "max_batch_size = 0 (no batch dimension) does not apply to model.npz models")
        if config.task == "generation":  # it would be listed as generative and refuse every generate
            raise ModelLoadError(self.path, f'config.toml says task = "generation", but a {self.architecture} model '
                                            "is not generative (it serves predict)")
        inner = self.model.info
        own_in = TensorSpec("input", inner.input_shape, INPUT_DTYPES.get(self.architecture, "float64"))
        own_out = TensorSpec("output", inner.output_shape, "float64")
        self.inputs = merge_specs("input", [own_in], config.inputs, self.path)
        self.outputs = merge_specs("output", [own_out], config.outputs, self.path)
        self.info = make_info(
            self,
            task=config.task or inner.task,
            parameters=inner.parameters,
            metrics=inner.metrics,
            extra={"architecture": self.architecture, **{k: v for k, v in inner.extra.items() if k != "description"}},
        )

    def predict(self, batch: Batch) -> np.ndarray:  # type: ignore[override]
        self._require_open()
        if self.generative:
            raise RuntimeError(f"model {self.name!r} is generative: it serves generate, not predict")
        if isinstance(batch, dict):
            batch = batch["input"]
        return self.model.predict(batch)

    def warmup(self, batch: Batch | None = None, *, stop: threading.Event | None = None) -> None:
        if not self.generative:  # a generative model is checked by the generation engine's adapter
            super().warmup(batch, stop=stop)

    def flops_per_row(self) -> int:
        return self.config.flops_per_row or self.model.flops_per_row()

    def explain_model(self) -> Any:
        """The architecture's own model (linear: exact attributions; the mlp family: integrated
        gradients through its input gradient); None for a generative one."""
        return None if self.generative else self.model

    def _backend_figures(self) -> dict[str, Any]:
        """``parameters_nonzero`` (of the effective weights and biases) and, for a version written by
        ``wsserve compress``, its ``compression`` figures (from the file's meta)."""
        out: dict[str, Any] = {"parameters_nonzero": _nonzero_parameters(self.model)}
        if self._compression is not None:
            out["compression"] = self._compression
        return out


def _nonzero_parameters(model: Any) -> int:
    own = getattr(model, "nonzero_parameters", None)
    if callable(own):  # the compressed mlp forms know their effective weights
        return int(own())
    arrays, _ = model.to_arrays()
    return int(sum(np.count_nonzero(a) for a in arrays.values()))
