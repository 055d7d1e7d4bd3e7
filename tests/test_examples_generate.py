"""``examples/generate.py`` against a real server: the streamed text, and with ``--logprobs K`` the
table of each token's probability and the K likeliest tokens (from the token frames)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from tests.support import Conn

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "generate.py"


def _run(url: str, *args: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, str(EXAMPLE), "--url", url, *args], capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout, done.stderr


async def test_the_example_prints_the_text_and_the_logprobs_table(server_url: str) -> None:
    conn = await Conn.open(server_url)
    await conn.send({"type": "generate", "id": "g", "model": "charlm", "prompt": "The ", "max_tokens": 6,
                     "logprobs": 2})
    frames, _ = await conn.until_terminal("g")
    await conn.close()
    text = "".join(f["text"] for f in frames)
    out, err = _run(server_url, "--max-tokens", "6")
    assert out.startswith("The " + text) and "[length: 6 tokens" in err
    out, _ = _run(server_url, "--max-tokens", "6", "--logprobs", "2")
    head, table = out.split("token   prob   likeliest\n")
    assert head.rstrip("\n") == "The " + text
    rows = table.rstrip("\n").split("\n")

    def pct(logprob: float) -> str:
        return f"{100 * math.exp(logprob):5.1f}%"

    assert rows == [f"{f['text']!r:>5} {pct(f['logprob'])}   "
                    + "  ".join(f"{t['text']!r} {pct(t['logprob'])}" for t in f["top_logprobs"]) for f in frames]
