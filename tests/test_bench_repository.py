"""benchmarks/bench_repository.py's parts: the ONNX MLPs, the naive ONNX peer, the swapper, the report's verdicts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from benchmarks.bench_repository import Swapper, render  # noqa: E402
from benchmarks.onnx_mlp import mlp_weights, onnx_mlp, parameters, write_npz, write_onnx  # noqa: E402
from benchmarks.run import median_of  # noqa: E402
from tests.support import Conn, ServerProcess, wait_until  # noqa: E402


def _reference(weights: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64)
    for i, (w, b) in enumerate(weights):
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    e = np.exp(h - h.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_onnx_graph_and_the_npz_model_compute_the_same_mlp(tmp_path: Path) -> None:
    from wsserve.repository import ModelConfig, load_version

    dims = (8, 16, 16, 3)
    weights = mlp_weights(dims, seed=3)
    assert parameters(dims) == sum(w.size + b.size for w, b in weights)
    x = np.random.default_rng(0).random((5, 8)).astype(np.float32)
    session = ort.InferenceSession(onnx_mlp(weights), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], _reference(weights, x), rtol=1e-5)
    write_npz(tmp_path / "m" / "1", weights)
    npz = load_version("m", 1, tmp_path / "m" / "1", ModelConfig())
    np.testing.assert_allclose(npz.predict(x), _reference(weights, x), rtol=1e-5)


async def test_the_naive_onnx_peer_speaks_enough_protocol_for_the_load_tool(tmp_path: Path) -> None:
    weights = mlp_weights((4, 8, 2), seed=5)
    path = write_onnx(tmp_path / "tiny" / "1", weights)
    peer = ServerProcess.from_command([sys.executable, "benchmarks/peers/naive_onnx_server.py", "--port", "0",
                                       "--model", f"tiny={path}"])
    try:
        conn = await Conn.open(peer.url)
        (listed,) = (await conn.request({"type": "models", "id": 1}))["models"]
        assert (listed["name"], listed["input_shape"], listed["output_shape"]) == ("tiny", [4], [2])
        rows = [[0.1, 0.2, 0.3, 0.4], [1, -1, 1, -1]]
        reply = await conn.request({"type": "predict", "id": 2, "model": "tiny", "inputs": rows})
        assert reply["type"] == "result" and reply["id"] == 2
        np.testing.assert_allclose(reply["outputs"], _reference(weights, np.array(rows, dtype=np.float32)), rtol=1e-5)
        assert (await conn.request({"type": "predict", "id": 3, "model": "nope", "inputs": rows}))["code"] == "unknown_model"
        await conn.ws.close()
    finally:
        peer.stop()


def test_the_swapper_moves_version_2_in_and_out_and_leaves_it_out(tmp_path: Path) -> None:
    staged = tmp_path / "swap" / ".2.staged"
    staged.mkdir(parents=True)
    (staged / "model.onnx").write_bytes(b"x")
    swapper = Swapper(staged, period_s=0.01)
    seen: set[bool] = set()

    def both_states_seen() -> bool:
        seen.add((tmp_path / "swap" / "2").exists())
        return len(seen) == 2 and swapper.renames >= 4

    swapper.start()
    wait_until(both_states_seen, 30, interval_s=0.001, what="version 2 seen in and out, 4 renames")
    swapper.finish()
    assert seen == {True, False} and swapper.renames >= 4
    assert staged.is_dir() and not (tmp_path / "swap" / "2").exists()


def _run(rps: float, p99: float = 5.0) -> dict[str, Any]:
    return {"rps": rps, "p50": p99 / 3, "p90": p99 / 2, "p99": p99, "p999": p99, "max": p99 * 2, "errors": {},
            "error_rate": 0.0, "server_cpu": 1.0, "client_cpu": 0.4}


def test_the_report_gives_each_target_its_honest_verdict() -> None:
    rps = {"naive|mlp-s": 10_000, "wsserve|mlp-s": 25_000, "naive|mlp-m": 1_000, "wsserve|mlp-m": 1_700,
           "naive|mlp-l": 200, "wsserve|mlp-l": 1_100, "wsserve|mlp-npz": 30_000}
    report = {
        "started_at": "t", "command": "python -m benchmarks.bench_repository", "elapsed_s": 1.0,
        "machine": {"cpu": "cpu", "cores": 2, "commit": "abc"}, "onnxruntime": "1",
        "plan": {"reps": 2, "duration_s": 4, "warmup_s": 1, "compute_repeat": 3},
        "compute": {"models": {}, "max_abs_difference_onnx_vs_npz": 0.0},
        "peers": {"summary": {k: median_of([_run(v), _run(v)]) for k, v in rps.items()},
                  "runs": {k: [_run(v), _run(v)] for k, v in rps.items()}, "load_before": "1",
                  "load_after": "1", "commands": {"wsserve": "w", "naive": "n"}},
        "swaps": {"summary": {"steady": median_of([_run(100, 10.0)]), "swapping": median_of([_run(100, 12.0)])},
                  "runs": {"swapping": [{"renames": 10, "probe_changes": 10, "probe_versions": ["1", "2"]}]},
                  "command": "c", "plan": {"reps": 3, "duration_s": 10, "warmup_s": 1}, "load_before": "1", "load_after": "1", "loads": 5, "unloads": 5, "failed_lines": []},
    }
    text = render(report)
    assert "**2.50×** <sub>(2.50–2.50)</sub> | report |" in text  # mlp-s: no target, the ratio is reported
    assert "**1.70×** <sub>(1.70–1.70)</sub> | ≥ 1.8× ❌ |" in text  # 1.3M: under its target, said so
    assert "**5.50×** <sub>(5.50–5.50)</sub> | ≥ 5.0× ✅ |" in text
    assert "ONNX ÷ numpy throughput: 0.83×" in text
    assert "p99 swapping ÷ steady: 1.20×" in text and "no failure" in text


def test_paired_ratios_pair_runs_by_repetition_and_normalise_by_cpu() -> None:
    from benchmarks.bench_repository import paired_ratios

    naive = [_run(100.0), _run(50.0), {"failed": "x"}]
    mine = [dict(_run(300.0), server_cpu=0.5), _run(100.0), _run(1.0)]
    r = paired_ratios(naive, mine)
    assert (r["min"], r["max"]) == (2.0, 3.0) and r["rps"] == 2.5  # the failed pair is left out
    assert r["per_cpu"] == pytest.approx((6.0 + 2.0) / 2)  # 300/0.5 per CPU-s vs 100/1.0; 100 vs 50
    assert paired_ratios([{"failed": "x"}], [_run(1.0)]) == {}
