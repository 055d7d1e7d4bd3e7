"""Custom metrics: the metric families a served model makes (Triton's custom metrics API, as a
Triton Python model calls it through ``pb_utils.MetricFamily``), shown on the server's
``/metrics`` after wsserve's own.

One :class:`CustomMetrics` per server (:attr:`wsserve.metrics.Metrics.custom`); no module state.
A model version reaches it through its :class:`Owner` (:meth:`CustomMetrics.owner`, handed to the
model at load by the registry, as the BLS gateway is), which remembers what the version made:
:meth:`Owner.close` (the version's unload, or its failed load) removes it all, so ``/metrics``
does not grow across reloads.  As in Triton (``metric_family.cc``, prometheus-cpp's registry):

- A family is ``(name, description, kind)``, kind ``counter``, ``gauge`` or ``histogram``.  Two
  families of one name are the same family (made again by a reloaded model, or by two models) when
  their kinds agree (the first description is kept); another kind is refused.
- A series is a family's label set (``{name: str}``); making the same one again shares it (a
  histogram's only with the same buckets).  A counter only grows (``increment`` by a negative
  value is refused), a gauge is ``set`` or incremented either way, a histogram ``observe``\\ s.
- Releasing a family handle (the model dropped its ``MetricFamily``, or the version closed)
  releases the series made through it; a series or family no handle holds is removed.

Bounds, per server (the error names them): :data:`MAX_CUSTOM_METRIC_FAMILIES` families,
:data:`MAX_CUSTOM_METRIC_SERIES` series over all of them, :data:`MAX_LABELS` labels per series,
:data:`MAX_BUCKETS` buckets per histogram, names and texts bounded in length, and the text the
series add to ``/metrics`` at most :data:`MAX_CUSTOM_METRIC_BYTES` (a series costs its lines: the
family's name, its labels' names and UTF-8 values, and :data:`LINE_OVERHEAD_BYTES` for the rest of
each line; a histogram writes a line per bucket and three more), so a model labelling series with
values it is sent cannot make ``/metrics`` large.  Names follow
Prometheus' rules (``[a-zA-Z_:][a-zA-Z0-9_:]*``; labels ``[a-zA-Z_][a-zA-Z0-9_]*``, not ``__...``,
not ``le`` in a histogram) and may not start with ``wsserve_``, the server's own metrics' prefix.

Thread-safe: models update from their own threads; ``/metrics`` renders on the loop.  The text is
written here (:meth:`CustomMetrics.render`) rather than by ``prometheus_client``, so a counter's
sample is its family's name as given, as Triton exposes it (``prometheus_client`` would rename it
``<name>_total``).
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from prometheus_client.utils import floatToGoString

__all__ = [
    "CustomMetrics", "FamilyHandle", "MetricError", "Owner", "SeriesHandle", "KINDS", "current_owner", "owning",
    "MAX_CUSTOM_METRIC_BYTES", "MAX_CUSTOM_METRIC_FAMILIES", "MAX_CUSTOM_METRIC_SERIES", "MAX_LABELS", "MAX_BUCKETS", "RESERVED_PREFIX",
    "is_utf8", "merge_snapshots", "render_snapshot",
]

KINDS = ("counter", "gauge", "histogram")
#: Families the models of one server may hold at once.
MAX_CUSTOM_METRIC_FAMILIES = 64
#: Series (label sets) over all custom families of one server.
MAX_CUSTOM_METRIC_SERIES = 1024
MAX_LABELS = 16
MAX_BUCKETS = 64
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 1024
MAX_LABEL_VALUE_CHARS = 1024
#: Bytes of ``/metrics`` text the custom series of one server may write, at most (see the module docstring).
MAX_CUSTOM_METRIC_BYTES = 8 << 20
#: What one line costs besides the family's name and the label names and values: quotes, commas,
#: braces, a histogram's ``_bucket`` suffix and ``le`` label, the value.
LINE_OVERHEAD_BYTES = 64
#: The server's own metrics' prefix: no custom family may take a name starting with it.
RESERVED_PREFIX = "wsserve_"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class MetricError(ValueError):
    """A refused custom-metrics call; the message names what is wrong (and the bound, for a cap)."""


def _exposed(name: str, kind: str) -> frozenset[str]:
    """The sample names a family writes."""
    if kind == "histogram":
        return frozenset((name + "_bucket", name + "_sum", name + "_count"))
    return frozenset((name,))


class _Series:
    __slots__ = ("labels", "buckets", "value", "counts", "sum", "refs", "cost")

    def __init__(self, labels: tuple[tuple[str, str], ...], buckets: tuple[float, ...] | None, cost: int = 0) -> None:
        self.cost = cost  # its bytes of /metrics text (counted against MAX_CUSTOM_METRIC_BYTES)
        self.labels = labels
        self.buckets = buckets
        self.value = 0.0
        self.counts = [0] * (len(buckets) + 1) if buckets is not None else []
        self.sum = 0.0
        self.refs = 0


class _Family:
    __slots__ = ("name", "description", "kind", "series", "refs", "exposed")

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.description, self.kind = name, description, kind
        self.series: dict[tuple[tuple[str, str], ...], _Series] = {}
        self.refs = 0
        self.exposed = _exposed(name, kind)


class SeriesHandle:
    """One ``Metric`` a model made: its series, until :meth:`release` (its family's release, its
    owner's close, or the model dropping it).  Every method raises :class:`MetricError` once
    released, and for an operation its kind lacks (Triton's messages)."""

    __slots__ = ("_store", "_family", "_series", "_parent", "released", "__weakref__")

    def __init__(self, store: CustomMetrics, family: _Family, series: _Series, parent: FamilyHandle) -> None:
        self._store, self._family, self._series = store, family, series
        self._parent = parent  # the family handle it was made through (it holds this one until released)
        self.released = False

    @property
    def kind(self) -> str:
        return self._family.kind

    def _check(self) -> None:
        if self.released:
            raise MetricError("Invalid metric operation as the corresponding 'MetricFamily' has been deleted. "
                              "The 'MetricFamily' object should be deleted AFTER its corresponding 'Metric' "
                              "objects have been deleted.")

    def increment(self, value: float) -> None:
        with self._store._lock:
            self._check()
            kind = self._family.kind
            if kind == "histogram":
                raise MetricError("TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Increment")
            if kind == "counter" and value < 0.0:
                raise MetricError("TRITONSERVER_METRIC_KIND_COUNTER can only be incremented monotonically by "
                                  "non-negative values.")
            self._series.value += value

    def set(self, value: float) -> None:
        with self._store._lock:
            self._check()
            if self._family.kind != "gauge":
                raise MetricError(f"TRITONSERVER_METRIC_KIND_{self._family.kind.upper()} does not support Set")
            self._series.value = value

    def observe(self, value: float) -> None:
        with self._store._lock:
            self._check()
            if self._family.kind != "histogram":
                raise MetricError(f"TRITONSERVER_METRIC_KIND_{self._family.kind.upper()} does not support Observe")
            s = self._series
            assert s.buckets is not None
            # le: a value on a bound is in that bucket; NaN (no bound is >= it) in +Inf's, as prometheus-cpp
            s.counts[len(s.buckets) if math.isnan(value) else bisect_left(s.buckets, value)] += 1
            s.sum += value

    def value(self) -> float:
        with self._store._lock:
            self._check()
            if self._family.kind == "histogram":
                raise MetricError("TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Value")
            return self._series.value

    def release(self) -> None:
        """Drop this handle's hold on its series (idempotent; any thread, a finalizer's included)."""
        self._store._later(self._release_now)

    def _release_now(self) -> None:
        if self.released:
            return
        self.released = True
        self._parent._metrics.discard(self)  # a Metric made and dropped per request leaves nothing behind
        self._store._unref_series(self._family, self._series)


class FamilyHandle:
    """One ``MetricFamily`` a model made: its hold on the family and on the series made through
    it (:meth:`metric`), until :meth:`release`."""

    __slots__ = ("_store", "_family", "_owner", "_metrics", "released", "__weakref__")

    def __init__(self, store: CustomMetrics, family: _Family, owner: Owner) -> None:
        self._store, self._family, self._owner = store, family, owner
        #: the series handles made through it and not released yet
        self._metrics: set[SeriesHandle] = set()
        self.released = False

    @property
    def kind(self) -> str:
        return self._family.kind

    @property
    def name(self) -> str:
        return self._family.name

    def metric(self, labels: Mapping[str, Any] | None, buckets: Sequence[Any] | None) -> SeriesHandle:
        """A series of this family with ``labels`` (``{name: str}``; None: none) and, for a
        histogram (only), ``buckets`` (upper bounds, increasing).  Raises :class:`MetricError`."""
        kind = self._family.kind
        key = _labels(labels, kind)
        if buckets is not None and kind != "histogram":
            raise MetricError("Unexpected buckets found.")
        if buckets is None and kind == "histogram":
            raise MetricError("Missing required buckets.")
        bounds = None if buckets is None else _buckets(buckets)
        store = self._store
        with store._lock:
            store._drain()
            if self.released:
                raise MetricError(f"metric family {self._family.name!r} was deleted (its model was unloaded, or "
                                  "the MetricFamily object dropped)")
            series = self._family.series.get(key)
            if series is None:
                if store._series >= MAX_CUSTOM_METRIC_SERIES:
                    raise MetricError(f"this server holds {store._series} custom metric series (label sets), the "
                                      f"most there may be (MAX_CUSTOM_METRIC_SERIES={MAX_CUSTOM_METRIC_SERIES}): "
                                      "delete unused Metric objects, or use fewer label values")
                cost = _text_cost(self._family.name, key, bounds)
                if store._bytes + cost > MAX_CUSTOM_METRIC_BYTES:
                    raise MetricError(f"this metric's series would write {cost} bytes to /metrics, and the custom "
                                      f"metric series of this server write {store._bytes} already; at most "
                                      f"{MAX_CUSTOM_METRIC_BYTES} in all (MAX_CUSTOM_METRIC_BYTES): use shorter or "
                                      "fewer label values, or fewer buckets")
                series = self._family.series[key] = _Series(key, bounds, cost)
                store._series += 1
                store._bytes += cost
            elif series.buckets != bounds:
                raise MetricError(f"metric family {self._family.name!r} already has the series {dict(key)} with "
                                  f"buckets {list(series.buckets or ())}, not {list(bounds or ())}")
            series.refs += 1
            handle = SeriesHandle(store, self._family, series, self)
            self._metrics.add(handle)
            return handle

    def release(self) -> None:
        """Drop this family handle and the series made through it (idempotent; any thread)."""
        self._store._later(self._release_now)

    def _release_now(self) -> None:
        if self.released:
            return
        self.released = True
        for m in list(self._metrics):
            m._release_now()
        self._metrics.clear()
        self._owner._handles.discard(self)
        self._store._unref_family(self._family)


class Owner:
    """What one model version made (:meth:`CustomMetrics.owner`): :meth:`family` makes a family
    handle; :meth:`close` releases every one (the version is unloaded), after which
    :meth:`family` is refused."""

    __slots__ = ("_store", "model", "version", "_handles", "closed")

    def __init__(self, store: CustomMetrics, model: str, version: int) -> None:
        self._store, self.model, self.version = store, model, version
        self._handles: set[FamilyHandle] = set()
        self.closed = False

    def family(self, name: Any, description: Any, kind: str) -> FamilyHandle:
        """The family ``name`` (made now, or the one of that name and kind already held).
        Raises :class:`MetricError` naming a bad name or description, a clash with the server's
        own metrics or with a family of another kind, or the cap."""
        if kind not in KINDS:
            raise MetricError(f"kind must be one of MetricFamily.COUNTER, GAUGE, HISTOGRAM, got {kind!r}")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME_CHARS:
            raise MetricError(f"metric family name {name!r} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*, "
                              f"at most {MAX_NAME_CHARS} characters)")
        if name.startswith(RESERVED_PREFIX):
            raise MetricError(f"metric family name {name!r} starts with {RESERVED_PREFIX!r}, the server's own "
                              "metrics' prefix: choose another name")
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS or not is_utf8(description):
            got = (type(description).__name__ if not isinstance(description, str) else "text that is not UTF-8 "
                   "(a lone surrogate)" if not is_utf8(description) else f"{len(description)} characters")
            raise MetricError(f"metric family {name!r}: the description must be a str of at most "
                              f"{MAX_DESCRIPTION_CHARS} characters, valid UTF-8, got {got}")
        store = self._store
        with store._lock:
            store._drain()
            if self.closed:
                raise MetricError(f"model {self.model!r} version {self.version} was unloaded: it can make no "
                                  "metric family")
            fam = store._families.get(name)
            if fam is not None and fam.kind != kind:
                raise MetricError(f"metric family {name!r} is already a {fam.kind} (made by a model of this "
                                  f"server), not a {kind}")
            if fam is None:
                exposed = _exposed(name, kind)
                clash = next((f for f in store._families.values() if f.exposed & exposed), None)
                if clash is not None:
                    raise MetricError(f"metric family {name!r} ({kind}) would write samples of the same names "
                                      f"as the {clash.kind} family {clash.name!r}")
                if len(store._families) >= MAX_CUSTOM_METRIC_FAMILIES:
                    raise MetricError(f"this server holds {len(store._families)} custom metric families, the most "
                                      f"there may be (MAX_CUSTOM_METRIC_FAMILIES={MAX_CUSTOM_METRIC_FAMILIES})")
                fam = store._families[name] = _Family(name, description, kind)
            fam.refs += 1
            handle = FamilyHandle(store, fam, self)
            self._handles.add(handle)
            return handle

    def close(self) -> None:
        """Release every family handle of this version, and refuse new ones (idempotent)."""
        with self._store._lock:
            self.closed = True
            self._store._drain()
            for handle in list(self._handles):
                handle._release_now()
            self._handles.clear()


def is_utf8(text: str) -> bool:
    """``text`` can be written as UTF-8 (no lone surrogate), as ``/metrics`` is (and as JSON and
    protobuf carry a response's parameters: :mod:`wsserve.repository.triton_pb_utils`)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _labels(labels: Mapping[str, Any] | None, kind: str) -> tuple[tuple[str, str], ...]:
    if labels is None:
        return ()
    if not isinstance(labels, Mapping):
        raise MetricError("Labels must be a dictionary.")
    if len(labels) > MAX_LABELS:
        raise MetricError(f"a metric has {len(labels)} labels; at most {MAX_LABELS}")
    out = []
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL.fullmatch(key) or key.startswith("__") or len(key) > MAX_NAME_CHARS:
            raise MetricError(f"label name {key!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not "
                              "starting with '__')")
        if key == "le" and kind == "histogram":
            raise MetricError("label name 'le' is a histogram's bucket label: choose another")
        if not isinstance(value, str):
            raise MetricError(f"label {key!r}: its value must be a str, got {type(value).__name__}")
        if len(value) > MAX_LABEL_VALUE_CHARS:
            raise MetricError(f"label {key!r}: its value has {len(value)} characters; at most {MAX_LABEL_VALUE_CHARS}")
        if not is_utf8(value):
            raise MetricError(f"label {key!r}: its value {value!r} is not valid UTF-8 (a lone surrogate): /metrics "
                              "could not be written")
        out.append((key, value))
    return tuple(sorted(out))


def _buckets(buckets: Sequence[Any]) -> tuple[float, ...]:
    if not isinstance(buckets, list):
        raise MetricError("Buckets must be a list.")
    if len(buckets) > MAX_BUCKETS:
        raise MetricError(f"a histogram has {len(buckets)} buckets; at most {MAX_BUCKETS}")
    bounds = []
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or math.isnan(b):
            raise MetricError(f"a bucket bound must be a number, got {b!r}")
        bounds.append(float(b))
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise MetricError(f"buckets must increase, got {bounds}")
    if bounds and bounds[-1] == math.inf:
        bounds.pop()  # +Inf is always there
    return tuple(bounds)


def _text_cost(name: str, labels: tuple[tuple[str, str], ...], buckets: tuple[float, ...] | None) -> int:
    """Bytes a series of family ``name`` writes to ``/metrics``, at most (escaping may double a value's
    backslashes, quotes and newlines: counted twice)."""
    line = len(name) + LINE_OVERHEAD_BYTES + sum(
        len(k) + 4 + 2 * len(v.encode("utf-8", "surrogatepass")) for k, v in labels)
    return line * (1 if buckets is None else len(buckets) + 4)  # buckets, +Inf, _sum, _count


def _escape(text: str, quote: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _labeltext(labels: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v, True)}"' for k, v in labels) + "}" if labels else ""


class CustomMetrics:
    """The custom metric families of one server (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # not re-entrant: a finalizer inside a locked section defers (_later)
        self._families: dict[str, _Family] = {}
        self._series = 0
        self._bytes = 0  # /metrics text of the series held (MAX_CUSTOM_METRIC_BYTES)
        #: releases asked by finalizers (any thread, maybe inside a locked section): done at the next operation
        self._pending: deque[Any] = deque()

    def owner(self, model: str, version: int) -> Owner:
        """A model version's :class:`Owner` (close it when the version is closed)."""
        return Owner(self, model, version)

    def _later(self, release: Any) -> None:
        self._pending.append(release)
        if self._lock.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._lock.release()

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft()()

    def _unref_series(self, fam: _Family, series: _Series) -> None:
        series.refs -= 1
        if series.refs <= 0 and fam.series.get(series.labels) is series:
            del fam.series[series.labels]
            self._series -= 1
            self._bytes -= series.cost

    def _unref_family(self, fam: _Family) -> None:
        fam.refs -= 1
        if fam.refs <= 0 and not fam.series and self._families.get(fam.name) is fam:
            del self._families[fam.name]

    def counts(self) -> tuple[int, int]:
        """``(families, series)`` held now."""
        with self._lock:
            self._drain()
            return len(self._families), self._series

    def snapshot(self) -> list[dict[str, Any]]:
        """The families now, JSON-ready (a worker's share of ``/metrics``, see :func:`merge_snapshots`):
        ``[{name, description, kind, series: [{labels, value, buckets, counts, sum}]}]``."""
        with self._lock:
            self._drain()
            return [{"name": fam.name, "description": fam.description, "kind": fam.kind,
                     "series": [{"labels": [list(kv) for kv in s.labels], "value": s.value,
                                 "buckets": None if s.buckets is None else list(s.buckets),
                                 "counts": list(s.counts), "sum": s.sum} for s in fam.series.values()]}
                    for fam in self._families.values()]

    def render(self) -> bytes:
        """The families in the Prometheus text format (empty: none)."""
        return render_snapshot(self.snapshot())


def merge_snapshots(snapshots: Sequence[Any]) -> list[dict[str, Any]]:
    """The families of several processes' :meth:`CustomMetrics.snapshot` (``--workers``), as one:
    a family by name (the first one's description and kind; another process's family of that name
    and another kind is left out, as one process refuses it), a series by its labels, whose values
    add up over the processes (a counter's and a histogram's counts, as Prometheus sums them over
    instances, and a gauge's too: a gauge of a model served by several workers is their sum); a
    histogram series with other buckets than the first one's is left out.  Anything malformed (a
    snapshot file being replaced) is skipped."""
    families: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        if not isinstance(snap, list):
            continue
        for fam in snap:
            try:
                name, kind = fam["name"], fam["kind"]
                into = families.setdefault(name, {"name": name, "description": fam["description"], "kind": kind,
                                                   "series": {}})
                if into["kind"] != kind:
                    continue
                for s in fam["series"]:
                    key = tuple(tuple(kv) for kv in s["labels"])
                    have = into["series"].get(key)
                    if have is None:
                        into["series"][key] = {**s, "counts": list(s["counts"])}
                    elif have["buckets"] == s["buckets"] and len(have["counts"]) == len(s["counts"]):
                        have["value"] += s["value"]
                        have["sum"] += s["sum"]
                        have["counts"] = [a + b for a, b in zip(have["counts"], s["counts"], strict=True)]
            except (KeyError, TypeError, ValueError):
                continue
    return [{**fam, "series": list(fam["series"].values())} for fam in families.values()]


def render_snapshot(families: Sequence[Mapping[str, Any]]) -> bytes:
    """``families`` (a :meth:`CustomMetrics.snapshot`, or :func:`merge_snapshots`' merge) in the
    Prometheus text format (empty: none)."""
    lines: list[str] = []
    for fam in families:
        name = fam["name"]
        lines.append(f"# HELP {name} {_escape(fam['description'], False)}")
        lines.append(f"# TYPE {name} {fam['kind']}")
        for s in fam["series"]:
            labels = tuple(tuple(kv) for kv in s["labels"])
            if fam["kind"] != "histogram":
                lines.append(f"{name}{_labeltext(labels)} {floatToGoString(s['value'])}")
                continue
            total = 0
            for bound, n in zip((*(s["buckets"] or ()), math.inf), s["counts"]):
                total += n
                lines.append(f"{name}_bucket{_labeltext((*labels, ('le', floatToGoString(bound))))} "
                             f"{floatToGoString(total)}")
            lines.append(f"{name}_sum{_labeltext(labels)} {floatToGoString(s['sum'])}")
            lines.append(f"{name}_count{_labeltext(labels)} {floatToGoString(total)}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


_OWNER: ContextVar[Owner | None] = ContextVar("wsserve_custom_metrics_owner", default=None)


@contextlib.contextmanager
def owning(owner: Owner | None) -> Iterator[None]:
    """While the block runs, :func:`current_owner` is ``owner`` in this thread (a model's code at
    load, in ``execute``, in ``finalize``)."""
    token = _OWNER.set(owner)
    try:
        yield
    finally:
        _OWNER.reset(token)


def current_owner() -> Owner | None:
    """The :class:`Owner` of the model code running here (:func:`owning`), or None."""
    return _OWNER.get()
