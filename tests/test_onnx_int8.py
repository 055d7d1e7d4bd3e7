"""Tests for wsserve.compression.onnx_int8 (skipped without the ``onnx`` extra, except the cpuinfo parser)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsserve.compression.onnx_int8 import cpu_int8_features
from wsserve.models.mlp import MLPModel, make_mlp_data
from wsserve.trainer import train_default_models

CPUINFO_X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme avx2 avx512f avx512bw avx512_vnni avx512_bf16 sse4_2
processor\t: 1
flags\t\t: fpu vme avx2 avx512f avx512bw avx512_vnni avx512_bf16 sse4_2
"""
CPUINFO_ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp sha512 i8mm\n"


def test_cpu_int8_features_parses_flags() -> None:
    assert cpu_int8_features(CPUINFO_X86) == ["avx512_vnni", "avx512bw", "avx2"]
    assert cpu_int8_features(CPUINFO_ARM) == ["asimddp", "i8mm"]
    assert cpu_int8_features("model name: toaster\n") == []
    assert isinstance(cpu_int8_features(), list)  # this machine: whatever it has


@pytest.fixture(scope="module")
def mlp(model_cache: Path) -> MLPModel:
    model = train_default_models(names=["mlp"], cache_dir=model_cache)["mlp"]
    assert isinstance(model, MLPModel)
    return model


def test_onnx_fp32_matches_numpy_and_int8_keeps_accuracy(tmp_path: Path, mlp: MLPModel) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from wsserve.compression.onnx_int8 import (
        build_mlp_onnx,
        onnx_session,
        quantize_onnx_file,
        save_onnx,
    )

    _, (x, y) = make_mlp_data(0)
    fp32 = save_onnx(build_mlp_onnx(mlp.params), tmp_path / "fp32" / "model.onnx")
    int8 = quantize_onnx_file(fp32, tmp_path / "int8" / "model.onnx")
    assert sorted(p.name for p in int8.parent.iterdir()) == ["model.onnx"]  # no temp files left
    assert int8.stat().st_size < 0.30 * fp32.stat().st_size
    p32 = onnx_session(fp32).run(None, {"x": x.astype(np.float32)})[0]
    np.testing.assert_allclose(p32, mlp.predict(x), atol=1e-5)
    p8 = onnx_session(int8).run(None, {"x": x.astype(np.float32)})[0]
    acc32 = float((p32.argmax(1) == y).mean())
    acc8 = float((p8.argmax(1) == y).mean())
    assert acc8 >= acc32 - 0.01
    assert not np.array_equal(p8, p32)  # it really is another model
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops


def test_quantize_onnx_bad_sources_write_nothing(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from wsserve.compression.onnx_int8 import quantize_onnx_file

    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(ValueError, match="does not exist"):
        quantize_onnx_file(tmp_path / "missing.onnx", out)
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(ValueError, match="not a valid model"):
        quantize_onnx_file(tmp_path / "junk.onnx", out)
    with pytest.raises(ValueError, match="limit"):
        quantize_onnx_file(tmp_path / "junk.onnx", out, max_file_bytes=10)
    with pytest.raises(ValueError, match="overwrite its source"):
        quantize_onnx_file(tmp_path / "junk.onnx", tmp_path / "junk.onnx")
    assert not (tmp_path / "out").exists()
