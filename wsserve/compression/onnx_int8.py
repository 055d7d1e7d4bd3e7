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
- :func:`compress_onnx`: the ``wsserve compress --int8`` job for a
  ``model.onnx`` version: quantize, measure, and store the figures in the new
  file's metadata (``metadata_props`` key :data:`METADATA_KEY`, a JSON object
  ``{"metrics": {...}, "compression": {...}}`` that the repository's ONNX
  backend reports).
- :func:`cpu_int8_features`: which int8 dot-product instruction sets the CPU
  advertises (``/proc/cpuinfo`` flags on Linux; empty elsewhere).  ONNX
  Runtime's MLAS picks its u8s8 GEMM kernel by CPUID at run time (AVX512-VNNI
  / AVX-VNNI ``vpdpbusd`` when present, else AVX512BW/AVX2 sequences).
"""

from __future__ import annotations

import math
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..models.mlp import Params
from ..repository.npz import MAX_NPZ_BYTES as MAX_FILE_BYTES
from ..repository.onnx_backend import METADATA_KEY, read_wsserve_metadata

__all__ = [
    "METADATA_KEY",
    "compress_onnx",
    "read_wsserve_metadata",
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


def onnx_latency_ms(sessions: Sequence[Any], x: np.ndarray, *, runs: int = 21, warmup: int = 3,
                    input_name: str = "x") -> list[float]:
    """Median ms of ``session.run`` on ``x`` (as float32, fed as ``input_name``) per session, timed interleaved."""
    feed = {input_name: np.ascontiguousarray(x, dtype=np.float32)}
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


def _single_float_input(session: Any, label: str) -> tuple[str, tuple[int, ...]]:
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        kinds = ", ".join(f"{a.name}: {a.type}" for a in inputs)
        raise ValueError(f"{label}: wsserve compress measures ONNX models with one float32 input; this one has {kinds}")
    shape = inputs[0].shape
    row = tuple(shape[1:]) if shape else ()
    if not shape or isinstance(shape[0], int) or not row or not all(isinstance(d, int) and 0 < d <= 1 << 16 for d in row):
        raise ValueError(f"{label}: input {inputs[0].name!r} has shape {shape}; wsserve compress needs a dynamic "
                         "batch dimension and fixed row dimensions")
    return inputs[0].name, row


def _ort_message(exc: BaseException) -> str:
    """onnxruntime's message without its ``[ONNXRuntimeError] : N : KIND :`` prefix, prefixed by the type."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ", "", str(exc))
    return f"{type(exc).__name__}: {text.strip()}"


def _int8_elements(path: Path) -> int:
    """Elements of the graph's 8-bit integer initializers (what quantization produced)."""
    import onnx

    proto = onnx.load(str(path))
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    return sum(math.prod(init.dims) for init in proto.graph.initializer if init.data_type in eight_bit)


def _initializer_counts(path: Path) -> tuple[int, int]:
    """``(elements, non-zero elements)`` of the graph's initializers."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    total = nonzero = 0
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        total += int(arr.size)
        nonzero += int(np.count_nonzero(arr))
    return total, nonzero


def compress_onnx(
    source: str | os.PathLike[str],
    out_version_dir: str | os.PathLike[str],
    *,
    data_seed: int | None = None,
    latency_runs: int = 21,
    source_version: str | None = None,
) -> dict[str, Any]:
    """Dynamic int8 quantization of the ONNX file ``source`` into ``out_version_dir/model.onnx``, with figures.

    Measured (all now, one ORT thread): ``bytes`` (the new file's exact size,
    figures included) / ``source_bytes``; ``parameters`` and
    ``parameters_nonzero`` (initializer elements) and the source's; the
    median ms of one run on 256 rows and the ratio new / source
    (``latency_ratio_b256``); ``output_max_abs_diff`` between the two on
    those rows.  When the model is wsserve's own ``[32] -> [10]`` export
(producer ``wsserve``, :func:`build_mlp_onnx`: the ``mlp`` task), the
    rows are ``make_mlp_data(seed)``'s held-out split and
    ``heldout_accuracy`` / ``source_heldout_accuracy`` / ``heldout_accuracy_delta``
    are recorded (seed: ``data_seed``, else a ``seed`` in the source's
    wsserve metadata, else 0); otherwise the rows are standard normal
    (seeded) and no accuracy is claimed (``heldout_accuracy`` is None).

    Raises ``ValueError`` (nothing written) for a missing/invalid source, one
    onnxruntime cannot load or that fails on rows of its declared input shape,
    one in which int8 quantization finds no float weights to quantize,
    one that is not a single float input with a dynamic batch, or an
    ``out_version_dir`` already holding a model.onnx; ``ImportError`` without
    the ``onnx`` extra; ``OSError`` on I/O failure.
    """
    import json

    import onnx

    from ..models.mlp import make_mlp_data
    from .measure import LATENCY_BATCH

    src = Path(source)
    out_dir = Path(out_version_dir)
    dst = out_dir / "model.onnx"
    if dst.exists():
        raise ValueError(f"output {str(out_dir)!r} already holds a model (model.onnx); pick a new version")
    if isinstance(latency_runs, bool) or not isinstance(latency_runs, int) or not 1 <= latency_runs <= 1000:
        raise ValueError(f"latency_runs must be an integer in 1..1000, got {latency_runs!r}")
    if data_seed is not None and (isinstance(data_seed, bool) or not isinstance(data_seed, int)
                                  or not 0 <= data_seed < 2**63):
        raise ValueError(f"data_seed must be a non-negative integer, got {data_seed!r}")
    label = f"ONNX source {str(src)!r}"
    if not src.is_file():
        raise ValueError(f"{label} does not exist")
    try:
        src_session = onnx_session(src)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types (Fail, InvalidGraph...)
        raise ValueError(f"{label}: onnxruntime cannot load it: {_ort_message(exc)}") from None
    name, row = _single_float_input(src_session, label)
    src_meta = read_wsserve_metadata(dict(src_session.get_modelmeta().custom_metadata_map), label)
    if data_seed is not None:
        seed, seed_from = data_seed, "argument"
    elif isinstance(src_meta.get("seed"), int) and not isinstance(src_meta["seed"], bool) and src_meta["seed"] >= 0:
        seed, seed_from = int(src_meta["seed"]), "source meta"
    else:
        seed, seed_from = 0, "default"
    n_out = src_session.get_outputs()[0].shape
    # Held-out accuracy only for wsserve's own mlp export: any other [32] -> [10] model is not
    # known to solve that task, so an accuracy on its rows would be a figure about nothing.
    producer = src_session.get_modelmeta().producer_name
    mlp_task = producer == "wsserve" and row == (32,) and len(n_out) == 2 and n_out[1] == 10

    out_dir.mkdir(parents=True, exist_ok=True)
    staged = out_dir / ".quantized.onnx.tmp"
    try:
        if mlp_task:
            _, (x_all, y_all) = make_mlp_data(seed)
        else:
            x_all, y_all = np.random.default_rng(seed).standard_normal((LATENCY_BATCH, *row)), None
        x_all = x_all.astype(np.float32)
        xb = x_all[:LATENCY_BATCH]
        try:
            out_src = src_session.run(None, {name: x_all})[0]
        except Exception as exc:  # noqa: BLE001 - the source fails on rows of its own declared input
            raise ValueError(f"{label}: running it on {len(x_all)} rows of shape {list(row)} failed: "
                             f"{_ort_message(exc)}") from None
        quantize_onnx_file(src, staged)
        if _int8_elements(staged) <= _int8_elements(src):  # e.g. no weights: only quantize nodes added
            raise ValueError(f"{label}: int8 quantization finds no float weights to quantize in it (onnxruntime "
                             "quantizes the weights of MatMul, Gemm, Conv... nodes); nothing written")
        new_session = onnx_session(staged)
        out_new = new_session.run(None, {name: x_all})[0]
        lat_src, lat_new = onnx_latency_ms([src_session, new_session], xb, runs=latency_runs, input_name=name)
        params, params_nz = _initializer_counts(staged)
        src_params, src_params_nz = _initializer_counts(src)
        figures: dict[str, Any] = {
            "method": "int8",
            "backend": "onnx",
            "quantization": "onnxruntime dynamic: per-channel int8 weights, uint8 activations",
            "source_version": source_version if source_version is not None else src.parent.name,
            "bytes": 0,  # filled in below: the file's own size
            "source_bytes": src.stat().st_size,
            "parameters": params,
            "parameters_nonzero": params_nz,
            "source_parameters": src_params,
            "source_parameters_nonzero": src_params_nz,
            "latency_ms_b256": round(lat_new, 4),
            "source_latency_ms_b256": round(lat_src, 4),
            "latency_ratio_b256": round(lat_new / lat_src, 4),
            "latency_runs": latency_runs,
            "output_max_abs_diff": float(np.abs(out_new[:LATENCY_BATCH].astype(np.float64)
                                                - out_src[:LATENCY_BATCH]).max()),
            "cpu_int8_features": cpu_int8_features(),
            "heldout_accuracy": None,
            "data_seed": seed,
            "data_seed_from": seed_from,
        }
        metrics: dict[str, Any] = {}
        if y_all is not None:
            acc_src = float((out_src.argmax(axis=1) == y_all).mean())
            acc_new = float((out_new.argmax(axis=1) == y_all).mean())
            figures.update(heldout_accuracy=acc_new, source_heldout_accuracy=acc_src,
                           heldout_accuracy_delta=round(acc_new - acc_src, 10), n_heldout=int(len(y_all)))
            metrics = {"heldout_accuracy": acc_new, "n_heldout": int(len(y_all)), "data_seed": seed}
        proto = onnx.load(str(staged))
        entry = proto.metadata_props.add()
        entry.key = METADATA_KEY
        data = b""
        for _ in range(8):  # the size is written inside the file: iterate to the fixed point
            entry.value = json.dumps({"metrics": metrics, "compression": figures}, sort_keys=True, allow_nan=False)
            data = proto.SerializeToString()
            if figures["bytes"] == len(data):
                break
            figures["bytes"] = len(data)
        else:  # pragma: no cover - the digit count changes at most a few times
            raise RuntimeError("file size did not settle")
        path, tmp = _atomic_target(dst)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        staged.unlink(missing_ok=True)
    return {**figures, "bytes_ratio": figures["bytes"] / figures["source_bytes"], "path": str(dst)}
