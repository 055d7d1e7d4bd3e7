"""A Triton ensemble's ``config.pbtxt`` (``platform: "ensemble"``) as a frozen :class:`EnsembleConfig`.

Sans-I/O: :func:`parse_ensemble` takes Triton's parsed ``ModelConfig`` message
(:mod:`.pbtxt` reads the text) and returns the :class:`~.config.ModelConfig`
the repository uses, its :attr:`~.config.ModelConfig.ensemble` set.  What the
steps' models say (their tensors, whether they are ready) is checked later,
when the ensemble is loaded: :mod:`.ensemble_plan`.

Read (Triton's ``docs/user_guide/architecture.md#ensemble-models``):
``max_batch_size``, ``input``/``output`` (both required: an ensemble has no
graph to take them from; ``dims`` ``-1`` is taken from the step model that
consumes or produces the tensor), ``version_policy``, and
``ensemble_scheduling { step [ { model_name, model_version (-1: the latest
ready), input_map { key: "<step model input>" value: "<ensemble tensor>" },
output_map { key: "<step model output>" value: "<ensemble tensor>" } } ] }``
(1..:data:`MAX_STEPS` steps) and ``ensemble_scheduling { max_inflight_requests }`` (0, the default:
no limit; at most :data:`MAX_INFLIGHT_REQUESTS`): at most that many requests in flight at each step
across the ensemble's requests (:mod:`wsserve.ensemble` serves it).  Refused, naming the field: ``backend``,
``runtime``, ``sequence_batching``, ``batch_input``/``batch_output``, ``model_namespace``;
other fields are hints listed in :attr:`~.config.ModelConfig.warnings`.
``model_transaction_policy`` is accepted and not read: whether an ensemble is
decoupled follows from its steps, as Triton sets it
(:attr:`~.ensemble_plan.EnsemblePlan.decoupled`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import (
    _NAME_RE,
    MAX_BATCH_SIZE,
    MAX_VERSION,
    ModelConfig,
    TensorConfig,
    VersionPolicy,
)
from .errors import ConfigError

__all__ = ["ENSEMBLE_PLATFORM", "MAX_STEPS", "MAX_INFLIGHT_REQUESTS", "EnsembleStep", "EnsembleConfig",
           "parse_ensemble"]

ENSEMBLE_PLATFORM = "ensemble"
#: Steps an ensemble may have.
MAX_STEPS = 64
#: The largest ``ensemble_scheduling.max_inflight_requests``: its ``uint32``'s, every value Triton takes
#: (a counter's bound, not an allocation; a larger one fails the parse, naming the value).
MAX_INFLIGHT_REQUESTS = 2**32 - 1

#: Fields of an ensemble's config read here; the others set are refused (:data:`_REFUSED`) or hints.
_READ = frozenset({"name", "platform", "max_batch_size", "input", "output", "ensemble_scheduling", "version_policy"})
_REFUSED = {
    "backend": "an ensemble has no backend (platform \"ensemble\" runs its steps' models)",
    "runtime": "an ensemble has no runtime (platform \"ensemble\" runs its steps' models)",
    "sequence_batching": "stateful sequence batching is not served",
    "batch_input": "batch inputs are not served",
    "batch_output": "batch outputs are not served",
}


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    """One ``ensemble_scheduling.step``: which model (``version`` None: its default, the highest
    ready) and its maps, as ``(step model's tensor, ensemble tensor)`` pairs in the file's order."""

    model: str
    version: int | None
    input_map: tuple[tuple[str, str], ...]
    output_map: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class EnsembleConfig:
    """An ensemble's own tensors (``shape`` None: ``-1`` in its dims, taken from a step model) and steps."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    steps: tuple[EnsembleStep, ...]
    #: ``ensemble_scheduling.max_inflight_requests``: the most requests in flight at each step across
    #: the ensemble's requests (0: no limit)
    max_inflight_requests: int = 0

    @property
    def step_models(self) -> tuple[str, ...]:
        """The models the steps name, each once, in step order."""
        return tuple(dict.fromkeys(s.model for s in self.steps))


def _map(path: Path, key: str, mapping: Any, side: str) -> tuple[tuple[str, str], ...]:
    if not mapping:
        raise ConfigError(path, key, f"must map at least one {side} (step model's tensor -> ensemble tensor)")
    pairs = []
    for model_tensor in sorted(mapping):
        ensemble_tensor = mapping[model_tensor]
        for what, name in (("key", model_tensor), ("value", ensemble_tensor)):
            if not _NAME_RE.match(name):
                raise ConfigError(path, key, f"{what} {name!r} must be 1-128 printable characters without spaces or quotes")
        pairs.append((model_tensor, ensemble_tensor))
    return tuple(pairs)


def _steps(path: Path, scheduling: Any) -> tuple[EnsembleStep, ...]:
    steps = scheduling.step
    if not steps:
        raise ConfigError(path, "ensemble_scheduling.step", "must list at least one step")
    if len(steps) > MAX_STEPS:
        raise ConfigError(path, "ensemble_scheduling.step", f"has {len(steps)} steps; at most {MAX_STEPS}")
    out = []
    for i, step in enumerate(steps):
        where = f"ensemble_scheduling.step[{i}]"
        if step.model_namespace:
            raise ConfigError(path, f"{where}.model_namespace", "is not supported (wsserve has one namespace)")
        if not step.model_name:
            raise ConfigError(path, f"{where}.model_name", "is required")
        if not _NAME_RE.match(step.model_name):
            raise ConfigError(path, f"{where}.model_name", f"{step.model_name!r} is not a model name")
        version = step.model_version
        if version != -1 and not 1 <= version <= MAX_VERSION:
            raise ConfigError(path, f"{where}.model_version", f"must be -1 (the latest) or in [1, {MAX_VERSION}], got {version}")
        out.append(EnsembleStep(step.model_name, None if version == -1 else int(version),
                                _map(path, f"{where}.input_map", step.input_map, "input"),
                                _map(path, f"{where}.output_map", step.output_map, "output")))
    return tuple(out)


def parse_ensemble(cfg: Any, path: Path, name: str, *,
                   tensors: Callable[[str, Any], tuple[TensorConfig, ...] | None],
                   policy: VersionPolicy, warnings: list[str]) -> ModelConfig:
    """The :class:`ModelConfig` of an ensemble's parsed ``config.pbtxt`` (``cfg``: Triton's message).

    ``name``: the model's (directory) name; ``tensors(key, messages)``: how
    :mod:`.pbtxt` reads ``input``/``output`` lists; ``policy``: its ``version_policy``;
    ``warnings``: hints so far, extended here.  Raises :class:`ConfigError` naming ``path`` and
    the field for a refused field, no steps, a bad step or a missing ``input``/``output``."""
    for field, value in cfg.ListFields():
        if field.name in _REFUSED:
            raise ConfigError(path, field.name, f"is not supported in an ensemble: {_REFUSED[field.name]}")
        if field.name == "model_transaction_policy":  # Triton's ValidateEnsembleConfig sets it from the steps
            continue
        if field.name not in _READ:
            warnings.append(field.name)
    if not 0 <= cfg.max_batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(path, "max_batch_size", f"must be in [0, {MAX_BATCH_SIZE}], got {cfg.max_batch_size}")
    inputs = tensors("input", cfg.input)
    outputs = tensors("output", cfg.output)
    if not inputs:
        raise ConfigError(path, "input", "is required in an ensemble (it has no graph to take its inputs from)")
    if not outputs:
        raise ConfigError(path, "output", "is required in an ensemble (it has no graph to take its outputs from)")
    for key, listed in (("input", inputs), ("output", outputs)):
        for i, t in enumerate(listed):
            if t.model_dims is not None:
                raise ConfigError(path, f"{key}[{i}].reshape", "is not supported in an ensemble: it has no model "
                                                               "of its own (reshape in its steps' configs)")
            if t.optional:
                raise ConfigError(path, f"{key}[{i}].optional", "is not supported in an ensemble: its steps take "
                                                                "every tensor they map")
            if t.ragged:
                raise ConfigError(path, f"{key}[{i}].allow_ragged_batch", "is not supported in an ensemble: it "
                                  "batches nothing itself (allow ragged batches in its steps' configs)")
    if not cfg.HasField("ensemble_scheduling"):
        raise ConfigError(path, "ensemble_scheduling", "is required with platform \"ensemble\"")
    scheduling = cfg.ensemble_scheduling
    # (pbtxt's message class has the field; a uint32: at most MAX_INFLIGHT_REQUESTS, as Triton takes)
    limit = int(getattr(scheduling, "max_inflight_requests", 0))
    ensemble = EnsembleConfig(name, cfg.max_batch_size, inputs, outputs, _steps(path, scheduling), limit)
    return ModelConfig(path=path, inputs=inputs, outputs=outputs, max_batch_size=cfg.max_batch_size,
                       max_delay_ms=0.0, version_policy=policy, warnings=tuple(warnings), ensemble=ensemble)
