"""Run ``deploy/nginx.conf`` unprivileged on 127.0.0.1 in front of given backends (tests).

The deployed file is copied with only these rewritten (each rewrite must match, so a
change to the file that breaks the test setup fails loudly instead of testing something
else): the ``user`` line, ``pid``, ``error_log``, ``access_log``, the ``*_temp_path``
directories (into a temporary directory), ``listen 80`` and ``listen 8001 http2`` (to
``127.0.0.1:PORT`` and another free port) and each upstream's ``server`` lines (to the given
backend ports, keeping their parameters).
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

__all__ = ["DEPLOY_CONF", "NGINX", "NginxProcess", "free_port", "free_ports", "render_config"]

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def free_port() -> int:
    """A port free on 127.0.0.1 right now (nginx binds it just after)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now: held open together while they are picked,
    so the kernel cannot hand the same one out twice (two nginx servers on one port would merge
    into one listener, HTTP/2 for both)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _sub(pattern: str, repl: str, text: str, *, count: int | None = 1) -> str:
    new, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if n == 0 or (count is not None and n != count):
        raise AssertionError(f"deploy/nginx.conf: expected {count or 'some'} match(es) of {pattern!r}, found {n}")
    return new


def _upstream(text: str, name: str, backends: list[int]) -> str:
    """``upstream name {...}``'s ``server 127.0.0.1:PORT ...;`` lines (two or more) replaced by one
    per port of ``backends``, keeping the first line's parameters."""
    block = re.search(rf"^\s*upstream {name} \{{\n(.*?)^\s*\}}\n", text, flags=re.MULTILINE | re.DOTALL)
    if block is None:
        raise AssertionError(f"deploy/nginx.conf: no upstream {name}")
    body = block.group(1)
    servers = re.findall(r"^(\s*)server 127\.0\.0\.1:\d+( [^;\n]*)?;$", body, flags=re.MULTILINE)
    if len(servers) < 2:
        raise AssertionError(f"deploy/nginx.conf: expected two or more server lines in upstream {name}")
    indent, params = servers[0]
    body = _sub(r"^\s*server 127\.0\.0\.1:\d+( [^;\n]*)?;\n", "", body, count=len(servers))
    body = _sub(r"^(\s*least_conn;\n)", "\\1" + "".join(f"{indent}server 127.0.0.1:{p}{params};\n" for p in backends), body)
    return text[:block.start(1)] + body + text[block.end(1):]


def render_config(text: str, *, port: int, backends: list[int], workdir: Path, grpc_port: int,
                  grpc_backends: list[int]) -> str:
    """The deployed config rewritten to run as this user on ``127.0.0.1:port`` (HTTP and
    WebSocket, in front of ``backends``) and ``127.0.0.1:grpc_port`` (gRPC, in front of
    ``grpc_backends``)."""
    user = "user root;" if os.geteuid() == 0 else ""  # root: keep privileges for the temp dirs
    text = _sub(r"^user \S+;$", user, text)
    text = _sub(r"^pid \S+;$", f"pid {workdir}/nginx.pid;", text)
    text = _sub(r"^error_log \S+( \w+)?;$", rf"error_log {workdir}/error.log\1;", text)
    text = _sub(r"^(\s*)access_log \S+;$", rf"\1access_log {workdir}/access.log;", text)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        text = _sub(rf"^(\s*){kind}_temp_path \S+;$", rf"\1{kind}_temp_path {workdir}/{kind};", text)
    text = _sub(r"^(\s*)listen 80;$", rf"\1listen 127.0.0.1:{port};", text)
    text = _sub(r"^(\s*)listen 8001 http2;$", rf"\1listen 127.0.0.1:{grpc_port} http2;", text)
    text = _upstream(text, "wsserve", backends)
    return _upstream(text, "wsserve_grpc", grpc_backends)


class NginxProcess:
    """``nginx -g 'daemon off;'`` with :func:`render_config` of ``deploy/nginx.conf``.

    ``url`` is ``ws://127.0.0.1:PORT``, ``http`` the same with ``http://``, ``grpc`` the gRPC
    server's ``127.0.0.1:PORT`` (in front of ``grpc_backends``, by default ``backends``).
    Raises ``RuntimeError`` if nginx does not accept connections within ``start_timeout``.
    """

    def __init__(self, workdir: Path, backends: list[int], *, grpc_backends: list[int] | None = None,
                 start_timeout: float = 20.0) -> None:
        if NGINX is None:
            raise RuntimeError("nginx is not installed")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.grpc_port = free_ports(2)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(render_config(DEPLOY_CONF.read_text(), port=self.port, backends=backends, workdir=workdir,
                                           grpc_port=self.grpc_port, grpc_backends=grpc_backends or backends))
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
        self.grpc = f"127.0.0.1:{self.grpc_port}"  # the gRPC server's address (tritonclient.grpc's url)

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
