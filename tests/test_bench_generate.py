"""benchmarks/bench_generate.py runs end to end (it once broke silently when the engine's
limits were renamed): engine mode, side by side against a checkout, a fragment with every part."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_side_by_side_engine_run_writes_a_complete_fragment(tmp_path: Path) -> None:
    out = tmp_path / "generate.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--mode", "engine", "--runs", "1",
           "--runs-per-process", "1", "--tokens", "3", "--concurrency", "1,64,256", "--before", str(ROOT),
           "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("## Token generation")
    for figure in ("tokens/s", "x one stream", "x per-request loop", "TTFT p99 ms", "CPU us/token",
                   "x one stream, by CPU/token", "1 stream CPU us/token"):
        assert re.search(rf"\| engine as served: {re.escape(figure)} \| [\d.,]+x? \| [\d.,]+x? \| [\d.]+ \|", text), figure
    # 64 streams x 3 tokens each, in every engine table, with a CPU figure per row
    assert len(re.findall(r"^\| 64 \| [\d,]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", text, re.MULTILINE)) == 6
    assert text.count("Targets at 64 streams") == 4
    assert "Reading (from CPU per token" in text
