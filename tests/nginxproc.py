"""Run ``deploy/nginx.conf`` unprivileged on 127.0.0.1 in front of given backends (tests).

The deployed file is copied with only these rewritten (each rewrite must match, so a
change to the file that breaks the test setup fails loudly instead of testing something
else): the ``user`` line, ``pid``, ``error_log``, ``access_log``, the ``*_temp_path``
directories (into a temporary directory), ``listen 80`` (to ``127.0.0.1:PORT``) and the
upstream ``server`` lines (to the given backend ports, keeping their parameters).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from tests.support import wait_until

__all__ = ["DEPLOY_CONF", "NGINX", "NginxProcess", "free_port", "render_config"]

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def free_port() -> int:
    """A port free on 127.0.0.1 right now (nginx binds it just after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sub(pattern: str, repl: str, text: str, *, count: int | None = 1) -> str:
    new, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if n == 0 or (count is not None and n != count):
        raise AssertionError(f"deploy/nginx.conf: expected {count or 'some'} match(es) of {pattern!r}, found {n}")
    return new


def render_config(text: str, *, port: int, backends: list[int], workdir: Path) -> str:
    """The deployed config rewritten to run as this user on ``127.0.0.1:port``."""
    user = "user root;" if os.geteuid() == 0 else ""  # root: keep privileges for the temp dirs
    text = _sub(r"^user \S+;$", user, text)
    text = _sub(r"^pid \S+;$", f"pid {workdir}/nginx.pid;", text)
    text = _sub(r"^error_log \S+( \w+)?;$", rf"error_log {workdir}/error.log\1;", text)
    text = _sub(r"^(\s*)access_log \S+;$", rf"\1access_log {workdir}/access.log;", text)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        text = _sub(rf"^(\s*){kind}_temp_path \S+;$", rf"\1{kind}_temp_path {workdir}/{kind};", text)
    text = _sub(r"^(\s*)listen 80;$", rf"\1listen 127.0.0.1:{port};", text)
    servers = re.findall(r"^(\s*)server 127\.0\.0\.1:\d+( [^;\n]*)?;$", text, flags=re.MULTILINE)
    if len(servers) < 2:
        raise AssertionError("deploy/nginx.conf: expected two or more upstream server lines")
    indent, params = servers[0]
    text = _sub(r"^\s*server 127\.0\.0\.1:\d+( [^;\n]*)?;\n", "", text, count=len(servers))
    lines = "".join(f"{indent}server 127.0.0.1:{p}{params};\n" for p in backends)
    return _sub(r"^(\s*least_conn;\n)", rf"\1{lines}", text)


class NginxProcess:
    """``nginx -g 'daemon off;'`` with :func:`render_config` of ``deploy/nginx.conf``.

    ``url`` is ``ws://127.0.0.1:PORT``, ``http`` the same with ``http://``.
    Raises ``RuntimeError`` if nginx does not accept connections within ``start_timeout``.
    """

    def __init__(self, workdir: Path, backends: list[int], *, start_timeout: float = 20.0) -> None:
        if NGINX is None:
            raise RuntimeError("nginx is not installed")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(render_config(DEPLOY_CONF.read_text(), port=self.port, backends=backends, workdir=workdir))
        self.error_log = workdir / "error.log"
        check = subprocess.run([NGINX, "-t", "-q", "-p", str(workdir), "-e", str(self.error_log), "-c", str(self.conf)],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {check.stderr}")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(workdir), "-e", str(self.error_log), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.port}"

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        try:
            wait_until(listening, start_timeout)
        except AssertionError:
            self.stop()
            raise RuntimeError(f"nginx did not listen on {self.port}: {self.log_text()}") from None

    def log_text(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int:
        """Fast shutdown (SIGTERM to the master), bounded; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> NginxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
