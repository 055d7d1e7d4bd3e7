"""The route table: ``(method, path pattern) -> handler``, with what 404, 405 and CORS need.

Patterns are literal paths (``/v2/health/live``) or have ``{name}`` segments
matching one non-empty path segment (``/v2/models/{name}/versions/{version}/infer``),
percent-decoded.  Literal paths are one dict lookup; patterns are tried by
segment count.  A trailing slash is ignored (``/v2/`` is ``/v2``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import unquote

from .errors import Style

__all__ = ["Auth", "Handler", "NO_PARAMS", "Route", "Router"]

#: Who may call a route when API keys are configured.
Auth = Literal["none", "key", "metrics"]
#: ``handler(request, exchange, params, key, cors_headers) -> response now, or None (answered later)``.
Handler = Callable[..., Any]

NO_PARAMS: Mapping[str, str] = MappingProxyType({})
#: Longest accepted path segment once decoded (model names, versions, file names).
MAX_SEGMENT = 256
#: Matched pattern paths remembered (``/v2/models/mlp/infer`` is matched once, then looked up).
CACHE_SIZE = 1024


@dataclass(slots=True)
class Route:
    """One path pattern and the handlers of its methods (``GET`` also answers ``HEAD``).

    ``methods_of``, when set, narrows the methods per matched path: ``methods_of(params)`` is the
    subset of :attr:`handlers` that path takes (KServe's ``/v1/models/{name}`` is ``GET`` for
    ``mlp`` and ``POST`` for ``mlp:predict``)."""

    pattern: str
    style: Style | None  # error body style; None: plain text
    auth: Auth
    handlers: dict[str, Handler] = field(default_factory=dict)
    methods_of: Callable[[Mapping[str, str]], Collection[str]] | None = None

    @property
    def allow(self) -> str:
        """The ``Allow`` header value of the pattern (every method it has a handler for)."""
        return _allow(self.handlers)

    def allow_for(self, params: Mapping[str, str]) -> str:
        """The ``Allow`` header value of one matched path."""
        return self.allow if self.methods_of is None else _allow(self.methods_of(params))

    def handler_for(self, method: str, params: Mapping[str, str]) -> Handler | None:
        """The handler of ``method`` (``HEAD``: ``GET``'s) on one matched path, or None (405)."""
        if method == "HEAD" and "HEAD" not in self.handlers:
            method = "GET"
        if self.methods_of is not None and method not in self.methods_of(params):
            return None
        return self.handlers.get(method)


def _allow(methods: Collection[str]) -> str:
    found = set(methods)
    if "GET" in found:
        found.add("HEAD")
    found.add("OPTIONS")
    return ", ".join(sorted(found))


class Router:
    def __init__(self) -> None:
        self._cache: dict[str, tuple[Route, Mapping[str, str]]] = {}
        self._exact: dict[str, Route] = {}
        self._patterns: dict[int, list[tuple[tuple[str | None, ...], tuple[str, ...], Route]]] = {}

    def add(self, method: str, pattern: str, handler: Handler, *, auth: Auth, style: Style | None) -> Route:
        """Register ``handler`` for ``method`` on ``pattern``.  Raises ``ValueError`` when the
        pattern already has that method, or its ``auth``/``style`` differ from an earlier
        registration of the same pattern."""
        route = self._find(pattern)
        if route is None:
            route = Route(pattern, style, auth)
            segments = tuple(pattern.strip("/").split("/"))
            if any(s.startswith("{") for s in segments):
                literals = tuple(None if s.startswith("{") else s for s in segments)
                names = tuple(s[1:-1] for s in segments if s.startswith("{"))
                self._patterns.setdefault(len(segments), []).append((literals, names, route))
            else:
                self._exact[pattern] = route
        elif route.auth != auth or route.style != style:
            raise ValueError(f"{pattern}: every method of a path has the same auth and error style")
        self._cache.clear()
        if method in route.handlers:
            raise ValueError(f"{method} {pattern} is already routed")
        route.handlers[method] = handler
        return route

    def _find(self, pattern: str) -> Route | None:
        if pattern in self._exact:
            return self._exact[pattern]
        for group in self._patterns.values():
            for _, _, route in group:
                if route.pattern == pattern:
                    return route
        return None

    def match(self, path: str) -> tuple[Route, Mapping[str, str]] | None:
        """The route for ``path`` and its decoded ``{name}`` values (read-only), or None (404)."""
        route = self._exact.get(path)
        if route is not None:
            return route, NO_PARAMS
        found = self._cache.get(path)
        if found is not None:
            return found
        found = self._match(path)
        if found is not None and len(path) <= 512:  # bounded: at most CACHE_SIZE short paths
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[path] = found
        return found

    def _match(self, path: str) -> tuple[Route, Mapping[str, str]] | None:
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
            route = self._exact.get(path)
            if route is not None:
                return route, NO_PARAMS
        segments = path[1:].split("/")
        for literals, names, route in self._patterns.get(len(segments), ()):
            values = []
            for want, got in zip(literals, segments, strict=True):
                if want is None:
                    if not got:
                        break
                    values.append(got)
                elif want != got:
                    break
            else:
                decoded = [unquote(v) if "%" in v else v for v in values]
                if any(len(v) > MAX_SEGMENT or "/" in v or "\x00" in v for v in decoded):
                    return None
                return route, MappingProxyType(dict(zip(names, decoded, strict=True)))
        return None
