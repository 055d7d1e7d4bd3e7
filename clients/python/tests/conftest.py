"""Fixtures for the client's tests: real ``wsserve serve`` processes on loopback.

The client package is imported from ``clients/python`` (added to ``sys.path`` here, so the
tests run from the repository root without installing it), and the shared test support
(``tests.support``) from the repository root.  Servers are subprocesses started through the
CLI (:class:`tests.support.ServerProcess`); the client never imports the server package.
Every server fixture runs once per WebSocket transport of the server (``--transport
websockets`` and ``picows``): the client must not care which one it meets.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

CLIENT_ROOT = Path(__file__).resolve().parents[1]
REPO_ROOT = CLIENT_ROOT.parents[1]
for _path in (REPO_ROOT, CLIENT_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from tests.support import TRANSPORTS, ServerProcess, interrupt_on_sigterm  # noqa: E402

#: Flags of every server here (the client tests read no server log).
QUIET = ("--log-level", "warning")

# Property tests check behaviour, not speed: no per-example deadline (a loaded CI machine
# once took 277 ms for a case that takes 10 ms alone).
settings.register_profile("wsserve", deadline=None)
settings.load_profile("wsserve")


def pytest_configure(config: pytest.Config) -> None:
    interrupt_on_sigterm()  # a SIGTERMed session stops its servers too


@pytest.fixture(scope="session")
def client_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights cache shared by every server of the session (the first start trains)."""
    path = os.environ.get("WSSERVE_TEST_CACHE_DIR")
    return Path(path) if path else tmp_path_factory.mktemp("client-model-cache")


@pytest.fixture(scope="session", params=TRANSPORTS)
def server(request: pytest.FixtureRequest, client_model_cache: Path) -> Iterator[ServerProcess]:
    """A default server (greedy batching), shared by the session's tests, on each transport."""
    with ServerProcess(*QUIET, cache_dir=client_model_cache, transport=request.param) as srv:
        yield srv


@pytest.fixture(scope="session", params=TRANSPORTS)
def slow_server(request: pytest.FixtureRequest, client_model_cache: Path) -> Iterator[ServerProcess]:
    """A server whose predict batches wait 2 s for company (``--max-delay-ms 2000``): a small
    predict stays queued long enough to be cancelled or to pass its deadline,
    deterministically."""
    with ServerProcess(*QUIET, "--max-delay-ms", "2000", cache_dir=client_model_cache,
                       transport=request.param) as srv:
        yield srv


@pytest.fixture(params=TRANSPORTS)
def start_server(request: pytest.FixtureRequest, client_model_cache: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory for a private server with extra flags (``port=`` to reuse a port), on each
    transport; stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, port: int = 0) -> ServerProcess:
        srv = ServerProcess(*QUIET, *args, cache_dir=client_model_cache, port=port, transport=request.param)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def url(server: ServerProcess) -> str:
    return server.url
