"""Hot-reload planning: what to load, reload and unload between two scans. Pure.

:func:`plan` compares the previous :class:`~.scan.RepositoryScan` (``None`` at
start-up) with a new one and returns :data:`Action` values.  It knows only
the scans, not which loads succeeded; the adapter that executes actions owns
the model states.  The model: for every model with a valid config, the set of
versions the adapter is asked to hold is exactly ``ModelScan.selected`` of
the latest scan (the version policy applied to every version directory
present, loadable or not).  Contracts the adapter relies on:

- Order: repository error, then removed models (by name), then per model (by
  name): :class:`ReportError` or :class:`ReloadModel`, or else
  :class:`LoadVersion` (ascending), :class:`ReloadVersion`,
  :class:`UnloadVersion`.
- :class:`LoadVersion` / :class:`ReloadVersion` / :class:`ReloadModel`: load
  the directory anew, warm it up, and only then swap it in.  If loading fails
  (bad file, scan error such as "holds no model file", exception in
  ``Model()``), mark that version ``failed`` with the error and keep any
  instance that was serving it.  A failed version is retried when its files
  change (:class:`ReloadVersion`).
- :class:`UnloadVersion` ``reason="removed"``: the directory is gone; stop
  routing to it, finish in-flight work, unload.  ``reason="policy"``: still
  present but no longer selected (e.g. ``latest = 1`` and a newer version
  appeared); unload it once the model has another *ready* version, so a new
  version that fails to load never leaves the model without one.
- A model whose config.toml became invalid gets only a :class:`ReportError`:
  whatever it serves keeps serving with the old config.  When config.toml is
  fixed or changes (byte-wise), :class:`ReloadModel` asks to replace everything
  held for the model (possibly nothing) by ``versions`` under the new config.
- A repository that cannot be listed (``current.error``) yields one
  :class:`ReportError` with ``model=None`` and nothing else: a transient error
  never unloads anything.  Keep planning from the last scan *without* a
  repository error (its models are still what is loaded): so that error is
  reported on every scan while it lasts; log it once.  A model's config error
  is reported once, when it appears or changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .scan import ModelScan, RepositoryScan

__all__ = ["LoadVersion", "ReloadVersion", "UnloadVersion", "ReloadModel", "RemoveModel", "ReportError", "Action", "plan"]


@dataclass(frozen=True, slots=True)
class LoadVersion:
    """Load ``model``'s ``version`` from ``path``, warm it up, then serve it (see the module docstring)."""

    model: str
    version: int
    path: Path


@dataclass(frozen=True, slots=True)
class ReloadVersion:
    """The files of a held version changed in place (or a failed one was fixed): load anew, swap in when ready."""

    model: str
    version: int
    path: Path


@dataclass(frozen=True, slots=True)
class UnloadVersion:
    """Stop routing new requests to the version, finish its in-flight work, unload it.

    ``reason``: ``"removed"`` (its directory is gone: now) or ``"policy"`` (still
    present, no longer selected: once the model has another ready version).
    """

    model: str
    version: int
    reason: Literal["removed", "policy"]


@dataclass(frozen=True, slots=True)
class ReloadModel:
    """config.toml appeared, changed or was fixed: replace the model by ``versions`` under the new config."""

    model: str
    versions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RemoveModel:
    """The model directory is gone: unload every version (after in-flight work) and forget the model."""

    model: str


@dataclass(frozen=True, slots=True)
class ReportError:
    """A new or changed problem with the repository (``model=None``) or a model's config.toml (``version=None``)."""

    model: str | None
    version: int | None
    reason: str


Action = LoadVersion | ReloadVersion | UnloadVersion | ReloadModel | RemoveModel | ReportError


def _model_actions(prev: ModelScan | None, cur: ModelScan) -> list[Action]:
    name = cur.name
    if cur.error is not None:
        if prev is None or prev.error != cur.error:
            return [ReportError(name, None, cur.error)]
        return []
    if prev is None:
        return [LoadVersion(name, v.version, v.path) for v in cur.versions if v.version in cur.selected]
    if prev.error is not None or prev.config_fingerprint != cur.config_fingerprint:
        return [ReloadModel(name, cur.selected)]
    before, after = set(prev.selected), set(cur.selected)
    out: list[Action] = []
    for v in cur.versions:
        if v.version in after and v.version not in before:
            out.append(LoadVersion(name, v.version, v.path))
    for v in cur.versions:
        was = prev.version(v.version)
        if v.version in after and v.version in before and was is not None and was.fingerprint != v.fingerprint:
            out.append(ReloadVersion(name, v.version, v.path))
    for version in sorted(before - after):
        out.append(UnloadVersion(name, version, "removed" if cur.version(version) is None else "policy"))
    return out


def plan(previous: RepositoryScan | None, current: RepositoryScan) -> list[Action]:
    """The actions that take a server serving ``previous`` to ``current`` (see the module docstring)."""
    if current.error is not None:
        if previous is not None and previous.error == current.error:
            return []
        return [ReportError(None, None, current.error)]
    prev_models = {} if previous is None else {m.name: m for m in previous.models}
    out: list[Action] = []
    for name in sorted(set(prev_models) - set(current.names)):
        out.append(RemoveModel(name))
    for model in current.models:
        out.extend(_model_actions(prev_models.get(model.name), model))
    return out
