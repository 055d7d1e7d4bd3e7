"""Serving a program's own model objects: :func:`serve` (blocking) and :func:`onnx_model`.

::

    import numpy as np
    import wsserve

    def double(batch):                                   # [n, 3] -> [n, 3]
        return 2 * batch

    wsserve.serve(models={
        "double": wsserve.FunctionModel(double, input_shape=(3,), output_shape=(3,)),
        "iris": wsserve.onnx_model(onnx_bytes, name="iris"),  # a file path works too
    }, port=8765)

:func:`serve` blocks like ``wsserve serve``: it prints the ready line
(``wsserve VERSION ready on ws://HOST:PORT``), drains on SIGINT/SIGTERM (a
second signal exits at once) and returns the exit status.  Inside a running
event loop use :class:`wsserve.Server` instead::

    server = wsserve.Server(wsserve.ServerConfig(port=0, models=()), models={...})
    await server.start()          # server.url
    ...
    await server.drain(); await server.close()

In-process models are served like repository models (batching, streaming,
cancellation, limits, ``version`` in every reply), under the name they are
given, as their own version (``1`` by default).  docs/repository.md
("Embedding") is the guide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import DEFAULT_MODELS, ServerConfig
from .repository.config import (
    MAX_BATCH_SIZE,
    MAX_DELAY_MS,
    MAX_FLOPS_PER_ROW,
    MAX_INSTANCES,
    MAX_THREADS,
    MAX_VERSION,
    TASKS,
    ModelConfig,
    TensorConfig,
)
from .repository.layout import is_model_name

__all__ = ["serve", "onnx_model"]


def _bounded(argument: str, value: Any, lo: float, hi: float, *, integer: bool = True) -> Any:
    ok_type = type(value) is int if integer else type(value) in (int, float)
    if not ok_type or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"onnx_model: {argument} must be {kind} in [{lo:g}, {hi:g}], got {value!r}")
    return value


def onnx_model(
    source: str | Path | bytes,
    *,
    name: str = "model",
    version: int = 1,
    task: str | None = None,
    outputs: Sequence[str] | None = None,
    max_batch_size: int | None = None,
    max_delay_ms: float | None = None,
    instances: int = 1,
    intra_op_num_threads: int = 1,
    flops_per_row: int | None = None,
) -> Any:
    """An ONNX graph — a ``model.onnx`` path, or its bytes (``proto.SerializeToString()``,
    what skl2onnx or ``torch.onnx.export`` into a ``BytesIO`` give) — ready to pass to
    :func:`serve` or ``Server(models=...)``.

    The same backend as a repository's ``model.onnx`` (``pip install 'wsserve[onnx]'``),
    with the keyword arguments in the role of config.toml's keys: shapes and dtypes
    come from the graph (first dimension dynamic = the batch, or ``max_batch_size=0`` to
    run a fixed-shape graph once per row); ``outputs`` selects graph outputs to return
    (default: all); ``instances`` sessions' worth of batches run side by side, each with
    ``intra_op_num_threads`` ONNX Runtime threads.

    Raises ``ValueError`` naming a bad argument, and
    :class:`~wsserve.repository.ModelLoadError` when ONNX Runtime is missing or cannot
    load the graph, or the graph's shapes or types are not servable.
    """
    if not is_model_name(name):
        raise ValueError(f"onnx_model: name must be 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit, got {name!r}")
    _bounded("version", version, 1, MAX_VERSION)
    if task is not None and (task not in TASKS or task == "generation"):
        raise ValueError(f"onnx_model: task must be one of {', '.join(t for t in TASKS if t != 'generation')}, got {task!r}")
    if outputs is not None:
        if isinstance(outputs, str) or not outputs or not all(isinstance(o, str) and o for o in outputs):
            raise ValueError(f"onnx_model: outputs must be a non-empty list of output names, got {outputs!r}")
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"onnx_model: outputs lists a name twice: {list(outputs)}")
    if max_batch_size is not None:
        _bounded("max_batch_size", max_batch_size, 0, MAX_BATCH_SIZE)
    if max_delay_ms is not None:
        _bounded("max_delay_ms", max_delay_ms, 0, MAX_DELAY_MS, integer=False)
    if flops_per_row is not None:
        _bounded("flops_per_row", flops_per_row, 1, MAX_FLOPS_PER_ROW)
    config = ModelConfig(
        task=task,
        outputs=tuple(TensorConfig(o) for o in outputs) if outputs is not None else None,
        max_batch_size=max_batch_size,
        max_delay_ms=None if max_delay_ms is None else float(max_delay_ms),
        instances=_bounded("instances", instances, 1, MAX_INSTANCES),
        flops_per_row=flops_per_row,
        onnx_intra_op_threads=_bounded("intra_op_num_threads", intra_op_num_threads, 1, MAX_THREADS),
    )
    from .repository.onnx_backend import OnnxModel

    if isinstance(source, (bytes, bytearray, memoryview)):
        return OnnxModel(name, version, Path(f"<{name}: ONNX bytes>"), config, data=bytes(source))
    if not isinstance(source, (str, Path)):
        raise TypeError(f"onnx_model: source must be a path or bytes, got {type(source).__name__}")
    return OnnxModel(name, version, Path(source), config)


def serve(
    models: Mapping[str, Any] | None = None,
    *,
    config: ServerConfig | None = None,
    default_models: Sequence[str] | None = None,
    log_level: str | None = "info",
    **settings: Any,
) -> int:
    """Serve ``models`` (name -> model object) until SIGINT/SIGTERM, like ``wsserve serve``;
    return the exit status (0 after a graceful drain).

    ``settings`` are :class:`ServerConfig` fields (``port=0``, ``max_batch_size=64``,
    ``model_repository=(Path("repo"),)``...), applied over ``config`` (default
    ``ServerConfig()``).  ``default_models``: built-in models to train and serve too
    (e.g. ``("linear",)``); default none, or ``config.models`` when a config is given.
    ``log_level``: log to stderr at this level with the CLI's format and redaction;
    ``None`` leaves logging to the program.

    A model object is a :class:`wsserve.FunctionModel`, an :func:`onnx_model`, a
    generative model (docs/repository.md) or any object with ``predict`` and ``info``.
    Raises ``TypeError`` for an unknown setting or a non-model object, ``ValueError``
    naming a bad setting or model name, :class:`~wsserve.repository.ModelLoadError` for
    a model that fails its warm-up, ``OSError`` when the port is taken.
    """
    known = set(ServerConfig.field_names()) - {"models"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"serve(): unknown setting {unknown[0]!r} (settings are ServerConfig fields)")
    base = config if config is not None else ServerConfig()
    builtins = tuple(default_models) if default_models is not None else (base.models if config is not None else ())
    bad = [n for n in builtins if n not in DEFAULT_MODELS]
    if bad:
        raise ValueError(f"serve(): unknown default model {bad[0]!r}; known: {', '.join(DEFAULT_MODELS)}")
    if "model_repository" in settings:
        settings["model_repository"] = tuple(Path(p) for p in settings["model_repository"])
    cfg = dataclasses.replace(base, models=builtins, **settings)
    objects = dict(models or {})
    cfg.validate(in_process_models=bool(objects))
    if log_level is not None:
        from .logs import configure_logging

        configure_logging(log_level, secrets=cfg.secrets, fmt=cfg.log_format)
    from .server import run

    return run(cfg, models=objects)
