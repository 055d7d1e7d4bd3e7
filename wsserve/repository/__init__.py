"""The model repository: serve the operator's own models from a directory (Triton-like layout).

::

    REPO/<name>/config.toml            optional for ONNX/npz, required (shapes) for model.py; see .config
    REPO/<name>/config.pbtxt           instead of config.toml: Triton's, for an ONNX model; see .pbtxt
                                       (or an ensemble of other models: platform "ensemble", an empty
                                       version directory; see .ensemble_config, .ensemble_plan)
    REPO/<name>/<version>/model.onnx   ONNX Runtime backend (pip install 'wsserve[onnx]')
    REPO/<name>/<version>/model.npz    numpy backend for the built-in architectures (linear, mlp); see .npz
    REPO/<name>/<version>/model.py     Python backend: class Model (runs arbitrary code: operator's repo only)

``<version>`` is a positive integer directory name compared as a number
(``10 > 2``); hidden entries, ``*.tmp`` directories and other junk are
ignored and reported (:func:`scan`).  docs/repository.md is the user guide.

The uniform model interface
---------------------------
Every backend yields a :class:`RepositoryModel` (a
:class:`wsserve.models.base.PredictiveModel`), built by :func:`load_version`:

``inputs``, ``outputs``
    tuples of :class:`TensorSpec` ``(name, shape, dtype)``: the per-row shape
    (no batch dimension) and the dtype (``float32``, ``float64``, ``int32``,
    ``int64``, ``bool``).  Empty for a generative model.py.
``info``
    a :class:`~wsserve.models.base.ModelInfo`: name, version (a string), task,
    ``input_shape``/``output_shape`` of the first input/output, parameters,
    metrics; ``info.extra`` adds ``backend`` and the full ``inputs``/``outputs``
    spec lists (``[{"name", "shape", "dtype"}]``).
``predict(batch)``
    one input: an array ``[n, *input_shape]``; several: ``{name: array}``.
    Returns ``[n, *output_shape]`` for one output, ``{name: array}`` for
    several, in the output specs' dtypes, row i depending only on row i.
    Thread-safe; :func:`convert_inputs` makes ``batch`` from a request's JSON
    ``inputs``.  Raises what the model raises; ``RuntimeError`` after close.
``flops_per_row()``
    a rough per-row cost (config.toml's ``flops_per_row`` wins) the pool uses
    to run cheap batches inline and costly ones in a thread.
``warmup(batch=None)``
    one predict on a sample batch (zeros) with the outputs checked; raises
    :class:`ModelLoadError`.  Call once after loading, before serving.
``close()``
    release it; idempotent.

Also per model: ``name``, ``version`` (int), ``config`` (:class:`ModelConfig`:
``max_batch_size``, ``max_delay_ms``, ``instances``... for the pool), ``path``
(the model file), ``backend``.

Hot reload, sans-I/O apart from :func:`scan`: ``plan(previous_scan,
scan(repo))`` lists :data:`Action` values; :func:`default_version` picks the
default from version states.
"""

from __future__ import annotations

from .backend import Batch, RepositoryModel, check_outputs
from .config import ModelConfig, TensorConfig, VersionPolicy, load_config, parse_config
from .errors import ConfigError, ModelLoadError, RepositoryError
from .inputs import batch_rows, check_inputs, convert_inputs
from .layout import CONFIG_FILE, MODEL_FILES, is_model_name
from .loader import find_model_file, load_version
from .npz import (
    ARCHITECTURES,
    NpzContents,
    read_npz,
    save_npz_model,
    write_builtin_version,
)
from .plan import (
    Action,
    LoadVersion,
    ReloadModel,
    ReloadVersion,
    RemoveModel,
    ReportError,
    UnloadVersion,
    plan,
)
from .scan import Ignored, ModelScan, RepositoryScan, VersionScan, scan
from .tensors import DTYPES, TensorSpec
from .versions import VersionState, default_version, parse_version, select_versions

__all__ = [
    # interface
    "RepositoryModel", "Batch", "TensorSpec", "DTYPES", "check_outputs",
    # config
    "ModelConfig", "TensorConfig", "VersionPolicy", "parse_config", "load_config",
    # errors
    "RepositoryError", "ConfigError", "ModelLoadError",
    # inputs
    "convert_inputs", "check_inputs", "batch_rows",
    # layout and loading
    "CONFIG_FILE", "MODEL_FILES", "is_model_name", "find_model_file", "load_version",
    # npz
    "ARCHITECTURES", "NpzContents", "read_npz", "save_npz_model", "write_builtin_version",
    # versions
    "VersionState", "parse_version", "select_versions", "default_version",
    # hot reload
    "Ignored", "VersionScan", "ModelScan", "RepositoryScan", "scan",
    "Action", "LoadVersion", "ReloadVersion", "UnloadVersion", "ReloadModel", "RemoveModel", "ReportError", "plan",
]
