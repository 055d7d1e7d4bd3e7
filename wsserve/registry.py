"""What the server serves, kept in step with its model repositories: loading, swapping, unloading.

:class:`ModelRegistry` executes the sans-I/O plans of :mod:`wsserve.repository`
(``scan`` + ``plan``) on the :class:`~wsserve.pool.ModelPool`:

- a version is loaded and warmed up off the event loop (state ``loading``),
  then served; it becomes the default at once if it is the highest ready
  version — one assignment on the loop, so a swap loses no request;
- a version that fails to load (bad file, exception in ``Model()``, shapes
  that disagree with config.toml, warm-up error, a load past its timeout) is ``failed`` with the reason,
  logged, and whatever served before keeps serving;
- a version that is removed (or unloaded) stops taking new requests
  (``unloading``), finishes what it has in flight, then is closed and leaves
  the list; one that is merely out of the version policy goes only once the
  model has another ready version;
- a changed config.toml (or config.pbtxt) reloads that model;
- an ensemble (config.pbtxt ``platform: "ensemble"``) is planned against the step models served
  at the time (:func:`wsserve.ensemble.build_ensemble`), not loaded in a thread: ``loading`` while
  a step model loads, ``failed`` naming the step when one is missing or does not fit, and planned
  again whenever a step model is served, fails or is unloaded, or a step that is an ensemble
  changes state (``_recheck_ensembles``); a cycle across ensembles fails each of them.

Repositories: the built-in one (the trainer writes the default models there,
in the same layout, so they are ordinary entries) and the operator's
(``--model-repository``), watched with ``watchfiles`` when ``--reload`` is on.
Objects passed to ``Server(models=...)`` are served as their own version (``1`` by
default), warmed up and batched with their own settings; their names are theirs alone.

Admin operations (``load``, ``unload``, ``reload`` of a model or a version)
come from the connection core; authorisation is the core's.  A ``load`` of a model that serves
plans, as a rescan would, against the scan what it serves was loaded from (``_applied``: not the
rescan's last scan, ``_scans``, which may hold a change planned and not yet applied, or one whose
load failed): nothing changed, nothing is loaded; a changed config file reloads the model, a
changed version directory that version, a removed one stops (Triton's explicit load of a modified
model), by the same ``_load`` swap as the hot reload.  A reload that fails raises ``BadRequest`` and
leaves its change unrecorded, so the next load (or rescan) tries it again.  Scans are numbered as
they start: a hot-reload change planned from a scan older than the one a load then served the
model from whole is not applied after it (it would serve older files).

Concurrency: what happens to one model is serialised (its own lock: a hot-reload change and an
admin operation on it run one after the other, in the order they came), different models do
not wait for each other.  So a load that takes long, or never returns (a ``Model()`` that hangs),
holds up only its own model: other models load, reload and answer admin operations meanwhile,
and the repository watcher keeps applying changes.  At most :data:`LOAD_CONCURRENCY` loads run at
once (each in a daemon thread of its own, so a hung one does not hold up the process's exit or
the default executor).  Scans and plans run one at a time (``_scan_lock``); they never wait for a
model.

Load timeout: a load (``Model()`` or reading the model file, then the warm-up) that takes longer
than the model's ``model_load_timeout_s`` (config.toml, else the server's
``--model-load-timeout-s``) fails its version ("did not load within N s"), frees its slot and is
abandoned: its thread runs on (a config.pbtxt's ``model_warmup`` stops before its next
execution), and what it returns when (if) it ends is discarded (a model is closed, in a thread of
its own) and logged.  At most :data:`MAX_LOAD_THREADS` load threads exist at
once, running or abandoned: a load that would need one more fails at once, saying why (it is tried
again when its files change, or by an admin ``load``), so a repository of models that hang cannot
grow threads without bound.  Start-up (:meth:`ModelRegistry.load_all`) waits for the initial loads,
so a hung one holds it up for its timeout, no longer: then it is ``failed`` and the server listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from .batching import PriorityLevels
from .bls import BlsGateway
from .config import DEFAULT_MODEL_LOAD_TIMEOUT_S, flag
from .custommetrics import CustomMetrics
from .ensemble import EnsembleModel, EnsembleWorker, build_ensemble, depends_on
from .errors import BadRequest, UnknownModel
from .generation.model import TokenModelAdapter
from .logs import escape_log_text
from .pool import ModelEntry, ModelPool, check_describable, is_generative
from .repository import (
    MODEL_FILES,
    Ignored,
    LoadVersion,
    ModelConfig,
    ModelLoadError,
    ModelScan,
    ReloadModel,
    ReloadVersion,
    RemoveModel,
    ReportError,
    RepositoryError,
    RepositoryModel,
    RepositoryScan,
    UnloadVersion,
    VersionScan,
    is_model_name,
    load_version,
    parse_version,
    plan,
    scan,
)
from .repository.ensemble_plan import ensemble_cycle
from .repository.npz import MAX_NPZ_BYTES
from .repository.pbtxt import parse_json_config
from .repository.scan import scan_model, scan_one
from .repository.triton_backend import TritonPythonModel

__all__ = ["ModelRegistry", "LOAD_CONCURRENCY", "MAX_LOAD_THREADS"]


def _with_config(mscan: ModelScan, config: str) -> ModelScan:
    """``mscan`` served with a load request's ``config`` (Triton's JSON model configuration,
    :func:`~wsserve.repository.pbtxt.parse_json_config`).  Raises ``BadRequest`` naming the
    problem (the model keeps what it serves)."""
    where = mscan.path / "<the load request's config>"
    try:
        parsed = parse_json_config(config, where, model_name=mscan.name)
    except RepositoryError as exc:
        raise BadRequest(f"model {mscan.name!r}: {exc}") from None
    return scan_model(mscan.path, mscan.name, parsed)

log = logging.getLogger("wsserve.registry")


def _loaded_scan(held: ModelScan | None, current: ModelScan, *, refresh: bool, version: int | None,
                 failed: Iterable[int]) -> ModelScan:
    """The scan an admin ``load`` records for its model (what the next load and the hot reload plan
    against): ``current``, but what it did not load stays as ``held`` (the scan the model was loaded
    from) had it, so a later load or rescan still sees those changes: the other versions when it
    loaded one ``version``, the versions that ``failed``, everything when a ``refresh`` (its config
    file changed) failed in part.  ``held`` None: ``current`` (nothing to compare with)."""
    failed = set(failed)
    if held is None:
        return current
    if refresh:
        return held if failed else current
    if version is not None:
        if version in failed:
            return held
        keep = [v for v in held.versions if v.version != version]
        new = [v for v in current.versions if v.version == version]
        return dataclasses.replace(held, versions=tuple(sorted((*keep, *new), key=lambda v: v.version)))
    if not failed:
        return current
    versions = [(held.version(v.version) or v) if v.version in failed else v for v in current.versions]
    return dataclasses.replace(current, versions=tuple(versions))


#: Loads (``Model()`` and its warm-up) running at once, over all models, as Triton's default
#: ``--model-load-thread-count``.  A load past its timeout gives its slot back.
LOAD_CONCURRENCY = 4
#: Load threads alive at once, running or abandoned after their timeout (a ``Model()`` that never
#: returns keeps its thread forever): a load that would start one more fails at once.  Twice the
#: running loads: room for a round of hung loads without refusing the models queued behind them.
MAX_LOAD_THREADS = 2 * LOAD_CONCURRENCY


def _priorities(cfg: ModelConfig) -> PriorityLevels:
    """A model's priority levels: its config.pbtxt's (Triton's), else wsserve's two classes."""
    if cfg.priority_levels is None:
        return PriorityLevels()
    return PriorityLevels(cfg.priority_levels, cfg.default_priority_level, configured=True,
                          policies=cfg.priority_queue_policies)


def _start_thread(fn: Callable[..., Any], *args: Any, name: str) -> asyncio.Future[Any]:
    """Start ``fn(*args)`` in a new daemon thread; a future of the running loop that gets its
    result or exception when the thread ends (never, if ``fn`` never returns; nor once the loop is
    closed).  A ``BaseException`` of ``fn`` (``sys.exit()``) comes as a ``RuntimeError``.

    Unlike the default executor, a call that never returns holds no pool thread that other work
    (scans, other loads) needs, and does not keep the process from exiting.  Cancelling a task
    awaiting the future abandons the call (its result is dropped; the thread runs to its end)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def run() -> None:
        try:
            result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting task
            ok, value = False, exc
        except BaseException as exc:  # noqa: BLE001 - a model's sys.exit() or KeyboardInterrupt: raised
            # as such in the awaiting task, asyncio would let it stop the event loop (the server)
            ok, value = False, RuntimeError(f"{type(exc).__name__}: {exc}")
        else:
            ok, value = True, result
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def _servable(model: Any, name: str) -> Any:
    """What the pool serves for a loaded repository model: itself, or (generative) its token model."""
    if getattr(model, "generative", False):  # config.toml's flops_per_row wins, as for predictive models
        return TokenModelAdapter(model.model, name=name, info=model.info, flops_per_token=model.config.flops_per_row)
    return model


def _load(name: str, version: int, path: Path, mscan: ModelScan, max_npz_bytes: int,
          stop: threading.Event | None = None, bls_gateway: BlsGateway | None = None,
          custom_metrics: CustomMetrics | None = None) -> Any:
    """Load and warm up one version (blocking: runs in a thread).  Raises ``ModelLoadError`` and
    nothing else: whatever the model's own code raises (a ``Model.metrics`` property that raises,
    ``sys.exit()``, ``KeyboardInterrupt``) fails the version, naming its file.  ``stop`` set (the
    load abandoned) ends config.pbtxt's ``model_warmup`` samples before their next execution.
    ``bls_gateway``: set on a Triton Python model before its warm-up (its BLS requests' way to the
    server's models); ``custom_metrics``: where a Triton Python model's metric families go."""
    assert mscan.config is not None
    vscan = mscan.version(version)
    if vscan is not None and vscan.error is not None:  # the scan's error already starts with the path
        raise ModelLoadError(path, vscan.error.removeprefix(f"{path}: "))
    try:
        model = load_version(name, version, path, mscan.config, max_npz_bytes=max_npz_bytes,
                             custom_metrics=custom_metrics)
    except ModelLoadError:
        raise
    except BaseException as exc:  # noqa: BLE001 - the model's code, past what its backend names
        raise ModelLoadError(_model_file(path, mscan, version), f"{type(exc).__name__}: {exc}") from exc
    if isinstance(model, TritonPythonModel):
        model.bls_gateway = bls_gateway
    try:
        model.warmup(stop=stop)
        model.version_figures()  # reads the file system: here, off the event loop, once
        servable = _servable(model, name)
        try:  # e.g. Model.metrics = {1: ...}: it would break `models` for every model
            check_describable(servable)
        except TypeError as exc:
            raise ModelLoadError(getattr(model, "path", path), f"its metrics or figures are not JSON ({exc})") from None
        return servable
    except ModelLoadError:
        _close_failed(model)
        raise
    except BaseException as exc:  # noqa: BLE001 - e.g. a generative model that breaks its interface: name its file
        _close_failed(model)
        raise ModelLoadError(getattr(model, "path", path), f"{type(exc).__name__}: {exc}") from exc


def _close_quietly(model: Any, label: str, after: str) -> None:
    """Close ``model`` (if it has ``close()``) after ``after`` (its failed or abandoned load); what
    ``close()`` raises is logged, not raised (the load's own outcome is the one to report)."""
    close = getattr(model, "close", None)
    if not callable(close):
        return
    try:
        close()
    except BaseException:  # noqa: BLE001 - the model's own Model.close()
        log.exception("closing %s after its %s raised", label, after)


def _close_failed(model: Any) -> None:
    _close_quietly(model, f"model {model.name!r} version {model.version}", "failed load")


def _model_file(path: Path, mscan: ModelScan, version: int) -> Path:
    """The model file of version ``version`` (at ``path``) for messages; the directory if unknown."""
    vscan = mscan.version(version)
    if vscan is None or not vscan.backend:
        return path
    return vscan.path / ((mscan.config.model_file if mscan.config is not None else None) or MODEL_FILES[vscan.backend])


def _report_ignored(previous: RepositoryScan | None, current: RepositoryScan) -> None:
    """Log each entry ``current`` ignores that ``previous`` did not (so once, when it appears), with
    the reason: a warning (``v1/``, ``01/``, a file where a version directory belongs, a symlink
    loop), or a debug line for a hidden one (``.git``, a version being built as ``.4.tmp``). The
    entry's path is written with :func:`~wsserve.logs.escape_log_text` (a name read from disk may
    hold a newline: it cannot forge a log line)."""

    def ignored(s: RepositoryScan | None) -> set[Ignored]:
        return set() if s is None else {*s.ignored, *(i for m in s.models for i in m.ignored)}

    for item in sorted(ignored(current) - ignored(previous), key=lambda i: str(i.path)):
        log.log(logging.DEBUG if item.reason == "hidden" else logging.WARNING, "ignored %s: %s",
                escape_log_text(str(item.path)), item.reason)


def _report_config_warnings(previous: RepositoryScan | None, current: RepositoryScan) -> None:
    """Log one warning per model whose config (re)read says what wsserve accepts but does not honour
    (:attr:`ModelConfig.warnings`: config.pbtxt's hints, KIND_GPU run on CPU), once per config file
    contents."""
    for m in current.models:
        if m.config is None or not m.config.warnings:
            continue
        before = previous.model(m.name) if previous is not None else None
        if before is not None and before.config_fingerprint == m.config_fingerprint:
            continue  # said already
        log.warning("model %r (%s): wsserve accepts but ignores: %s", m.name, escape_log_text(str(m.config.path)),
                    "; ".join(m.config.warnings))


def _report_nothing_to_serve(previous: RepositoryScan | None, current: RepositoryScan) -> None:
    """Warn once about each model (valid config.toml) that has nothing to serve: no version
    directory, or a ``version_policy`` that selects none of those present (the ``models`` list
    would not show it at all)."""
    for m in current.models:
        if m.config is None or m.selected:
            continue
        before = previous.model(m.name) if previous is not None else None
        if before is not None and before.config is not None and not before.selected \
                and [v.version for v in before.versions] == [v.version for v in m.versions] \
                and before.config.version_policy == m.config.version_policy:
            continue  # said already
        if not m.versions:
            log.warning("model %r (%s) has no version directory (1/, 2/, ...): nothing to serve", m.name,
                        escape_log_text(str(m.path)))
        else:
            log.warning("model %r (%s): version_policy selects none of its versions (%s): nothing to serve", m.name,
                        escape_log_text(str(m.path)), ", ".join(str(v.version) for v in m.versions))


class _ModelLock:
    """One model's lock and how many hold or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class ModelRegistry:
    """The pool's contents, driven by repository scans and admin operations.  Loop thread only."""

    def __init__(self, pool: ModelPool, *, builtin: Path | None = None, builtin_names: Iterable[str] = (),
                 repositories: Iterable[Path] = (),
                 model_load_timeout_s: float = DEFAULT_MODEL_LOAD_TIMEOUT_S,
                 max_npz_bytes: int = MAX_NPZ_BYTES, custom_metrics: CustomMetrics | None = None) -> None:
        """``custom_metrics``: the server's (a Triton Python model's ``pb_utils.MetricFamily``
        objects go there; None: each such model keeps its own, shown nowhere); ``builtin``: the directory the trainer wrote the default models to (only
        ``builtin_names`` of it are served); ``repositories``: the operator's;
        ``model_load_timeout_s``: a load's time limit where config.toml gives none;
        ``max_npz_bytes``: the arrays a model.npz may hold."""
        self.pool = pool
        self._builtin = builtin
        self._builtin_order = tuple(builtin_names)
        self._builtin_names = frozenset(builtin_names)
        self._repos = [Path(r) for r in repositories]
        self._scans: dict[Path, RepositoryScan] = {}  # what each repository held when last planned against
        # what each model's served versions were loaded from (the hot reload's changes once applied, a load's):
        # what an admin load compares its files with (a change planned but not yet applied, or one that
        # failed to load, is not in it)
        self._applied: dict[str, ModelScan] = {}
        # scans are numbered as they start (rescans and loads); a model an admin load served whole from its
        # scan number n applies no hot-reload change planned from an older scan (its files were older)
        self._scan_seq = 0
        self._loaded_seq: dict[str, int] = {}
        self._owner: dict[str, Path] = {}  # model name -> the repository it comes from
        self._deferred: dict[str, set[int]] = {}  # policy unloads waiting for another ready version
        self._scan_lock = asyncio.Lock()  # scans and plans, and self._scans
        self._model_locks: dict[str, _ModelLock] = {}  # what happens to one model, one at a time
        self._loads = asyncio.Semaphore(LOAD_CONCURRENCY)
        self._load_timeout_s = model_load_timeout_s
        self._max_npz_bytes = max_npz_bytes
        self._custom_metrics = custom_metrics
        self._load_threads: dict[asyncio.Future[Any], str] = {}  # each load thread alive -> "model 'm' version 1"
        self._abandoned: set[asyncio.Future[Any]] = set()  # those past their timeout (or whose load was cancelled)
        self._applying: set[asyncio.Task[None]] = set()  # a rescan's changes, one task per model
        self._retiring: set[asyncio.Task[None]] = set()
        self._unloaded: set[str] = set()  # models unloaded by an admin: kept out until loaded again
        self._overridden: set[str] = set()  # models an admin loaded with a load request's config
        self._objects: set[str] = set()  # names of in-process objects (serve_object): no repository may take them
        self._ensembles: dict[str, ModelScan] = {}  # ensembles of the repositories: re-planned when a step model changes
        self._rechecks: set[asyncio.Task[None]] = set()  # those re-plannings under way
        self._bls_gateway: BlsGateway | None = None  # made at the first load (on the loop): see _bls

    @property
    def repositories(self) -> list[Path]:
        return list(self._repos)

    # ------------------------------------------------------------------ start-up

    def unloaded_names(self) -> list[str]:
        """Models an admin unloaded (kept out of hot reload until loaded again)."""
        return sorted(self._unloaded)

    def serve_object(self, name: str, model: Any, version: str | None = None) -> ModelEntry:
        """Serve an in-process model object (``Server(models=...)``) as ``version``.

        ``model``: a :class:`~wsserve.repository.RepositoryModel` (``wsserve.FunctionModel``,
        ``wsserve.onnx_model(...)``), warmed up here and batched with its own config
        (``max_batch_size``, ``max_delay_ms``, ``instances``), served as its ``version``; a
        generative model (:mod:`wsserve.generation.model`); or any object with ``predict``
        and ``info``.  ``version`` defaults to the model's own, else ``"1"``.  The name is
        then taken: a repository model of that name is refused (logged).  Raises
        ``ValueError`` for a bad or taken name or metrics that are not JSON, ``TypeError`` for an object that is no
        model, :class:`~wsserve.repository.ModelLoadError` for a failed warm-up.
        """
        if not is_model_name(name):
            raise ValueError(f"model name {name!r}: 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit")
        if name in self._objects or self.pool.knows(name):
            raise ValueError(f"model name {name!r} is already served")
        worker = None
        if isinstance(model, RepositoryModel):
            model.warmup()  # raises ModelLoadError naming what is wrong, before anything is served
            version = version if version is not None else str(model.version)
            worker = self._worker(name, model, model.config)
        elif is_generative(model) and not isinstance(model, TokenModelAdapter):
            model = TokenModelAdapter(model, name=name)
        elif not is_generative(model) and not hasattr(model, "predict"):
            raise TypeError(f"model {name!r}: {type(model).__name__} has no predict() (nor the generative interface)")
        try:  # as for a repository version: it would break `models` for every model
            check_describable(model)
        except TypeError as exc:
            raise ValueError(f"model {name!r}: its metrics or figures are not JSON ({exc})") from None
        entry, _ = self.pool.serve(name, version if version is not None else "1", model, worker=worker)
        self._objects.add(name)
        return entry

    def _worker(self, name: str, model: Any, cfg: ModelConfig) -> Any:
        """A worker batching with the model's own settings (the server's where it has none).  A model
        without a batch dimension (:attr:`RepositoryModel.batching` false) gets batches of one row: no
        two requests run together."""
        rows = (cfg.max_batch_size or None) if getattr(model, "batching", True) else 1
        return self.pool.make_worker(
            name, model, max_batch_size=rows, max_delay_ms=cfg.max_delay_ms, instances=cfg.instances,
            max_queue_requests=cfg.max_queue_requests, default_timeout_ms=cfg.default_timeout_ms,
            allow_timeout_override=cfg.allow_timeout_override, timeout_action=cfg.timeout_action,
            priorities=_priorities(cfg),
            guide_compile_memory_bytes=cfg.guide_compile_memory_bytes,
            guide_compile_cpu_s=cfg.guide_compile_cpu_s, guide_compile_timeout_s=cfg.guide_compile_timeout_s,
            response_cache=cfg.response_cache,
        )

    async def load_all(self) -> None:
        """Load every repository (the built-in one first).  A model name in two
        repositories is an error; a model that fails to load is ``failed``, the rest serve."""
        tasks: list[asyncio.Task[None]] = []
        async with self._scan_lock:
            if self._builtin is not None:  # the default models keep their documented order
                for name in self._builtin_order:
                    self.pool.set_state(name, "1", "loading")
            for repo in self._all_repos():
                tasks += await self._rescan(repo)
        await self._settle(tasks)

    def _all_repos(self) -> list[Path]:
        return ([self._builtin] if self._builtin is not None else []) + self._repos

    # ------------------------------------------------------------------ hot reload

    async def rescan(self, *, wait: bool = True) -> None:
        """Scan the operator's repositories again and apply what changed.

        Each model's changes are applied by a task of its own, after whatever that model is
        already doing; ``wait``: return once they are applied (else once they are planned, as
        the watcher does, so a model that takes long to load holds up no other model's changes)."""
        tasks: list[asyncio.Task[None]] = []
        async with self._scan_lock:
            for repo in self._repos:
                tasks += await self._rescan(repo)
        if wait:
            await self._settle(tasks)

    async def _settle(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for ``tasks`` (each logs its own failure)."""
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        while self._rechecks:  # ensembles re-planned after their steps' models changed
            await asyncio.gather(*self._rechecks, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def _holding(self, name: str) -> AsyncIterator[None]:
        """Hold ``name``'s lock (waiting behind whoever holds or waits for it, in order).  The
        lock is dropped once nobody holds or waits for it: names come and go (and come from the
        wire, in admin operations)."""
        held = self._model_locks.get(name)
        if held is None:
            held = self._model_locks[name] = _ModelLock()
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if held.users == 0:
                del self._model_locks[name]

    def _bls(self) -> BlsGateway:
        """The gateway of the Triton Python models' BLS requests (one per registry, on its loop)."""
        if self._bls_gateway is None:
            self._bls_gateway = BlsGateway(self.pool.lookup, self.pool.config)
        return self._bls_gateway

    async def stop(self) -> None:
        """Stop applying changes (shutdown): a load in progress is abandoned, not served; BLS
        requests still in flight (after the drain) and later ones are answered ``UNAVAILABLE``."""
        if self._bls_gateway is not None:
            self._bls_gateway.close()
        for task in [*self._applying, *self._rechecks]:
            task.cancel()
        await self._settle(list(self._applying))

    def _identities(self) -> tuple[tuple[int, int] | None, ...]:
        """``(device, inode)`` of each operator repository directory (None: missing)."""
        out: list[tuple[int, int] | None] = []
        for repo in self._repos:
            try:
                st = os.stat(repo)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_dev, st.st_ino))
        return tuple(out)

    async def watch(self, stop: asyncio.Event) -> None:
        """Rescan whenever files change under the operator's repositories, until ``stop``.

        Changes made after :meth:`load_all` returned are never missed: one rescan runs as soon as
        the watches are established.  The watches are on directories, not paths: when a repository
        directory is replaced as a whole (``mv repo.new repo``), disappears or comes back, they are
        established anew on the directories the paths now name (checked once a second)."""
        if not self._repos:
            return
        from watchfiles import awatch

        while not stop.is_set():
            watched = self._identities()
            # The first (empty) yield comes once the watches are in place: rescanning then catches
            # whatever changed between the last scan and the watcher; later empty yields are
            # timeouts (one a second), with nothing to do unless a repository directory was replaced.
            established = False
            present = [repo for repo, identity in zip(self._repos, watched, strict=True) if identity is not None]
            try:
                if not present:
                    raise FileNotFoundError
                async for changes in awatch(*present, stop_event=stop, debounce=500, recursive=True,
                                            rust_timeout=1000, yield_on_timeout=True):
                    replaced = self._identities() != watched
                    if not changes and established and not replaced:
                        continue
                    established = True
                    try:
                        await self.rescan(wait=False)
                    except Exception:  # noqa: BLE001 - a reload bug must not stop the server or the watcher
                        log.exception("repository reload failed")
                    if replaced:
                        break  # watch what the paths name now
            except FileNotFoundError:  # every repository directory is missing (the rescan logged it): wait
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def _rescan(self, repo: Path) -> list[asyncio.Task[None]]:
        """Scan ``repo`` and plan (caller holds ``_scan_lock``); start one task per model that
        changed, applying its actions in order after what that model is doing.  Returns them."""
        loop = asyncio.get_running_loop()
        self._scan_seq += 1
        seq = self._scan_seq
        current = await loop.run_in_executor(None, scan, repo)
        current = self._filtered(repo, current)
        previous = self._scans.get(repo)
        current = await self._keeping_overrides(previous, current)
        if current.error is not None:
            log.error("model repository %s: %s", escape_log_text(str(repo)), escape_log_text(current.error))
            return []  # keep planning from the last good scan
        _report_ignored(previous, current)
        _report_config_warnings(previous, current)
        _report_nothing_to_serve(previous, current)
        self._scans[repo] = current
        per_model: dict[str, list[Any]] = {}
        for action in plan(previous, current):
            name = getattr(action, "model", None)
            if not name:  # about the repository itself
                await self._apply(repo, current, action)
            else:
                per_model.setdefault(name, []).append(action)
        tasks = []
        for name, actions in per_model.items():
            task = loop.create_task(self._apply_model(repo, current, name, actions, seq), name=f"wsserve-apply-{name}")
            self._applying.add(task)
            task.add_done_callback(self._applying.discard)
            tasks.append(task)
        return tasks

    async def _keeping_overrides(self, previous: RepositoryScan | None, current: RepositoryScan) -> RepositoryScan:
        """``current`` with each model an admin loaded with a request's config scanned with that
        config while its config file is the one it was loaded beside (same fingerprint): a rescan
        then plans its versions by that config's policy and loads them with it.  A model whose
        config file changed goes back to its files (its override is dropped)."""
        if previous is None or not self._overridden:
            return current
        kept: dict[str, ModelConfig] = {}
        for m in current.models:
            held = previous.model(m.name) if m.name in self._overridden else None
            if held is None or held.config is None:
                continue
            if held.config_fingerprint == m.config_fingerprint:
                kept[m.name] = held.config
            else:
                log.info("model %r: its config file changed: the config it was loaded with is dropped", m.name)
                self._overridden.discard(m.name)
        if not kept:
            return current

        def rescanned() -> tuple[ModelScan, ...]:
            return tuple(scan_model(m.path, m.name, kept[m.name]) if m.name in kept else m for m in current.models)

        models = await asyncio.get_running_loop().run_in_executor(None, rescanned)
        return RepositoryScan(current.path, models, current.ignored, current.error)

    async def _apply_model(self, repo: Path, current: RepositoryScan, name: str, actions: list[Any], seq: int) -> None:
        """Apply one model's planned ``actions`` (of scan number ``seq``), holding its lock; failures are logged."""
        try:
            async with self._holding(name):
                if name in self._unloaded:  # an admin unloaded it since this was planned
                    return
                if self._loaded_seq.get(name, 0) > seq:  # an admin load served it whole from newer files since
                    log.info("model %r: a change planned from an older scan is not applied: a load served newer files", name)
                    return
                failed: set[int] = set()
                for action in actions:
                    failed |= await self._apply(repo, current, action)
                mscan = current.model(name)
                if mscan is None or any(isinstance(a, RemoveModel) for a in actions):
                    self._applied.pop(name, None)
                    self._loaded_seq.pop(name, None)
                elif mscan.error is None:  # (a config file made invalid: the model serves on as it was)
                    self._applied[name] = _loaded_scan(self._applied.get(name), mscan, version=None, failed=failed,
                                                       refresh=any(isinstance(a, ReloadModel) for a in actions))
        except Exception:  # noqa: BLE001 - a reload bug must not stop other models' changes
            log.exception("applying repository changes to model %r failed", name)

    def _filtered(self, repo: Path, current: RepositoryScan) -> RepositoryScan:
        """The built-in repository is served only for the names asked for; a name another
        repository already serves is refused (reported once)."""
        keep = []
        for m in current.models:
            if repo == self._builtin and m.name not in self._builtin_names:
                continue
            if m.name in self._objects:
                log.error("model %r in %s is ignored: an in-process model of that name is served", m.name, repo)
                continue
            owner = self._owner.setdefault(m.name, repo)
            if owner != repo:
                log.error("model %r in %s is ignored: %s already serves a model of that name", m.name, repo, owner)
                continue
            if m.name in self._unloaded:
                continue
            keep.append(m)
        return RepositoryScan(current.path, tuple(keep), current.ignored, current.error)

    async def _apply(self, repo: Path, current: RepositoryScan, action: Any) -> set[int]:
        """Apply one planned ``action``; returns the versions it failed to load."""
        failed: set[int] = set()
        name = getattr(action, "model", None)
        mscan = current.model(name) if name is not None else None
        if isinstance(action, ReportError):
            where = f"model {action.model!r}" + (f" version {action.version}" if action.version else "")
            log.error("%s: %s", where if action.model else escape_log_text(str(repo)), escape_log_text(action.reason))
            if action.model and action.version is not None:
                self.pool.set_state(action.model, str(action.version), "failed", action.reason)
        elif isinstance(action, (LoadVersion, ReloadVersion)):
            assert mscan is not None
            if not await self._load(action.model, action.version, action.path, mscan):
                failed.add(action.version)
        elif isinstance(action, ReloadModel):
            assert mscan is not None
            held = {int(v) for v, s in self.pool.status(action.model).items() if v.isdigit() and s.entry is not None}
            for version in action.versions:
                vscan = mscan.version(version)
                if vscan is not None and not await self._load(action.model, version, vscan.path, mscan):
                    failed.add(version)
            for version in held - set(action.versions):
                self._unload(action.model, version)
        elif isinstance(action, UnloadVersion):
            if action.reason == "policy" and not self._has_other_ready(action.model, action.version):
                self._deferred.setdefault(action.model, set()).add(action.version)
            else:
                self._unload(action.model, action.version)
        elif isinstance(action, RemoveModel):
            for version in list(self.pool.status(action.model)):
                if version.isdigit():
                    self._unload(action.model, int(version))
            if self._owner.get(action.model) == repo:
                del self._owner[action.model]
            self._ensembles.pop(action.model, None)
        return failed

    def _has_other_ready(self, name: str, version: int) -> bool:
        return any(s.state == "ready" and v != str(version) for v, s in self.pool.status(name).items())

    @property
    def abandoned_loads(self) -> int:
        """Loads past their timeout whose threads still run."""
        return len(self._abandoned)

    def _reason(self, name: str, version: int) -> str:
        """Why ``name`` ``version`` last failed (its listed reason)."""
        status = self.pool.status(name).get(str(version))
        return (status.reason if status is not None else None) or "failed"

    async def _load(self, name: str, version: int, path: Path, mscan: ModelScan) -> bool:
        """Load ``name`` ``version`` from ``path`` with ``mscan``'s config and serve it in place of
        what serves it (which keeps serving when the load fails).  Returns False when it failed."""
        v = str(version)
        if mscan.config is not None and mscan.config.ensemble is not None:
            self._ensembles[name] = mscan
            self._load_ensemble(name, version, mscan)
            held = self.pool.status(name).get(v)
            return held is None or held.state != "failed"
        # not (or no longer: a load's config made it one, or its config file did) an ensemble: never
        # planned again as one when a model it named changes
        self._ensembles.pop(name, None)
        self.pool.set_state(name, v, "loading")
        try:
            async with self._loads:
                model = await self._load_in_thread(name, version, path, mscan)
        except (ModelLoadError, ValueError) as exc:
            reason = str(exc)
            log.error("model %r version %s failed to load: %s", name, v, reason)
            self.pool.set_state(name, v, "failed", reason)
            self._recheck_ensembles(name)  # an ensemble waiting for it (loading) is failed now
            return False
        assert mscan.config is not None
        worker = self._worker(name, model, mscan.config)
        _, replaced = self.pool.serve(name, v, model, worker=worker)
        log.info("serving model %r version %s (%s)", name, v, getattr(model, "backend", type(model).__name__))
        if replaced is not None:
            self._drain(replaced, forget=False)
        self._recheck_ensembles(name)
        for waiting in sorted(self._deferred.pop(name, set())):
            if self._has_other_ready(name, waiting):
                self._unload(name, waiting)
            else:
                self._deferred.setdefault(name, set()).add(waiting)
        return True

    async def _load_in_thread(self, name: str, version: int, path: Path, mscan: ModelScan) -> Any:
        """:func:`_load` in a thread of its own (the caller holds a load slot), within the model's
        load timeout.  Raises ``ModelLoadError`` for a failed load, one past its timeout (then
        abandoned: see :meth:`_abandon`) and one refused because :data:`MAX_LOAD_THREADS` load
        threads are alive."""
        assert mscan.config is not None
        label = f"model {name!r} version {version}"
        if len(self._load_threads) >= MAX_LOAD_THREADS:
            stuck = ", ".join(sorted(self._load_threads[f] for f in self._abandoned))
            raise ModelLoadError(_model_file(path, mscan, version),
                                 f"not loaded: the most load threads there may be ({MAX_LOAD_THREADS}) are alive, "
                                 f"{len(self._abandoned)} of them abandoned after their load timeout and still running "
                                 f"({stuck}); it is tried again when its files change, or by a load")
        timeout_s, source = ((mscan.config.model_load_timeout_s, "config.toml's model_load_timeout_s")
                             if mscan.config.model_load_timeout_s is not None
                             else (self._load_timeout_s, flag("model_load_timeout_s")))
        loop = asyncio.get_running_loop()
        started = loop.time()
        stop = threading.Event()  # set when abandoned: its model_warmup executions stop
        future = _start_thread(_load, name, version, path, mscan, self._max_npz_bytes, stop, self._bls(),
                               self._custom_metrics,
                               name=f"wsserve-load-{name}-{version}")
        self._load_threads[future] = label
        future.add_done_callback(lambda f: self._load_threads.pop(f, None))
        try:
            await asyncio.wait((future,), timeout=timeout_s)  # (not wait_for: that would cancel the future)
        except asyncio.CancelledError:  # the registry stops: the load is abandoned, not served
            stop.set()
            self._abandon(future, label, started)
            raise
        if not future.done():
            stop.set()
            self._abandon(future, label, started)  # (the failure is logged by the caller)
            raise ModelLoadError(_model_file(path, mscan, version),
                                 f"did not load within {timeout_s:g} s ({source}): its load (the model file "
                                 "or Model(), then the warm-up) is abandoned, still running; it is tried again "
                                 "when its files change, or by a load")
        return future.result()

    def _abandon(self, future: asyncio.Future[Any], label: str, started: float) -> None:
        """Give up on a load that still runs: when its thread ends, its result is discarded (a
        model is closed, in a thread of its own) and logged."""
        self._abandoned.add(future)

        def ended(f: asyncio.Future[Any]) -> None:
            self._abandoned.discard(f)
            after = asyncio.get_running_loop().time() - started
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.warning("the abandoned load of %s ended %.1f s after it started, failing: %s", label, after, exc)
                return
            model = f.result()
            log.warning("the abandoned load of %s ended %.1f s after it started: its model is discarded (closed)",
                        label, after)
            threading.Thread(target=_close_quietly, args=(model, label, "abandoned load"), name=f"wsserve-close-late-{label}",
                             daemon=True).start()

        future.add_done_callback(ended)

    def _unload(self, name: str, version: int) -> None:
        entry = self.pool.retire(name, str(version))
        if entry is not None:
            self._drain(entry, forget=True)
        self._recheck_ensembles(name)

    # ------------------------------------------------------------------ ensembles

    def _load_ensemble(self, name: str, version: int, mscan: ModelScan) -> None:
        """Plan ensemble ``name`` ``version`` against the step models served now and serve it; one whose
        plan fails (a step model missing or not ready, tensors that disagree) is ``failed`` with the
        reason, and stops serving if it did (it is planned again when a step model changes)."""
        assert mscan.config is not None
        v = str(version)
        held = self.pool.status(name).get(v)
        before = (held.state, held.reason) if held is not None else None
        ensembles = self._ensemble_steps()
        try:
            model = build_ensemble(name, version, mscan.config, self.pool, ensembles)
        except ModelLoadError as exc:
            if held is not None and held.entry is not None:
                entry = self.pool.retire(name, v)
                if entry is not None:
                    self.pool.forget(name, v, entry)  # listed as not ready at once; its requests in flight finish
                    self._drain(entry, forget=False)
            waiting = None if ensemble_cycle(name, ensembles) is not None else self._step_loading(mscan)
            if waiting is not None:  # planned again once that model is served (or fails)
                log.info("ensemble %r version %s waits for its step model %r, loading", name, v, waiting)
                self.pool.set_state(name, v, "loading", f"{exc} (waiting for model {waiting!r}, loading)")
            else:
                log.error("ensemble %r version %s is not served: %s", name, v, exc)
                self.pool.set_state(name, v, "failed", str(exc))
            after = self.pool.status(name).get(v)
            if after is None or (after.state, after.reason) != before:
                # an ensemble with a step on this one follows it (loading, failed); re-planned only on a change,
                # so ensembles in a cycle settle (each failed naming the cycle) instead of re-planning forever
                self._recheck_ensembles(name)
            return
        if (held is not None and held.state == "ready" and isinstance(held.entry.model, EnsembleModel)
                and held.entry.model.plan == model.plan and held.entry.model.config == mscan.config):
            return  # a step model changed in nothing the ensemble sees
        cfg = self.pool.config
        worker = EnsembleWorker(model, self.pool.lookup, max_pending_bytes=cfg.max_write_buffer_bytes,
                                drain_timeout_s=cfg.drain_timeout_s)
        _, replaced = self.pool.serve(name, v, model, worker=worker)
        log.info("serving ensemble %r version %s (steps: %s)", name, v, ", ".join(mscan.config.ensemble.step_models))
        if replaced is not None:
            self._drain(replaced, forget=False)
        # an ensemble with a step on this one (planned before it was served: 'not served', or 'loading' waiting
        # for it) is planned again, now against it
        self._recheck_ensembles(name)

    def _check_ensemble(self, name: str, mscan: ModelScan) -> None:
        """Refuse a load request's config making ``name`` an ensemble that cannot be planned now
        (a step model not served, tensors that disagree, a cycle) unless a step model is loading:
        planning it would retire what ``name`` serves.  Raises ``BadRequest`` naming the problem."""
        if mscan.config is None or mscan.config.ensemble is None:
            return
        try:
            build_ensemble(name, max(mscan.selected, default=1), mscan.config, self.pool, self._ensemble_steps())
        except ModelLoadError as exc:
            if ensemble_cycle(name, {**self._ensemble_steps(), name: mscan.config.ensemble.step_models}) is not None \
                    or self._step_loading(mscan) is None:
                raise BadRequest(f"model {name!r}: {exc}") from None

    def _ensemble_steps(self) -> dict[str, tuple[str, ...]]:
        """Every ensemble of the repositories (served or not) and its step models, from its config."""
        return {name: mscan.config.ensemble.step_models for name, mscan in self._ensembles.items()
                if mscan.config is not None and mscan.config.ensemble is not None}

    def _step_loading(self, mscan: ModelScan) -> str | None:
        """A step model of the ensemble ``mscan`` without a ready version and with one loading, if any."""
        assert mscan.config is not None and mscan.config.ensemble is not None
        for model in mscan.config.ensemble.step_models:
            states = {s.state for s in self.pool.status(model).values()}
            if "loading" in states and "ready" not in states:
                return model
        return None

    def _recheck_ensembles(self, changed: str) -> None:
        """Plan again, each under its own lock, the ensembles with a step running ``changed``."""
        for name, mscan in list(self._ensembles.items()):
            if name == changed or not depends_on(mscan.config, changed):
                continue
            task = asyncio.get_running_loop().create_task(self._recheck(name), name=f"wsserve-ensemble-{name}")
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

    async def _recheck(self, name: str) -> None:
        try:
            async with self._holding(name):
                mscan = self._ensembles.get(name)
                if mscan is None or name in self._unloaded:
                    return
                status = self.pool.status(name)
                for version in mscan.selected:
                    vscan = mscan.version(version)
                    held = status.get(str(version))
                    # a version unloaded since (an admin's unload of it, its policy) or on its way out stays so
                    if vscan is not None and vscan.error is None and held is not None and held.state != "unloading":
                        self._load_ensemble(name, version, mscan)
        except Exception:  # noqa: BLE001 - one ensemble's bug must not stop the others
            log.exception("re-planning ensemble %r failed", name)

    def _drain(self, entry: ModelEntry, *, forget: bool) -> None:
        """Let a retired (or replaced) entry finish its work, then close it (and drop its version)."""

        async def drain() -> None:
            try:
                await entry.worker.wait_idle()
            finally:
                await entry.worker.close()
                close = getattr(entry.model, "close", None)
                if callable(close):
                    try:  # the model's own code (Model.close()): off the event loop, in a thread of
                        # its own, so one that never returns holds nothing but itself
                        await _start_thread(close, name=f"wsserve-close-{entry.name}-{entry.version}")
                    except Exception:  # noqa: BLE001
                        log.exception("closing model %r version %s failed", entry.name, entry.version)
                if forget:
                    self.pool.forget(entry.name, entry.version, entry)
                log.info("unloaded model %r version %s", entry.name, entry.version)

        task = asyncio.get_running_loop().create_task(drain(), name=f"wsserve-unload-{entry.name}-{entry.version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def wait_retired(self, timeout_s: float | None = None) -> None:
        """Wait for every unloading version to finish (tests, shutdown); at most ``timeout_s``
        seconds (None: no limit), after which the versions still closing (a ``Model.close()``
        that does not return) are logged and abandoned."""
        loop = asyncio.get_running_loop()
        end = None if timeout_s is None else loop.time() + timeout_s
        while self._retiring:
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                names = ", ".join(sorted(t.get_name().removeprefix("wsserve-unload-") for t in self._retiring))
                log.warning("gave up waiting for %d unloading model version(s) after %.1fs: %s",
                            len(self._retiring), timeout_s, names)
                return
            await asyncio.wait(list(self._retiring), timeout=left)  # (not gather: that would cancel them)

    # ------------------------------------------------------------------ admin operations

    def _held_scan(self, name: str) -> ModelScan | None:
        """The scan the model ``name`` serves from (loaded at start-up, by the hot reload or by a
        load: ``_applied``, not a change the hot reload planned and has yet to apply, nor one that
        failed to load), or None when it serves no version (never loaded, unloaded, failed)."""
        return self._applied.get(name) if self._serves(name) else None

    def _serves(self, name: str) -> bool:
        """Does ``name`` serve a version (not only one on its way out)?"""
        return any(s.entry is not None and s.state != "unloading" for s in self.pool.status(name).values())

    def _repo_of(self, name: str) -> Path:
        """The repository holding ``name`` (an admin operation's name, from the wire).  Raises
        ``UnknownModel`` when none does, also for a name no directory can have (too long)."""
        repo = self._owner.get(name)
        if repo is None:
            for r in self._repos:
                try:
                    if (r / name).is_dir():
                        return r
                except OSError as exc:
                    if exc.errno != errno.ENAMETOOLONG:
                        raise
            raise UnknownModel(f"no model named {name!r} in the model repository")
        return repo

    async def admin(self, op: str, name: str, version: str | None, config: str | None = None) -> dict[str, Any]:
        """``load``, ``unload`` or ``reload`` ``name`` (one ``version``, or all); returns the
        model's versions and states afterwards.  Raises ``UnknownModel``/``BadRequest``.

        ``load`` of a model that serves: loaded again where its files changed since (see the
        module docstring); a version that was served and fails to load again raises ``BadRequest``
        naming it (it serves on).

        ``config`` (``load`` only): a Triton model configuration in JSON (a load request's
        ``config`` parameter, Triton's) served instead of the model's config file: every version
        its policy selects is loaded anew with it, the others the model serves are unloaded.  It
        holds until the model is loaded again without one (which reloads it from its files), or
        until its files change under ``--reload``."""
        if name in self._objects:
            raise BadRequest(f"model {name!r} is an in-process object: it cannot be loaded, unloaded or reloaded")
        if config is not None and op != "load":
            raise BadRequest(f"{op} takes no 'config' (only load does)")
        async with self._holding(name):
            return await self._admin(op, name, version, config)

    async def _admin(self, op: str, name: str, version: str | None, config: str | None = None) -> dict[str, Any]:
        """:meth:`admin`, holding ``name``'s lock."""
        if op == "unload":
            status = self.pool.status(name)
            if not status:
                raise UnknownModel(f"no model named {name!r} is loaded")
            versions = [version] if version is not None else [v for v in status if v.isdigit()]
            for v in versions:
                if v not in status:
                    raise UnknownModel(f"model {name!r} has no version {v!r}")
                self._unload(name, int(v))
            if version is None:
                self._unloaded.add(name)
                self._overridden.discard(name)
                self._applied.pop(name, None)
        else:
            repo = self._repo_of(name)
            loop = asyncio.get_running_loop()
            self._scan_seq += 1
            seq = self._scan_seq
            mscan = await loop.run_in_executor(None, scan_one, repo, name)  # that model's directory only
            if mscan is None:
                raise UnknownModel(f"no model named {name!r} in the model repository")
            # With a request's config, or back from one to the files: the whole model anew.
            whole = config is not None or name in self._overridden
            if config is not None:
                mscan = await loop.run_in_executor(None, _with_config, mscan, config)
            if whole:
                op, version = "reload", None if config is None else version
            if mscan.config is None:
                raise BadRequest(f"model {name!r} cannot be loaded: {mscan.error}")
            # A load of a served model: what its files changed since it was loaded (the hot reload's plan
            # against the scan it was loaded from), nothing when they did not.  A changed config file
            # reloads the whole model (as Triton's load of a modified model), a changed version directory
            # that version; a removed one (or one its policy leaves out now) stops.
            held_scan = self._held_scan(name) if op == "load" else None
            # what it serves then reflects this scan whole (unless a version fails, or one version is loaded):
            # reloaded, compared with what it was loaded from, or loaded from nothing
            from_scan = op == "reload" or held_scan is not None or not self._serves(name)
            changes = [] if held_scan is None else plan(RepositoryScan(repo, (held_scan,)), RepositoryScan(repo, (mscan,)))
            refresh = any(isinstance(a, ReloadModel) for a in changes)
            stale = {a.version for a in changes if isinstance(a, ReloadVersion)
                     and (version is None or str(a.version) == version)}
            if refresh:
                whole, op = True, "reload"
                log.info("model %r: its config file changed since it was loaded: a load reloads it", name)
            if config is not None or refresh:
                if not mscan.selected:  # it would unload every version and serve none
                    found = ", ".join(str(v.version) for v in mscan.versions) or "none"
                    where = "the load request's config's" if config is not None else f"its {mscan.config.source}'s"
                    raise BadRequest(f"model {name!r}: {where} version_policy selects none of its "
                                     f"versions (version directories: {found})")
                self._check_ensemble(name, mscan)
            self._unloaded.discard(name)
            asked: VersionScan | None = None
            if version is not None:
                number = parse_version(version)  # canonical decimal only: not "02", "²" or "٢"
                asked = mscan.version(number) if number is not None else None
                if asked is None:
                    raise UnknownModel(f"model {name!r} has no version {version!r} in the repository")
            if asked is not None and not refresh:
                targets = [asked]
            else:  # the model's versions (its config file changed: those its policy selects, and the one asked for)
                targets = [v for v in mscan.versions if v.version in mscan.selected or v is asked]
            failed: list[int] = []
            unlisted: list[int] = []  # failed versions that were not listed before
            served_failed: list[int] = []  # served versions whose files changed that failed to load again (they serve on)
            for vscan in targets:
                held = self.pool.status(name).get(str(vscan.version))
                # an `unloading` version is on its way out (finishing its work): load it anew
                if (op == "reload" or vscan.version in stale or held is None or held.entry is None
                        or held.state == "unloading"):
                    if not await self._load(name, vscan.version, vscan.path, mscan):
                        failed.append(vscan.version)
                        if held is None:
                            unlisted.append(vscan.version)
                        elif held.entry is not None and held.state == "ready":
                            served_failed.append(vscan.version)
            if version is None and not whole:  # a version directory removed, or left out by its policy now
                for action in changes:
                    if isinstance(action, UnloadVersion):
                        await self._apply(repo, RepositoryScan(repo, (mscan,)), action)
            why = "; ".join(f"version {v}: {self._reason(name, v)}" for v in failed)
            if whole and failed:
                # a version that served keeps serving what it had, and none the policy leaves out stops;
                # answered as the failed load it is (a served version's failure leaves it `ready`)
                if len(failed) == len(targets):  # nothing of the request's config is served: as before it
                    for v in unlisted:
                        self.pool.forget(name, str(v))
                    raise BadRequest(f"load failed for model {name!r}: {why}")
            if whole and (version is None or refresh) and not failed:  # then the versions the policy leaves out stop
                chosen = {str(v.version) for v in targets}
                for v in [v for v in self.pool.status(name) if v.isdigit() and v not in chosen]:
                    self._unload(name, int(v))
            if config is not None:
                self._overridden.add(name)
            else:
                self._overridden.discard(name)
            recorded = _loaded_scan(held_scan, mscan, refresh=refresh, version=asked.version if asked is not None else None,
                                    failed=failed)
            self._applied[name] = recorded
            if from_scan and version is None and not failed:  # served whole from this scan: older planned changes are stale
                self._loaded_seq[name] = seq
            async with self._scan_lock:  # after a scan in progress has set its own
                previous = self._scans.get(repo)
                if previous is not None:  # remember what is now held, for the next hot-reload plan
                    others = tuple(m for m in previous.models if m.name != name)
                    self._scans[repo] = RepositoryScan(previous.path, tuple(sorted((*others, recorded), key=lambda m: m.name)),
                                                       previous.ignored, previous.error)
            if (whole and failed) or served_failed:
                raise BadRequest(f"load failed for model {name!r}: {why}")
        status = sorted(self.pool.status(name).items(), key=lambda vs: (int(vs[0]), "") if vs[0].isdigit() else (-1, vs[0]))
        return {"model": name, "versions": [  # in the order the `models` reply lists them
            {"version": v, "state": s.state, **({"reason": s.reason} if s.reason else {})} for v, s in status
        ]}
