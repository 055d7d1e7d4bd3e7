"""Credentials never reach a log line, whatever shape they arrive in (unit tests of the filter)."""

from __future__ import annotations

import logging

import pytest
from websockets.frames import Frame, Opcode

from wsserve.logs import RedactSecrets, escape_log_text, redact

KEY = "sk-live-" + "x" * 120  # longer than what the library prints of a frame


def _render(msg: str, *args: object, secrets: tuple[str, ...] = ()) -> str:
    record = logging.LogRecord("websockets.server", logging.DEBUG, __file__, 1, msg, args, None)
    assert RedactSecrets(secrets).filter(record)
    return record.getMessage()


@pytest.mark.parametrize(
    "line",
    [
        f"< Authorization: Bearer {KEY}",
        f"< authorization: {KEY}",
        "< Authorization: Bearer wrong-but-close-" + KEY[:20],
        f"> Bearer {KEY} in some other message",
        f'< TEXT \'{{"type":"auth","id":1,"token":"{KEY}"}}\' [140 bytes]',
        f'< TEXT \'{{"type":"auth","token": "{KEY[:30]}...\' [140 bytes]',  # cut short inside the value
        '< TEXT \'{"token":"with \\\\" an escaped quote and more"}\'',
    ],
)
def test_authorization_values_and_token_fields_are_masked(line: str) -> None:
    out = redact(line)
    assert KEY[:12] not in out and "close-" not in out and "escaped quote" not in out
    assert "***" in out


def test_a_frame_object_holding_a_token_is_not_printed_even_when_truncated() -> None:
    # The library prints the beginning and the end of long payloads: a long field before "token"
    # pushes the field name out of what is printed while the end of the key stays in.
    payload = ('{"type":"auth","id":"' + "p" * 200 + '","token":"' + KEY + '"}').encode()
    frame = Frame(Opcode.TEXT, payload)
    assert KEY[-20:] in str(frame) and '"token"' not in str(frame)  # the leak this guards against
    out = _render("< %s", frame)
    assert KEY[-20:] not in out and "not shown" in out


def test_fragments_are_never_printed_and_harmless_frames_still_are() -> None:
    part = Frame(Opcode.TEXT, b'{"type":"auth","tok', fin=False)
    assert "tok" not in _render("< %s", part)
    cont = Frame(Opcode.CONT, b'en":"' + KEY.encode() + b'"}')
    assert KEY[:12] not in _render("< %s", cont)
    ping = Frame(Opcode.TEXT, b'{"type":"ping","id":1}')
    assert '"ping"' in _render("< %s", ping)


def test_hex_dumps_of_binary_frames_are_masked_after_the_token_field() -> None:
    hexed = " ".join(f"{b:02x}" for b in f'{{"token":"{KEY[:10]}"}}'.encode())
    out = redact(f"< BINARY {hexed} [20 bytes]")
    assert " ".join(f"{b:02x}" for b in KEY[:10].encode()) not in out


def test_configured_secrets_are_masked_anywhere() -> None:
    assert _render("key %s seen", "abc123secret", secrets=("abc123secret",)) == "key *** seen"


@pytest.mark.parametrize(("text", "shown"), [
    ("plain/path 1.2_-é", "plain/path 1.2_-é"),  # nothing to escape: the same string
    ("1\n2024-01-01 00:00:00 ERROR forged", "1\\x0A2024-01-01 00:00:00 ERROR forged"),
    ("a\rb\tc\x00d\x1b[31me\x7f", "a\\x0Db\\x09c\\x00d\\x1B[31me\\x7F"),
    ('q"uote\\back', "q\\x22uote\\x5Cback"),  # so an escape in the text reads unambiguously
    ("c1\x85\x9bx", "c1\\x85\\x9Bx"),  # C1 controls: NEL, CSI
    ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),  # Unicode line/paragraph separators
    ("bad-" + "\udcff", "bad-\\xFF"),  # an undecodable byte of a file name (os.fsdecode's escape)
])
def test_escape_log_text_writes_controls_quotes_and_backslashes_as_escapes(text: str, shown: str) -> None:
    out = escape_log_text(text)
    assert out == shown
    assert len(out.splitlines()) == 1 and out.isprintable() and out.encode("utf-8")
