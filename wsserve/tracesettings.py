"""Triton's trace extension, sans-I/O: which requests get a span, read and changed at run time.

``GET``/``POST /v2/trace/setting``, ``/v2/models/{name}/trace/setting`` and gRPC's
``TraceSetting`` answer and change the settings Triton defines (each value a string, or a list of
strings for ``trace_level``), over wsserve's OpenTelemetry spans (``--otlp-traces-endpoint``):

- ``trace_level``: ``["OFF"]`` (no span) or ``["TIMESTAMPS"]`` (a span per request, with its
  timings); ``TENSORS`` is refused (a span holds no tensor values);
- ``trace_rate``: ``"N"``, one request in N gets a span (1 to 2**31 - 1);
- ``trace_count``: ``"-1"`` (no bound) or the number of spans still to make (0 to 2**31 - 1); it
  counts down as spans are made (not for a request the exporter's sampler leaves out: a
  ``traceparent`` its caller did not sample), and a change of it sets it anew (a change of ``trace_rate``
  alone leaves it, as Triton's does);
- ``log_frequency``: accepted and answered (0 to 2**31 - 1), no effect: spans are exported as they end;
- ``trace_file`` (``""``) and ``trace_mode`` (``"opentelemetry"``): answered, not changed (Triton
  refuses a trace file from the network too).

Settings are global, and a model may override any of them: its unset ones follow the global
ones.  A ``null`` value (gRPC: a setting with no value) clears it: a model's then follows the
global one again, a global one goes back to the server's start (``TIMESTAMPS``, rate 1, no count
with ``--otlp-traces-endpoint``; ``OFF`` without it, where a level other than ``OFF`` is
refused).  A model with a ``trace_rate`` or ``trace_count`` of its own counts its requests and
spans apart; the others share the global counts.

:class:`TraceControl` holds the settings and decides per request (:meth:`TraceControl.sample`,
a few dictionary lookups, before any span exists).  It never reads a clock or a socket.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_TRACE_MODELS", "MAX_TRACE_NUMBER", "TRACE_SETTINGS", "TraceControl", "TraceSettingError"]

#: The setting names, in the order they are answered.
TRACE_SETTINGS = ("trace_file", "trace_level", "trace_rate", "trace_count", "log_frequency", "trace_mode")
#: The largest ``trace_rate``, ``trace_count`` or ``log_frequency`` (Triton's are 32-bit).
MAX_TRACE_NUMBER = 2**31 - 1
#: Models with settings of their own, at most (each one a known model's).
MAX_TRACE_MODELS = 4096
_CHANGEABLE = ("trace_level", "trace_rate", "trace_count", "log_frequency")
_LEVELS = ("OFF", "TIMESTAMPS")
_INTEGER = re.compile(r"-?[0-9]{1,10}")


class TraceSettingError(ValueError):
    """A trace setting refused; the message names it (the routes answer it as ``bad_request``)."""


class _Counts:
    """One scope's sampling state: requests since the last span, spans still to make (-1: no bound)."""

    __slots__ = ("seen", "remaining")

    def __init__(self, remaining: int) -> None:
        self.seen = 0
        self.remaining = remaining


class TraceControl:
    """The trace settings of one server.  ``enabled``: spans can be exported
    (``--otlp-traces-endpoint``); without it the level stays ``OFF``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._defaults: dict[str, Any] = {"trace_level": ("TIMESTAMPS",) if enabled else ("OFF",), "trace_rate": 1,
                                          "trace_count": -1, "log_frequency": 0}
        self._global: dict[str, Any] = dict(self._defaults)
        self._models: dict[str, dict[str, Any]] = {}  # a model's own settings (only those it set)
        self._counts = _Counts(-1)  # the global scope's
        self._model_counts: dict[str, _Counts] = {}  # models with a rate or count of their own

    # -- reading

    def _effective(self, model: str | None) -> dict[str, Any]:
        own = self._models.get(model) if model is not None else None
        return {**self._global, **own} if own else self._global

    def settings(self, model: str | None = None) -> dict[str, Any]:
        """Every setting in force for ``model`` (None: the global ones), as Triton answers them."""
        s = self._effective(model)
        return {"trace_file": "", "trace_level": list(s["trace_level"]), "trace_rate": str(s["trace_rate"]),
                "trace_count": str(self._scope(model).remaining), "log_frequency": str(s["log_frequency"]),
                "trace_mode": "opentelemetry"}

    def _scope(self, model: str | None) -> _Counts:
        counts = self._model_counts.get(model) if model is not None else None
        return self._counts if counts is None else counts

    # -- changing

    def update(self, changes: Mapping[str, Any], model: str | None = None) -> dict[str, Any]:
        """Apply ``changes`` (name -> a string, a list of strings, or None to clear) to ``model``'s
        settings (None: the global ones) and answer :meth:`settings`.  Every setting is checked
        before any applies; raises :class:`TraceSettingError` naming the first bad one.
        Whether ``model`` exists is the caller's check."""
        parsed: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in TRACE_SETTINGS:
                raise TraceSettingError(f"unknown trace setting {str(name)[:64]!r}; known: {', '.join(TRACE_SETTINGS)}")
            if name == "trace_file":
                if value not in (None, "", [""], []):
                    raise TraceSettingError("trace setting 'trace_file' cannot be changed: wsserve's spans go to "
                                     "--otlp-traces-endpoint, not a file chosen over the network")
                continue
            if name == "trace_mode":
                if value not in (None, "opentelemetry", ["opentelemetry"], []):
                    raise TraceSettingError("trace setting 'trace_mode' is 'opentelemetry' and cannot be changed")
                continue
            parsed[name] = None if value is None or value == [] else _parse(name, value)
        level = parsed.get("trace_level")
        if level is not None and level != ("OFF",) and not self.enabled:
            raise TraceSettingError("trace setting 'trace_level' can only be OFF: this server exports no spans "
                             "(start it with --otlp-traces-endpoint)")
        if model is not None and model not in self._models and len(self._models) >= MAX_TRACE_MODELS:
            raise TraceSettingError(f"{MAX_TRACE_MODELS} models have trace settings of their own already")
        target = self._global if model is None else self._models.setdefault(model, {})
        for name, value in parsed.items():
            if value is None:
                if model is None:
                    target[name] = self._defaults[name]
                else:
                    target.pop(name, None)
            else:
                target[name] = value
        if model is not None and not target:
            del self._models[model]
        self._recount(model, parsed)
        return self.settings(model)

    def _recount(self, model: str | None, parsed: Mapping[str, Any]) -> None:
        """The counts after ``parsed`` changed ``model``'s settings (None: the global ones)."""
        if model is None:
            if "trace_count" in parsed or "trace_rate" in parsed:  # a rate alone keeps the spans left
                self._counts = _Counts(self._global["trace_count"] if "trace_count" in parsed else self._counts.remaining)
            if "trace_count" in parsed:  # the models counting apart without a count of their own follow it
                for name, counts in self._model_counts.items():
                    if "trace_count" not in self._models.get(name, {}):
                        counts.remaining = self._global["trace_count"]
            return
        own = self._models.get(model, {})
        if "trace_count" in own or "trace_rate" in own:
            old = self._model_counts.get(model)
            if "trace_count" in parsed or "trace_rate" in parsed or old is None:
                kept = old is not None and "trace_count" not in parsed  # a rate alone keeps the spans left
                self._model_counts[model] = _Counts(old.remaining if kept else self._effective(model)["trace_count"])
        else:
            self._model_counts.pop(model, None)

    # -- per request

    def sample(self, model: str | None) -> bool:
        """Whether the request for ``model`` (None: not known yet) gets a span; counts it (a span
        made: :meth:`pick` then :meth:`spend`)."""
        counts = self.pick(model)
        if counts is None:
            return False
        self.spend(counts)
        return True

    def pick(self, model: str | None) -> _Counts | None:
        """Whether the request for ``model`` (None: not known yet) may get a span, by the level,
        the rate (the request is counted) and the spans left: None, or the scope whose
        ``trace_count`` the span uses up once it is made (:meth:`spend`; a span the exporter's
        sampler leaves out is not one)."""
        own = self._models.get(model) if model is not None and self._models else None
        settings = {**self._global, **own} if own else self._global
        if settings["trace_level"] == ("OFF",):
            return None
        counts = self._model_counts.get(model, self._counts) if own else self._counts
        if counts.remaining == 0:
            return None
        counts.seen += 1
        if counts.seen < settings["trace_rate"]:
            return None
        counts.seen = 0
        return counts

    @staticmethod
    def spend(counts: _Counts) -> None:
        """A span was made in the scope :meth:`pick` answered: one fewer left (unless unbounded)."""
        if counts.remaining > 0:
            counts.remaining -= 1


def _parse(name: str, value: Any) -> Any:
    """One setting's value (a string, or for ``trace_level`` a list of strings) checked."""
    if name == "trace_level":
        levels = [value] if type(value) is str else value
        if type(levels) is not list or not levels or any(type(v) is not str for v in levels):
            raise TraceSettingError("trace setting 'trace_level' must be a list of levels (OFF, TIMESTAMPS)")
        unknown = [v for v in levels if v not in _LEVELS]
        if unknown:
            why = " (a span holds no tensor values)" if unknown[0] == "TENSORS" else ""
            raise TraceSettingError(f"trace setting 'trace_level': {unknown[0][:32]!r} is not served{why}; levels: OFF, "
                             "TIMESTAMPS")
        if "OFF" in levels and len(set(levels)) > 1:
            raise TraceSettingError("trace setting 'trace_level': OFF cannot be given with another level")
        return ("OFF",) if "OFF" in levels else ("TIMESTAMPS",)
    if type(value) is list and len(value) == 1:
        value = value[0]
    least = -1 if name == "trace_count" else 1 if name == "trace_rate" else 0
    if type(value) is not str or _INTEGER.fullmatch(value) is None:
        raise TraceSettingError(f"trace setting {name!r} must be an integer in a string, from {least} to {MAX_TRACE_NUMBER}")
    number = int(value)
    if not least <= number <= MAX_TRACE_NUMBER:
        raise TraceSettingError(f"trace setting {name!r} must be an integer in a string, from {least} to {MAX_TRACE_NUMBER}")
    return number
