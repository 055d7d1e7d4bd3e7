"""Shared fixtures: a real server on loopback, once per event-loop kind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import ServerProcess

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One weights cache for the test session (the first server start trains)."""
    path = os.environ.get("WSSERVE_TEST_CACHE_DIR")
    return Path(path) if path else tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session", params=LOOPS)
def server(request: pytest.FixtureRequest, model_cache: Path):
    """A default server (all models), once on the asyncio loop and once on uvloop."""
    proc = ServerProcess(cache_dir=model_cache, loop=request.param)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def server_url(server: ServerProcess) -> str:
    return server.url


@pytest.fixture
def start_server(model_cache: Path):
    """Factory for a server with extra flags; stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(*args: str, loop: str = "auto", **kwargs) -> ServerProcess:
        proc = ServerProcess(*args, cache_dir=model_cache, loop=loop, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
