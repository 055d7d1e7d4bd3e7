"""Hot-reload planning: what to load, reload and unload between two scans. Pure.

:func:`plan` compares the previous :class:`~.scan.RepositoryScan` (``None`` at
start-up) with a new one and returns :data:`Action` values.  It knows only
the scans, not which loads succeeded; the adapter that executes actions owns
the model states.  Contracts the adapter relies on:

- Order: repository error, then removed models (by name), then per model (by
  name): :class:`ReportError`, :class:`ReloadModel`, :class:`LoadVersion`
  (ascending), :class:`ReloadVersion`, :class:`UnloadVersion`.  Loads come
  before unloads so a policy-superseded version (``reason="policy"``) can keep
  serving until the new one is ready; unload it only then.
- A model whose config.toml became invalid gets only a :class:`ReportError`:
  whatever it serves keeps serving with the old config.  When config.toml is
  fixed or changes, :class:`ReloadModel` asks to replace everything loaded for
  the model (possibly nothing, or failed attempts) by ``versions`` under the
  new config.
- A version whose directory became unloadable (e.g. its model file is being
  replaced by hand) gets a :class:`ReportError` and is not unloaded; a version
  whose files changed in place gets :class:`ReloadVersion` ("replace what is
  loaded, or retry a failed load").  A version that reappears or gets fixed is
  a :class:`LoadVersion`.
- A repository that cannot be listed (``current.error``) yields one
  :class:`ReportError` with ``model=None`` and nothing else: a transient error
  never unloads anything.  Keep planning from the last scan *without* a
  repository error (its models are still what is loaded): so that error is
  reported on every scan while it lasts; log it once.
- Other errors are reported once, when they appear or change, not on every scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .scan import ModelScan, RepositoryScan

__all__ = ["LoadVersion", "ReloadVersion", "UnloadVersion", "ReloadModel", "RemoveModel", "ReportError", "Action", "plan"]


@dataclass(frozen=True, slots=True)
class LoadVersion:
    """Load (then warm up) ``model``'s ``version`` from ``path``."""

    model: str
    version: int
    path: Path


@dataclass(frozen=True, slots=True)
class ReloadVersion:
    """The files of a served version changed in place: load it anew and swap it in."""

    model: str
    version: int
    path: Path


@dataclass(frozen=True, slots=True)
class UnloadVersion:
    """Stop routing new requests to the version, finish its in-flight work, unload it.

    ``reason``: ``"removed"`` (its directory is gone) or ``"policy"`` (still
    present, no longer selected by the version policy: unload once the newly
    selected versions are ready).
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
    """A new or changed problem: the repository (``model=None``), a model (``version=None``) or one version."""

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
    out: list[Action] = []
    for v in cur.versions:
        was = prev.version(v.version) if prev is not None else None
        if v.error is not None and (was is None or was.error != v.error):
            out.append(ReportError(name, v.version, v.error))
    if prev is None or prev.error is not None or prev.config_fingerprint != cur.config_fingerprint:
        if prev is None:
            out.extend(LoadVersion(name, v, cur.version(v).path) for v in cur.selected)  # type: ignore[union-attr]
        else:
            out.append(ReloadModel(name, cur.selected))
        return out
    before, after = set(prev.selected), set(cur.selected)
    for v in sorted(after - before):
        out.append(LoadVersion(name, v, cur.version(v).path))  # type: ignore[union-attr]
    for v in sorted(after & before):
        now, was = cur.version(v), prev.version(v)
        if now is not None and was is not None and now.fingerprint != was.fingerprint:
            out.append(ReloadVersion(name, v, now.path))
    for v in sorted(before - after):
        now = cur.version(v)
        if now is None:
            out.append(UnloadVersion(name, v, "removed"))
        elif now.error is None:
            out.append(UnloadVersion(name, v, "policy"))
        # else: present but unloadable right now -> reported above, keeps serving
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
