"""Triton ensembles served from a model repository: a real server on loopback, driven by
``tritonclient.http``, ``tritonclient.grpc`` and the WebSocket ``predict``.

The repository: ``scale`` (x * 2), ``linear`` (x @ W + b), ``shift`` (x + 1) as ONNX models with
config.pbtxt, the ensemble ``pipe`` (scale -> linear -> shift), ``fan`` (scale and shift side by side
on the same input, both outputs returned), ``waits`` (a step on ``shift2``, which an admin unloads and
loads again), ``topk_ens`` (``topk``, TopK without a batch dimension: its output's size is the
request's ``k``), ``nostep`` (a step on a model the repository lacks), ``aa_nested`` and ``zz_nested``
(a step on the ensemble ``waits``), ``cyc_a`` and ``cyc_b`` (each a step on the other), ``nest_fan``
(a step on ``fan``, only its ``PLUS`` mapped), ``wide`` (max_batch_size 16 over ``scale``'s 8), ``picky_pipe`` (scale -> ``picky``,
a model.py that raises on a negative value), ``mutates`` (scale -> ``inplace``, a Triton Python model
adding 100 to its input in place, the scaled tensor an output too) and ``held`` (``gated``, a model.py held on a row
starting with -1 until its gate file exists, -> ``plus1``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("grpc")
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests import onnx_builders as ob  # noqa: E402
from tests.repo_models import AFFINE_CONFIG, GATED_PY, write_affine, write_py  # noqa: E402
from tests.support import Conn, ServerProcess, wait_until, wait_until_async  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402


def _elementwise(op: str, constant: float, width: int) -> Any:
    c = numpy_helper.from_array(np.array(constant, np.float32), "c")
    graph = helper.make_graph([helper.make_node(op, ["x", "c"], ["y"])], op,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], initializer=[c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ob.OPSET)], ir_version=ob.IR_VERSION)


def _onnx_pbtxt(width_in: int, width_out: int) -> str:
    return (f'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
            f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {width_in} ] }} ]\n'
            f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {width_out} ] }} ]\n')


def _step(model: str, ins: dict[str, str], outs: dict[str, str]) -> str:
    imap = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in ins.items())
    omap = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outs.items())
    return f'{{ model_name: "{model}" model_version: -1 {imap} {omap} }}'


def _ensemble(inputs: str, outputs: str, steps: list[str]) -> str:
    return (f'platform: "ensemble"\nmax_batch_size: 8\ninput [ {inputs} ]\noutput [ {outputs} ]\n'
            f'ensemble_scheduling {{ step [ {", ".join(steps)} ] }}\n')


def _tensor(name: str, width: int) -> str:
    return f'{{ name: "{name}" data_type: TYPE_FP32 dims: [ {width} ] }}'


PICKY_PY = """
import numpy as np


class Model:
    def __init__(self, version_dir):
        pass

    def predict(self, batch):
        if (batch < 0).any():
            raise ValueError("negative input")
        return batch
"""

#: A Triton Python model changing its input in place (Triton hands each model its own copy of a tensor).
INPLACE_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            x += 100
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return responses
"""

PLUS1_PY = """
class Model:
    def __init__(self, version_dir):
        pass

    def predict(self, batch):
        return batch + 1
"""


def _write_python_steps(root: Path, gate: Path) -> None:
    write_py(root / "picky" / "1", PICKY_PY)
    (root / "picky" / "config.toml").write_text('input_shape = [3]\noutput_shape = [3]\ninput_dtype = "float32"\n'
                                                'output_dtype = "float32"\n')
    write_affine(root / "gated" / "1", bias=0.0, source=GATED_PY, **{"gate.txt": str(gate)})
    (root / "gated" / "config.toml").write_text(AFFINE_CONFIG)
    write_py(root / "plus1" / "1", PLUS1_PY)
    (root / "plus1" / "config.toml").write_text("input_shape = [1]\noutput_shape = [1]\n")
    write_py(root / "inplace" / "1", INPLACE_PY)
    (root / "inplace" / "config.pbtxt").write_text('backend: "python"\n' + _onnx_pbtxt(3, 3).split("\n", 1)[1])
    fp64 = "{ name: \"%s\" data_type: TYPE_FP64 dims: [ %d ] }"
    for name, text in {
        "picky_pipe": _ensemble(_tensor("IN", 3), _tensor("OUT", 3), [
            _step("scale", {"x": "IN"}, {"y": "scaled"}), _step("picky", {"input": "scaled"}, {"output": "OUT"})]),
        "mutates": _ensemble(_tensor("IN", 3), f'{_tensor("DOUBLE", 3)}, {_tensor("PLUS", 3)}', [
            _step("scale", {"x": "IN"}, {"y": "DOUBLE"}), _step("inplace", {"x": "DOUBLE"}, {"y": "PLUS"})]),
        "held": _ensemble(fp64 % ("IN", 3), fp64 % ("OUT", 1), [
            _step("gated", {"input": "IN"}, {"output": "g"}), _step("plus1", {"input": "g"}, {"output": "OUT"})]),
    }.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(text)


def _write(root: Path) -> Any:
    linear, ref = ob.linear_layer(3, 2, seed=4)
    for name, model, dims in (("scale", _elementwise("Mul", 2.0, 3), (3, 3)), ("linear", linear, (3, 2)),
                              ("shift", _elementwise("Add", 1.0, 2), (2, 2)), ("shift2", _elementwise("Add", 1.0, 3), (3, 3))):
        ob.save(model, root / name / "1")
        (root / name / "config.pbtxt").write_text(_onnx_pbtxt(*dims))
    topk, _ = ob.top_k()
    ob.save(topk, root / "topk" / "1")
    (root / "topk" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "k" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "idx" data_type: TYPE_INT64 dims: [ -1 ] } ]\n')
    ensembles = {
        "pipe": _ensemble(_tensor("IN", 3), _tensor("OUT", 2), [
            _step("shift", {"x": "lin"}, {"y": "OUT"}), _step("scale", {"x": "IN"}, {"y": "scaled"}),
            _step("linear", {"x": "scaled"}, {"y": "lin"})]),
        "fan": _ensemble(_tensor("IN", 3), f'{_tensor("DOUBLE", 3)}, {_tensor("PLUS", 3)}', [
            _step("scale", {"x": "IN"}, {"y": "DOUBLE"}), _step("shift2", {"x": "IN"}, {"y": "PLUS"})]),
        "waits": _ensemble(_tensor("IN", 3), _tensor("OUT", 3), [_step("shift2", {"x": "IN"}, {"y": "OUT"})]),
        "topk_ens": _ensemble('{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "K" data_type: TYPE_INT64 dims: [ 1 ] }',
                              '{ name: "TOP" data_type: TYPE_FP32 dims: [ -1 ] }',
                              [_step("topk", {"x": "X", "k": "K"}, {"y": "TOP"})]).replace("max_batch_size: 8", "max_batch_size: 0"),
        "nostep": _ensemble(_tensor("IN", 3), _tensor("OUT", 3), [_step("absent", {"x": "IN"}, {"y": "OUT"})]),
        # nested on 'waits': one planned before it is served, one after (the scan's order is the names')
        "aa_nested": _ensemble(_tensor("IN", 3), _tensor("OUT", 3), [_step("waits", {"IN": "IN"}, {"OUT": "OUT"})]),
        "zz_nested": _ensemble(_tensor("IN", 3), _tensor("OUT", 3), [_step("waits", {"IN": "IN"}, {"OUT": "OUT"})]),
        # a cycle through two ensembles
        "cyc_a": _ensemble(_tensor("IN", 3), _tensor("OUT", 3), [_step("cyc_b", {"IN": "IN"}, {"OUT": "OUT"})]),
        "cyc_b": _ensemble(_tensor("IN", 3), _tensor("OUT", 3), [_step("cyc_a", {"IN": "IN"}, {"OUT": "OUT"})]),
        # 'fan' nested, only its PLUS mapped: its 'scale' step is not needed
        "nest_fan": _ensemble(_tensor("IN", 3), _tensor("OUT", 3), [_step("fan", {"IN": "IN"}, {"PLUS": "OUT"})]),
        # more rows at once than its step model 'scale' (max_batch_size 8) allows
        "wide": _ensemble(_tensor("IN", 3), _tensor("OUT", 3),
                          [_step("scale", {"x": "IN"}, {"y": "OUT"})]).replace("max_batch_size: 8", "max_batch_size: 16"),
    }
    for name, text in ensembles.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(text)
    return lambda x: ref(x * 2) + 1


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Any]]:
    root = tmp_path_factory.mktemp("ensembles") / "model_repository"
    ref = _write(root)
    _write_python_steps(root, root.parent / "gate")
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc), ref
    finally:
        proc.stop()


def _x(rows: int = 4) -> np.ndarray:
    return np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) / 5


def test_http_infer_runs_the_steps_in_order(served) -> None:
    proc, _, ref = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    assert client.is_model_ready("pipe")
    x = _x()
    inp = thttp.InferInput("IN", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("pipe", [inp]).as_numpy("OUT")
    assert out.dtype == np.float32 and out.shape == (4, 2)
    np.testing.assert_allclose(out, ref(x), rtol=1e-5, atol=1e-5)
    meta = client.get_model_metadata("pipe")
    assert meta["platform"] == "ensemble"
    assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("IN", [-1, 3])]


def test_grpc_infer_returns_every_output_of_independent_steps(served) -> None:
    _, address, _ = served
    client = tgrpc.InferenceServerClient(address)
    try:
        x = _x(3)
        inp = tgrpc.InferInput("IN", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("fan", [inp])
        np.testing.assert_allclose(result.as_numpy("DOUBLE"), x * 2, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("PLUS"), x + 1, rtol=1e-6)
        config = client.get_model_config("fan").config
        assert config.platform == "ensemble" and [t.name for t in config.output] == ["DOUBLE", "PLUS"]
        assert [(s.model_name, s.model_version, dict(s.input_map), dict(s.output_map))
                for s in config.ensemble_scheduling.step] == [("scale", -1, {"x": "IN"}, {"y": "DOUBLE"}),
                                                              ("shift2", -1, {"x": "IN"}, {"y": "PLUS"})]
        assert not config.HasField("dynamic_batching")
        only = client.infer("fan", [inp], outputs=[tgrpc.InferRequestedOutput("PLUS")])
        assert only.as_numpy("DOUBLE") is None
        np.testing.assert_allclose(only.as_numpy("PLUS"), x + 1, rtol=1e-6)
    finally:
        client.close()


def test_websocket_predict_and_models_list_the_ensemble(served) -> None:
    proc, _, ref = served

    async def go() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        conn = await Conn.open(proc.url)
        try:
            x = _x(2)
            result = await conn.request({"type": "predict", "id": 1, "model": "pipe", "inputs": x.tolist()})
            models = await conn.request({"type": "models", "id": 2})
            failed = await conn.request({"type": "predict", "id": 3, "model": "nostep", "inputs": x.tolist()})
            return result, models, failed
        finally:
            await conn.close()

    result, models, failed = asyncio.run(go())
    assert result["type"] == "result", result
    np.testing.assert_allclose(np.array(result["outputs"], np.float32), ref(_x(2)), rtol=1e-5, atol=1e-5)
    listed = {m["name"]: m for m in models["models"]}
    assert listed["pipe"]["versions"][0]["state"] == "ready"
    assert [s["model"] for s in listed["pipe"]["steps"]] == ["shift", "scale", "linear"]
    nostep = listed["nostep"]["versions"][0]
    assert nostep["state"] == "failed" and "ensemble 'nostep' step 0 (model 'absent'): model 'absent' is not served" in nostep["reason"]
    assert failed["type"] == "error" and failed["code"] == "unknown_model"


def test_an_ensemble_is_not_ready_while_its_step_model_is_unloaded_and_ready_when_it_loads(served) -> None:
    proc, _, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    assert client.is_model_ready("waits")
    client.unload_model("shift2")
    wait_until(lambda: not client.is_model_ready("waits"), 30)
    reasons = {m["name"]: m.get("reason", "") for m in client.get_model_repository_index()}
    assert "ensemble 'waits' step 0 (model 'shift2')" in reasons["waits"]
    client.load_model("shift2")
    wait_until(lambda: client.is_model_ready("waits"), 30)
    x = _x(2)
    inp = thttp.InferInput("IN", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("waits", [inp]).as_numpy("OUT"), x + 1, rtol=1e-6)


def _stats(client: Any, model: str) -> dict[str, Any]:
    return client.get_inference_statistics(model)["model_stats"][0]  # type: ignore[no-any-return]


def test_steps_run_on_their_models_own_batching_queues(served) -> None:
    proc, _, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    before = _stats(client, "linear")["inference_count"]
    x = _x(5)
    inp = thttp.InferInput("IN", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer("pipe", [inp])
    assert _stats(client, "linear")["inference_count"] == before + 5  # the step's rows, counted by linear's worker


def test_a_failing_step_fails_only_its_request_naming_the_ensemble_and_the_step(served) -> None:
    proc, _, _ = served

    async def go() -> dict[Any, list[dict[str, Any]]]:
        conn = await Conn.open(proc.url)
        try:
            await conn.send({"type": "predict", "id": "bad", "model": "picky_pipe", "inputs": [[1, -2, 3]]})
            await conn.send({"type": "predict", "id": "good", "model": "picky_pipe", "inputs": [[1, 2, 3]]})
            return await conn.collect({"bad", "good"})
        finally:
            await conn.close()

    frames = asyncio.run(go())
    bad, good = frames["bad"][-1], frames["good"][-1]
    assert bad["type"] == "error" and bad["code"] == "internal"
    assert bad["message"].startswith("ensemble 'picky_pipe' step 1 (model 'picky'): model 'picky' failed: ValueError: "
                                     "negative input"), bad
    assert good["type"] == "result" and good["outputs"] == [[2.0, 4.0, 6.0]]
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    x = np.array([[-1, 0, 0]], np.float32)
    inp = thttp.InferInput("IN", [1, 3], "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(Exception, match="ensemble 'picky_pipe' step 1 \\(model 'picky'\\)"):
        client.infer("picky_pipe", [inp])


def test_deadline_and_cancel_end_the_whole_pipeline(served) -> None:
    proc, _, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    gate = Path(proc.cmd[proc.cmd.index("--model-repository") + 1]).parent / "gate"
    held = [[-1.0, 0.0, 0.0]]

    async def go() -> dict[Any, list[dict[str, Any]]]:
        conn = await Conn.open(proc.url)
        try:
            await conn.send({"type": "predict", "id": "late", "model": "held", "inputs": held, "timeout_ms": 200})
            late = await conn.collect({"late"})
            await wait_until_async(lambda: Path(f"{gate}.started").exists(), 30)  # its first step computes, held
            await conn.send({"type": "predict", "id": "gone", "model": "held", "inputs": held})
            await conn.send({"type": "cancel", "id": "gone"})
            gone = await conn.collect({"gone"})
            return {**late, **gone}
        finally:
            await conn.close()

    frames = asyncio.run(go())
    assert frames["late"][-1]["code"] == "deadline_exceeded", frames["late"]
    assert frames["gone"][-1]["code"] == "cancelled", frames["gone"]
    gate.touch()  # the held step computes now; its results go nowhere and the second step never runs
    wait_until(lambda: _stats(client, "gated")["execution_count"] >= 1, 30)
    assert _stats(client, "plus1")["execution_count"] == 0
    assert _stats(client, "gated")["inference_count"] == 1  # the cancelled request's step left gated's queue
    x = np.array([[1.0, 1.0, 1.0]])
    inp = thttp.InferInput("IN", [1, 3], "FP64")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("held", [inp]).as_numpy("OUT"), [[7.0]])  # 1 + 2 + 3, then + 1
    assert _stats(client, "plus1")["execution_count"] == 1


def test_an_ensemble_whose_step_model_is_loading_waits_for_it(served) -> None:
    proc, _, _ = served
    root = Path(proc.cmd[proc.cmd.index("--model-repository") + 1])
    init_gate = root.parent / "init-gate"
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")

    def states() -> dict[str, tuple[str, str]]:
        return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in client.get_model_repository_index()}

    fp64 = '{ name: "IN" data_type: TYPE_FP64 dims: [ 3 ] }', '{ name: "OUT" data_type: TYPE_FP64 dims: [ 1 ] }'
    (root / "slow_ens" / "1").mkdir(parents=True)
    (root / "slow_ens" / "config.pbtxt").write_text(_ensemble(*fp64, [_step("slowstep", {"input": "IN"}, {"output": "OUT"})]))
    (root / "slow_outer" / "1").mkdir(parents=True)  # an ensemble on the ensemble slow_ens
    (root / "slow_outer" / "config.pbtxt").write_text(_ensemble(*fp64, [_step("slow_ens", {"IN": "IN"}, {"OUT": "OUT"})]))
    with pytest.raises(Exception, match="model 'slowstep' is not served"):
        client.load_model("slow_ens")
    write_affine(root / "slowstep" / "1", bias=0.5, source=GATED_PY,
                 **{"gate.txt": str(root.parent / "gate-unused"), "init_gate.txt": str(init_gate)})
    (root / "slowstep" / "config.toml").write_text(AFFINE_CONFIG)
    def load() -> None:  # a client of the thread's own, closed in it (tritonclient.http's hub is per thread)
        client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
        try:
            client.load_model("slowstep")
        finally:
            client.close()

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_until(lambda: Path(f"{init_gate}.started").exists(), 30)  # Model() of slowstep runs, held
        try:
            client.load_model("slow_ens")
        except InferenceServerException:
            pass  # not ready (yet): what the index says is the point
        state, reason = states()["slow_ens"]
        assert state == "LOADING" and "waiting for model 'slowstep', loading" in reason, (state, reason)
        try:
            client.load_model("slow_outer")
        except InferenceServerException:
            pass
        state, reason = states()["slow_outer"]  # its step, an ensemble, is loading: so is it
        assert state == "LOADING" and "waiting for model 'slow_ens', loading" in reason, (state, reason)
    finally:
        init_gate.touch()
        loader.join()
    wait_until(lambda: client.is_model_ready("slow_ens") and client.is_model_ready("slow_outer"), 30)
    inp = thttp.InferInput("IN", [1, 3], "FP64")
    inp.set_data_from_numpy(np.array([[1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(client.infer("slow_ens", [inp]).as_numpy("OUT"), [[6.5]])
    np.testing.assert_allclose(client.infer("slow_outer", [inp]).as_numpy("OUT"), [[6.5]])
    client.unload_model("slowstep")  # the inner ensemble stops being ready, and the outer one follows it
    wait_until(lambda: not client.is_model_ready("slow_ens") and not client.is_model_ready("slow_outer"), 30)
    assert "step 0 (model 'slow_ens')" in states()["slow_outer"][1]


def test_a_step_changing_its_input_in_place_changes_no_other_reader_of_that_tensor(served) -> None:
    # DOUBLE is an ensemble output and the input of 'inplace', which adds 100 to it in place: as in
    # Triton, where each model gets its own copy, DOUBLE stays x * 2
    proc, _, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    x = _x(2)
    inp = thttp.InferInput("IN", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mutates", [inp])
    np.testing.assert_allclose(result.as_numpy("PLUS"), x * 2 + 100, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("DOUBLE"), x * 2, rtol=1e-6)


def _index(client: Any) -> dict[str, tuple[str, str]]:
    return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in client.get_model_repository_index()}


def _infer(client: Any, model: str, x: np.ndarray, outputs: list[str] | None = None) -> Any:
    inp = thttp.InferInput("IN", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], outputs=None if outputs is None else [thttp.InferRequestedOutput(o) for o in outputs])


def test_an_ensemble_on_an_ensemble_is_served_whatever_the_order_they_load_in(served) -> None:
    # aa_nested is planned before 'waits' is served ('not served'), zz_nested while it loads ('loading',
    # waiting for it): both are planned again once it is served, and serve through its worker
    proc, _, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    wait_until(lambda: client.is_model_ready("aa_nested") and client.is_model_ready("zz_nested"), 30)
    x = _x(3)
    for name in ("aa_nested", "zz_nested"):
        np.testing.assert_allclose(_infer(client, name, x).as_numpy("OUT"), x + 1, rtol=1e-6)
    assert [s.model_name for s in tgrpc_config(served, "aa_nested").ensemble_scheduling.step] == ["waits"]


def tgrpc_config(served: Any, model: str) -> Any:
    client = tgrpc.InferenceServerClient(served[1])
    try:
        return client.get_model_config(model).config
    finally:
        client.close()


def test_a_cycle_across_ensembles_is_refused_naming_it(served) -> None:
    proc, _, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    wait_until(lambda: all("circular" in _index(client)[n][1] for n in ("cyc_a", "cyc_b")), 30)
    index = _index(client)
    assert index["cyc_a"][0] == index["cyc_b"][0] == "UNAVAILABLE"
    assert "ensemble 'cyc_a': circular dependency between ensembles: cyc_a -> cyc_b -> cyc_a" in index["cyc_a"][1]
    assert "ensemble 'cyc_b': circular dependency between ensembles: cyc_b -> cyc_a -> cyc_b" in index["cyc_b"][1]


def test_only_the_steps_the_requested_outputs_need_run(served) -> None:
    # fan runs scale (DOUBLE) and shift2 (PLUS) side by side: asking for PLUS alone runs shift2 only,
    # directly or through nest_fan, which maps only fan's PLUS
    proc, _, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    x = _x(2)
    scale, shift2 = _stats(client, "scale")["inference_count"], _stats(client, "shift2")["inference_count"]
    result = _infer(client, "fan", x, ["PLUS"])
    np.testing.assert_allclose(result.as_numpy("PLUS"), x + 1, rtol=1e-6)
    assert result.as_numpy("DOUBLE") is None
    assert _stats(client, "shift2")["inference_count"] == shift2 + 2
    assert _stats(client, "scale")["inference_count"] == scale  # never ran
    wait_until(lambda: client.is_model_ready("nest_fan"), 30)
    np.testing.assert_allclose(_infer(client, "nest_fan", x).as_numpy("OUT"), x + 1, rtol=1e-6)
    assert _stats(client, "shift2")["inference_count"] == shift2 + 4  # both requests' rows
    assert _stats(client, "scale")["inference_count"] == scale
    np.testing.assert_allclose(_infer(client, "fan", x, ["DOUBLE"]).as_numpy("DOUBLE"), x * 2, rtol=1e-6)
    assert _stats(client, "scale")["inference_count"] == scale + 2
    assert _stats(client, "shift2")["inference_count"] == shift2 + 4


def test_the_ensembles_max_batch_size_is_checked_against_its_steps_and_bounds_a_requests_rows(served) -> None:
    proc, _, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    state, reason = _index(client)["wide"]
    assert state == "UNAVAILABLE" and ("ensemble 'wide' step 0 (model 'scale'): the ensemble's max_batch_size is 16 but "
                                       "model 'scale' allows at most 8 (its max_batch_size)") in reason, reason
    with pytest.raises(InferenceServerException, match=r"the request has 9 rows but ensemble 'pipe' allows at most 8 "
                                                       r"\(its max_batch_size\)"):
        _infer(client, "pipe", _x(9))
    _, address, ref = served
    grpc_client = tgrpc.InferenceServerClient(address)
    try:
        inp = tgrpc.InferInput("IN", [9, 3], "FP32")
        inp.set_data_from_numpy(_x(9))
        with pytest.raises(InferenceServerException, match="ensemble 'pipe' allows at most 8"):
            grpc_client.infer("pipe", [inp])
    finally:
        grpc_client.close()
    np.testing.assert_allclose(_infer(client, "pipe", _x(8)).as_numpy("OUT"), ref(_x(8)), rtol=1e-5, atol=1e-5)
    assert client.get_model_config("pipe")["max_batch_size"] == 8  # its own, as Triton's configuration says

    async def go() -> dict[str, Any]:
        conn = await Conn.open(proc.url)
        try:
            return await conn.request({"type": "predict", "id": 1, "model": "pipe", "inputs": _x(9).tolist()})
        finally:
            await conn.close()

    frame = asyncio.run(go())
    assert frame["type"] == "error" and frame["code"] == "invalid_input", frame
    assert frame["message"] == "the request has 9 rows but ensemble 'pipe' allows at most 8 (its max_batch_size)"


def test_a_step_answering_rows_at_different_sizes_fails_its_request_naming_the_output(served) -> None:
    # the step's rows come back in one delivery each, which its request's one array cannot hold: the
    # request fails with invalid_input (the request was left without an answer, its steps all done)
    proc, _, _ = served
    x = [3.0, 1.0, 2.0]

    async def go() -> dict[Any, list[dict[str, Any]]]:
        conn = await Conn.open(proc.url)
        try:
            await conn.send({"type": "predict", "id": "mixed", "model": "topk_ens", "inputs": {"X": [x, x], "K": [[1], [2]]}})
            await conn.send({"type": "predict", "id": "same", "model": "topk_ens", "inputs": {"X": [x, x], "K": [[2], [2]]}})
            return await conn.collect({"mixed", "same"})
        finally:
            await conn.close()

    frames = asyncio.run(go())
    mixed, same = frames["mixed"], frames["same"]
    assert len(mixed) == 1 and mixed[0]["type"] == "error" and mixed[0]["code"] == "invalid_input", mixed
    assert mixed[0]["message"].startswith("ensemble 'topk_ens' step 0 (model 'topk'): output 'y' has rows of shape [1] "
                                          "and [2] in one request"), mixed
    assert same[-1]["type"] == "result" and same[-1]["outputs"] == [[3.0, 2.0], [3.0, 2.0]], same
