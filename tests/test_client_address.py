"""Who the client is (wsserve.admission.client_address): the TCP peer, or behind a trusted proxy the
address it forwards.  Sans-I/O; the wire tests are in test_http_security.py."""

from __future__ import annotations

import pytest

from wsserve.admission import client_address, proxy_networks
from wsserve.config import ServerConfig, flag
from wsserve.httpmsg import HttpRequest

NGINX = proxy_networks(["127.0.0.1"])
MESH = proxy_networks(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])


def request(**headers: str) -> HttpRequest:
    return HttpRequest("GET", "/", "", [(n.lower().replace("_", "-").encode(), v.encode()) for n, v in headers.items()])


@pytest.mark.parametrize(("peer", "proxies", "headers", "client"), [
    ("127.0.0.1", (), {"x_forwarded_for": "203.0.113.7"}, "127.0.0.1"),  # no trusted proxy: the peer
    ("192.0.2.1", NGINX, {"x_forwarded_for": "203.0.113.7"}, "192.0.2.1"),  # an untrusted peer: never read
    ("127.0.0.1", NGINX, {"x_forwarded_for": "203.0.113.7"}, "203.0.113.7"),
    ("127.0.0.1", NGINX, {"x_forwarded_for": "198.51.100.2, 203.0.113.7"}, "203.0.113.7"),  # left: the client's own
    ("127.0.0.1", MESH, {"x_forwarded_for": "203.0.113.7, 10.1.2.3"}, "203.0.113.7"),  # proxies skipped from the right
    ("127.0.0.1", MESH, {"x_forwarded_for": "10.1.2.3, 10.4.5.6"}, "127.0.0.1"),  # only proxies: the peer
    ("127.0.0.1", NGINX, {"x_forwarded_for": "203.0.113.7, not-an-address"}, "127.0.0.1"),  # a bad hop: the peer
    ("127.0.0.1", NGINX, {"x_forwarded_for": "203.0.113.7:4711"}, "203.0.113.7"),
    ("127.0.0.1", NGINX, {"x_forwarded_for": "[2001:db8::7]:4711"}, "2001:db8::7"),
    ("127.0.0.1", NGINX, {"x_forwarded_for": "::ffff:203.0.113.7"}, "203.0.113.7"),
    ("127.0.0.1", NGINX, {"x_real_ip": "203.0.113.7"}, "203.0.113.7"),
    ("127.0.0.1", NGINX, {"x_real_ip": "garbage"}, "127.0.0.1"),
    ("127.0.0.1", NGINX, {}, "127.0.0.1"),  # the proxy said nothing
    ("::ffff:127.0.0.1", NGINX, {"x_real_ip": "203.0.113.7"}, "203.0.113.7"),  # a mapped peer is the IPv4 one
    ("fd00::5", MESH, {"x_forwarded_for": "2001:db8::9"}, "2001:db8::9"),
])
def test_the_client_is_the_last_hop_a_trusted_proxy_added(peer: str, proxies: tuple, headers: dict[str, str],
                                                          client: str) -> None:
    assert client_address(peer, request(**headers), proxies) == client


def test_several_forwarding_header_lines_are_one_list_read_from_the_right() -> None:
    """A proxy that adds its own ``X-Forwarded-For`` line after the client's (HAProxy's ``option
    forwardfor`` does) sent two lines: only the first was read, so the client's own line named
    whoever it liked (a fresh failed-key budget and compile share per guess).  The lines are one
    list (RFC 9110 §5.3); of several ``X-Real-IP`` lines, the last (the proxy's) counts."""
    def lines(name: bytes, *values: str) -> HttpRequest:
        return HttpRequest("GET", "/", "", [(name, v.encode()) for v in values])

    assert client_address("127.0.0.1", lines(b"x-forwarded-for", "198.51.100.2", "203.0.113.7"), NGINX) \
        == "203.0.113.7"
    assert client_address("127.0.0.1", lines(b"x-forwarded-for", "203.0.113.7", "10.1.2.3"), MESH) == "203.0.113.7"
    assert client_address("127.0.0.1", lines(b"x-real-ip", "198.51.100.2", "203.0.113.7"), NGINX) == "203.0.113.7"


def test_at_most_32_hops_are_read_from_the_right() -> None:
    """Past that many trusted hops the walk stops and the peer is kept (no client picked from far left)."""
    def hops(proxies: int) -> HttpRequest:
        return request(x_forwarded_for=", ".join(["203.0.113.7"] + ["10.0.0.1"] * proxies))

    assert client_address("127.0.0.1", hops(31), MESH) == "203.0.113.7"
    assert client_address("127.0.0.1", hops(32), MESH) == "127.0.0.1"


@pytest.mark.parametrize("value", ["nginx", "127.0.0.1/33", "", "10.0.0.0/8/8"])
def test_a_trusted_proxy_that_is_no_address_or_network_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=flag("trusted_proxy")):
        ServerConfig(trusted_proxy=(value,)).validate()
    assert ServerConfig(trusted_proxy=("127.0.0.1", "10.0.0.0/8", "::1")).validate()


def test_several_x_forwarded_for_metadata_entries_are_one_list() -> None:
    """gRPC metadata read by the same rule (its proxy's ``x-forwarded-for`` entry after the client's)."""
    service = pytest.importorskip("wsserve.oipgrpc.service")
    metadata = service._MetadataHeaders((("x-forwarded-for", "198.51.100.2"), ("x-forwarded-for", "203.0.113.7")))
    assert client_address("127.0.0.1", metadata, NGINX) == "203.0.113.7"
