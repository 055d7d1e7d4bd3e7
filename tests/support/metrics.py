"""Read a server's plain HTTP routes: ``GET`` anything, and ``/metrics`` parsed into numbers.

``/metrics`` is parsed with ``prometheus_client``'s own text-format parser, so a
sample is found by its name and labels, whatever order the server writes them in::

    m = scrape_metrics(server.http)
    m.value("wsserve_inflight_requests")                 # KeyError if there is no such series
    m.get("wsserve_requests_total", model="linear", type="predict", code="ok")  # 0.0 if absent

Blocking (``urllib``); from a coroutine call them through ``asyncio.to_thread`` (or
``wait_until_async(..., in_thread=True)``).
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Metrics", "http_get", "scrape_metrics"]

#: A sample's identity: its name and its set of ``(label, value)`` pairs.
SampleKey = tuple[str, frozenset[tuple[str, str]]]


def http_get(
    url: str, *, key: str | None = None, timeout_s: float = 10.0, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], bytes]:
    """``GET url`` → ``(status, headers, body)``; an HTTP error status is returned, not raised.

    ``key`` is sent as ``Authorization: Bearer KEY``.  Connection errors (refused, reset,
    timeout) raise ``OSError`` as ``urllib`` does.
    """
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@dataclass(frozen=True)
class Metrics:
    """One scrape: every sample's value by name and labels (immutable)."""

    samples: Mapping[SampleKey, float]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        """Parse Prometheus text exposition format; ``ValueError`` on malformed text."""
        samples: dict[SampleKey, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
        return cls(MappingProxyType(samples))

    def value(self, name: str, /, **labels: str) -> float:
        """The sample ``name{labels}`` (exactly these labels); ``KeyError`` listing the series
        of that name when there is no such sample."""
        try:
            return self.samples[(name, frozenset(labels.items()))]
        except KeyError:
            known = sorted(repr(dict(k[1])) for k in self.samples if k[0] == name)
            raise KeyError(f"no sample {name}{labels or ''}; series of that name: {known or 'none'}") from None

    def get(self, name: str, /, default: float = 0.0, **labels: str) -> float:
        """The sample ``name{labels}``, or ``default`` when absent (a labelled counter appears
        only once it is first incremented, so absent means 0 for counters)."""
        return self.samples.get((name, frozenset(labels.items())), default)

    def sum(self, name: str, /, **labels: str) -> float:
        """The sum over every series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def has(self, name: str, /, **labels: str) -> bool:
        """Whether the sample ``name{labels}`` exists."""
        return (name, frozenset(labels.items())) in self.samples


def scrape_metrics(http: str, *, key: str | None = None, timeout_s: float = 10.0) -> Metrics:
    """``GET {http}/metrics`` (with ``Bearer key`` if given), parsed.

    ``http`` is the server's ``http://HOST:PORT`` base.  Raises ``AssertionError`` with the
    status and the start of the body when the answer is not 200.
    """
    status, _, body = http_get(http + "/metrics", key=key, timeout_s=timeout_s)
    if status != 200:
        raise AssertionError(f"GET {http}/metrics: {status} {body[:200]!r}")
    return Metrics.parse(body.decode())
