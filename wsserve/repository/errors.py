"""Errors of the model repository (files on disk, not wire errors).

Tree::

    RepositoryError          root: ``path`` (the file or directory) and ``reason``
    ├── ConfigError          a bad ``config.toml`` or ``config.pbtxt``: also ``key`` (dotted, or ``None``)
    └── ModelLoadError       a version that cannot be loaded or warmed up

They are ``ValueError``s so a caller that only wants "bad file" can catch that.
The message always starts with the path, so a log line or a ``failed`` state's
``reason`` names the file without more context.  None of them is a
:class:`wsserve.errors.WsserveError`: a request never sees them directly (the
server maps "version failed" to ``unknown_model`` itself).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RepositoryError", "ConfigError", "ModelLoadError"]


class RepositoryError(ValueError):
    """Something in the repository is unusable. ``path`` is the file/dir, ``reason`` what is wrong."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(RepositoryError):
    """``config.toml`` (``config.pbtxt``) is unreadable, not TOML (not a Triton ModelConfig), or a key
    (field) has a bad name, type or value, or one wsserve refuses."""

    def __init__(self, path: Path | str, key: str | None, problem: str) -> None:
        self.key = key
        super().__init__(path, problem if key is None else f"key '{key}': {problem}")


class ModelLoadError(RepositoryError):
    """A version directory's model file cannot be loaded, or disagrees with config.toml."""
