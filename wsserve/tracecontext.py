"""W3C Trace Context (https://www.w3.org/TR/trace-context/): which ``traceparent`` values are usable.

Sans-I/O and import-light (no OpenTelemetry): :mod:`wsserve.protocol` checks a WebSocket
request's optional ``traceparent`` field with it, and :mod:`wsserve.tracing` hands only
checked values to the OpenTelemetry propagator.  A malformed value is *ignored* (W3C §3.2.2:
the receiver starts a new trace), never refused: tracing must not fail a request.
"""

from __future__ import annotations

import re

__all__ = ["MAX_TRACEPARENT_CHARS", "MAX_TRACESTATE_CHARS", "MAX_TRACESTATE_MEMBERS", "parse_traceparent", "parse_tracestate", "trace_fields"]

#: The longest ``traceparent`` kept: version 00 has exactly 55 characters; a later version may
#: append fields (W3C §3.2.4), which are dropped past this bound.
MAX_TRACEPARENT_CHARS = 256
#: The longest ``tracestate`` kept (W3C §3.3.1.5: 32 members; 512 characters is what every vendor
#: must propagate); a longer one is dropped, the traceparent kept.
MAX_TRACESTATE_CHARS = 512

#: The most list-members a ``tracestate`` may have (W3C §3.3.1.1); one with more is dropped whole.
MAX_TRACESTATE_MEMBERS = 32

# version - trace-id - parent-id - flags, then (only for a version above 00) more "-..." fields
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[ -~]*)?")
# a tracestate list-member (W3C §3.3.1.3): key "=" value; a key is a simple one or tenant@system
_TRACESTATE_MEMBER = re.compile(r"([a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
                                r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def trace_fields(traceparents: list[str], tracestates: list[str]) -> tuple[str | None, str | None]:
    """The ``traceparent`` and ``tracestate`` of a request whose HTTP headers (or gRPC metadata)
    carried these fields, in arrival order: a ``traceparent`` given more than once is none (W3C
    §3.2: not a usable parent, a new trace); several ``tracestate`` fields are one list, joined
    with commas (W3C §3.3.1, RFC 9110 §5.3).  Neither value is checked here (the tracer does)."""
    traceparent = traceparents[0] if len(traceparents) == 1 else None
    tracestate = ",".join(tracestates) if tracestates else None
    return traceparent, tracestate


def parse_traceparent(value: object) -> str | None:
    """``value`` if it is a usable W3C ``traceparent`` (lower-case hex, a version other than
    ``ff``, a trace id and a parent id not all zeros; extra fields only after a version above 00),
    else None.  Strings longer than :data:`MAX_TRACEPARENT_CHARS` and non-strings are None."""
    if type(value) is not str or len(value) > MAX_TRACEPARENT_CHARS:
        return None
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        return None
    version, trace_id, parent_id, _flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return value


def parse_tracestate(value: object) -> str | None:
    """``value`` if it is a W3C ``tracestate`` (W3C §3.3): a string of at most
    :data:`MAX_TRACESTATE_CHARS` characters, a comma-separated list of at most
    :data:`MAX_TRACESTATE_MEMBERS` ``key=value`` members with distinct keys (spaces and tabs around
    a member, and empty members, allowed), else None: the whole header is dropped (W3C lets a
    receiver discard a tracestate it cannot parse), the traceparent kept.  Checked here in full so
    that OpenTelemetry's parser, which logs a warning with the client's text for each bad
    header, never sees one."""
    if type(value) is not str or len(value) > MAX_TRACESTATE_CHARS:
        return None
    keys = set()
    for member in value.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        m = _TRACESTATE_MEMBER.fullmatch(member)
        if m is None or m.group(1) in keys:
            return None
        keys.add(m.group(1))
    if len(keys) > MAX_TRACESTATE_MEMBERS:
        return None
    return value
