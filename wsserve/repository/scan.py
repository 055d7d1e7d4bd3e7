"""Snapshot a repository directory: models, parsed configs, version dirs, fingerprints, errors.

:func:`scan` is the only I/O here (directory listings, ``stat``, reading
config.toml or Triton's config.pbtxt); it never loads a model file and never raises for problems inside
the repository: each one is recorded where it is (the repository, one model,
one version, or an ignored entry) so one bad model hides nothing else.
:func:`wsserve.repository.plan.plan` compares two scans.

Fingerprints: a model's ``config_fingerprint`` is the SHA-256 of its config
file's name and bytes (config.toml, else config.pbtxt; ``"absent"`` when there
is neither), so an edited or swapped config file reloads the model.  A version's ``fingerprint`` is the
SHA-256 of the sorted list of ``(relative path, size, mtime_ns, inode)`` of
every entry under the version directory, skipping hidden entries (editor swap
files, temporary files being written) and ``__pycache__``; model files are
not read, so a rescan costs a few ``stat`` calls per file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig, parse_config, read_config_bytes
from .errors import RepositoryError
from .layout import CONFIG_FILE, PBTXT_FILE, is_model_name
from .loader import find_model_file
from .pbtxt import parse_pbtxt
from .versions import parse_version, select_versions

__all__ = ["Ignored", "VersionScan", "ModelScan", "RepositoryScan", "scan", "scan_model", "scan_one", "MAX_MODELS", "MAX_VERSIONS", "MAX_VERSION_FILES"]

MAX_MODELS = 1000
MAX_VERSIONS = 1000
#: Entries under one version directory beyond which it is reported as an error.
MAX_VERSION_FILES = 10_000
_MAX_DEPTH = 16


@dataclass(frozen=True, slots=True)
class Ignored:
    """A directory entry that is not part of the layout, and why (for a log line)."""

    path: Path
    reason: str


@dataclass(frozen=True, slots=True)
class VersionScan:
    """One ``<name>/<version>/`` directory. ``error`` set means it cannot be loaded as it is."""

    version: int
    path: Path
    fingerprint: str
    backend: str | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ModelScan:
    """One ``<name>/`` directory. ``config`` is ``None`` exactly when ``error`` is set."""

    name: str
    path: Path
    config: ModelConfig | None
    config_fingerprint: str
    error: str | None
    versions: tuple[VersionScan, ...]  # ascending by version
    ignored: tuple[Ignored, ...] = ()

    def version(self, version: int) -> VersionScan | None:
        for v in self.versions:
            if v.version == version:
                return v
        return None

    @property
    def loadable(self) -> tuple[int, ...]:
        """Versions without a scan error, ascending."""
        return tuple(v.version for v in self.versions if v.error is None)

    @property
    def selected(self) -> tuple[int, ...]:
        """The versions the config's policy serves, among all version directories (``()`` when the config is bad).

        Versions with a scan ``error`` count: loading them fails and is reported,
        while the versions already serving keep serving (see :mod:`.plan`).
        """
        if self.config is None:
            return ()
        return select_versions((v.version for v in self.versions), self.config.version_policy)


@dataclass(frozen=True, slots=True)
class RepositoryScan:
    """A whole repository. ``error`` set (e.g. the directory is missing) means ``models`` is empty."""

    path: Path
    models: tuple[ModelScan, ...]  # sorted by name
    ignored: tuple[Ignored, ...] = ()
    error: str | None = None

    def model(self, name: str) -> ModelScan | None:
        for m in self.models:
            if m.name == name:
                return m
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)


class _TooMany(Exception):
    pass


def _fingerprint(version_dir: Path) -> str:
    """SHA-256 over ``(path, size, mtime_ns, inode)`` of the entries below ``version_dir``."""
    rows: list[str] = []
    stack: list[tuple[Path, str, int]] = [(version_dir, "", 0)]
    while stack:
        directory, rel, depth = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.startswith(".") or entry.name == "__pycache__":
                    continue
                if len(rows) >= MAX_VERSION_FILES:
                    raise _TooMany
                try:
                    st = entry.stat()
                except OSError:  # a dangling symlink, or removed meanwhile
                    rows.append(f"{rel}{entry.name}\0missing")
                    continue
                if entry.is_dir():
                    rows.append(f"{rel}{entry.name}/\0{st.st_mtime_ns}")
                    if depth < _MAX_DEPTH and not entry.is_symlink():
                        stack.append((Path(entry.path), f"{rel}{entry.name}/", depth + 1))
                else:
                    rows.append(f"{rel}{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}")
    rows.sort()
    return hashlib.sha256("\n".join(rows).encode("utf-8", "surrogateescape")).hexdigest()


def _unreadable(entry: os.DirEntry[str]) -> str | None:
    """Why ``entry`` cannot be told a directory or not (``is_dir`` follows symlinks: a symlink
    loop is ``ELOOP``), or None when it can."""
    try:
        entry.is_dir()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def _scan_version(path: Path, version: int, config: ModelConfig | None) -> VersionScan:
    try:
        fingerprint = _fingerprint(path)
    except _TooMany:
        return VersionScan(version, path, "", None, f"{path}: more than {MAX_VERSION_FILES} entries")
    except OSError as exc:
        return VersionScan(version, path, "", None, f"{path}: cannot be listed ({exc.strerror or exc})")
    if config is not None and config.ensemble is not None:  # its steps' models run: no model file of its own
        return VersionScan(version, path, fingerprint, "ensemble")
    try:
        found, _ = (find_model_file(path, config.backend, model_file=config.model_file, source=config.source)
                    if config is not None else find_model_file(path))
    except RepositoryError as exc:
        return VersionScan(version, path, fingerprint, None, str(exc))
    return VersionScan(version, path, fingerprint, found)


def _read_one(path: Path) -> tuple[bytes | None, str, str | None]:
    """``(bytes, fingerprint, error)`` of one config file; ``bytes`` is None when it is absent or unreadable."""
    try:
        data = read_config_bytes(path)
    except FileNotFoundError:
        return None, "absent", None
    except OSError as exc:
        return None, f"unreadable:{exc.errno}", f"{path}: cannot be read ({exc.strerror or exc})"
    return data, hashlib.sha256(path.name.encode() + b"\0" + data).hexdigest(), None


def _read_config(model_dir: Path, name: str) -> tuple[ModelConfig | None, str, str | None]:
    """``(config, fingerprint, error)`` for ``<model>/config.toml`` or, without one, ``<model>/config.pbtxt``."""
    toml_path, pbtxt_path = model_dir / CONFIG_FILE, model_dir / PBTXT_FILE
    data, fingerprint, error = _read_one(toml_path)
    pdata, pfingerprint, perror = _read_one(pbtxt_path)
    if fingerprint != "absent" and pfingerprint != "absent":
        return None, f"{fingerprint}+{pfingerprint}", (
            f"{model_dir}: holds both {CONFIG_FILE} and {PBTXT_FILE}; keep one (wsserve would not know which to follow)")
    if fingerprint == "absent" and pfingerprint != "absent":
        if pdata is None:
            return None, pfingerprint, perror
        try:
            return parse_pbtxt(pdata, pbtxt_path, model_name=name), pfingerprint, None
        except RepositoryError as exc:
            return None, pfingerprint, str(exc)
    if data is None:
        return (ModelConfig(path=toml_path), fingerprint, None) if error is None else (None, fingerprint, error)
    try:
        return parse_config(data, toml_path), fingerprint, None
    except RepositoryError as exc:
        return None, fingerprint, str(exc)


def _scan_model(path: Path, name: str, override: ModelConfig | None = None) -> ModelScan:
    config, config_fp, error = _read_config(path, name)
    if override is not None:  # a load request's config: its files' fingerprint stays (a change of them reloads)
        config, error = override, None
    versions: list[VersionScan] = []
    ignored: list[Ignored] = []
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as exc:
        return ModelScan(name, path, None, config_fp, f"{path}: cannot be listed ({exc.strerror or exc})", ())
    for entry in entries:
        p = Path(entry.path)
        if entry.name in (CONFIG_FILE, PBTXT_FILE):
            continue
        if entry.name.startswith("."):
            ignored.append(Ignored(p, "hidden"))
            continue
        version = parse_version(entry.name)
        if version is None:
            ignored.append(Ignored(p, "not a version number (a positive integer of at most 15 digits, without leading zeros)"))
        elif (why := _unreadable(entry)) is not None:
            ignored.append(Ignored(p, why))
        elif not entry.is_dir():
            ignored.append(Ignored(p, "a version must be a directory"))
        elif len(versions) >= MAX_VERSIONS:
            ignored.append(Ignored(p, f"more than {MAX_VERSIONS} versions"))
        else:
            versions.append(_scan_version(p, version, config))
    versions.sort(key=lambda v: v.version)
    return ModelScan(name, path, config, config_fp, error, tuple(versions), tuple(ignored))


def scan_model(path: Path, name: str, config: ModelConfig) -> ModelScan:
    """The scan of model directory ``path`` (named ``name``) served with ``config`` instead of its
    config file (a ``load`` request's ``config`` parameter): its versions are found with that
    config, and its ``config_fingerprint`` stays the file's, so the repository's hot reload reloads
    the model from its files when they change, not before."""
    return _scan_model(path, name, config)


def scan_one(repo_dir: Path | str, name: str) -> ModelScan | None:
    """The scan of model ``name`` of ``repo_dir`` alone, as :func:`scan` would list it (an admin
    operation on one model reads that model's directory only); None when :func:`scan` would not
    list it (no such directory, a name no model may have, an entry that is not a directory)."""
    if not is_model_name(name) or name.startswith("."):
        return None
    path = Path(repo_dir) / name
    try:
        if not path.is_dir():
            return None
    except OSError:
        return None
    return _scan_model(path, name)


def scan(repo_dir: Path | str) -> RepositoryScan:
    """Snapshot ``repo_dir``. Never raises for the repository's contents (see the module docstring).

    A missing or unreadable ``repo_dir`` gives a scan with ``error`` set and no
    models.  Entries that are hidden, not directories, or not valid model names
    (see :func:`~.layout.is_model_name`) are listed in ``ignored``.
    """
    repo = Path(repo_dir)
    try:
        entries = sorted(os.scandir(repo), key=lambda e: e.name)
    except OSError as exc:
        return RepositoryScan(repo, (), (), f"{repo}: cannot be listed ({exc.strerror or exc})")
    models: list[ModelScan] = []
    ignored: list[Ignored] = []
    for entry in entries:
        p = Path(entry.path)
        if entry.name.startswith("."):
            ignored.append(Ignored(p, "hidden"))
        elif (why := _unreadable(entry)) is not None:
            ignored.append(Ignored(p, why))
        elif not entry.is_dir():
            ignored.append(Ignored(p, "not a directory (a model is a directory)"))
        elif not is_model_name(entry.name):
            ignored.append(Ignored(p, "not a valid model name (1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit)"))
        elif len(models) >= MAX_MODELS:
            ignored.append(Ignored(p, f"more than {MAX_MODELS} models"))
        else:
            models.append(_scan_model(p, entry.name))
    return RepositoryScan(repo, tuple(models), tuple(ignored))
