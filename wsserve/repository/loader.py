"""Load one version directory into a :class:`RepositoryModel` (does file I/O; no asyncio).

Call from a worker thread: loading an ONNX graph or running a ``Model()``
constructor can take long.  The result is not warmed up: call
``model.warmup()`` next (also off the loop).
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from .backend import RepositoryModel
from .config import ModelConfig
from .errors import ModelLoadError
from .layout import MODEL_FILES
from .npz import MAX_NPZ_BYTES

__all__ = ["find_model_file", "load_version"]


def _is_file(path: Path) -> bool:
    """``path.is_file()``; raises :class:`ModelLoadError` naming the directory when it cannot be
    told (``Path.is_file`` raises ``PermissionError``: a directory that may be listed but not
    searched, as ``chmod -R 644`` leaves it)."""
    try:
        return path.is_file()
    except OSError as exc:
        raise ModelLoadError(path.parent, f"cannot be read ({exc.strerror or exc})") from None


def _irregular(path: Path) -> str | None:
    """What ``path`` is when it is there but not a regular file (a directory, a FIFO, a device, a
    dangling symlink), for a message naming it; None when it is absent (or a regular file)."""
    try:
        st = path.lstat()
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        try:
            st = path.stat()
        except OSError as exc:
            return f"a symlink that cannot be followed ({exc.strerror or exc})"
    mode = st.st_mode
    kinds = ((stat.S_ISREG, None), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def find_model_file(version_dir: Path | str, backend: str | None = None, *, model_file: str | None = None,
                    source: str = "config.toml") -> tuple[str, Path]:
    """``(backend, path)`` of the model file in ``version_dir``.

    With ``backend`` given (config.toml's ``backend``) only that file counts:
    ``model_file`` when given (config.pbtxt's ``default_model_filename``), else
    the backend's usual one.  ``source`` names the config file in messages.
    Raises :class:`ModelLoadError` naming the directory when there is no model
    file, or several and no ``backend`` to choose, or it cannot be searched.
    """
    version_dir = Path(version_dir)
    if backend is not None:
        filename = model_file or MODEL_FILES[backend]
        path = version_dir / filename
        if not _is_file(path):
            if (what := _irregular(path)) is not None:
                raise ModelLoadError(version_dir, f"{filename} is {what}, not a regular file: a model file cannot be "
                                                  "read from it")
            if source == "config.toml":
                raise ModelLoadError(version_dir, f"config.toml says backend = {backend!r} but there is no {filename}")
            raise ModelLoadError(version_dir, f"{source} serves it with the {backend} backend but there is no {filename}")
        return backend, path
    found = [(b, version_dir / f) for b, f in MODEL_FILES.items() if _is_file(version_dir / f)]
    if not found:
        for f in MODEL_FILES.values():  # one there that is no regular file is named, rather than "no model file"
            if (what := _irregular(version_dir / f)) is not None:
                raise ModelLoadError(version_dir, f"{f} is {what}, not a regular file: a model file cannot be read "
                                                  "from it")
        raise ModelLoadError(version_dir, f"holds no model file ({', '.join(MODEL_FILES.values())})")
    if len(found) > 1:
        names = ", ".join(p.name for _, p in found)
        raise ModelLoadError(version_dir, f"holds several model files ({names}); choose one with backend = \"...\" in config.toml")
    return found[0]


def load_version(name: str, version: int, version_dir: Path | str, config: ModelConfig, *,
                 max_npz_bytes: int = MAX_NPZ_BYTES, custom_metrics: Any = None) -> RepositoryModel:
    """Load ``version_dir`` of model ``name`` with its parsed ``config``; a model.npz may hold at
    most ``max_npz_bytes`` of arrays.  ``custom_metrics``: the server's
    :class:`~wsserve.custommetrics.CustomMetrics`, for a Triton Python model's metric families.

    Raises :class:`ModelLoadError` (naming the file and the problem) for a
    missing/ambiguous/bad model file, a backend that is not installed, shapes
    or dtypes that disagree with config.toml, or an exception in ``Model()``.
    """
    backend, path = find_model_file(version_dir, config.backend, model_file=config.model_file, source=config.source)
    if backend == "onnx":
        from .onnx_backend import OnnxModel

        return OnnxModel(name, version, path, config)
    if backend == "npz":
        from .npz_backend import NpzModel

        return NpzModel(name, version, path, config, max_bytes=max_npz_bytes)
    if config.triton_model_config is not None:  # config.pbtxt's backend: "python"
        from .triton_backend import TritonPythonModel

        return TritonPythonModel(name, version, path, config, custom_metrics=custom_metrics)
    from .python_backend import PythonModel

    return PythonModel(name, version, path, config)
