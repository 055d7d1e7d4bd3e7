"""A raw-socket HTTP/1.1 client for tests: send any bytes, read answers exactly as they come.

Deliberately independent of the server's parser: responses are read by hand
(status line, headers, then ``Content-Length``, chunked, or to the end of the
connection), so tests see what a client would.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

__all__ = ["Answer", "RawHttp", "request_bytes"]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes
    raw_head: bytes = b""
    chunks: list[bytes] = field(default_factory=list)  # the chunks of a chunked body, in order

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def request_bytes(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                  version: str = "1.1") -> bytes:
    """A request with ``Host`` (``127.0.0.1`` unless ``headers`` has one) and (when there is a body)
    ``Content-Length``."""
    headers = dict(headers or {})
    lines = [f"{method} {path} HTTP/{version}", f"Host: {headers.pop('Host', '127.0.0.1')}"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class RawHttp:
    """One TCP connection to ``127.0.0.1:port``."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
        self.send(request_bytes(method, path, body, headers))
        return self.answer(head=method == "HEAD")

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"connection closed mid-line: {self.buf!r}")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"connection closed with {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def answer(self, *, head: bool = False) -> Answer:
        """Read one answer (skipping interim ``1xx`` ones unless they are all there is)."""
        while True:
            while b"\r\n\r\n" not in self.buf:
                if not self._fill():
                    raise ConnectionError(f"connection closed before an answer: {self.buf!r}")
            raw_head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            lines = raw_head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                continue
            answer = Answer(status, headers, b"", raw_head)
            if head or status in (204, 304):
                return answer
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int(self._line().split(b";")[0], 16)
                    if size == 0:
                        while self._line():  # trailers, then the empty line
                            pass
                        break
                    answer.chunks.append(self._exactly(size))
                    assert self._exactly(2) == b"\r\n"
                answer.body = b"".join(answer.chunks)
            elif "content-length" in headers:
                answer.body = self._exactly(int(headers["content-length"]))
            else:  # to the end of the connection
                while self._fill():
                    pass
                answer.body, self.buf = self.buf, b""
            return answer

    def interim(self) -> Answer:
        """Read one answer head, interim (``1xx``) ones included."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("connection closed before an answer")
        raw_head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        headers = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:])}
        return Answer(int(lines[0].split(" ", 2)[1]), headers, b"", raw_head)

    def closed(self) -> bool:
        """True when the server closed the connection (nothing more to read)."""
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:  # still open when the socket's timeout passed
            return False
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawHttp":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
