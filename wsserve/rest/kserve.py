"""KServe's V1 protocol (TensorFlow Serving's REST predict API), sans-I/O.

Routes (wired in :mod:`wsserve.rest.api`):

- ``GET /v1/models/{name}[/versions/{version}]`` - ``{"name", "ready": true}`` (KServe's model
  ready; 503 while the server drains, 404 for an unknown model or version), with OpenAI's model
  object fields beside them (``id``, ``object``, ``created``, ``owned_by``), so the openai SDK's
  ``models.retrieve`` reads the same answer;
- ``POST /v1/models/{name}[/versions/{version}]:predict`` - ``{"instances": [...]}`` (row format)
  answered ``{"predictions": [...]}``, or ``{"inputs": ...}`` (columnar) answered
  ``{"outputs": ...}``;
- ``POST .../{name}:explain`` - the same, plus ``"explanations"`` (each row's attributions, as the
  WebSocket's ``"explain": true``) and ``"explainer"`` (how they were computed).

A model with one input takes rows (``[[0.5], [1.0]]``) or objects naming that input; a model with
named inputs takes objects per instance (``[{"a": [..], "b": [..]}]``) or ``{"a": rows, "b": rows}``
as columnar ``inputs``.  Rows go through the same checks and queue as a WebSocket ``predict``.
Errors are ``{"error": "message"}`` (KServe's form) with the wire codes' statuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..dtypes import json_ready
from ..errors import BadRequest, InvalidInput
from ..jsontypes import json_type

__all__ = ["VERBS", "V1Request", "encode_v1", "instances_message", "model_ready", "parse_v1", "split_verb"]

#: What may follow the model (or version) segment after a ``:``.
VERBS = ("predict", "explain")


@dataclass(frozen=True, slots=True)
class V1Request:
    """A checked V1 body: ``inputs`` as a WebSocket ``predict``'s ``inputs`` holds them (rows, or
    ``{name: rows}``), and whether the answer is columnar (``outputs``) or rows (``predictions``)."""

    inputs: Any
    columnar: bool


def split_verb(segment: str) -> tuple[str, str | None]:
    """``"mlp:predict"`` -> ``("mlp", "predict")``; a segment without a known verb -> ``(segment, None)``."""
    head, colon, verb = segment.rpartition(":")
    if colon and head and verb in VERBS:
        return head, verb
    return segment, None


def parse_v1(obj: Any, names: tuple[str, ...], *, max_rows: int, optional: frozenset[str] = frozenset()) -> V1Request:
    """Check a decoded body for a model whose inputs are ``names`` (those in ``optional`` may be left
    out: each instance then gives the inputs ``instances[0]`` gives); raises ``BadRequest`` naming
    the field (``InvalidInput`` for more than ``max_rows`` instances of named inputs, counted
    before they are regrouped by input).  Values are checked later, by the model's ``prepare``
    (as for any predict)."""
    if type(obj) is not dict:
        raise BadRequest(f"the body must be a JSON object with 'instances' or 'inputs', got {json_type(obj)}")
    if "instances" in obj and "inputs" in obj:
        raise BadRequest("give 'instances' (row format) or 'inputs' (columnar format), not both")
    if "inputs" in obj:
        inputs = obj["inputs"]
        if type(inputs) not in (list, dict):
            raise BadRequest(f"'inputs' must be an array of rows or an object of named inputs, got {json_type(inputs)}")
        return V1Request(inputs, columnar=True)
    if "instances" not in obj:
        raise BadRequest("missing 'instances' (an array, one item per row) or 'inputs' (columnar)")
    instances = obj["instances"]
    if type(instances) is not list or not instances:
        raise BadRequest(f"'instances' must be a non-empty array, got {json_type(instances) if instances != [] else 'an empty one'}")
    named = type(instances[0]) is dict
    if not named:
        if len(names) > 1:
            raise BadRequest(f"the model takes named inputs ({', '.join(names)}): each instance must be an object "
                             "with them")
        return V1Request(instances, columnar=False)
    if len(instances) > max_rows:  # prepare's limit, before the columns are built
        raise InvalidInput(f"'instances' has {len(instances)} rows; the limit is {max_rows}")
    first = instances[0]
    # an optional input instances[0] leaves out: no instance gives it (at least one input is given)
    given = tuple(n for n in names if n in first or n not in optional) or names
    columns: dict[str, list[Any]] = {name: [] for name in given}
    wanted = set(given)
    for i, instance in enumerate(instances):
        if type(instance) is not dict:
            raise BadRequest(f"'instances[{i}]' must be an object like 'instances[0]', got {json_type(instance)}")
        if instance.keys() != wanted:
            unknown = sorted(k for k in instance if k not in wanted)
            if unknown:
                raise BadRequest(f"'instances[{i}]' names unknown input {unknown[0][:64]!r}; the model takes "
                                 f"{', '.join(names)}")
            missing = next((n for n in given if n not in instance), None)
            if missing is None:  # an optional input instances[0] leaves out
                extra = next(n for n in instance if n not in wanted)
                raise BadRequest(f"'instances[{i}]' gives input {extra!r}, which 'instances[0]' leaves out; every "
                                 "instance gives the same inputs")
            raise BadRequest(f"'instances[{i}]' is missing input {missing!r}")
        for name in given:
            columns[name].append(instance[name])
    return V1Request(columns if len(names) > 1 else columns[names[0]], columnar=False)


#: A row check's name for a named input's row (``'inputs.a' row 3[1]``), as the WebSocket calls it.
_NAMED_ROW = re.compile(r"'inputs\.([^']+)' row (\d+)((?:\[\d+\])*)")


def instances_message(message: str) -> str:
    """A row check's message (which names the WebSocket's ``inputs``) naming what a row-format
    request sent: ``'inputs.a' row 3[1]`` -> ``'instances[3].a[1]'`` (instance 3's input ``a``),
    ``'inputs' row 3`` -> ``'instances' row 3``."""
    message = _NAMED_ROW.sub(lambda m: f"'instances[{m[2]}].{m[1]}{m[3]}'", message)
    return message.replace("'inputs'", "'instances'")


def encode_v1(outputs: Any, columnar: bool, attributions: np.ndarray | None = None,
              explainer: dict[str, Any] | None = None) -> bytes:
    """The answer's body: ``{"predictions": rows}`` (named outputs: one object per row) or, for a
    columnar request, ``{"outputs": rows or {name: rows}}``; with ``attributions`` also
    ``"explanations"`` (rows) and ``"explainer"``."""
    if columnar:
        body: dict[str, Any] = {"outputs": {k: json_ready(v) for k, v in outputs.items()}
                                if isinstance(outputs, dict) else json_ready(outputs)}
    elif isinstance(outputs, dict):
        lists = {k: json_ready(v) if v.dtype.kind == "O" else v.tolist() for k, v in outputs.items()}
        n = len(next(iter(lists.values()))) if lists else 0
        body = {"predictions": [{k: rows[i] for k, rows in lists.items()} for i in range(n)]}
    else:
        body = {"predictions": json_ready(outputs)}
    if attributions is not None:
        body["explanations"] = np.ascontiguousarray(attributions)
        body["explainer"] = explainer
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def model_ready(name: str, created: int) -> bytes:
    """KServe's ``{"name", "ready": true}``, with OpenAI's model object fields beside them."""
    return orjson.dumps({"name": name, "ready": True, "id": name, "object": "model", "created": created,
                         "owned_by": "wsserve"})
