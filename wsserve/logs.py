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
from collections.abc import Iterable

__all__ = ["RedactSecrets", "configure_logging", "redact"]

MASK = "***"
_AUTHORIZATION = re.compile(r"(?i)(authorization\s*[:=]\s*)[^\r\n]*")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
# "token" then ':' and the rest of the line (escapes in printed frames make the value's end unreliable).
_TOKEN_FIELD = re.compile(r'("token"\s*:)[^\r\n]*')
# The same in hex dumps: 22 74 6f 6b 65 6e 22 is "token" (spaces between bytes or not).
_TOKEN_HEX = re.compile(r"(?i)(22 ?74 ?6f ?6b ?65 ?6e ?22)[0-9a-f .]*")


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


class RedactSecrets(logging.Filter):
    """Mask credentials in a record's formatted message (see :func:`redact`)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

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


def configure_logging(level: str, secrets: Iterable[str] = (), *, prefix: str | None = None) -> None:
    """Log to stderr at ``level`` with credentials redacted on every handler
    (``prefix``: e.g. ``worker 1``, written before the logger name)."""
    handler = logging.StreamHandler(sys.stderr)
    head = f"[{prefix}] " if prefix else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {head}%(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
