"""The model pool: every model version served, its state, its worker, and the default version.

A :class:`ModelEntry` is one *loaded* version of a model with its worker (a
:class:`~wsserve.worker.PredictWorker` for predictive models, a
:class:`~wsserve.generation.GenerationEngine` for generative ones) and the
function that turns a request's ``inputs`` into its tensors.  The pool also
keeps the state of every version it was asked about — ``loading``, ``ready``,
``unloading`` or ``failed`` (with the reason) — for the ``models`` reply.

- :meth:`ModelPool.lookup` serves requests: the model's default version (the
  highest ``ready`` one) or a pinned ``ready`` version; anything else is
  ``unknown_model`` naming the model or the version and its state.
- :meth:`ModelPool.serve` starts a loaded model's worker and makes it ready
  (the new default if it is the highest ready version) in one step on the
  event loop, so a swap is atomic for requests.
- :meth:`ModelPool.retire` stops routing to a version (``unloading``); the
  caller awaits its worker's idle state, closes it, then :meth:`forget`\\ s it.

Event-loop thread only.  Loading files and warming up happen elsewhere (the
repository manager, :mod:`wsserve.registry`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from .batching import PriorityLevels, QueuePolicy
from .config import ServerConfig
from .dtypes import array_bytes
from .errors import InvalidInput, UnknownModel
from .explain import Explainer, NotExplainable, explainer_for, tensor_names
from .jsontypes import frame_text, shown
from .models.base import ModelInfo, PredictiveModel
from .protocol import check_rows, check_rows_within, result_head, validate_inputs
from .respcache import ResponseCache
from .sequences import StateBudget
from .tensorframe import TensorPayload, conform, view_tensors
from .worker import BatchObserver, PredictWorker, Tensors

__all__ = ["ModelEntry", "ModelPool", "VersionStatus", "Prepare", "is_generative", "resolve_explainer", "check_describable"]

log = logging.getLogger("wsserve.pool")

#: ``prepare(inputs, max_rows, max_elements) -> (tensors, n, nbytes)``: a request's JSON ``inputs``
#: checked and converted for one model (raises ``InvalidInput``).
Prepare = Callable[[Any, int, int], tuple[Tensors, int, int]]


def is_generative(model: Any) -> bool:
    """A model for ``generate``: a token model (``logits`` and ``id_to_text``)."""
    return hasattr(model, "logits") and hasattr(model, "id_to_text") and not isinstance(model, PredictiveModel)


_F32_MAX = float(np.finfo(np.float32).max)


#: A request of at most this many values keeps its checked JSON rows (lists of numbers) until
#: its batch is gathered, where the batch's rows become one float64 array (-0.45 us a request
#: against one array per request; -2 us for a float32 model, whose range is checked in the same
#: pass); a bigger one is converted at once, so what waits in a queue is 8 bytes a value.  Models
#: with a single float input only (see :func:`_float_rows`).
LIST_ROWS_MAX_VALUES = 64


def list_rows_bytes(n: int, width: int) -> int:
    """Memory held by ``n`` JSON rows of ``width`` numbers (a list per row, a float object and a
    pointer per value): what the byte limits count for a request kept as lists."""
    return 56 + n * (64 + 32 * width)


def _float_rows(width: int, float32: bool = False, name: str = "input") -> Prepare:
    """The fast path: a single float input of ``width`` values per row (the built-in models and
    repository models with one float32/float64 vector input).  Small requests stay lists until
    their batch is gathered (``LIST_ROWS_MAX_VALUES``; :func:`wsserve.worker._gather` converts a
    batch's rows to one float64 array, which the model casts as it always did).  For a float32
    input, a value beyond float32's range is refused, as the general path does.  ``inputs`` may
    also name the input (``{name: rows}``), as for any single-input model."""

    def prepare(inputs: Any, max_rows: int, max_elements: int) -> tuple[Tensors, int, int]:
        if type(inputs) is dict:
            if set(inputs) != {name}:
                other = sorted(k for k in inputs if k != name)
                raise InvalidInput(f"'inputs' names unknown input {shown(other[0])}; the model takes {name!r}" if other
                                   else f"'inputs' is missing input {name!r}; the model takes {name!r}")
            inputs = inputs[name]
        if type(inputs) is list and len(inputs) * width <= LIST_ROWS_MAX_VALUES:
            if float32:
                n = check_rows_within(inputs, width, max_rows, _F32_MAX, "float32")
            else:
                n = check_rows(inputs, width, max_rows)
            return inputs, n, list_rows_bytes(n, width)
        # a bigger request: one array at once, float32's range checked by numpy, not per value in Python
        rows = validate_inputs(inputs, width, max_rows)
        if float32 and np.abs(rows).max() > _F32_MAX:
            i = int(np.argmax(np.abs(rows).max(axis=1) > _F32_MAX))
            raise InvalidInput(f"'inputs' row {i} holds a value beyond float32's range")
        return rows, rows.shape[0], rows.nbytes

    return prepare


def _tensor_inputs(specs: tuple[Any, ...]) -> Prepare:
    """Any inputs a repository model declares (shapes, dtypes, names)."""
    from .repository import batch_rows, convert_inputs

    def prepare(inputs: Any, max_rows: int, max_elements: int) -> tuple[Tensors, int, int]:
        tensors = convert_inputs(inputs, specs, max_rows=max_rows, max_elements=max_elements)
        nbytes = sum(map(array_bytes, tensors.values())) if isinstance(tensors, dict) else array_bytes(tensors)
        return tensors, batch_rows(tensors), nbytes

    return prepare


def _input_specs(model: Any) -> tuple[Any, ...]:
    """The model's input specs (a model without declared specs takes float64 rows of its input shape)."""
    specs = getattr(model, "inputs", None)
    if specs:
        return tuple(specs)
    from .repository import TensorSpec

    return (TensorSpec("input", tuple(int(d) for d in model.info.input_shape), "float64"),)


def _prepare_for(model: Any) -> tuple[Prepare, int]:
    """How a model's inputs are prepared, and its flat input width (0 when not a single float row)."""
    specs = getattr(model, "inputs", None)
    if specs:
        if len(specs) == 1 and len(specs[0].shape) == 1 and specs[0].dtype in ("float64", "float32") \
                and not specs[0].variable:
            width = int(specs[0].shape[0])
            return _float_rows(width, specs[0].dtype == "float32", specs[0].name), width
        return _tensor_inputs(tuple(specs)), 0
    width = int(np.prod(model.info.input_shape))
    return _float_rows(width), width


@dataclass(eq=False)
class ModelEntry:
    """One loaded model version.  ``kind`` is ``"predict"`` or ``"generate"``."""

    name: str
    version: str
    kind: str
    model: Any
    worker: Any  # PredictWorker | GenerationEngine
    input_width: int = 0  # flat width of a single float input (the fast path), else 0
    prepare: Prepare | None = None  # predict models: inputs -> tensors
    input_specs: tuple[Any, ...] = ()  # predict models: what binary tensor frames are fitted to
    #: what every ``result`` frame of this version holds between its id and its rows (:func:`result_head`)
    result_head: bytes = field(init=False, default=b"")
    #: the model declares a string (``bytes``) output: answered in JSON ``result`` frames only
    answers_strings: bool = field(init=False, default=False)

    #: its inputs' names, in order, and those a request may leave out (config.pbtxt's ``optional``):
    #: known at load, for the routes that read a request's inputs by name (KServe V1, a decoupled generate)
    input_names: tuple[str, ...] = field(init=False, default=())
    optional_inputs: frozenset[str] = field(init=False, default=frozenset())

    #: A decoupled model's version: its requests stream any number of responses
    #: (:class:`~wsserve.decoupled.DecoupledWorker`), never through the row-batching queue.  Known
    #: at load (read per predict: a ``getattr`` with a default costs an exception on other workers).
    decoupled: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.decoupled = getattr(self.worker, "decoupled", False) is True
        self.input_names = tuple(s.name for s in self.input_specs)
        self.optional_inputs = frozenset(s.name for s in self.input_specs if getattr(s, "optional", False))
        self.result_head = result_head(self.name, self.version)
        self.answers_strings = any(getattr(s, "dtype", None) == "bytes"
                                   for s in getattr(self.model, "outputs", None) or ())

    def prepare_binary(self, tensors: TensorPayload) -> tuple[Tensors, int, int]:
        """A binary tensor frame's tensors as this model's inputs: ``(tensors, n, nbytes)``
        (the same as :attr:`prepare` gives for JSON rows).  Raises ``InvalidInput``."""
        arrays = view_tensors(tensors.payload, tensors.descs)
        return conform(arrays, tensors.descs, self.input_specs)

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    @property
    def explain_refusal(self) -> str | None:
        """None if ``"explain": true`` is served for this version, else why not (naming the model)."""
        if self.kind != "predict":
            return f"model {self.name!r} serves generate; explanations are for predict"
        return getattr(self.worker, "explain_refusal", f"model {self.name!r} cannot be explained")

    @property
    def explanation(self) -> dict[str, Any] | None:
        """How this version's rows are explained (method, baseline, target, steps), or None."""
        explainer = getattr(self.worker, "explainer", None)
        return explainer.describe() if explainer is not None else None

    @property
    def attribution_names(self) -> tuple[str, str]:
        """``(output, attributions)``: the tensor names a binary answer to an ``"explain": true``
        predict gives them (:func:`wsserve.explain.tensor_names`, the OIP's names)."""
        return tensor_names(self.model)


def resolve_explainer(name: str, model: Any) -> tuple[Explainer | None, str | None]:
    """``(explainer, None)`` for a predictive model that can be explained, else ``(None, reason)``."""
    version = getattr(model, "version", None)
    label = f"model {name!r}" + (f" version {version}" if version is not None else "")
    specs = getattr(model, "inputs", None)
    dtype = specs[0].dtype if specs and len(specs) == 1 and specs[0].dtype in ("float32", "float64") else "float64"
    try:
        return explainer_for(model, label=label, input_dtype=dtype), None
    except NotExplainable as exc:
        return None, exc.reason


@dataclass
class VersionStatus:
    state: str  # loading | ready | unloading | failed
    reason: str | None = None
    entry: ModelEntry | None = None


@dataclass
class _Model:
    versions: dict[str, VersionStatus] = field(default_factory=dict)
    default: ModelEntry | None = None


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def _version_figures(entry: ModelEntry) -> dict[str, Any]:
    """A loaded version's figures for ``models``: the repository model's own (bytes on disk, parameters,
    non-zero parameters, metrics, compression figures: see ``RepositoryModel.version_figures``),
    else what its info says."""
    own = getattr(entry.model, "version_figures", None)
    if callable(own):
        return own()  # type: ignore[no-any-return]
    info = getattr(entry.model, "info", None)
    if info is None:
        return {}
    return {"parameters": info.parameters, "metrics": dict(info.metrics)}


def _json_default(value: Any) -> Any:
    """numpy scalars (and anything else with ``.item()``) in model metadata."""
    item = getattr(value, "item", None)
    if item is None:
        raise TypeError(f"cannot serialise {type(value).__name__} in model metadata")
    return item()


def check_describable(model: Any) -> None:
    """Raise ``TypeError`` (``orjson.JSONEncodeError``) naming the problem when what ``models``
    reports for ``model`` (its info and version figures) cannot be serialised, as
    :attr:`ModelPool.models_json` does: one such model would break the list for every model."""
    info = getattr(model, "info", None)
    own = getattr(model, "version_figures", None)
    orjson.dumps([info.to_json() if info is not None else None, own() if callable(own) else None],
                 option=orjson.OPT_SERIALIZE_NUMPY, default=_json_default)


def _drop_cache(entry: ModelEntry) -> None:
    """Drop the cached responses of ``entry``'s version (a predict worker's; others have none)."""
    drop = getattr(entry.worker, "drop_cache", None)
    if drop is not None:
        drop()


class ModelPool:
    """Every model version known to the server.  See the module docstring."""

    def __init__(self, config: ServerConfig, *, observer: BatchObserver | None = None,
                 after_batch: Callable[[], None] | None = None) -> None:
        self._config = config
        self._observer = observer
        self._after_batch = after_batch
        self._models: dict[str, _Model] = {}
        self._models_json: bytes | None = None
        self._started = False
        #: The server's response cache (``--response-cache-bytes``; None: 0, no cache).
        self.response_cache = (ResponseCache(max_bytes=config.response_cache_bytes)
                               if config.response_cache_bytes else None)
        #: The implicit state all stateful model versions may keep at once (``--max-sequence-state-total-bytes``).
        self.state_budget = StateBudget(config.max_sequence_state_total_bytes)
        #: Called after any change of what is served (the server refreshes its hello frame).
        self.on_change: Callable[[], None] | None = None

    # -- serving requests

    @property
    def config(self) -> ServerConfig:
        """The server's settings (the limits a request to the pool's models is held to)."""
        return self._config

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def knows(self, name: str) -> bool:
        """True for a model name the pool has (whatever the state of its versions)."""
        return name in self._models

    def lookup(self, name: str, version: str | None = None) -> ModelEntry:
        """The entry for ``name``: its default version, or ``version`` if ready.

        Raises ``UnknownModel`` naming the model, or the version and why it cannot serve."""
        model = self._models.get(name)
        if model is None:
            raise UnknownModel(f"no model named {shown(name)}; known: {', '.join(self._models) or 'none'}")
        if version is None:
            entry = model.default
            if entry is not None:
                return entry
            states = ", ".join(f"{v}: {s.state}" for v, s in sorted(model.versions.items(), key=lambda x: _version_key(x[0])))
            raise UnknownModel(f"model {name!r} has no ready version ({states or 'no versions'})")
        status = model.versions.get(version)
        if status is None:
            known = ", ".join(sorted(model.versions, key=_version_key)) or "none"
            raise UnknownModel(f"model {name!r} has no version {version!r}; available: {known}")
        if status.state != "ready" or status.entry is None:
            why = f" ({status.reason})" if status.reason else ""
            raise UnknownModel(f"version {version!r} of model {name!r} is {status.state}{why}")
        return status.entry

    def entries(self) -> list[ModelEntry]:
        """Every loaded entry (ready or unloading)."""
        return [s.entry for m in self._models.values() for s in m.versions.values() if s.entry is not None]

    def default_entries(self) -> list[ModelEntry]:
        return [m.default for m in self._models.values() if m.default is not None]

    def status(self, name: str) -> dict[str, VersionStatus]:
        model = self._models.get(name)
        return dict(model.versions) if model is not None else {}

    # -- describing

    def describe(self) -> list[dict[str, Any]]:
        """The ``models`` list: one entry per model (its default version's description) and ``versions``."""
        out = []
        for name, model in self._models.items():
            default = model.default
            base = default.info.to_json() if default is not None else {"name": name, "version": None}
            versions = []
            for v, status in sorted(model.versions.items(), key=lambda x: _version_key(x[0])):
                item: dict[str, Any] = {"version": v, "state": status.state}
                if status.reason:
                    item["reason"] = status.reason
                if status.entry is not None:
                    item.update(_version_figures(status.entry))
                versions.append(item)
            base["name"] = name
            base["version"] = default.version if default is not None else None
            if default is not None and default.kind == "predict":
                base["explain"] = default.explanation  # null: "explain": true is refused for it
            elif default is not None:
                base["chat"] = bool(getattr(default.model, "chats", False))  # has a chat template (messages)
            base["versions"] = versions
            out.append(base)
        return out

    @property
    def models_json(self) -> bytes:
        """The ``models`` list as JSON (``GET /v1/models`` and the ``models`` reply); cached."""
        if self._models_json is None:
            self._models_json = orjson.dumps(self.describe(), option=orjson.OPT_SERIALIZE_NUMPY, default=_json_default)
        return self._models_json

    def _changed(self, name: str) -> None:
        self._models_json = None
        model = self._models.get(name)
        if model is not None:
            ready = [s.entry for s in model.versions.values() if s.state == "ready" and s.entry is not None]
            model.default = max(ready, key=lambda e: _version_key(e.version)) if ready else None
        if self.on_change is not None:
            self.on_change()

    # -- changing what is served

    def set_state(self, name: str, version: str, state: str, reason: str | None = None) -> None:
        """Record a version that is not (or not yet) served: ``loading`` or ``failed``.  ``reason``
        is listed by ``models`` (made fit for JSON, a path it names may hold an undecodable byte,
        and cut to :data:`~wsserve.jsontypes.MAX_MESSAGE_CHARS`)."""
        reason = frame_text(reason) if reason is not None else None
        model = self._models.setdefault(name, _Model())
        status = model.versions.get(version)
        if status is None:
            model.versions[version] = VersionStatus(state, reason)
        elif status.entry is None or state in ("loading", "failed") and status.state != "ready":
            status.state, status.reason = state, reason
        else:  # a serving version stays served; note the problem
            status.reason = reason
        self._changed(name)

    def make_worker(self, name: str, model: Any, *, max_batch_size: int | None = None,
                    max_delay_ms: float | None = None, instances: int = 1, max_queue_requests: int | None = None,
                    default_timeout_ms: float | None = None, allow_timeout_override: bool = True,
                    timeout_action: str = "REJECT", priorities: PriorityLevels = PriorityLevels(),
                    guide_compile_memory_bytes: int | None = None, guide_compile_cpu_s: int | None = None,
                    guide_compile_timeout_s: float | None = None, response_cache: bool = False) -> Any:
        """The worker a model needs (not started).  ``max_delay_ms``: the model's batching window
        (None: the server's; 0: greedy, whatever the server's is); ``max_queue_requests``,
        ``default_timeout_ms``, ``allow_timeout_override``, ``timeout_action``: a predictive model's queue policy
        (:class:`~wsserve.worker.PredictWorker`; a generative model has none); ``priorities``: a
        predictive model's priority levels (a generative model keeps its two); ``guide_compile_*``:
        a generative model's compile limits (None: the server's setting of the same name);
        ``response_cache``: the model's config enables the response cache (a predictive model's
        responses are then cached once it serves, when the server has a cache: else one warning; a
        generative model's are never: one warning)."""
        cfg = self._config
        if is_generative(model):
            from .generation import GenerationEngine

            if response_cache:
                log.warning("model %r generates text: the response cache holds plain predicts only, so its "
                            "response_cache is ignored", name)
            from .generation.guide_sandbox import CompileLimits

            limits = CompileLimits(
                memory_bytes=guide_compile_memory_bytes or cfg.guide_compile_memory_bytes,
                cpu_s=guide_compile_cpu_s or cfg.guide_compile_cpu_s,
                timeout_s=guide_compile_timeout_s or cfg.guide_compile_timeout_s)
            return GenerationEngine(
                model, name=name, max_generate_batch=cfg.max_generate_batch, max_generate_queue=cfg.max_generate_queue,
                guide_compile_limits=limits,
                inline_max_flops=cfg.inline_max_flops, observer=self._observer, after_delivery=self._after_batch,
            )
        if getattr(model, "decoupled", False) is True:  # a decoupled Triton Python model: requests stream
            from .decoupled import DEFAULT_MAX_QUEUE_REQUESTS, DecoupledWorker

            if response_cache:
                log.warning("model %r is decoupled: the response cache holds plain predicts only, so its "
                            "response_cache is ignored", name)
            return DecoupledWorker(model, name=name, instances=instances,
                                   max_queue_requests=max_queue_requests or DEFAULT_MAX_QUEUE_REQUESTS,
                                   max_pending_bytes=cfg.max_write_buffer_bytes, drain_timeout_s=cfg.drain_timeout_s,
                                   priorities=priorities, max_reschedules=cfg.max_reschedules,
                                   max_batch_rows=max_batch_size or 1, observer=self._observer,
                                   queue_policy=QueuePolicy(None, default_timeout_ms, allow_timeout_override,
                                                            timeout_action))
        explainer, refusal = resolve_explainer(name, model)
        delay = max_delay_ms if max_delay_ms is not None else cfg.max_delay_ms
        worker = PredictWorker(
            model, name=name,
            max_batch_size=max_batch_size or cfg.max_batch_size,
            max_delay_ms=delay or None,  # a window of 0 (config.toml allows it) is greedy batching
            max_queue_rows=cfg.max_queue_rows, max_queue_bytes=cfg.max_queue_bytes,
            max_queue_requests=max_queue_requests, default_timeout_ms=default_timeout_ms,
            allow_timeout_override=allow_timeout_override, timeout_action=timeout_action,
            priorities=priorities, instances=instances, inline_max_flops=cfg.inline_max_flops,
            observer=self._observer, after_batch=self._after_batch,
            explainer=explainer, explain_refusal=refusal, explain_row_cost=cfg.explain_row_cost,
            max_reschedules=cfg.max_reschedules,
        )
        sequence = getattr(getattr(model, "config", None), "sequence", None)
        if sequence is not None:  # a stateful model: its requests scheduled by sequence before the batch queue
            from . import sequence_worker

            if response_cache:
                log.warning("model %r is stateful (sequence_batching): its responses depend on its sequences' "
                            "state, so its response_cache is ignored", name)
            # Triton's Direct strategy: one slot per batch row; Oldest: max_candidate_sequences per instance
            per_instance = sequence.strategy == "oldest" and sequence.max_candidate_sequences
            slots = (per_instance or worker.queue.max_batch_size) * instances
            return sequence_worker.SequenceWorker(
                worker, sequence, slots=slots,
                max_queue_requests=max_queue_requests or sequence_worker.DEFAULT_MAX_QUEUE_REQUESTS,
                max_state_bytes=cfg.max_sequence_state_bytes, state_budget=self.state_budget)
        if response_cache and getattr(model, "iterative_sequence", False) is True:
            # (Triton's sequence batcher caches no response either; a request's answer comes after its executes)
            log.warning("model %r reschedules its requests (sequence_batching iterative_sequence): the response "
                        "cache holds plain predicts of the dynamic batcher only, so its response_cache is ignored",
                        name)
        elif response_cache:
            if self.response_cache is None:
                log.warning("model %r enables the response cache but the server has none "
                            "(--response-cache-bytes 0): its responses are not cached", name)
            else:
                worker.cache_wanted = True
        return worker

    def serve(self, name: str, version: str, model: Any, *, worker: Any | None = None) -> tuple[ModelEntry, ModelEntry | None]:
        """Start serving a loaded (and warmed-up) model version: it becomes ``ready`` (and the
        default if it is the highest ready version).  Returns ``(entry, replaced)``: the entry
        it replaced for the same version, which the caller retires (drains and closes)."""
        worker = worker if worker is not None else self.make_worker(name, model)
        version_stats = getattr(self._observer, "version_stats", None)  # Metrics: per-version statistics
        if version_stats is not None:
            worker.stats = version_stats(name, version)
        if getattr(worker, "cache_wanted", False) and self.response_cache is not None:
            worker.use_cache(self.response_cache, name, version)
        if self._started:
            worker.start()
        if is_generative(model):
            entry = ModelEntry(name, version, "generate", model, worker)
        else:
            prepare, width = _prepare_for(model)
            entry = ModelEntry(name, version, "predict", model, worker, width, prepare, _input_specs(model))
        m = self._models.setdefault(name, _Model())
        old = m.versions.get(version)
        replaced = old.entry if old is not None else None
        if replaced is not None:
            _drop_cache(replaced)  # never answer from the replaced weights, even while they drain
        m.versions[version] = VersionStatus("ready", None, entry)
        self._changed(name)
        return entry, replaced

    def retire(self, name: str, version: str) -> ModelEntry | None:
        """Stop routing requests to ``version`` (state ``unloading``); returns its entry
        (None if it held none: then the version is dropped at once, and the model with its
        last version) for the caller to drain, close and :meth:`forget`."""
        m = self._models.get(name)
        status = m.versions.get(version) if m is not None else None
        if status is None:
            return None
        entry = status.entry
        if entry is None:
            del m.versions[version]
            if not m.versions:  # as forget(): a model with no version left is dropped
                del self._models[name]
        else:
            status.state = "unloading"
            _drop_cache(entry)
        self._changed(name)
        return entry

    def forget(self, name: str, version: str, entry: ModelEntry | None = None) -> None:
        """Drop ``version`` (after its worker closed); a model with no version left is dropped.
        With ``entry``, only if that entry is still the one recorded (a newer load may have replaced it)."""
        m = self._models.get(name)
        if m is None:
            return
        status = m.versions.get(version)
        if status is not None and (entry is None or status.entry is entry):
            del m.versions[version]
        if not m.versions:
            del self._models[name]
        self._changed(name)

    async def start(self) -> None:
        for entry in self.entries():
            entry.worker.start()
        self._started = True

    async def close(self) -> None:
        """Close every worker (they end what they hold with ``shutting_down``).  Idempotent."""
        if not self._started:
            return
        self._started = False
        await asyncio.gather(*(e.worker.close() for e in self.entries()), return_exceptions=True)
