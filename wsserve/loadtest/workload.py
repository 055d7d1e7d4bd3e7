"""Workloads: what to send, in what proportion, with inputs fitted to each model.

Sans-I/O.  A :class:`WorkloadSpec` names one kind of request (``predict``,
``stream`` = streamed predict, ``generate``) on one model; a mix is a list of
specs with integer weights, parsed from text such as
``"predict:linear=8,generate:charlm=1"`` by :func:`parse_mix`.
:class:`WeightedCycle` interleaves the specs deterministically in proportion to
their weights (smooth weighted round-robin: weights 8 and 1 give eight
predicts, one generate, spread evenly).  :class:`RequestFactory` pre-encodes a
few request bodies per spec with inputs generated to fit the model's
``input_shape`` (as reported by ``models``), so sending a request costs one
bytes concatenation for its id, never a JSON encode of the inputs.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

__all__ = [
    "KINDS",
    "Kind",
    "ModelShape",
    "RequestFactory",
    "WeightedCycle",
    "WorkloadSpec",
    "check_against_models",
    "parse_mix",
]

Kind = Literal["predict", "stream", "generate"]
KINDS: tuple[Kind, ...] = ("predict", "stream", "generate")

#: Upper bounds: rows per predict/stream request and per chunk, tokens per generate, and the
#: values of one request (rows x the model's input width; 2**20 float64 is 8 MiB), so the
#: inputs built before the run stay small whatever the flags or the server's ``input_shape``.
MAX_ROWS = 1 << 20
MAX_TOKENS = 1 << 20
MAX_REQUEST_VALUES = 1 << 20

_PROMPTS = ("The ", "Once upon a time ", "In the beginning ", "She said ", "A ", "It was ")


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """One request kind on one model.

    ``rows`` is the rows per ``predict``/``stream`` request, ``chunk_rows`` the
    rows per streamed chunk (``None``: server default), ``max_tokens`` the
    tokens per ``generate``.  ``weight`` is the relative share in a mix.
    ``binary``: send ``predict``/``stream`` inputs as binary tensor frames
    (little-endian float64 after a JSON header) instead of JSON numbers.
    ``explain``: ask for per-feature attributions (``"explain": true``; the model
    must be explainable, and each row counts 32 units of the server's batch).
    """

    kind: Kind
    model: str
    weight: int = 1
    rows: int = 1
    chunk_rows: int | None = None
    max_tokens: int = 32
    binary: bool = False
    explain: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown workload kind {self.kind!r}; known: {', '.join(KINDS)}")
        if not self.model:
            raise ValueError("workload needs a model name")
        if self.weight < 1:
            raise ValueError(f"weight must be >= 1, got {self.weight}")
        if not 1 <= self.rows <= MAX_ROWS:
            raise ValueError(f"rows must be in 1..{MAX_ROWS}, got {self.rows}")
        if self.chunk_rows is not None and not 1 <= self.chunk_rows <= MAX_ROWS:
            raise ValueError(f"chunk_rows must be in 1..{MAX_ROWS}, got {self.chunk_rows}")
        if not 1 <= self.max_tokens <= MAX_TOKENS:
            raise ValueError(f"max_tokens must be in 1..{MAX_TOKENS}, got {self.max_tokens}")
        if self.binary and self.kind == "generate":
            raise ValueError("binary tensor frames carry predict inputs; generate has none")
        if self.explain and self.kind == "generate":
            raise ValueError("explain applies to predict and stream; generate has no attributions")

    @property
    def label(self) -> str:
        """Short name used in reports, e.g. ``predict:linear``, ``predict:mlp:16``,
        ``predict:mlp/binary`` or ``predict:mlp+explain``."""
        size = self.max_tokens if self.kind == "generate" else self.rows
        default = 32 if self.kind == "generate" else 1
        return (f"{self.kind}:{self.model}" + ("" if size == default else f":{size}")
                + ("/binary" if self.binary else "") + ("+explain" if self.explain else ""))


def parse_mix(text: str, *, rows: int = 1, chunk_rows: int | None = None, max_tokens: int = 32,
              binary: bool = False, explain: bool = False) -> list[WorkloadSpec]:
    """Parse ``kind:model[:size][=weight],...`` into specs.

    ``size`` is rows per request for ``predict``/``stream`` and ``max_tokens``
    for ``generate``; when omitted the keyword defaults apply.  ``weight``
    defaults to 1.  ``binary`` and ``explain`` apply to the ``predict`` and ``stream`` items.
    Raises ``ValueError`` naming the bad item.
    """
    specs: list[WorkloadSpec] = []
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ValueError("empty workload mix")
    for item in items:
        if not item:
            raise ValueError(f"empty item in workload mix {text!r}")
        head, sep, weight_text = item.partition("=")
        try:
            weight = int(weight_text) if sep else 1
        except ValueError:
            raise ValueError(f"bad weight {weight_text!r} in {item!r}: want an integer >= 1") from None
        parts = head.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"bad workload {item!r}: want kind:model[:size][=weight], e.g. predict:linear=8")
        kind, model = parts[0], parts[1]
        if kind not in KINDS:
            raise ValueError(f"bad workload {item!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
        size: int | None = None
        if len(parts) == 3:
            try:
                size = int(parts[2])
            except ValueError:
                raise ValueError(f"bad size {parts[2]!r} in {item!r}: want an integer >= 1") from None
        spec = WorkloadSpec(
            kind=kind,  # checked against KINDS above
            model=model,
            weight=weight,
            rows=rows,
            chunk_rows=chunk_rows,
            max_tokens=max_tokens,
            binary=binary and kind != "generate",
            explain=explain and kind != "generate",
        )
        if size is not None:
            spec = replace(spec, max_tokens=size) if kind == "generate" else replace(spec, rows=size)
        specs.append(spec)
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"workload listed twice in mix: {', '.join(dupes)}")
    return specs


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the load tool needs to know of a model (from the ``models`` reply)."""

    name: str
    task: str
    input_shape: tuple[int, ...]
    #: whether ``"explain": true`` is served (the entry's ``explain`` is an object, not null);
    #: None when the server does not say
    explainable: bool | None = None

    @property
    def input_width(self) -> int:
        return math.prod(self.input_shape) if self.input_shape else 1

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ModelShape:
        shape = obj.get("input_shape") or [1]
        explainable = None if "explain" not in obj else obj["explain"] is not None
        return cls(name=str(obj["name"]), task=str(obj.get("task", "")), input_shape=tuple(int(v) for v in shape),
                   explainable=explainable)


def check_against_models(specs: Sequence[WorkloadSpec], models: Mapping[str, ModelShape]) -> None:
    """Raise ``ValueError`` when a spec names an unknown model, the wrong kind for it, asks a
    model that says it cannot be explained for attributions, has a variable dimension (-1) in its
    ``input_shape``, or would send requests of more than
    :data:`MAX_REQUEST_VALUES` input values (rows x the model's input width)."""
    for spec in specs:
        shape = models.get(spec.model)
        if shape is None:
            known = ", ".join(sorted(models)) or "(none)"
            raise ValueError(f"workload {spec.label}: the server has no model {spec.model!r}; known: {known}")
        if spec.kind == "generate" and shape.task and shape.task != "generation":
            raise ValueError(
                f"workload {spec.label}: model {spec.model!r} is a {shape.task} model; generate needs a generation model"
            )
        if spec.kind != "generate" and shape.task == "generation":
            raise ValueError(f"workload {spec.label}: model {spec.model!r} only serves generate")
        if spec.kind != "generate" and any(d < 1 for d in shape.input_shape):
            raise ValueError(f"workload {spec.label}: model {spec.model!r} has input_shape {list(shape.input_shape)}: "
                             "a variable dimension (-1), whose size each request gives; the load tool sends rows of "
                             "a fixed size")
        if spec.kind != "generate" and not 1 <= spec.rows * shape.input_width <= MAX_REQUEST_VALUES:
            raise ValueError(f"workload {spec.label}: {spec.rows} rows of {shape.input_width} values "
                             f"(input_shape {list(shape.input_shape)}) is more than {MAX_REQUEST_VALUES:,} "
                             "values per request")
        if spec.explain and shape.explainable is False:
            raise ValueError(f"workload {spec.label}: model {spec.model!r} cannot be explained (its 'models' "
                             "entry has \"explain\": null)")


class WeightedCycle:
    """Deterministic smooth weighted round-robin over indices ``0..len(weights)-1``."""

    __slots__ = ("_current", "_total", "_weights")

    def __init__(self, weights: Sequence[int]) -> None:
        if not weights or any(w < 1 for w in weights):
            raise ValueError(f"weights must be a non-empty list of integers >= 1, got {list(weights)}")
        self._weights = list(weights)
        self._total = sum(weights)
        self._current = [0] * len(weights)

    def next(self) -> int:
        if len(self._weights) == 1:
            return 0
        cur = self._current
        best = 0
        for i, w in enumerate(self._weights):
            cur[i] += w
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self._total
        return best


class RequestFactory:
    """Pre-encoded request frames for one spec; :meth:`build` splices in the id.

    ``variants`` different bodies are generated (inputs uniform in [0, 1),
    deterministic for a given ``seed``) and used in turn.  ``input_width`` is
    the model's flattened input width (``ModelShape.input_width``);
    ``input_shape`` (default ``(input_width,)``) its per-row shape, which a
    binary tensor frame states.  ``binary`` is true when :meth:`build` makes
    binary tensor frames (send them with a binary opcode).
    """

    __slots__ = ("_bodies", "_i", "binary")

    def __init__(self, spec: WorkloadSpec, *, input_width: int = 1, seed: int = 0, variants: int = 16,
                 input_shape: tuple[int, ...] | None = None) -> None:
        # binary or JSON, explained or not: the same numbers
        rng = random.Random(f"{seed}:{replace(spec, binary=False, explain=False).label}")
        shape = input_shape if input_shape else (input_width,)
        self.binary = spec.binary
        bodies: list[Any] = []
        for v in range(max(1, variants)):
            frame: dict[str, Any]
            if spec.kind == "generate":
                frame = {
                    "type": "generate",
                    "model": spec.model,
                    "prompt": _PROMPTS[v % len(_PROMPTS)],
                    "max_tokens": spec.max_tokens,
                }
            else:
                inputs = [[round(rng.random(), 4) for _ in range(input_width)] for _ in range(spec.rows)]
                frame = {"type": "predict", "model": spec.model}
                if spec.kind == "stream":
                    frame["stream"] = True
                    if spec.chunk_rows is not None:
                        frame["chunk_rows"] = spec.chunk_rows
                if spec.explain:
                    frame["explain"] = True
                if spec.binary:
                    bodies.append(_tensor_parts(frame, inputs, (spec.rows, *shape)))
                    continue
                frame["inputs"] = inputs
            encoded = orjson.dumps(frame)
            bodies.append(b"," + encoded[1:])  # '{' dropped: the id goes first
        self._bodies = bodies
        self._i = 0

    def build(self, request_id: int) -> bytes:
        """The frame bytes of one request with integer id ``request_id``."""
        bodies = self._bodies
        body = bodies[self._i]
        self._i = (self._i + 1) % len(bodies)
        if self.binary:
            head = b'{"id":' + str(request_id).encode() + body[0]
            pad = -(4 + len(head)) % 8  # the payload starts 8-byte aligned (docs/PROTOCOL.md)
            return (len(head) + pad).to_bytes(4, "little") + head + b" " * pad + body[1]
        return b'{"id":' + str(request_id).encode() + body


def _tensor_parts(fields: dict[str, Any], rows: list[list[float]], shape: tuple[int, ...]) -> tuple[bytes, bytes]:
    """A binary tensor frame's header after its id (``,"type":...,"dtype":"float64","shape":[...]}``)
    and its payload (the rows as little-endian float64), for :meth:`RequestFactory.build`."""
    header = orjson.dumps({**fields, "dtype": "float64", "shape": list(shape)})
    values = [x for row in rows for x in row]
    return b"," + header[1:], struct.pack(f"<{len(values)}d", *values)
