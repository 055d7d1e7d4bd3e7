"""Stateful ONNX models (config.pbtxt ``sequence_batching``), served as Triton's onnxruntime backend
serves them: the control inputs (START / END / READY / CORRID) fed to the graph per row, and
implicit state (``sequence_batching.state``) kept by the server per sequence: an accumulator
graph (``y = state_in + x``, ``state_out = y``; START gives it the initial state) and a graph
whose state grows each request (a ``-1`` state dim), on a real server on loopback driven with
tritonclient's gRPC ``sequence_id`` / ``sequence_start`` / ``sequence_end`` and the WebSocket
``predict``; the per-sequence state bound; load-time refusals naming the tensor."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
from onnx import TensorProto, helper  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests import onnx_builders as ob  # noqa: E402
from tests.support import ServerProcess, wait_until  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from wsserve.repository import load_version  # noqa: E402
from wsserve.repository.errors import ModelLoadError  # noqa: E402
from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402

F, I32, U64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.UINT64
#: the server's --max-sequence-state-bytes in these tests: 10 float32 values
STATE_BYTES = 40

CONTROLS = """
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
"""


def accumulator(batched: bool = True) -> Any:
    """``y = state_in + x``, ``state_out = y`` (x, state [.., 1] float32), and ``ctrl`` [.., 4]:
    the START, END, READY and CORRID control inputs it was fed, as floats."""
    lead = ["N"] if batched else []
    nodes = [
        helper.make_node("Add", ["STATE_IN", "x"], ["y"]),
        helper.make_node("Identity", ["y"], ["STATE_OUT"]),
        helper.make_node("Cast", ["START"], ["s"], to=F),
        helper.make_node("Identity", ["END"], ["e"]),
        helper.make_node("Cast", ["READY"], ["r"], to=F),
        helper.make_node("Cast", ["CORRID"], ["c"], to=F),
        helper.make_node("Concat", ["s", "e", "r", "c"], ["ctrl"], axis=-1),
    ]
    inputs = [helper.make_tensor_value_info("x", F, [*lead, 1]),
              helper.make_tensor_value_info("STATE_IN", F, [*lead, 1]),
              helper.make_tensor_value_info("START", I32, [*lead, 1]),
              helper.make_tensor_value_info("END", F, [*lead, 1]),
              helper.make_tensor_value_info("READY", TensorProto.BOOL, [*lead, 1]),
              helper.make_tensor_value_info("CORRID", U64, [*lead, 1])]
    outputs = [helper.make_tensor_value_info("y", F, [*lead, 1]),
               helper.make_tensor_value_info("STATE_OUT", F, [*lead, 1]),
               helper.make_tensor_value_info("ctrl", F, [*lead, 4])]
    return ob._model(nodes, inputs, outputs)


def grower() -> Any:
    """``STATE_OUT = concat(STATE_IN, x)`` along its one variable dim, ``total`` its sum: the state
    grows by one float32 each request."""
    nodes = [helper.make_node("Concat", ["STATE_IN", "x"], ["STATE_OUT"], axis=1),
             helper.make_node("ReduceSum", ["STATE_OUT", "axes"], ["total"], keepdims=1)]
    inputs = [helper.make_tensor_value_info("x", F, ["N", 1]),
              helper.make_tensor_value_info("STATE_IN", F, ["N", "S"])]
    outputs = [helper.make_tensor_value_info("STATE_OUT", F, ["N", "T"]),
               helper.make_tensor_value_info("total", F, ["N", 1])]
    return ob._model(nodes, inputs, outputs, [("axes", np.array([1], np.int64))])


def rooted() -> Any:
    """``y = state_in + x``, ``state_out = y`` and ``root = sqrt(x)``: a negative ``x`` makes
    ``root`` NaN, failing its request after the graph ran (the state output is finite)."""
    nodes = [helper.make_node("Add", ["STATE_IN", "x"], ["y"]),
             helper.make_node("Identity", ["y"], ["STATE_OUT"]),
             helper.make_node("Sqrt", ["x"], ["root"])]
    inputs = [helper.make_tensor_value_info("x", F, ["N", 1]), helper.make_tensor_value_info("STATE_IN", F, ["N", 1])]
    outputs = [helper.make_tensor_value_info("y", F, ["N", 1]), helper.make_tensor_value_info("STATE_OUT", F, ["N", 1]),
               helper.make_tensor_value_info("root", F, ["N", 1])]
    return ob._model(nodes, inputs, outputs)


def bf16_state() -> Any:
    """``y = float32(state_in) + x``, ``state_out = bfloat16(y)``: only the state is bfloat16."""
    nodes = [helper.make_node("Cast", ["STATE_IN"], ["s"], to=F),
             helper.make_node("Add", ["s", "x"], ["y"]),
             helper.make_node("Cast", ["y"], ["STATE_OUT"], to=TensorProto.BFLOAT16)]
    inputs = [helper.make_tensor_value_info("x", F, ["N", 1]),
              helper.make_tensor_value_info("STATE_IN", TensorProto.BFLOAT16, ["N", 1])]
    outputs = [helper.make_tensor_value_info("y", F, ["N", 1]),
               helper.make_tensor_value_info("STATE_OUT", TensorProto.BFLOAT16, ["N", 1])]
    return ob._model(nodes, inputs, outputs)


def _state(dims: str = "[ 1 ]", initial: str = "") -> str:
    return (f'  state [ {{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: {dims}'
            f'{initial} }} ]\n')


def _acc_config(max_batch_size: int, sequence: str, outputs: str = "") -> str:
    return (f'platform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
            'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "ctrl" data_type: TYPE_FP32 dims: [ 4 ] }'
            f'{outputs} ]\nsequence_batching {{\n{sequence}}}\n')


def _write(root: Path, name: str, graph: Any, config: str) -> None:
    ob.save(graph, root / name / "1")
    (root / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("onnx_sequences") / "model_repository"
    from_file = '\n    initial_state { data_type: TYPE_FP32 dims: [ 1 ] data_file: "hundred" }'
    # four slots, batched oldest first: a batch goes when it holds 4 requests (or after 5 s)
    _write(root, "acc", accumulator(), _acc_config(
        4, "  oldest { max_candidate_sequences: 4 max_queue_delay_microseconds: 5000000 }\n"
           "  max_sequence_idle_microseconds: 60000000\n" + CONTROLS + _state()))
    # no batch dimension; its initial state from initial_state/hundred (100.0); the state output answered too
    _write(root, "acc_whole", accumulator(batched=False), _acc_config(
        0, "  max_sequence_idle_microseconds: 60000000\n" + CONTROLS + _state(initial=from_file),
        ', { name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 1 ] }'))
    (root / "acc_whole" / "initial_state").mkdir()
    (root / "acc_whole" / "initial_state" / "hundred").write_bytes(np.array([100.0], "<f4").tobytes())
    _write(root, "acc_idle", accumulator(), _acc_config(4, "  max_sequence_idle_microseconds: 100000\n" + CONTROLS
                                                         + _state()))
    _write(root, "acc_cancel", accumulator(), _acc_config(1, "  max_sequence_idle_microseconds: 60000000\n"
                                                           + CONTROLS + _state()))
    _write(root, "grow", grower(), 'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
           'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
           'output [ { name: "total" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
           "sequence_batching {\n  max_sequence_idle_microseconds: 60000000\n" + _state("[ -1 ]") + "}\n")
    _write(root, "acc_root", rooted(), 'platform: "onnxruntime_onnx"\nmax_batch_size: 1\n'
           'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
           'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "root" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
           "sequence_batching {\n  max_sequence_idle_microseconds: 60000000\n" + _state() + "}\n")
    # its outputs auto-completed (no output listed): the bfloat16 state output is not answered
    _write(root, "acc_bf16", bf16_state(), 'platform: "onnxruntime_onnx"\nmax_batch_size: 2\n'
           'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
           "sequence_batching {\n  max_sequence_idle_microseconds: 60000000\n"
           '  state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_BF16 dims: [ 1 ] } ]\n}\n')
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root),
                         "--max-sequence-state-bytes", str(STATE_BYTES))
    try:
        yield proc, grpc_address(proc)
    finally:
        proc.stop()


def _one(value: float, batched: bool = True) -> Any:
    t = tgrpc.InferInput("x", [1, 1] if batched else [1], "FP32")
    t.set_data_from_numpy(np.array([[value]] if batched else [value], np.float32))
    return t


def test_interleaved_sequences_share_batches_each_with_its_own_state_and_controls(served) -> None:
    """Four sequences' requests sent at once on one ModelStreamInfer stream to ``acc`` (Oldest, 4
    slots): their rows share batches, yet each row gets its own sequence's state and controls,
    and neither the state input nor the state output is in the answers."""
    client = tgrpc.InferenceServerClient(served[1])
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        steps = {11: [1, 2, 3], 12: [10, 20, 30], 13: [100, 200, 300], 14: [1000, 2000, 3000]}
        plan = [(sid, i, v) for i in range(3) for sid, vs in steps.items() for v in vs[i:i + 1]]
        for n, (sid, i, v) in enumerate(plan):
            client.async_stream_infer("acc", [_one(v)], request_id=str(n), sequence_id=sid,
                                      sequence_start=i == 0, sequence_end=i == 2)
        answers = {}
        for _ in plan:
            result, error = results.get(timeout=60)
            assert error is None, error
            answers[result.get_response().id] = result
        for n, (sid, i, _) in enumerate(plan):
            got = answers[str(n)]
            assert {o.name for o in got.get_response().outputs} == {"y", "ctrl"}
            assert got.as_numpy("y").tolist() == [[float(sum(steps[sid][:i + 1]))]], (sid, i)
            assert got.as_numpy("ctrl").tolist() == [[float(i == 0), float(i == 2), 1.0, float(sid)]], (sid, i)
        stats = client.get_inference_statistics("acc", as_json=True)["model_stats"][0]
        assert int(stats["inference_count"]) == 12
        assert int(stats["execution_count"]) < 12  # rows of several sequences shared a run
    finally:
        client.stop_stream()
        client.close()


async def test_websocket_sequences_restart_at_their_initial_state_and_end(served) -> None:
    """``acc_whole`` (no batch dimension, initial state 100 from initial_state/hundred, its state
    output listed in ``output`` so answered as Triton's debugging aid): a START on a running
    sequence restarts it from the initial state; after its END the sequence must START again."""
    from tests.support.conn import Conn

    def predict(rid: str, sid: Any, value: float, start: bool = False, end: bool = False) -> dict[str, Any]:
        return {"type": "predict", "id": rid, "model": "acc_whole", "inputs": {"x": [[value]]},
                "sequence_id": sid, "sequence_start": start, "sequence_end": end}

    conn = await Conn.open(served[0].url)
    try:
        got = []
        for msg in (predict("a", 5, 1, start=True), predict("b", 5, 2), predict("c", 5, 4, start=True),
                    predict("d", 5, 8, end=True)):
            frame = await conn.request(msg)
            assert frame["type"] == "result", frame
            got.append((frame["outputs"]["y"], frame["outputs"]["STATE_OUT"], frame["outputs"]["ctrl"]))
        assert got == [([[101.0]], [[101.0]], [[1.0, 0.0, 1.0, 5.0]]), ([[103.0]], [[103.0]], [[0.0, 0.0, 1.0, 5.0]]),
                       ([[104.0]], [[104.0]], [[1.0, 0.0, 1.0, 5.0]]), ([[112.0]], [[112.0]], [[0.0, 1.0, 1.0, 5.0]])]
        frame = await conn.request(predict("e", 5, 1))
        assert frame["type"] == "error" and "must specify the START flag" in frame["message"], frame
    finally:
        await conn.close()


def test_an_idle_sequence_lets_its_state_go(served) -> None:
    proc, address = served
    client = tgrpc.InferenceServerClient(address)
    try:
        config = client.get_model_config("acc_idle", as_json=True)["config"]
        assert config["sequence_batching"]["state"] == [{"input_name": "STATE_IN", "output_name": "STATE_OUT",
                                                         "data_type": "TYPE_FP32", "dims": ["1"]}], config
        assert client.infer("acc_idle", [_one(5)], sequence_id=9, sequence_start=True).as_numpy("y").tolist() == [[5.0]]
        wait_until(lambda: "acc_idle: 1 sequences idle" in proc.stderr_text(), 30.0, what="the idle sequence let go")
        with pytest.raises(InferenceServerException, match="sequence 9 to model 'acc_idle' must specify the START"):
            client.infer("acc_idle", [_one(1)], sequence_id=9)
        again = client.infer("acc_idle", [_one(7)], sequence_id=9, sequence_start=True, sequence_end=True)
        assert again.as_numpy("y").tolist() == [[7.0]]  # the initial state, not the expired sequence's 5
    finally:
        client.close()


async def test_a_cancelled_start_aborts_its_sequence_and_a_new_start_begins_at_the_initial_state(served) -> None:
    from tests.support.conn import Conn

    def predict(rid: str, sid: int, value: float, start: bool = False, end: bool = False) -> dict[str, Any]:
        return {"type": "predict", "id": rid, "model": "acc_cancel", "inputs": {"x": [[value]]},
                "sequence_id": sid, "sequence_start": start, "sequence_end": end}

    conn = await Conn.open(served[0].url)
    try:
        frame = await conn.request(predict("a1", 701, 1, start=True))  # holds the one slot
        assert frame["type"] == "result" and frame["outputs"]["y"] == [[1.0]], frame
        await conn.send(predict("b1", 702, 5, start=True))  # waits for the slot
        await conn.send(predict("b2", 702, 6))
        await conn.send({"type": "cancel", "id": "b1"})
        frames = await conn.collect({"b1", "b2"}, timeout=30)
        got = {rid: fs[-1] for rid, fs in frames.items()}
        assert got["b1"]["type"] == "error" and got["b1"]["code"] == "cancelled", got
        assert got["b2"]["type"] == "error" and got["b2"]["code"] == "bad_request", got
        assert "sequence 702 was aborted: its START was cancelled" in got["b2"]["message"], got
        frame = await conn.request(predict("a2", 701, 2, end=True))
        assert frame["type"] == "result" and frame["outputs"]["y"] == [[3.0]], frame
        frame = await conn.request(predict("c1", 702, 9, start=True))
        assert frame["type"] == "result" and frame["outputs"]["y"] == [[9.0]], frame
        frame = await conn.request(predict("c2", 702, 1, end=True))
        assert frame["type"] == "result" and frame["outputs"]["y"] == [[10.0]], frame
    finally:
        await conn.close()


def test_a_state_outgrowing_the_bound_ends_its_request_and_aborts_the_sequence(served) -> None:
    """``grow``'s state gains one float32 a request (a ``-1`` state dim, zeros [1] at START):
    with --max-sequence-state-bytes 40 its 10th request would keep 11 values (44 bytes): that
    request ends with ``invalid_input`` naming the bound, the request sent behind it is not run,
    and the sequence must START again; another sequence is untouched."""
    client = tgrpc.InferenceServerClient(served[1])
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    try:
        assert client.infer("grow", [_one(1000)], sequence_id=2, sequence_start=True).as_numpy("total").tolist() \
            == [[1000.0]]
        for i in range(1, 10):
            got = client.infer("grow", [_one(i)], sequence_id=1, sequence_start=i == 1)
            assert got.as_numpy("total").tolist() == [[float(sum(range(1, i + 1)))]]
            assert [o.name for o in got.get_response().outputs] == ["total"]
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer("grow", [_one(10)], request_id="over", sequence_id=1)
        client.async_stream_infer("grow", [_one(11)], request_id="behind", sequence_id=1)
        answers = [results.get(timeout=30) for _ in range(2)]
        assert all(result is None for result, _ in answers), answers
        errors = [str(error) for _, error in answers]
        assert "the state of sequence 1 of model 'grow' would take more than 40 bytes" in errors[0], errors
        assert "state output 'STATE_OUT' of shape [11] float32 takes 44" in errors[0], errors
        # queued behind it: aborted with it; arrived after it: refused as not started (the sequence is over)
        assert ("sequence 1 was aborted: a request of it made its state outgrow max_sequence_state_bytes" in errors[1]
                or "sequence 1 to model 'grow' must specify the START flag" in errors[1]), errors
        with pytest.raises(InferenceServerException, match="must specify the START flag"):
            client.infer("grow", [_one(1)], sequence_id=1)
        assert client.infer("grow", [_one(3)], sequence_id=1, sequence_start=True).as_numpy("total").tolist() \
            == [[3.0]]
        assert client.infer("grow", [_one(1)], sequence_id=2, sequence_end=True).as_numpy("total").tolist() \
            == [[1001.0]]
    finally:
        client.stop_stream()
        client.close()


def test_a_restart_whose_start_fails_goes_on_from_the_initial_state_not_the_old_sequences(served) -> None:
    """A START on a running sequence whose run fails (an output not finite: nothing kept) leaves
    the restarted sequence at its initial state: its next request does not see the state of the
    sequence before the restart."""
    client = tgrpc.InferenceServerClient(served[1])
    try:
        assert client.infer("acc_root", [_one(5)], sequence_id=801, sequence_start=True).as_numpy("y").tolist() \
            == [[5.0]]
        assert client.infer("acc_root", [_one(2)], sequence_id=801).as_numpy("y").tolist() == [[7.0]]
        with pytest.raises(InferenceServerException, match="not finite"):
            client.infer("acc_root", [_one(-1)], sequence_id=801, sequence_start=True)
        assert client.infer("acc_root", [_one(1)], sequence_id=801, sequence_end=True).as_numpy("y").tolist() \
            == [[1.0]]  # the initial state (0) + 1, not the old sequence's 7 + 1
    finally:
        client.close()


def test_a_bfloat16_state_of_a_graph_whose_answered_tensors_are_float32_runs(served) -> None:
    """``acc_bf16``: only its (hidden) state tensors are bfloat16, its outputs auto-completed:
    the graph still runs through OrtValues, each sequence accumulating in its bfloat16 state."""
    client = tgrpc.InferenceServerClient(served[1])
    try:
        meta = client.get_model_metadata("acc_bf16", as_json=True)
        assert [t["name"] for t in meta["outputs"]] == ["y"], meta
        got = [client.infer("acc_bf16", [_one(v)], sequence_id=31, sequence_start=i == 0, sequence_end=i == 2)
               .as_numpy("y").tolist() for i, v in enumerate((1, 2, 4))]
        assert got == [[[1.0]], [[3.0]], [[7.0]]]
    finally:
        client.close()


def test_the_servers_state_budget_bounds_what_all_sequences_keep(tmp_path: Path) -> None:
    """``--max-sequence-state-total-bytes 16``: two ``grow`` sequences keep 8 bytes each; a third's
    START, whose state would pass the budget, ends with ``overloaded`` naming it and keeps
    nothing (its sequence goes on from the initial state); once one sequence ended, it fits."""
    root = tmp_path / "model_repository"
    _write(root, "grow", grower(), 'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
           'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
           'output [ { name: "total" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
           "sequence_batching {\n  max_sequence_idle_microseconds: 60000000\n" + _state("[ -1 ]") + "}\n")
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root),
                         "--max-sequence-state-total-bytes", "16")
    client = tgrpc.InferenceServerClient(grpc_address(proc))
    try:
        for sid in (1, 2):  # [0, x]: 8 bytes each
            assert client.infer("grow", [_one(sid)], sequence_id=sid, sequence_start=True).as_numpy("total").tolist() \
                == [[float(sid)]]
        with pytest.raises(InferenceServerException) as info:
            client.infer("grow", [_one(3)], sequence_id=3, sequence_start=True)
        assert "the state of sequence 3 of model 'grow' (8 bytes) is not kept" in str(info.value)
        assert "16 bytes of state, at most 16 (max_sequence_state_total_bytes)" in str(info.value)
        assert client.infer("grow", [_one(5)], sequence_id=1, sequence_end=True).as_numpy("total").tolist() == [[6.0]]
        # sequence 3 goes on from its initial state (its START kept nothing); now its state fits
        assert client.infer("grow", [_one(4)], sequence_id=3).as_numpy("total").tolist() == [[4.0]]
        assert client.infer("grow", [_one(1)], sequence_id=3, sequence_end=True).as_numpy("total").tolist() == [[5.0]]
    finally:
        client.close()
        proc.stop()


# -- load-time checks (the graph against sequence_batching)

def _load(tmp_path: Path, graph: Any, config: str, files: dict[str, bytes] | None = None) -> Any:
    mdir = tmp_path / "m"
    ob.save(graph, mdir / "1")
    (mdir / "config.pbtxt").write_text(config)
    for name, data in (files or {}).items():
        (mdir / "initial_state").mkdir(exist_ok=True)
        (mdir / "initial_state" / name).write_bytes(data)
    return load_version("m", 1, mdir / "1", parse_pbtxt(config, mdir / "config.pbtxt", model_name="m"))


def test_a_stateful_onnx_model_loads_with_its_control_and_state_tensors_off_the_wire(tmp_path: Path) -> None:
    model = _load(tmp_path, accumulator(), _acc_config(4, CONTROLS + _state()))
    assert [s.name for s in model.inputs] == ["x"]
    assert [s.name for s in model.outputs] == ["y", "ctrl"]
    assert [s.name for s in model.sequence_inputs] == ["START", "END", "READY", "CORRID", "STATE_IN"]
    assert model.state_outputs == ("STATE_OUT",)


@pytest.mark.parametrize(("change", "words"), [
    (lambda c: c.replace('name: "READY"', 'name: "GO"'),
     ["sequence_batching names control input 'GO', which is not a graph input"]),
    (lambda c: c.replace("int32_false_true: [ 0, 1 ]", "fp32_false_true: [ 0, 1 ]"),
     ["control input 'START' is float32", "tensor(int32)"]),
    (lambda c: c.replace("TYPE_UINT64", "TYPE_INT64"), ["control input 'CORRID' is int64", "tensor(uint64)"]),
    (lambda c: c.replace('output_name: "STATE_OUT"', 'output_name: "OUT2"'),
     ["state output 'OUT2', which is not a graph output", "'STATE_OUT'"]),
    (lambda c: c.replace("data_type: TYPE_FP32 dims: [ 1 ] }", "data_type: TYPE_FP64 dims: [ 1 ] }"),
     ["state input 'STATE_IN' is float64", "tensor(float)"]),
    (lambda c: c.replace("TYPE_FP32 dims: [ 1 ] }", "TYPE_FP32 dims: [ 2 ] }"),
     ["state input 'STATE_IN'", "dims [2]", "disagree with the graph's shape [-1, 1]"]),
    (lambda c: c.replace("TYPE_FP32 dims: [ 1 ] }", "TYPE_FP32 dims: [ 1 ] initial_state { data_type: TYPE_FP32 "
                         'dims: [ 1 ] data_file: "short" } }'),
     ["initial_state/short holds 2 bytes; [1] float32 values are 4"]),
])
def test_a_graph_disagreeing_with_sequence_batching_is_refused_naming_the_tensor(tmp_path: Path, change: Any,
                                                                                words: list[str]) -> None:
    config = _acc_config(4, change(CONTROLS + _state()))  # (the change applies to sequence_batching)
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, accumulator(), config, {"short": b"\0\0"})
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(("state", "key", "words"), [
    ('state [{ input_name: "x" output_name: "o" data_type: TYPE_FP32 dims: [1] }]', "sequence_batching.state[0].input_name",
     ["'x' is already an input"]),
    ('state [{ input_name: "s" output_name: "o" data_type: TYPE_STRING dims: [1] }]', "sequence_batching.state[0].data_type",
     ["TYPE_STRING is not served for a state"]),
    ('state [{ input_name: "s" output_name: "o" data_type: TYPE_FP32 dims: [0] }]', "sequence_batching.state[0].dims",
     ["got [0]"]),
    ('state [{ input_name: "s" output_name: "o" data_type: TYPE_FP32 dims: [-1] initial_state { data_type: TYPE_INT32 '
     "dims: [1] zero_data: true } }]", "sequence_batching.state[0].initial_state.data_type", ["TYPE_INT32", "TYPE_FP32"]),
    ('state [{ input_name: "s" output_name: "o" data_type: TYPE_FP32 dims: [2] initial_state { data_type: TYPE_FP32 '
     "dims: [3] zero_data: true } }]", "sequence_batching.state[0].initial_state.dims", ["[2]", "[3]"]),
    ('state [{ input_name: "s" output_name: "o" data_type: TYPE_FP32 dims: [-1] initial_state { data_type: TYPE_FP32 '
     'dims: [1] data_file: "../x" } }]', "sequence_batching.state[0].initial_state.data_file", ["initial_state/"]),
    ('state [{ input_name: "s" output_name: "o" data_type: TYPE_FP32 dims: [1] initial_state { data_type: TYPE_FP32 '
     "dims: [1] } }]", "sequence_batching.state[0].initial_state", ["zero_data: true or data_file"]),
    ('control_input [{ name: "C" control [{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING }] }]',
     "sequence_batching.control_input[0].control[0].data_type", ["TYPE_STRING", "ONNX model's CORRID"]),
])
def test_a_bad_state_is_refused_naming_the_field(state: str, key: str, words: list[str]) -> None:
    from wsserve.repository.errors import ConfigError

    text = ('platform: "onnxruntime_onnx"\nmax_batch_size: 4\ninput [{ name: "x" data_type: TYPE_FP32 dims: [1] }]\n'
            f"sequence_batching {{ {state} }}")
    with pytest.raises(ConfigError) as info:
        parse_pbtxt(text, "repo/m/config.pbtxt", model_name="m")
    assert info.value.key == key
    for word in words:
        assert word in str(info.value)
