"""Start a real ``wsserve serve`` in a subprocess for integration tests.

Used by ``tests/conftest.py`` and importable by other test suites
(``from tests.serverproc import ServerProcess``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["ServerProcess", "TRANSPORTS"]

#: The server's WebSocket transports (``--transport``): every wire test runs on each.
TRANSPORTS = ["websockets", "picows"]

_URL = re.compile(rb"(wss?)://([0-9.]+|\[[0-9a-f:]+\]|localhost):(\d+)")


class ServerProcess:
    """``python -m wsserve serve --host 127.0.0.1 --port 0 ARGS [--transport T]`` until ``stop()``.

    ``url`` is the ``ws://`` URL printed by the server; ``http`` the same as
    ``http://``; ``stderr_text()`` what it logged so far.
    """

    def __init__(self, *args: str, cache_dir: Path | None = None, loop: str = "auto", port: int = 0,
                 env: dict[str, str] | None = None, start_timeout: float = 60.0, transport: str | None = None) -> None:
        cmd = [sys.executable, "-m", "wsserve", "serve", "--host", "127.0.0.1", "--port", str(port), "--loop", loop, *args]
        if transport is not None:
            cmd += ["--transport", transport]
        self.transport = transport or "websockets"
        full_env = dict(os.environ)
        full_env.setdefault("OPENBLAS_NUM_THREADS", "1")
        if cache_dir is not None:
            full_env["WSSERVE_CACHE_DIR"] = str(cache_dir)
        if env:
            full_env.update(env)
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env)
        self._stderr: list[bytes] = []
        self._stdout: list[bytes] = []
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._stderr), daemon=True).start()
        deadline = time.monotonic() + start_timeout
        line = b""
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self._stdout.append(line)
            match = _URL.search(line)
            if match:
                scheme, host, port_text = match.groups()
                self.port = int(port_text)
                self.url = f"{scheme.decode()}://{host.decode()}:{self.port}"
                self.http = self.url.replace("ws", "http", 1)
                threading.Thread(target=self._pump, args=(self.proc.stdout, self._stdout), daemon=True).start()
                return
        self.proc.kill()
        self.proc.wait()
        time.sleep(0.1)
        raise RuntimeError(f"server did not start: {line!r}\n{self.stderr_text()}")

    @staticmethod
    def _pump(stream, sink: list[bytes]) -> None:
        for line in iter(stream.readline, b""):
            sink.append(line)

    def stderr_text(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM and wait (kill after 30 s); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
