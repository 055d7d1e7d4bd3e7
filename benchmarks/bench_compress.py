"""Compression of the ``mlp``: bytes, non-zero parameters, held-out accuracy, batch-256 latency.

Side by side, in one process, one BLAS / ONNX Runtime thread:

- the fp32 numpy ``mlp`` (seed 0) - the source;
- ``compress()`` outputs: int8; pruning 50% and 90%, global (the default)
  and per-layer, each without and with fine-tuning (2 epochs; 4 once);
- ONNX Runtime: the same weights as an ONNX graph, fp32 and dynamic int8
  (per-channel int8 weights, uint8 activations), the int8 file as ``wsserve compress --int8``
  writes it (``compress_onnx``: figures in its metadata).

Accuracy is on ``make_mlp_data(0)``'s 4000 held-out rows.  Latency: one
``predict`` (or ``session.run``) of 256 held-out rows; every model is timed
``--inner`` times per run, interleaved model by model, the run keeps the
median, and the table shows the median over ``--runs`` runs (ratios: median
of the per-run ratios).  Also: the cost of ``explain`` (integrated gradients,
128 steps) per row.  Writes ``benchmarks/results/compress.md``.

    python benchmarks/bench_compress.py             # ~1 min
    python benchmarks/bench_compress.py --runs 9
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from wsserve.compression import compress, load_model  # noqa: E402
from wsserve.compression.measure import heldout_accuracy, nonzero_parameters  # noqa: E402
from wsserve.compression.onnx_int8 import cpu_int8_features  # noqa: E402
from wsserve.explain import explain  # noqa: E402
from wsserve.models.mlp import make_mlp_data, train_mlp  # noqa: E402
from wsserve.repository import save_npz_model  # noqa: E402

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("int8", {"method": "int8"}),
    ("prune 50% global", {"method": "prune", "fraction": 0.5}),
    ("prune 50% global + finetune", {"method": "prune", "fraction": 0.5, "finetune": True}),
    ("prune 50% layer", {"method": "prune", "fraction": 0.5, "scope": "layer"}),
    ("prune 50% layer + finetune", {"method": "prune", "fraction": 0.5, "scope": "layer", "finetune": True}),
    ("prune 90% global", {"method": "prune", "fraction": 0.9}),
    ("prune 90% global + finetune", {"method": "prune", "fraction": 0.9, "finetune": True}),
    ("prune 90% global + finetune 4 epochs", {"method": "prune", "fraction": 0.9, "finetune": True,
                                              "finetune_epochs": 4}),
    ("prune 90% layer", {"method": "prune", "fraction": 0.9, "scope": "layer"}),
    ("prune 90% layer + finetune", {"method": "prune", "fraction": 0.9, "scope": "layer", "finetune": True}),
]


def _time_ms(fn: Any, inner: int) -> float:
    times = []
    for _ in range(inner):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _onnx(params: Any, tmp: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Any] | None:
    try:
        import onnxruntime

        from wsserve.compression.onnx_int8 import (
            build_mlp_onnx,
            compress_onnx,
            onnx_session,
            save_onnx,
        )
    except ImportError:
        return None
    fp32 = save_onnx(build_mlp_onnx(params), tmp / "onnx" / "1" / "model.onnx")
    # what `wsserve compress --int8` writes for a model.onnx (its figures in the file's metadata)
    int8 = Path(compress_onnx(fp32, tmp / "onnx" / "2", latency_runs=3)["path"])
    out: dict[str, Any] = {"version": onnxruntime.__version__}
    for name, path in (("fp32", fp32), ("int8", int8)):
        sess = onnx_session(path)
        probs = sess.run(None, {"x": x.astype(np.float32)})[0]
        out[name] = {"session": sess, "bytes": path.stat().st_size,
                     "acc": float((probs.argmax(1) == y).mean())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="timed runs (medians over them; default 7)")
    ap.add_argument("--inner", type=int, default=30, help="calls per model per run (default 30)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compress.md")
    args = ap.parse_args()
    if args.runs < 5:
        ap.error("--runs must be >= 5")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    with threadpool_limits(limits=1), tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        t0 = time.perf_counter()
        source = train_mlp(seed=0)
        train_s = time.perf_counter() - t0
        (tmp / "src").mkdir()
        save_npz_model(tmp / "src", "mlp", *source.to_arrays())
        _, (x, y) = make_mlp_data(0)
        batch = x[:256]
        rows: list[tuple[str, Any, dict[str, Any]]] = []
        src_bytes = (tmp / "src" / "model.npz").stat().st_size
        rows.append(("fp32 `mlp` (source)", load_model(tmp / "src"),
                     {"bytes": src_bytes, "parameters_nonzero": nonzero_parameters(source),
                      "heldout_accuracy": heldout_accuracy(source, x, y), "heldout_accuracy_delta": 0.0,
                      "architecture": "mlp", "secs": train_s}))
        for i, (label, kwargs) in enumerate(CONFIGS):
            t0 = time.perf_counter()
            report = compress(tmp / "src", tmp / f"v{i}", latency_runs=3, **kwargs)
            report["secs"] = time.perf_counter() - t0
            rows.append((label, load_model(tmp / f"v{i}"), report))
        onnx = _onnx(source.params, tmp, x, y)

        # -- timing: interleaved, medians
        fns: list[tuple[str, Any]] = [(label, (lambda m=m: m.predict(batch))) for label, m, _ in rows]
        if onnx:
            feed = {"x": batch.astype(np.float32)}
            for name in ("fp32", "int8"):
                fns.append((f"onnx {name}", (lambda s=onnx[name]["session"]: s.run(None, feed))))
        per_run: dict[str, list[float]] = {label: [] for label, _ in fns}
        for _ in range(2):  # warm-up
            for _, fn in fns:
                fn()
        for _ in range(args.runs):
            for label, fn in fns:
                per_run[label].append(_time_ms(fn, args.inner))
        src_label = rows[0][0]
        med = {k: statistics.median(v) for k, v in per_run.items()}
        ratio = {k: statistics.median(a / b for a, b in zip(v, per_run[src_label])) for k, v in per_run.items()}

        # -- explain cost
        model = rows[0][1]
        explain(model, x[:8])  # warm-up
        ig256 = statistics.median(_time_ms(lambda: explain(model, x[:256]), 1) for _ in range(5)) / 256
        ig1 = statistics.median(_time_ms(lambda: explain(model, x[:1]), 1) for _ in range(5))
        gaps = np.abs(explain(model, x).completeness_gap)

    cmd = "python benchmarks/bench_compress.py" + (f" --runs {args.runs}" if args.runs != 7 else "") + (
        f" --inner {args.inner}" if args.inner != 30 else "")
    lines = [
        "## Compression of `mlp` (int8, pruning, ONNX Runtime int8)",
        "",
        f"Command: `{cmd}` - {args.runs} runs x {args.inner} calls per model, interleaved; medians. "
        f"CPython {platform.python_version()}, numpy {np.__version__}"
        + (f", onnxruntime {onnx['version']}" if onnx else "")
        + f", one BLAS / ORT thread, {os.cpu_count()} cores (shared machine; load average {load:.1f} at the start). "
        f"CPU int8 dot-product flags: {', '.join(cpu_int8_features()) or 'none found'}.",
        "",
        "Held-out accuracy on the 4000 held-out rows of `make_mlp_data(0)` (source trained with seed 0). "
        "Latency: one `predict` of 256 rows; ratio = median over runs of (model / fp32 numpy `mlp`). "
        "`compress s`: wall time of one `compress()` call (including its own 3 timing runs; "
        "for the source: training).",
        "",
        "| version | architecture | bytes on disk | vs fp32 | non-zero params | held-out acc | Δ acc (points) "
        "| b256 ms | latency ratio | compress s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, _, rep in rows:
        lines.append(
            f"| {label} | `{rep['architecture']}` | {rep['bytes']:,} | {rep['bytes'] / src_bytes:.1%} "
            f"| {rep['parameters_nonzero']:,} | {rep['heldout_accuracy']:.4f} "
            f"| {100 * rep['heldout_accuracy_delta']:+.2f} | {med[label]:.3f} | {ratio[label]:.2f} "
            f"| {rep['secs']:.2f} |")
    if onnx:
        acc0 = rows[0][2]["heldout_accuracy"]
        for name in ("fp32", "int8"):
            o = onnx[name]
            lines.append(
                f"| ONNX Runtime {name}{' (dynamic, per-channel)' if name == 'int8' else ''} | onnx "
                f"| {o['bytes']:,} | {o['bytes'] / src_bytes:.1%} | - | {o['acc']:.4f} "
                f"| {100 * (o['acc'] - acc0):+.2f} | {med['onnx ' + name]:.3f} | {ratio['onnx ' + name]:.2f} | - |")
        r = statistics.median(a / b for a, b in zip(per_run["onnx int8"], per_run["onnx fp32"]))
        lines += ["", f"ONNX Runtime int8 vs ONNX Runtime fp32 at batch 256: latency ratio **{r:.2f}** "
                      f"({1 / r:.2f}x faster); this CPU advertises {', '.join(cpu_int8_features()) or 'no'} "
                      "int8 dot-product instructions (ONNX Runtime's MLAS has AVX512-VNNI / AVX-VNNI u8s8 GEMM kernels "
                      "that it picks by CPUID at run time; which kernel ran was not traced)."]
    else:
        lines += ["", "ONNX rows skipped: `pip install -e \".[onnx]\"` for onnx and onnxruntime."]
    lines += [
        "",
        "numpy int8 and sparse versions run a float32 GEMM after dequantizing/densifying once at load, "
        "so they save bytes, not time (ratio ~1.0).",
        "",
        f"`explain` on `mlp` (integrated gradients, 128 midpoint steps, float64): {ig256:.2f} ms per row "
        f"in a batch of 256, {ig1:.1f} ms for a single row (padded to a fixed 1024-point chunk); "
        f"completeness gap over the 4000 held-out rows: max {gaps.max():.4f}, p99 {np.quantile(gaps, 0.99):.4f} "
        "(probability units; stated bound 0.01).",
        "",
    ]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
