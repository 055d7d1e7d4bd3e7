"""Micro-benchmark: request-input validation, today's ``validate_inputs`` vs the repository's ``convert_inputs``.

Per call, on values exactly as ``orjson.loads`` hands them over:

- ``validate_inputs``: today's check (the rows stay Python lists; the pool converts a batch later);
- ``validate_inputs + np.array``: the same plus the float64 conversion today's pool does per batch,
  done per request here (a batch of one request costs this);
- ``convert_inputs``: the new check + conversion to the model's dtype, per request.

Medians of ``--repeat`` interleaved runs of ``timeit`` loops (each calibrated to ~0.2 s), timed
with ``time.process_time`` (this process's CPU time, which other processes on a shared machine do
not inflate), side by side in one process::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_inputs.py            # prints and writes results/inputs.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsserve.protocol import validate_inputs  # noqa: E402
from wsserve.repository import TensorSpec, check_inputs, convert_inputs  # noqa: E402

MAX_ROWS = 65536
MAX_ELEMENTS = 1 << 24


def _cases() -> list[tuple[str, Any, int, TensorSpec]]:
    rng = np.random.default_rng(0)

    def rows(n: int, d: int) -> Any:
        return orjson.loads(orjson.dumps(rng.standard_normal((n, d)).tolist()))

    return [
        ("linear, 1 row [[0.5]]", orjson.loads(b"[[0.5]]"), 1, TensorSpec("input", (1,), "float64")),
        ("mlp, 1 row x 32 (float32 model)", rows(1, 32), 32, TensorSpec("input", (32,), "float32")),
        ("mlp, 64 rows x 32 (float32 model)", rows(64, 32), 32, TensorSpec("input", (32,), "float32")),
        ("int64 input, 1 row x 8 ints", orjson.loads(b"[[1,2,3,4,5,6,7,8]]"), 8, TensorSpec("ids", (8,), "int64")),
    ]


def _side_by_side(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Median ns per call of each function; runs are interleaved (a, b, c, a, b, c, ...) so load drifts hit all."""
    timers = [timeit.Timer(fn, timer=time.process_time) for fn in fns]
    numbers = [t.autorange()[0] for t in timers]  # each run >= 0.2 s
    runs: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, (timer, number) in enumerate(zip(timers, numbers, strict=True)):
            runs[i].append(timer.timeit(number) / number * 1e9)
    return [statistics.median(r) for r in runs]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "inputs.md")
    args = ap.parse_args(argv)

    lines = [
        "## Input validation: validate_inputs vs convert_inputs",
        "",
        "Cost of checking one request's `inputs` (values as `orjson.loads` returns them). *validate_inputs* is "
        "today's check (rows stay lists; the pool converts a whole batch later) and *check_inputs* the new one "
        "used the same way (all dtypes and bounds checked, rows returned unconverted); *+ np.array* adds that "
        "conversion for this request alone (a batch of one); *convert_inputs* checks and converts to the "
        "model's dtype in one go (wsserve.repository.inputs).",
        "",
        f"`OPENBLAS_NUM_THREADS=1 python benchmarks/bench_inputs.py` — median of {args.repeat} interleaved "
        f"timeit runs, process CPU ns per call, Python {platform.python_version()}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start (shared machine).",
        "",
        "| inputs | validate_inputs | check_inputs | validate_inputs + np.array | convert_inputs | convert / (validate + np.array) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, value, width, spec in _cases():
        specs = [spec]
        old, check, old_np, new = _side_by_side(
            [
                lambda v=value, w=width: validate_inputs(v, w, MAX_ROWS),
                lambda v=value, s=specs: check_inputs(v, s, max_rows=MAX_ROWS, max_elements=MAX_ELEMENTS),
                lambda v=value, w=width: np.array(validate_inputs(v, w, MAX_ROWS), dtype=np.float64),
                lambda v=value, s=specs: convert_inputs(v, s, max_rows=MAX_ROWS, max_elements=MAX_ELEMENTS),
            ],
            args.repeat,
        )
        lines.append(f"| {label} | {old:,.0f} | {check:,.0f} | {old_np:,.0f} | {new:,.0f} | {new / old_np:.2f} |")
        print(lines[-1], flush=True)
    # Batch assembly: today the pool turns the rows of a batch into one array; with per-request
    # arrays it concatenates them instead.
    lines += [
        "",
        "Batch assembly in the pool, 64 single-row requests, ns per batch:",
        "",
        "| model | np.array(64 row lists) (today) | np.concatenate(64 [1, d] arrays) |",
        "|---|---:|---:|",
    ]
    for label, d, dtype in (("linear (d=1, float64)", 1, np.float64), ("mlp (d=32, float32)", 32, np.float32)):
        row_lists = [[0.5] * d for _ in range(64)]
        arrays = [np.full((1, d), 0.5, dtype=dtype) for _ in range(64)]
        lists_ns, concat_ns = _side_by_side(
            [lambda r=row_lists: np.array(r, dtype=np.float64), lambda a=arrays: np.concatenate(a)], args.repeat
        )
        lines.append(f"| {label} | {lists_ns:,.0f} | {concat_ns:,.0f} |")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
