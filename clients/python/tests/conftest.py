"""Fixtures for the client's tests: real ``wsserve serve`` processes on loopback.

The client package is imported from ``clients/python`` (added to ``sys.path`` here, so the
tests run from the repository root without installing it). The server is started as a
subprocess (``sys.executable -m wsserve serve --host 127.0.0.1 --port 0``); the client never
imports the server package.  Every server fixture runs once per WebSocket transport of the
server (``--transport websockets`` and ``picows``): the client must not care which one it meets.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CLIENT_ROOT = Path(__file__).resolve().parents[1]
if str(CLIENT_ROOT) not in sys.path:
    sys.path.insert(0, str(CLIENT_ROOT))

#: The server's WebSocket transports (``wsserve serve --transport``).
TRANSPORTS = ["websockets", "picows"]

_URL = re.compile(r"ws://127\.0\.0\.1:(\d+)")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Server:
    """One ``wsserve serve`` subprocess. ``start()`` blocks until the ``ws://`` line."""

    def __init__(self, *args: str, cache_dir: Path, port: int = 0, start_timeout: float = 60.0,
                 transport: str = "websockets") -> None:
        self.args = (*args, "--transport", transport)
        self.cache_dir = cache_dir
        self.port = port
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_lines: list[str] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", WSSERVE_CACHE_DIR=str(self.cache_dir))
        cmd = [sys.executable, "-m", "wsserve", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--log-level", "warning", *self.args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.proc = proc
        self.stderr_lines = []
        threading.Thread(target=self._pump_stderr, args=(proc,), daemon=True).start()
        found: list[int] = []
        ready = threading.Event()

        def read_stdout() -> None:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                m = _URL.search(raw.decode(errors="replace"))
                if m and not found:
                    found.append(int(m.group(1)))
                    ready.set()
            ready.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        if not ready.wait(self.start_timeout) or not found:
            self.kill()
            raise RuntimeError(f"server did not start: {' '.join(cmd)}\n{self.stderr_text()}")
        self.port = found[0]
        return self

    def _pump_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            self.stderr_lines.append(raw.decode(errors="replace"))

    def stderr_text(self) -> str:
        return "".join(self.stderr_lines)

    def kill(self) -> None:
        """SIGKILL: the process dies without closing its sockets cleanly."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    # -- HTTP (blocking; call through asyncio.to_thread from async tests) ----------------
    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.http + path, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, text = self.get("/metrics")
        assert status == 200, text
        out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            if m:
                labels = frozenset(_LABEL.findall(m.group(2) or ""))
                out[(m.group(1), labels)] = float(m.group(3))
        return out

    def requests_total(self, *, model: str, type: str, code: str) -> float:
        """``wsserve_requests_total{model,type,code}`` (0 when the series does not exist)."""
        key = ("wsserve_requests_total", frozenset({("model", model), ("type", type), ("code", code)}))
        return self.metrics().get(key, 0.0)

    async def ainflight(self) -> float:
        """The ``wsserve_inflight_requests`` gauge: unfinished requests on the whole server."""
        metrics = await asyncio.to_thread(self.metrics)
        return metrics[("wsserve_inflight_requests", frozenset())]

    async def arequests_total(self, *, model: str, type: str, code: str) -> float:
        return await asyncio.to_thread(self.requests_total, model=model, type=type, code=code)

    async def wait_requests_total(
        self, *, model: str, type: str, code: str, at_least: float, timeout: float = 5.0
    ) -> float:
        """Poll the counter until it reaches ``at_least`` (the server counts a request when
        its terminal frame is written, which may be just after the client saw it)."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.arequests_total(model=model, type=type, code=code)
            if value >= at_least or time.monotonic() > deadline:
                return value
            await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def client_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights cache shared by every server of the session (the first start trains)."""
    path = os.environ.get("WSSERVE_TEST_CACHE_DIR")
    return Path(path) if path else tmp_path_factory.mktemp("client-model-cache")


def _start(cache: Path, *args: str, port: int = 0, transport: str = "websockets") -> Server:
    return Server(*args, cache_dir=cache, port=port, transport=transport).start()


@pytest.fixture(scope="session", params=TRANSPORTS)
def server(request: pytest.FixtureRequest, client_model_cache: Path) -> Iterator[Server]:
    """A default server (greedy batching), shared by the session's tests."""
    srv = _start(client_model_cache, transport=request.param)
    yield srv
    srv.stop()


@pytest.fixture(scope="session", params=TRANSPORTS)
def slow_server(request: pytest.FixtureRequest, client_model_cache: Path) -> Iterator[Server]:
    """A server whose predict batches wait 2 s for company (``--max-delay-ms 2000``): a small
    predict stays queued long enough to be cancelled or to pass its deadline,
    deterministically."""
    srv = _start(client_model_cache, "--max-delay-ms", "2000", transport=request.param)
    yield srv
    srv.stop()


@pytest.fixture(params=TRANSPORTS)
def start_server(request: pytest.FixtureRequest, client_model_cache: Path) -> Iterator[Callable[..., Server]]:
    """Factory for a private server with extra flags, on each transport; stopped after the test."""
    started: list[Server] = []

    def start(*args: str, port: int = 0) -> Server:
        srv = _start(client_model_cache, *args, port=port, transport=request.param)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def url(server: Server) -> str:
    return server.url
