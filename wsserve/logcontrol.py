"""Triton's logging extension: the server's log settings, read and changed at run time.

``GET /v2/logging``, ``POST /v2/logging`` and gRPC's ``LogSettings`` answer and change the
settings Triton defines, mapped onto Python's :mod:`logging` (what ``--log-level`` sets):

- ``log_info``, ``log_warning``, ``log_error`` (booleans): whether records of that severity
  are written (``log_error`` covers ``CRITICAL`` too);
- ``log_verbose_level`` (an integer, 0 to 2**32 - 1, as Triton's ``uint32``): 0 writes no
  ``DEBUG`` record; any other level writes them all (wsserve has one verbose level; the level
  set is reported back as set);
- ``log_file`` (a string): ``""``, the console (stderr), the only destination: a client may not
  make the server write a file of its choosing, so another value is refused;
- ``log_format`` (a string): ``--log-format``'s value (``text`` or ``json``), reported; setting
  it to another value is refused (the format is fixed when the server starts).

``--log-level debug`` starts with ``log_verbose_level`` 1, ``info`` with every severity on,
``warning`` with ``log_info`` off, ``error`` with ``log_info`` and ``log_warning`` off.  The
settings cover every record made through :mod:`logging`; ``--access-log`` is not one of them
(it is written apart, as the flag asks).

:func:`updated` is pure (the settings a request asks for, validated before anything changes:
a request with one bad setting changes none); :class:`LogControl` applies settings to the
process's root logger and its handlers.  Who may change them is the caller's rule (the model
repository extension's: an admin).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import BadRequest, Forbidden

__all__ = ["LOG_SETTINGS", "LogControl", "LogSettings", "MAX_VERBOSE_LEVEL", "settings_for_level", "updated"]

#: ``log_verbose_level``'s bound (Triton's ``uint32``).
MAX_VERBOSE_LEVEL = 2**32 - 1
#: The setting names, in the order they are answered.
LOG_SETTINGS = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")
_BOOLEANS = ("log_info", "log_warning", "log_error")


@dataclass(frozen=True, slots=True)
class LogSettings:
    """The settings as Triton names them (see the module docstring)."""

    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "text"
    log_file: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of ``GET /v2/logging`` (every setting)."""
        return {name: getattr(self, name) for name in LOG_SETTINGS}

    def lowest_level(self) -> int:
        """The lowest :mod:`logging` level written (``CRITICAL + 1`` when none is)."""
        for level, on in ((logging.DEBUG, self.log_verbose_level > 0), (logging.INFO, self.log_info),
                          (logging.WARNING, self.log_warning), (logging.ERROR, self.log_error)):
            if on:
                return level
        return logging.CRITICAL + 1

    def writes(self, level: int) -> bool:
        """Whether a record of ``level`` is written."""
        if level >= logging.ERROR:
            return self.log_error
        if level >= logging.WARNING:
            return self.log_warning
        if level >= logging.INFO:
            return self.log_info
        return self.log_verbose_level > 0


def settings_for_level(level: str, fmt: str = "text") -> LogSettings:
    """The settings ``--log-level level`` (``debug``, ``info``, ``warning``, ``error``) starts with."""
    level = level.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError(f"unknown log level {level!r}")
    return LogSettings(log_info=level in ("debug", "info"), log_warning=level != "error",
                       log_verbose_level=1 if level == "debug" else 0, log_format=fmt)


def updated(current: LogSettings, changes: Mapping[str, Any]) -> LogSettings:
    """``current`` with ``changes`` (a ``POST /v2/logging`` body, or gRPC's settings as plain
    values) applied.  Every setting is checked before any applies; raises
    :class:`~wsserve.errors.BadRequest` naming the first bad one: an unknown name, a value of
    the wrong type, a verbose level out of range, a ``log_file`` or ``log_format`` other than
    the current one."""
    for name in changes:
        if name not in LOG_SETTINGS:
            raise BadRequest(f"unknown log setting {str(name)[:64]!r}; known: {', '.join(LOG_SETTINGS)}")
    fields: dict[str, Any] = {}
    for name, value in changes.items():
        if name in _BOOLEANS:
            if type(value) is not bool:
                raise BadRequest(f"log setting {name!r} must be a boolean")
        elif name == "log_verbose_level":
            if type(value) is not int or not 0 <= value <= MAX_VERBOSE_LEVEL:
                raise BadRequest(f"log setting 'log_verbose_level' must be an integer in 0..{MAX_VERBOSE_LEVEL}")
        elif type(value) is not str:
            raise BadRequest(f"log setting {name!r} must be a string")
        elif name == "log_file" and value != current.log_file:
            raise BadRequest("log setting 'log_file' must be \"\": wsserve logs to stderr only (a client may not "
                             "choose a file for the server to write)")
        elif name == "log_format" and value != current.log_format:
            raise BadRequest(f"log setting 'log_format' is {current.log_format!r} (--log-format) and cannot be "
                             "changed while the server runs")
        fields[name] = value
    return replace(current, **fields)


class _SeverityFilter(logging.Filter):
    """Drops the records of the severities a :class:`LogSettings` turns off (on a handler: it
    sees every record that reaches the handler, whatever logger made it)."""

    def __init__(self, settings: LogSettings) -> None:
        super().__init__("wsserve.logcontrol")
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        return self.settings.writes(record.levelno)


class LogControl:
    """The process's log settings: :attr:`settings` now, :meth:`update` to change them.

    ``fixed``: why they cannot be changed here (e.g. under ``--workers``, where a request reaches
    one worker process of several), or None.  ``root``: the logger whose level and handlers
    carry the settings (the root logger by default)."""

    def __init__(self, settings: LogSettings, *, fixed: str | None = None, root: logging.Logger | None = None,
                 requires: type[logging.Filter] | None = None) -> None:
        self._root = logging.getLogger() if root is None else root
        self._filter = _SeverityFilter(settings)
        self.fixed = fixed
        self._requires = requires

    @classmethod
    def from_logging(cls, fmt: str = "text", *, fixed: str | None = None, root: logging.Logger | None = None,
                     requires: type[logging.Filter] | None = None) -> LogControl:
        """The settings the root logger's level gives (what ``--log-level`` set); levels between
        the named ones count as the next named one up.  ``requires``: changes are refused unless
        every handler of the root logger (and there is one) carries a filter of this class
        (the server's :class:`~wsserve.logs.RedactSecrets`: a program that embeds the server
        and logs through handlers of its own keeps its logging as it set it)."""
        root = logging.getLogger() if root is None else root
        level = root.getEffectiveLevel()
        name = ("debug" if level <= logging.DEBUG else "info" if level <= logging.INFO
                else "warning" if level <= logging.WARNING else "error")
        return cls(settings_for_level(name, fmt), fixed=fixed, root=root, requires=requires)

    def _not_ours(self) -> str | None:
        """Why the root logger's handlers may not be changed (see :meth:`from_logging`), or None."""
        if self._requires is None:
            return None
        handlers = self._root.handlers
        if handlers and all(any(isinstance(f, self._requires) for f in h.filters) for h in handlers):
            return None
        return ("changing log settings is not available: this server's process logs through handlers it did not "
                "set up (a program embedding it with log_level=None), which keep the program's settings and do not "
                "mask credentials")

    @property
    def settings(self) -> LogSettings:
        return self._filter.settings

    def update(self, changes: Mapping[str, Any], audit: Callable[[], None] | None = None) -> LogSettings:
        """Apply ``changes`` (see :func:`updated`) and return the settings now in force.  Raises
        :class:`~wsserve.errors.Forbidden` when :attr:`fixed` or the handlers are not the server's
        (see :meth:`from_logging`), ``BadRequest`` for a bad setting
        (nothing changes then).  ``audit`` (a warning record of the change) is called once the
        changes are checked, when there are any: before they apply if warnings were written, else
        after, so a change that turns warnings off or on is recorded either way."""
        if self.fixed is not None and changes:
            raise Forbidden(self.fixed)
        why = self._not_ours() if changes else None
        if why is not None:
            raise Forbidden(why)
        new = updated(self.settings, changes)
        before = self.settings.log_warning
        if changes and audit is not None and before:
            audit()
        self._apply(new)
        if changes and audit is not None and not before:
            audit()
        return new

    def _apply(self, new: LogSettings) -> None:
        self._filter.settings = new
        self._root.setLevel(min(new.lowest_level(), logging.CRITICAL))
        for handler in self._root.handlers:
            if self._filter not in handler.filters:
                handler.addFilter(self._filter)
