"""Shared fixtures: real servers on loopback, on every WebSocket transport.

Every over-the-wire test runs on both transports (``--transport websockets``
and ``--transport picows``):

- ``server`` (one per session and kind): websockets on the asyncio loop and on
  uvloop, picows on uvloop (picows is what fast deployments run, on uvloop);
- ``start_server`` (a factory, per test): parametrized by ``transport``;
- module-scoped servers started with :class:`ServerProcess` take the
  ``module_transport`` fixture (each transport in turn) or are parametrized
  with :data:`tests.support.TRANSPORTS` themselves.

A test that pins one library's behaviour says so with
``@pytest.mark.only_transport("websockets", reason=...)``: it is skipped, with
that reason, on the other transport.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.support import TRANSPORTS, ServerProcess, interrupt_on_sigterm

LOOPS = ["asyncio", "uvloop"]
#: (loop, transport) of the session servers.
SERVERS = [("asyncio", "websockets"), ("uvloop", "websockets"), ("uvloop", "picows")]

# Property tests check behaviour, not speed: no per-example deadline (a loaded CI machine
# once took 277 ms for a case that takes 10 ms alone).
settings.register_profile("wsserve", deadline=None)
settings.load_profile("wsserve")


def pytest_configure(config: pytest.Config) -> None:
    interrupt_on_sigterm()  # a SIGTERMed session stops its servers too
    config.addinivalue_line(
        "markers", "only_transport(name, reason): run the test on that WebSocket transport only, with the reason why"
    )


def _only(request: pytest.FixtureRequest, transport: str) -> None:
    """Skip the test if it is marked for another transport."""
    marker = request.node.get_closest_marker("only_transport")
    if marker is not None and marker.args[0] != transport:
        reason = marker.kwargs.get("reason") or f"{marker.args[0]} only"
        pytest.skip(f"{marker.args[0]} only: {reason}")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One weights cache for the test session (the first server start trains)."""
    path = os.environ.get("WSSERVE_TEST_CACHE_DIR")
    return Path(path) if path else tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session", params=SERVERS, ids=[f"{t}-{loop}" for loop, t in SERVERS])
def _session_server(request: pytest.FixtureRequest, model_cache: Path):
    loop, transport = request.param
    proc = ServerProcess(cache_dir=model_cache, loop=loop, transport=transport)
    yield proc
    proc.stop()


@pytest.fixture
def server(request: pytest.FixtureRequest, _session_server: ServerProcess) -> ServerProcess:
    """A default server (all models): websockets on asyncio and on uvloop, picows on uvloop."""
    _only(request, _session_server.transport)
    return _session_server


@pytest.fixture
def openai_client(server: ServerProcess) -> Iterator[Any]:
    """The ``openai`` SDK (a client we did not write) pointed at ``server``'s ``/v1``; the test is
    skipped without the SDK (the test extra installs it)."""
    openai = pytest.importorskip("openai")
    c = openai.OpenAI(base_url=server.http + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield c
    c.close()


@pytest.fixture
def server_url(server: ServerProcess) -> str:
    return server.url


@pytest.fixture(params=TRANSPORTS)
def transport_name(request: pytest.FixtureRequest) -> str:
    """Each WebSocket transport in turn (skipped where the test is marked ``only_transport``)."""
    _only(request, request.param)
    return request.param


@pytest.fixture(scope="module", params=TRANSPORTS)
def module_transport(request: pytest.FixtureRequest) -> str:
    """Each WebSocket transport in turn, for a module's own servers (pass it as ``transport=``):
    every server of the module runs on the same one, so they are started once per transport."""
    return request.param


@pytest.fixture
def start_server(model_cache: Path, transport_name: str):
    """Factory for a server with extra flags, on each transport; stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(*args: str, loop: str = "auto", **kwargs) -> ServerProcess:
        kwargs.setdefault("transport", transport_name)
        proc = ServerProcess(*args, cache_dir=model_cache, loop=loop, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
