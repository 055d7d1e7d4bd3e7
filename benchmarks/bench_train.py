"""Start-up cost of the default models: cold training and warm cache loads, per model.

Every measurement runs in a fresh ``python`` process with ``OPENBLAS_NUM_THREADS=1``
calling :func:`wsserve.trainer.train_default_models` for one model: *cold* with
``cache=False``, *warm* from a cache the first warm run of that tree filled.
``--against DIR`` measures another checkout the same way (its ``wsserve``
imported through ``PYTHONPATH``), interleaved run by run, so both columns share
the machine's load.  Prints and writes ``results/train.md``: medians with the
range, and each model's held-out metric (which also shows whether the two trees
train the same weights).

    git archive f988082 | tar -x -C /tmp/base   # e.g. the commit before a change
    python -m benchmarks.bench_train --runs 5 --against /tmp/base --against-label f988082
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("linear", "mlp", "charlm")
_METRIC = {"linear": "heldout_mse", "mlp": "heldout_accuracy", "charlm": "heldout_bpc"}

_SNIPPET = """
import json, sys, time
from pathlib import Path
from wsserve.trainer import train_default_models
name, cache_dir, cache = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
t0 = time.perf_counter()
model = train_default_models(names=[name], cache_dir=cache_dir, cache=cache)[name]
seconds = time.perf_counter() - t0
import wsserve
print(json.dumps({"s": seconds, "metrics": model.info.metrics, "src": wsserve.__file__}))
"""


def _run(tree: Path, name: str, cache_dir: Path, cache: bool) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _SNIPPET, name, str(cache_dir), "1" if cache else "0"],
                         env=env, capture_output=True, text=True, check=True, timeout=600, cwd=tree)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["src"].startswith(str(tree)):
        raise RuntimeError(f"{tree}: imported wsserve from {result['src']}")
    return result


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per cell (default 5)")
    parser.add_argument("--against", type=Path, help="another checkout to measure side by side")
    parser.add_argument("--label", default="this tree", help="column label for this checkout")
    parser.add_argument("--against-label", help="column label for --against (default: its path)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated (default all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.md")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 50:
        parser.error("--runs must be in 1..50")
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    trees = [ROOT] + ([args.against.resolve()] if args.against else [])
    cold: dict[tuple[str, str], list[float]] = {}
    warm: dict[tuple[str, str], list[float]] = {}
    metric: dict[tuple[str, str], Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for rep in range(args.runs):
            for name in names:
                for i, tree in enumerate(trees):
                    key = (str(tree), name)
                    r = _run(tree, name, Path(tmp) / f"t{i}", cache=False)
                    cold.setdefault(key, []).append(r["s"])
                    metric[key] = r["metrics"].get(_METRIC[name])
                    if rep == 0:  # fill this tree's cache once; not timed
                        _run(tree, name, Path(tmp) / f"c{i}", cache=True)
                    w = _run(tree, name, Path(tmp) / f"c{i}", cache=True)
                    if w["metrics"].get("loaded_from_cache") is not True:
                        raise RuntimeError(f"{tree}: {name} was not loaded from the cache")
                    warm.setdefault(key, []).append(w["s"])
            print(f"run {rep + 1}/{args.runs} done", file=sys.stderr)

    labels = [args.label] + ([args.against_label or f"`{args.against}`"] if args.against else [])
    head = ["model"] + [f"cold s, {lab}" for lab in labels] + [f"warm s, {lab}" for lab in labels] \
        + [f"held-out metric, {lab}" for lab in labels]
    rows = []
    for name in names:
        keys = [(str(t), name) for t in trees]
        rows.append([name] + [_cell(cold[k]) for k in keys] + [_cell(warm[k]) for k in keys]
                    + [f"{_METRIC[name]} {metric[k]:.4g}" for k in keys])
    cmd = shlex.join(["python", "-m", "benchmarks.bench_train", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "## Start-up training and cache loads (per model)", "",
        (f"Command: `{cmd}`; {args.runs} runs per cell, each in a fresh process with one BLAS "
         "thread, trees interleaved run by run; median (min-max) seconds of "
         "`train_default_models` for one model (cold: `cache=False`; warm: cache hit). "
         "Seed 0."), "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
