"""API keys: constant-time matching and a limit on failed attempts (sans-I/O: callers pass ``now``).

:class:`KeyRegistry` answers "which configured key is this token?" without
leaking timing, and counts *failed* attempts per client address in token
buckets so that keys cannot be guessed at speed:

- each address (an IPv6 client: its /64, which one client holds whole) may fail
  ``failures_per_minute`` times a minute (a bucket of that
  many, refilling continuously); while its bucket is empty, further attempts
  from it are refused without looking at the token (``retry_after`` says when
  one will be allowed again);
- the table of addresses is bounded (``max_addresses``): the least recently
  failing address is forgotten first, so a flood of addresses costs bounded memory.

The per-connection limit (a few failures, then the socket is closed) lives in
the connection that counts its own attempts.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable

from .ratelimit import TokenBucket

__all__ = ["KeyRegistry", "AUTH_FAILURES_PER_CONNECTION", "client_network"]

#: Failed ``auth`` messages a connection may send before it is closed (1008).
AUTH_FAILURES_PER_CONNECTION = 3


class KeyRegistry:
    """The configured API keys (and an optional metrics-only key)."""

    def __init__(
        self,
        keys: Iterable[str],
        *,
        admin_keys: Iterable[str] = (),
        metrics_key: str | None = None,
        failures_per_minute: float = 10.0,
        max_addresses: int = 10_000,
    ) -> None:
        """``keys``: the API keys; ``admin_keys`` are accepted as API keys too and
        also allow admin operations (load/unload/reload)."""
        self._admin = frozenset(admin_keys)
        # Tokens are compared with the keys' SHA-256 digests: equal lengths, so the time of a
        # comparison does not tell a guesser a key's length (hmac.compare_digest returns early
        # on a length mismatch).
        self._keys = tuple((_digest(k), k) for k in dict.fromkeys((*keys, *sorted(self._admin))))
        self._metrics_key = _digest(metrics_key) if metrics_key else None
        self._rate = failures_per_minute / 60.0
        self._burst = max(1.0, failures_per_minute)
        self._max_addresses = max_addresses
        self._failures: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """True when keys are configured (auth is required)."""
        return bool(self._keys)

    def match(self, token: str) -> str | None:
        """The configured key equal to ``token`` (compared in constant time, as digests), or None."""
        given = _digest(token)
        found = None
        for digest, key in self._keys:
            if hmac.compare_digest(given, digest):
                found = key
        return found

    def is_admin(self, key: str | None) -> bool:
        """True for an admin key (as returned by :meth:`match`)."""
        return key is not None and key in self._admin

    @property
    def admin_configured(self) -> bool:
        return bool(self._admin)

    def match_metrics(self, token: str) -> bool:
        """True for any API key and for the metrics key."""
        if self.match(token) is not None:
            return True
        return self._metrics_key is not None and hmac.compare_digest(_digest(token), self._metrics_key)

    def blocked_for(self, address: str, now: float) -> float:
        """Seconds until ``address`` may try a key again (0.0: it may now)."""
        bucket = self._failures.get(client_network(address))
        if bucket is None:
            return 0.0
        return bucket.wait(now)

    def failed(self, address: str, now: float) -> None:
        """Count a failed attempt from ``address``."""
        address = client_network(address)
        bucket = self._failures.get(address)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst, now)
            self._failures[address] = bucket
            if len(self._failures) > self._max_addresses:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(address)
        bucket.take(now)

    @staticmethod
    def bearer(header: str | None) -> str | None:
        """The token of an ``Authorization: Bearer <token>`` header value, or None (no header,
        another scheme).  The scheme is matched without regard to case (RFC 7235 §2.1)."""
        if header is None or header[:7].lower() != "bearer ":
            return None
        return header[7:].strip()


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def client_network(address: str) -> str:
    """Who a client address is: the address, or for IPv6 its /64 (one client holds a whole /64,
    2**64 source addresses); an IPv4-mapped address as IPv4.  Whose failure budget an attempt
    spends, and whose fair share of the compile slots a request counts against."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.partition("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
