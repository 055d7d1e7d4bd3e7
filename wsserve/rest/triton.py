"""Two Triton extensions of the Open Inference Protocol, sans-I/O: values in, JSON bodies out.

- :func:`model_config` - Triton's model configuration extension
  (``GET /v2/models/{name}[/versions/{v}]/config``): the model's configuration
  as Triton answers it, the JSON form of ``ModelConfig`` in Triton's
  ``model_config.proto`` (``name``, ``platform``, ``backend``,
  ``version_policy``, ``max_batch_size``, ``input``/``output`` with
  ``data_type`` ``TYPE_*`` and per-row ``dims``, ``dynamic_batching``,
  ``model_transaction_policy``, ``parameters``).
- :func:`model_stats` - Triton's statistics extension
  (``GET /v2/models[/{name}[/versions/{v}]]/stats``): ``{"model_stats": [...]}``
  from :class:`~wsserve.metrics.VersionStats` values.

Followed: triton-inference-server/server ``docs/protocol/extension_model_configuration.md``
and ``docs/protocol/extension_statistics.md`` (the JSON shapes, durations in
``ns``, ``last_inference`` in ms since the epoch), triton-inference-server/common
``protobuf/model_config.proto`` (field names, ``TYPE_*`` names, ``version_policy``
``latest``/``all``/``specific``, ``dynamic_batching`` fields, ``max_batch_size``
0 = no batch dimension, ``model_transaction_policy.decoupled``).

What wsserve fills in (docs/PROTOCOL.md, "Open Inference Protocol v2"):

- ``max_batch_size``: a model with a Triton configuration (config.pbtxt, or a
  load request's ``config``) with ``max_batch_size`` above 0 says its own (at
  most ``--max-rows``), as Triton does: clients (tritonclient, perf_analyzer)
  size their batches by it.  A request of more rows is still served (Triton
  refuses it), split over executions of at most that many rows.  Any other
  model says ``--max-rows`` (the rows one request may carry: a predict request
  is split over batches, so any count up to it is served).  The rows of one
  model execution are ``parameters.max_batch_rows``.  A repository model
  without a batch dimension (its ``max_batch_size`` 0) says ``max_batch_size``
  0, with ``dims`` its tensors' whole shapes.
- ``dynamic_batching``: always on in wsserve; ``max_queue_delay_microseconds``
  is the batching window (0: greedy, a batch forms as soon as the model is
  free); ``priority_levels`` / ``default_priority_level`` the model's config.pbtxt's, as
  written (``priority_levels`` 0 when it sets none: one level), else 2 / 2 (wsserve's two
  classes: request ``priority`` 1 is served first, others in the default level);
  ``default_queue_policy`` when the model has one (its config's
  ``max_queue_requests``/``default_timeout_ms``/``allow_timeout_override``, and a config.pbtxt's
  ``timeout_action``, ``REJECT`` or ``DELAY``);
  ``priority_queue_policy`` (a map from level, as a string as protobuf's JSON writes uint64
  keys, to a policy of the same fields) when its config.pbtxt sets per-level policies.
- A generative model (served by Triton's generate extension,
  :mod:`wsserve.rest.tritongen`, gRPC's ModelStreamInfer and ``/v1/completions``)
  is described as Triton's vLLM backend configures one: ``max_batch_size`` 0, the
  backend's inputs and outputs (:data:`~wsserve.rest.tritongen.GENERATE_INPUTS`,
  :data:`~wsserve.rest.tritongen.GENERATE_OUTPUTS`: whole ``dims``, BYTES as
  ``TYPE_STRING``, every input but ``text_input`` ``optional``), and
  ``model_transaction_policy: {"decoupled": true}`` as Triton marks a model that
  streams several responses per request.
- Statistics: ``compute_input``/``compute_output`` have ``compute_infer``'s
  count and 0 ns (wsserve has no separate step copying tensors to or from a
  device: gathering a batch's rows is timed inside ``compute_infer``, handing
  out and encoding its outputs inside the requests' ``success`` time; Triton's
  clients, e.g. perf_analyzer, require the three counts to be equal);
  ``cache_hit``/``cache_miss``: the response cache's lookups (a hit's time is its
  lookup, a miss's its lookup and the store of its outputs; a hit also counts in
  ``success``, and in ``queue`` with 0 ns, but in no batch or ``inference_count``).
- ``response_cache: {"enable": true}`` for a model whose config enables it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from .oip import Tensor
from .tritongen import GENERATE_INPUTS, GENERATE_OUTPUTS, REQUIRED_INPUT

__all__ = ["model_config", "model_stats", "queue_policy", "version_policy"]

_NS = 1e9


def version_policy(policy: Any) -> dict[str, Any]:
    """Triton's ``version_policy`` for a repository :class:`~wsserve.repository.config.VersionPolicy`
    (``kind`` ``all``/``latest``/``specific``); ``{"all": {}}`` for None (wsserve's default)."""
    kind = getattr(policy, "kind", "all")
    if kind == "latest":
        return {"latest": {"num_versions": policy.count}}
    if kind == "specific":
        return {"specific": {"versions": list(policy.versions)}}
    return {"all": {}}


#: OIP datatype -> ``model_config.proto``'s ``DataType`` name, where it is not ``TYPE_`` + the datatype.
_CONFIG_TYPES = {"BYTES": "TYPE_STRING"}


def _tensors(tensors: Iterable[Tensor], required: str | None = None,
             reshapes: Mapping[str, tuple[int, ...]] | None = None,
             ragged: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Config ``input``/``output`` entries; with ``required`` (a generative model's inputs) each
    input says whether it is ``optional`` (every one but ``required``), as Triton's config does;
    ``reshapes``: config.pbtxt's ``reshape`` shapes by tensor name; ``ragged``: the inputs that
    say ``allow_ragged_batch: true``."""
    out = []
    for t in tensors:
        entry: dict[str, Any] = {"name": t.name, "data_type": _CONFIG_TYPES.get(t.datatype, "TYPE_" + t.datatype),
                                 "format": "FORMAT_NONE", "dims": list(t.shape)}
        if required is not None:
            entry["optional"] = t.name != required
        elif t.optional:
            entry["optional"] = True
        if t.name in ragged:
            entry["allow_ragged_batch"] = True
        if reshapes and t.name in reshapes:
            entry["reshape"] = {"shape": list(reshapes[t.name])}
        out.append(entry)
    return out


def queue_policy(max_queue_requests: int | None, default_timeout_s: float | None,
                 allow_timeout_override: bool, timeout_action: str = "REJECT") -> dict[str, Any] | None:
    """Triton's ``default_queue_policy`` of a predict worker's queue policy; None when it has
    none (no request bound, no default timeout, ``REJECT``): the configuration then leaves it out."""
    if max_queue_requests is None and default_timeout_s is None and timeout_action == "REJECT":
        return None
    return level_queue_policy(max_queue_requests, default_timeout_s, allow_timeout_override, timeout_action)


def level_queue_policy(max_queue_requests: int | None, default_timeout_s: float | None,
                       allow_timeout_override: bool, timeout_action: str = "REJECT") -> dict[str, Any]:
    """A ``ModelQueuePolicy`` as Triton's configuration writes it (``timeout_action`` ``REJECT`` or
    ``DELAY``; 0: no bound, no default timeout): one of ``priority_queue_policy``'s, always written."""
    return {"timeout_action": timeout_action,
            # at least 1 when set: 0 is Triton's "no default timeout" (config.toml's ms may be under a microsecond)
            "default_timeout_microseconds": 0 if default_timeout_s is None else max(1, round(default_timeout_s * 1e6)),
            "allow_timeout_override": allow_timeout_override, "max_queue_size": max_queue_requests or 0}


def model_config(name: str, *, platform: str, backend: str, policy: Any, generative: bool, max_rows: int,
                 inputs: tuple[Tensor, ...] = (), outputs: tuple[Tensor, ...] = (),
                 max_batch_rows: int | None = None, max_delay_s: float = 0.0,
                 queue_policy: dict[str, Any] | None = None, priority_levels: int = 2,
                 default_priority_level: int = 2,
                 priority_queue_policy: Mapping[int, dict[str, Any]] | None = None,
                 ensemble_steps: list[dict[str, Any]] | None = None, ensemble_max_inflight_requests: int = 0,
                 response_cache: bool = False,
                 reshapes: Mapping[str, tuple[int, ...]] | None = None, decoupled: bool = False,
                 sequence_batching: Mapping[str, Any] | None = None, ragged: frozenset[str] = frozenset(),
                 batch_input: list[dict[str, Any]] | None = None,
                 batch_output: list[dict[str, Any]] | None = None) -> bytes:
    """The configuration body of one model version (see the module docstring).

    ``ensemble_steps``: an ensemble's ``ensemble_scheduling.step`` list (it then has no
    ``dynamic_batching``: its steps batch on their own models); ``ensemble_max_inflight_requests``:
    its ``ensemble_scheduling.max_inflight_requests`` (0: no limit; listed, as Triton lists it).

    ``max_rows``: the ``max_batch_size`` to answer for a batching model (the caller's choice: the rows
    one request may carry, or a Triton config's own); ``max_batch_rows``/``max_delay_s``:
    the predict worker's batch bound and window (0: greedy); ``queue_policy``: its
    ``default_queue_policy`` (:func:`queue_policy`), if any; ``priority_levels`` /
    ``default_priority_level``: its priority levels; ``priority_queue_policy``: its levels' own
    queue policies by level (each as :func:`queue_policy` writes one); ``policy``: the repository
    config's version policy (or None); ``response_cache``: the model's config enables Triton's
    response cache; ``reshapes``: config.pbtxt's ``reshape`` shapes by tensor name (each listed
    as Triton lists it); ``decoupled``: a decoupled Triton Python model (``model_transaction_policy
    {decoupled: true}``, its requests run one per ``execute``: ``dynamic_batching`` shows no window);
    ``sequence_batching``: a stateful model's section (it then has no ``dynamic_batching``);
    ``ragged``: its inputs with ``allow_ragged_batch``; ``batch_input`` / ``batch_output``:
    config.pbtxt's (as Triton lists them), if any."""
    body: dict[str, Any] = {
        "name": name, "platform": platform, "backend": backend, "version_policy": version_policy(policy),
    }
    if generative:
        body.update({"max_batch_size": 0, "input": _tensors(GENERATE_INPUTS, REQUIRED_INPUT),
                     "output": _tensors(GENERATE_OUTPUTS),
                     "model_transaction_policy": {"decoupled": True},
                     "parameters": {"endpoint": {"string_value": "/v1/completions"}}})
        return orjson.dumps(body)
    batched = all(t.batched for t in (*inputs, *outputs))
    body.update({
        "max_batch_size": max_rows if batched else 0,  # 0: no batch dimension, dims are whole shapes
        "input": _tensors(inputs, reshapes=reshapes, ragged=ragged),
        "output": _tensors(outputs, reshapes=reshapes),
        "dynamic_batching": {"max_queue_delay_microseconds": round(max_delay_s * 1e6),
                             "priority_levels": priority_levels, "default_priority_level": default_priority_level},
        "model_transaction_policy": {"decoupled": decoupled},
    })
    if queue_policy is not None:
        body["dynamic_batching"]["default_queue_policy"] = queue_policy
    if priority_queue_policy:
        body["dynamic_batching"]["priority_queue_policy"] = {str(k): v for k, v in priority_queue_policy.items()}
    if max_batch_rows is not None:
        body["parameters"] = {"max_batch_rows": {"string_value": str(max_batch_rows)}}
    if response_cache:
        body["response_cache"] = {"enable": True}
    if batch_input:
        body["batch_input"] = batch_input
    if batch_output:
        body["batch_output"] = batch_output
    if sequence_batching is not None:
        del body["dynamic_batching"]
        body["sequence_batching"] = sequence_batching
    if ensemble_steps is not None:
        del body["dynamic_batching"]
        body["ensemble_scheduling"] = {"step": ensemble_steps, "max_inflight_requests": ensemble_max_inflight_requests}
    return orjson.dumps(body)


def _duration(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": round(seconds * _NS)}


_ZERO = {"count": 0, "ns": 0}


def _one(name: str, version: str, s: Mapping[str, Any], generative: bool) -> dict[str, Any]:
    """One ``$model_stat`` from merged :meth:`~wsserve.metrics.VersionStats.snapshot` values (or {});
    a generative model's queue time is not kept (zero)."""
    get = s.get
    sizes = get("sizes", {})
    return {
        "name": name,
        "version": version,
        "last_inference": round(get("last", 0.0) * 1000),
        "inference_count": int(get("rows", 0)),
        "execution_count": int(get("executions", 0)),
        "inference_stats": {
            "success": _duration(get("ok", 0), get("ok_s", 0.0)),
            "fail": _duration(get("fail", 0), get("fail_s", 0.0)),
            "queue": dict(_ZERO) if generative else _duration(get("ok", 0), get("queue_s", 0.0)),
            "compute_input": _duration(get("pair_count", 0), 0.0),
            "compute_infer": _duration(get("pair_count", 0), get("pair_s", 0.0)),
            "compute_output": _duration(get("pair_count", 0), 0.0),
            "cache_hit": _duration(get("cache_hit", 0), get("cache_hit_s", 0.0)),
            "cache_miss": _duration(get("cache_miss", 0), get("cache_miss_s", 0.0)),
        },
        "batch_stats": [
            {"batch_size": int(size), "compute_input": _duration(values[0], 0.0),
             "compute_infer": _duration(values[0], values[1]), "compute_output": _duration(values[0], 0.0)}
            for size, values in sorted(sizes.items(), key=lambda kv: int(kv[0]))
        ],
    }


def model_stats(versions: Iterable[tuple[str, str, bool]],
                stats: Mapping[tuple[str, str], Mapping[str, Any]]) -> bytes:
    """``{"model_stats": [...]}`` for ``versions`` (``(model, version, generative)``, in order),
    each from ``stats[(model, version)]`` (all zero when absent: no request reached it yet)."""
    return orjson.dumps({"model_stats": [_one(m, v, stats.get((m, v), {}), g) for m, v, g in versions]})
