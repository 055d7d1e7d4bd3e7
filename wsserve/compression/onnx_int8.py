"""ONNX int8: ONNX Runtime dynamic quantization of an ONNX model file, and how to time it.

Needs the ``onnx`` extra (``pip install -e ".[onnx]"``: ``onnx``, ``onnxruntime``);
they are imported inside the functions, so importing this module is free.

- :func:`build_mlp_onnx`: an ONNX graph of an ``mlp`` (``MatMul + Add + Relu``
  per hidden layer, ``MatMul + Add + Softmax`` at the end; input ``x`` float32
  ``[batch, d]``, output ``probs`` float32 ``[batch, C]``) from float weights.
- :func:`quantize_onnx_file`: ``onnxruntime.quantization.quantize_dynamic``
  with int8 weights (per output channel by default), written atomically.
  Dynamic quantization stores MatMul weights as int8 and quantizes
  activations to uint8 at run time, per batch (the U8S8 kernels).
- :func:`onnx_session` / :func:`onnx_latency_ms`: a CPU session with one
  intra-op and one inter-op thread, timed like :mod:`.measure`.
- :func:`cpu_int8_features`: which int8 dot-product instruction sets the CPU
  advertises (``/proc/cpuinfo`` flags on Linux; empty elsewhere).  ONNX
  Runtime's MLAS picks its u8s8 GEMM kernel by CPUID at run time (AVX512-VNNI
  / AVX-VNNI ``vpdpbusd`` when present, else AVX512BW/AVX2 sequences).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..models.mlp import Params
from ..repository.npz import MAX_NPZ_BYTES as MAX_FILE_BYTES

__all__ = [
    "INT8_DOT_FLAGS",
    "cpu_int8_features",
    "build_mlp_onnx",
    "save_onnx",
    "quantize_onnx_file",
    "onnx_session",
    "onnx_latency_ms",
]

#: /proc/cpuinfo flags that give int8 dot products (x86 and arm64), in a stable order.
INT8_DOT_FLAGS: tuple[str, ...] = (
    "amx_int8", "avx512_vnni", "avx_vnni", "avx_vnni_int8", "avx512bw", "avx2",  # x86
    "asimddp", "i8mm", "sve", "sme",                                              # arm64
)
OPSET = 17
IR_VERSION = 8  # old enough for every onnxruntime this extra allows


def cpu_int8_features(cpuinfo_text: str | None = None) -> list[str]:
    """The :data:`INT8_DOT_FLAGS` present in ``cpuinfo_text`` (default: read ``/proc/cpuinfo``).

    Returns ``[]`` when the file cannot be read (non-Linux).
    """
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo_text = f.read(1 << 22)
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return [f for f in INT8_DOT_FLAGS if f in flags]


def build_mlp_onnx(params: Params, *, name: str = "mlp") -> Any:
    """An ``onnx.ModelProto`` computing softmax(MLP(x)) with the float32 ``params``; checked."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d_in, n_out = params[0][0].shape[0], params[-1][0].shape[1]
    nodes, inits = [], []
    h = "x"
    last = len(params) - 1
    for i, (w, b) in enumerate(params):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w, np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array(np.ascontiguousarray(b, np.float32), f"b{i}"))
        nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"], name=f"add{i}"))
        if i < last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"], name=f"relu{i}"))
            h = f"h{i}"
    nodes.append(helper.make_node("Softmax", [f"z{last}"], ["probs"], axis=1, name="softmax"))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_out])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="wsserve")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _atomic_target(dst: Path) -> tuple[Path, str]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    return dst, tmp


def save_onnx(model: Any, dst: str | os.PathLike[str]) -> Path:
    """Write an ``onnx.ModelProto`` to ``dst`` atomically; ``OSError`` on failure."""
    path, tmp = _atomic_target(Path(dst))
    try:
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def quantize_onnx_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                       per_channel: bool = True, max_file_bytes: int = MAX_FILE_BYTES) -> Path:
    """Dynamic int8 quantization (int8 weights) of the ONNX file ``src`` into ``dst``, atomically.

    Raises ``ValueError`` if ``src`` is missing, bigger than ``max_file_bytes``,
    is ``dst``, or is not a valid ONNX model (nothing written); ``ImportError``
    without the ``onnx`` extra.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src_p, dst_p = Path(src), Path(dst)
    if not src_p.is_file():
        raise ValueError(f"ONNX source {str(src_p)!r} does not exist")
    if src_p.stat().st_size > max_file_bytes:
        raise ValueError(f"ONNX source {str(src_p)!r} is over the {max_file_bytes}-byte limit")
    if dst_p.exists() and dst_p.resolve() == src_p.resolve():
        raise ValueError("ONNX output would overwrite its source")
    try:
        onnx.checker.check_model(str(src_p))
    except (onnx.checker.ValidationError, OSError, ValueError) as exc:
        raise ValueError(f"ONNX source {str(src_p)!r} is not a valid model: {exc}") from exc
    path, tmp = _atomic_target(dst_p)
    try:
        quantize_dynamic(str(src_p), tmp, per_channel=per_channel, weight_type=QuantType.QInt8)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def onnx_session(path: str | os.PathLike[str], *, threads: int = 1) -> Any:
    """A CPU ``onnxruntime.InferenceSession`` with ``threads`` intra-op threads, 1 inter-op thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_latency_ms(sessions: Sequence[Any], x: np.ndarray, *, runs: int = 21, warmup: int = 3) -> list[float]:
    """Median ms of ``session.run`` on ``x`` (as float32) per session, timed interleaved."""
    feed = {"x": np.ascontiguousarray(x, dtype=np.float32)}
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(warmup):
        for s in sessions:
            s.run(None, feed)
    for _ in range(runs):
        for s, t in zip(sessions, times):
            t0 = time.perf_counter()
            s.run(None, feed)
            t.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]
