"""Admission rules shared by every client connection, WebSocket or HTTP (sans-I/O: callers pass ``now``).

One place decides whether new work may start, so both front doors - the
WebSocket :class:`~wsserve.connection.Connection` and the HTTP
:class:`~wsserve.rest.HttpSession` - refuse the same things with the same
errors:

- :class:`Shared` - the server-wide state the connections share (draining,
  in-flight count, per-key rate buckets, unauthenticated sockets);
- :class:`Admission` - one connection's rate limit and capacity:
  :meth:`Admission.admit` (draining, the connection's and the API key's
  request rates) then :meth:`Admission.capacity` (``max_inflight`` requests and
  ``max_inflight_bytes`` of inputs), before any work is queued;
- :func:`check_bearer` - an ``Authorization: Bearer`` header against the keys,
  with the per-address limit on failed attempts;
- :func:`origin_allowed` - the browser ``Origin`` policy (allowlist, or by
  default only the server's own origin);
- :func:`client_address` - who the client is: the TCP peer, or behind a
  trusted reverse proxy (``--trusted-proxy``) the address it forwards;
- :func:`local_admin` - without keys, who may run admin operations (loopback
  clients, but not a request a proxy forwarded nor a browser page of another
  name: DNS rebinding);
  :class:`Handshake` carries it, with the key, from a vetted WebSocket handshake
  to its connection.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from .auth import KeyRegistry
from .config import Network, ServerConfig, proxy_networks
from .errors import Overloaded, RateLimited, ShuttingDown, Unauthorized
from .ratelimit import TokenBucket

__all__ = ["Admission", "Handshake", "PROXY_HEADERS", "Shared", "check_bearer", "client_address", "is_loopback",
           "local_admin", "origin_allowed", "proxied", "proxy_networks", "retry_ms", "slow_consumer_drop_at"]


@dataclass(eq=False)
class Shared:
    """State the connections of one server share (owned by the server, never global)."""

    draining: bool = False
    inflight: int = 0  # unfinished predict + generate, all connections (WebSocket and HTTP)
    messages: int = 0  # WebSocket messages received, all connections
    #: WebSocket connections not yet authenticated, oldest first (evicted for authenticated handshakes at the cap).
    unauthenticated: dict[Any, None] = field(default_factory=dict)
    evicting: int = 0  # evicted connections still closing
    key_buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def evict_unauthenticated(self) -> bool:
        """Close the oldest connection that has not authenticated (1008), to free its slot."""
        for victim in self.unauthenticated:
            del self.unauthenticated[victim]
            victim.evicted = True
            self.evicting += 1
            victim.close(1008, "connection slot needed by an authenticated client")
            return True
        return False


def retry_ms(wait_s: float) -> int:
    """A wait in seconds as a whole number of milliseconds, at least 1 (``retry_after_ms``)."""
    return max(1, int(wait_s * 1000 + 0.999))


def slow_consumer_drop_at(limit: int, unsent: int) -> int:
    """The slow-consumer rule's hard bound, every transport's: a connection whose unsent bytes just
    went over ``limit`` (``max_write_buffer_bytes``), ``unsent`` of them, is dropped at once if they
    grow past the returned value while it stays over: four times the limit, or what that write left
    when more (one answer bigger than that, written at once, is given the timeout to drain)."""
    return max(4 * limit, unsent)


class Admission:
    """One connection's admission state: its request-rate bucket (and the server's shared state).

    Call order, for each new predict or generate: :meth:`admit` (before decoding
    the model's inputs), then :meth:`capacity` (once the input size is known).
    Both raise; nothing is changed when they do (a request either rate limit
    refuses spends neither bucket), except the tokens a successful :meth:`admit`
    spent.
    """

    __slots__ = ("_cfg", "_shared", "_bucket", "_key_rate")

    def __init__(self, cfg: ServerConfig, shared: Shared, now: float) -> None:
        self._cfg = cfg
        self._shared = shared
        rate = cfg.rate_limit_per_s
        self._bucket = TokenBucket(rate, cfg.rate_burst(rate), now) if rate else None
        self._key_rate = cfg.key_rate_limit_per_s

    def admit(self, key: str | None, now: float) -> None:
        """May new work start?  Raises ``ShuttingDown`` while the server drains, ``RateLimited``
        (with ``retry_after_ms``) over this connection's or this API key's request rate."""
        shared = self._shared
        if shared.draining:
            raise ShuttingDown("server is draining; no new work is accepted")
        conn = self._bucket
        rate = self._key_rate
        keyed = None
        if rate is not None and key is not None:
            keyed = shared.key_buckets.get(key)
            if keyed is None:
                keyed = shared.key_buckets[key] = TokenBucket(rate, self._cfg.rate_burst(rate), now)
        # Both are checked before either is spent: a request one refuses costs the other nothing.
        if conn is not None:
            _check(conn, "this connection", now)
        if keyed is not None:
            _check(keyed, "this API key", now)
            keyed.take(now)
        if conn is not None:
            conn.take(now)

    def fresh(self, now: float) -> bool:
        """True when this connection's rate state is a new connection's (no per-connection limit,
        or its bucket has refilled): forgetting it then changes nothing (the gRPC front end forgets
        idle peers so)."""
        bucket = self._bucket
        return bucket is None or bucket.tokens + (now - bucket.stamp) * bucket.rate >= bucket.burst

    def capacity(self, inflight: int, inflight_bytes: int, nbytes: int) -> None:
        """Room for one more request of ``nbytes`` input bytes next to ``inflight`` unfinished
        ones holding ``inflight_bytes``?  Raises ``Overloaded`` (``retry_after_ms``).  With nothing
        in flight any single request is taken (it already fits ``max_message_bytes``)."""
        cfg = self._cfg
        if inflight >= cfg.max_inflight:
            raise Overloaded(
                f"this connection already has {cfg.max_inflight} unfinished requests (max_inflight)", retry_after_ms=10
            )
        if inflight_bytes and inflight_bytes + nbytes > cfg.max_inflight_bytes:
            raise Overloaded(
                f"this connection's unfinished requests hold {inflight_bytes} input bytes; this one needs "
                f"{nbytes} more and the limit is {cfg.max_inflight_bytes} (max_inflight_bytes)",
                retry_after_ms=10,
            )


def _check(bucket: TokenBucket, who: str, now: float) -> None:
    """Raise ``RateLimited`` unless ``bucket`` has a token now (nothing is spent)."""
    wait = bucket.wait(now)
    if wait > 0:
        raise RateLimited(f"rate limit of {bucket.rate:g} requests/s for {who} exceeded", retry_after_ms=retry_ms(wait))


def check_bearer(keys: KeyRegistry, address: str, authorization: str | None, now: float, *, metrics: bool = False) -> str:
    """The API key an ``Authorization: Bearer <key>`` header carries (``metrics``: the
    ``--metrics-key`` is accepted too, returned as ``""``).

    Raises ``RateLimited`` while ``address`` has failed too often (the token is not
    even looked at), ``Unauthorized`` for a missing or wrong key (a wrong one counts
    as a failed attempt of ``address``)."""
    wait = keys.blocked_for(address, now)
    if wait > 0:
        raise RateLimited("too many failed authentication attempts from this address", retry_after_ms=retry_ms(wait))
    token = KeyRegistry.bearer(authorization)
    if token is None:
        raise Unauthorized("an API key is required: Authorization: Bearer <key>")
    key = keys.match(token)
    if key is not None:
        return key
    if metrics and keys.match_metrics(token):
        return ""
    keys.failed(address, now)
    raise Unauthorized("invalid API key")


def origin_allowed(cfg: ServerConfig, origin: str, host: str | None) -> bool:
    """The browser ``Origin`` policy: ``--allow-origin`` entries (``*``: any), or by default
    only the server's own origin (``scheme://Host``: its demo page)."""
    if cfg.allow_origin is None:
        scheme = "https" if cfg.certfile else "http"
        return origin.lower() == f"{scheme}://{(host or '').lower()}"
    return "*" in cfg.allow_origin or origin in cfg.allow_origin


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a vetted WebSocket handshake grants its connection: the API key of a valid Bearer
    header (or None), and whether it may run admin operations on a server without keys
    (:func:`local_admin`)."""

    key: str | None
    local_admin: bool


def is_loopback(address: str) -> bool:
    """True for a client address on this machine (127.0.0.0/8, ::1)."""
    return address == "::1" or address.startswith("127.")


#: Headers a reverse proxy adds: the client of such a request is not the TCP peer.
PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")


def proxied(request: Any) -> bool:
    """True when ``request`` (an :class:`~wsserve.httpmsg.HttpRequest`) carries a header a reverse
    proxy adds (:data:`PROXY_HEADERS`): it was forwarded for a client elsewhere."""
    return any(request.header(name) is not None for name in PROXY_HEADERS)


def local_admin(address: str, origin: str | None, host: str | None, forwarded: bool = False) -> bool:
    """Without keys, may this client run admin operations (load, unload, reload)?

    A loopback client may, unless its request was ``forwarded`` by a proxy (:func:`proxied`:
    behind nginx on the same host every client's TCP peer is 127.0.0.1), or it is a browser
    page (it sent an ``Origin``) whose ``Host`` is not this machine's (``localhost`` or a
    loopback address): a page of a name its owner points at 127.0.0.1 after it loaded (DNS
    rebinding) reaches us from the victim's browser on loopback with an Origin equal to its
    Host, which the default origin policy lets in."""
    if forwarded or not is_loopback(address):
        return False
    return origin is None or (host is not None and _loopback_host(host))


def _loopback_host(host: str) -> bool:
    """True for a ``Host`` header value naming this machine: ``localhost``, ``127.x.y.z``, ``[::1]``
    (with or without a port)."""
    host = host.strip().lower()
    if host == "localhost" or host.startswith("localhost:"):
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


#: X-Forwarded-For hops looked at, from the right (the header is bounded by the HTTP limits anyway).
MAX_FORWARDED_HOPS = 32


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in ``text`` (``1.2.3.4``, ``::1``, ``[::1]``, with or without ``:port``), IPv4-mapped
    IPv6 as IPv4; None if it names none."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_address(peer: str, request: Any, proxies: tuple[Network, ...]) -> str:
    """Who sent ``request`` (an :class:`~wsserve.httpmsg.HttpRequest` from TCP peer ``peer``).

    The peer itself, unless it is one of the trusted ``proxies`` (:func:`proxy_networks`): then
    the rightmost ``X-Forwarded-For`` hop that is not a trusted proxy (a client may write hops of
    its own on the left, never on the right: each proxy appends the address it saw; several
    ``X-Forwarded-For`` lines are one list, in order, as a proxy that adds its own line after the
    client's sends them), else the last ``X-Real-IP``.  A hop that names no address stops the walk
    there, and the peer is kept; so is it when the proxy sent neither header.  Used for the
    failed-authentication budget, the admin rule, the compile slots' fair shares and logs;
    requests from untrusted peers are never read for it.  ``request`` has ``header_values(name)``
    (every value of a lower-case header name, in order)."""
    if not proxies:
        return peer
    address = _ip(peer)
    if address is None or not _trusted(address, proxies):
        return peer
    forwarded = request.header_values(b"x-forwarded-for")
    if forwarded:
        hops = ",".join(forwarded).split(",")
        for hop in reversed(hops[-MAX_FORWARDED_HOPS:]):
            hop_address = _ip(hop)
            if hop_address is None:
                return peer
            if not _trusted(hop_address, proxies):
                return str(hop_address)
        return peer
    reals = request.header_values(b"x-real-ip")
    real = reals[-1] if reals else None
    real_address = _ip(real) if real is not None else None
    return str(real_address) if real_address is not None else peer
