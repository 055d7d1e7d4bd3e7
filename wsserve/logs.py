"""Logging set-up for the server: one format, and credentials never reach a log line.

``websockets`` logs handshake headers (``Authorization: Bearer ...``) and frame
payloads (``{"type":"auth","token":...}``) at debug level, and truncates long
frames, so matching the configured keys exactly is not enough (a truncated key,
or a wrong key that is close to a real one, would still be written).
:class:`RedactSecrets` therefore masks, in every record whatever logger made it:

- the whole value of every ``Authorization`` header and of every ``Bearer`` token;
- the value of every ``"token"`` field of a frame, whatever it is, even when the
  frame was cut short in the middle of it: the rest of the line goes;
- the same in frames logged as hex bytes (binary frames);
- every configured secret, wherever it appears;
- and, before formatting, any frame object passed to a log call whose *whole*
  payload holds ``"token"`` (the library cuts long payloads short when it prints
  them, which could drop the field name and keep part of the value), and every
  fragment of a fragmented message (a field can be split across fragments): such
  frames are logged as their kind and size only.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson

__all__ = ["AccessLog", "JsonFormatter", "RedactSecrets", "configure_logging", "escape_log_text", "redact"]

MASK = "***"
_AUTHORIZATION = re.compile(r"(?i)(authorization\s*[:=]\s*)[^\r\n]*")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
# "token" then ':' and the rest of the line (escapes in printed frames make the value's end unreliable).
_TOKEN_FIELD = re.compile(r'("token"\s*:)[^\r\n]*')
# The same in hex dumps: 22 74 6f 6b 65 6e 22 is "token" (spaces between bytes or not).
_TOKEN_HEX = re.compile(r"(?i)(22 ?74 ?6f ?6b ?65 ?6e ?22)[0-9a-f .]*")


#: What :func:`escape_log_text` writes as an escape: ``"`` and ``\`` (a text holding them could end
#: a quoted field, or pass for an escape), C0 controls, DEL and C1 controls as ``\xHH`` (nginx's
#: escaping of its access log's fields); the Unicode line and paragraph separators as ``\u2028`` /
#: ``\u2029``; a lone surrogate as ``\xHH`` of the byte it stands for (``os.fsdecode``'s escape of a
#: file name's undecodable byte, U+DC80-U+DCFF), else as ``\uDXXX``.
_LOG_ESCAPES: dict[int, str] = {
    **{c: f"\\x{c:02X}" for c in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0xA0))},
    0x2028: "\\u2028", 0x2029: "\\u2029",
    **{c: f"\\u{c:04X}" for c in range(0xD800, 0xDC80)},
    **{c: f"\\x{c - 0xDC00:02X}" for c in range(0xDC80, 0xDD00)},
    **{c: f"\\u{c:04X}" for c in range(0xDD00, 0xE000)},
}
_PLAIN_LOG_TEXT = re.compile(r'[^\x00-\x1f"\\\x7f-\x9f\u2028\u2029\ud800-\udfff]*')


def escape_log_text(text: str) -> str:
    """``text`` from outside (a request target, a file or directory name read from disk) as a log
    line may hold it: every character of :data:`_LOG_ESCAPES` escaped, so it cannot end the line and
    forge another (a newline in a directory name), end a quoted field early, drive a terminal
    (``ESC``) or fail to encode (an undecodable byte). Text without any is returned as it is."""
    if _PLAIN_LOG_TEXT.fullmatch(text):
        return text
    return text.translate(_LOG_ESCAPES)


def redact(message: str, secrets: Iterable[str] = ()) -> str:
    """``message`` with credentials masked (see the module docstring)."""
    if "uthorization" in message or "UTHORIZATION" in message:
        message = _AUTHORIZATION.sub(r"\1" + MASK, message)
    if "earer" in message or "EARER" in message:
        message = _BEARER.sub(r"\1" + MASK, message)
    if '"token"' in message:
        message = _TOKEN_FIELD.sub(r"\1" + MASK, message)
    if "6f" in message or "6F" in message:
        message = _TOKEN_HEX.sub(r"\1 " + MASK, message)
    for secret in secrets:
        message = message.replace(secret, MASK)
    return message


def _longest_first(secrets: Iterable[str]) -> list[str]:
    """The non-empty ``secrets``, longest first (a secret holding another is masked whole)."""
    return sorted({s for s in secrets if s}, key=len, reverse=True)


class RedactSecrets(logging.Filter):
    """Mask credentials in a record's formatted message (see :func:`redact`)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = _longest_first(secrets)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The configured secrets (a worker process's filter gets the same)."""
        return tuple(self._secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_is_frame(a) for a in record.args):
            record.args = tuple(_frame_placeholder(a) if _is_frame(a) else a for a in record.args)
        message = record.getMessage()
        redacted = redact(message, self._secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_text is None:
            # Tracebacks are formatted later by the handler: redact their text too.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), self._secrets)
        return True


def _is_frame(value: object) -> bool:
    return hasattr(value, "opcode") and hasattr(value, "data") and hasattr(value, "fin")


def _frame_placeholder(frame: object) -> object:
    """The frame itself when it is safe to print, else a string with its kind and size."""
    data = bytes(getattr(frame, "data", b""))
    opcode = getattr(frame, "opcode", None)
    name = getattr(opcode, "name", str(opcode))
    fragment = not getattr(frame, "fin", True) or name == "CONT"
    if fragment or b'"token"' in data or b"token" in data and name in ("TEXT", "BINARY"):
        return f"{name} [{len(data)} bytes, not shown: may hold a credential]"
    return frame


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, ISO 8601 with milliseconds),
    ``level``, ``logger``, ``message``, ``worker`` (under ``--workers``) and ``exception`` (the
    traceback's text) when there is one.  Credentials are masked before, by
    :class:`RedactSecrets` (message and traceback alike)."""

    def __init__(self, worker: str | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        when = time.gmtime(record.created)
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", when) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if self.worker is not None:
            out["worker"] = self.worker
        if record.exc_info or record.exc_text:
            out["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return orjson.dumps(out, default=str).decode()


class AccessLog:
    """``--access-log``'s records (one per HTTP request answered), written to ``stream`` (stderr)
    in batches.

    :meth:`add` formats a record as the log's other records look (``fmt`` ``text``: logging's
    line, level ``INFO``, logger ``wsserve.access``, ``[worker N]`` under ``--workers``; ``json``:
    :class:`JsonFormatter`'s keys plus ``client``, ``request``, ``status``, ``bytes``,
    ``duration_ms`` and ``note``) and keeps it; :meth:`flush` writes every kept record in one
    write.  :meth:`add` returns True for the first record since the last flush: the caller then
    has the loop call :meth:`flush` (once per loop iteration, where logging's handler would write
    and flush each record: measured at twice a request's CPU, BENCHMARKS.md "Access log").
    ``client`` and ``request`` are masked as every record is (:func:`redact`, ``secrets``).  Not
    routed through :mod:`logging`: ``--log-level`` does not filter it (the flag asks for it)."""

    __slots__ = ("_json", "_secrets", "_worker", "_head", "_stream", "_pending", "_second", "_stamp")

    def __init__(self, fmt: str = "text", secrets: Iterable[str] = (), worker: str | None = None,
                 stream: Any = None) -> None:
        self._json = fmt == "json"
        self._secrets = _longest_first(secrets)
        self._worker = worker
        self._head = f" INFO [worker {worker}] wsserve.access: " if worker is not None else " INFO wsserve.access: "
        self._stream = stream
        self._pending: list[str] = []
        self._second = -1
        self._stamp = ""

    def add(self, client: str, request: str, status: int, size: int, ms: float, note: str = "") -> bool:
        """Keep one record; True when it is the first since the last :meth:`flush`."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S" if self._json else "%Y-%m-%d %H:%M:%S",
                                        time.gmtime(second) if self._json else time.localtime(second))
        millis = int((now - second) * 1000)
        client, request = redact(client, self._secrets), redact(request, self._secrets)
        message = f'{client} "{request}" {status} {size} {ms:.1f}ms' + (f" ({note})" if note else "")
        if self._json:
            out: dict[str, object] = {"time": f"{self._stamp}.{millis:03d}Z", "level": "INFO",
                                      "logger": "wsserve.access", "message": message}
            if self._worker is not None:
                out["worker"] = self._worker
            out.update(client=client, request=request, status=status, bytes=size, duration_ms=ms)
            if note:
                out["note"] = note
            line = orjson.dumps(out).decode() + "\n"
        else:
            line = f"{self._stamp},{millis:03d}{self._head}{message}\n"
        pending = self._pending
        pending.append(line)
        return len(pending) == 1

    def flush(self) -> None:
        """Write the records kept since the last flush (one write)."""
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        stream = self._stream or sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: the records are lost, the server goes on
            pass


def configure_logging(level: str, secrets: Iterable[str] = (), *, prefix: str | None = None,
                      fmt: str = "text") -> None:
    """Log to stderr at ``level`` with credentials redacted on every handler (``prefix``: e.g.
    ``worker 1``, written before the logger name; ``fmt``: ``text`` lines or ``json`` objects,
    :class:`JsonFormatter`)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(prefix.removeprefix("worker ") if prefix else None))
    else:
        head = f"[{prefix}] " if prefix else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {head}%(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
