"""A Triton Python backend model (config.pbtxt ``backend: "python"``, a ``model.py`` with ``class
TritonPythonModel`` importing ``triton_python_backend_utils``) served unchanged: a real server on
loopback, called with Triton's own clients (``tritonclient.http``, ``tritonclient.grpc``) and the
WebSocket client; and the loader's refusals and checks, in process."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.support import ServerProcess, wait_until  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from wsserve.repository.errors import ModelLoadError  # noqa: E402
from wsserve.repository.loader import load_version  # noqa: E402
from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402

#: Triton's add_sub example, as its repository ships it (examples/add_sub/model.py), plus a third
#: output: how many requests the execute call that computed a row got (batching across requests).
ADD_SUB_PY = '''
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        seen = {k: args[k] for k in ("model_name", "model_version", "model_repository",
                                     "model_instance_kind", "model_instance_name")}
        seen["input0_dims"] = pb_utils.get_input_config_by_name(model_config, "INPUT0")["dims"]
        seen["parameters"] = model_config["parameters"]
        with open(os.path.join(args["model_repository"], "args.json"), "w") as f:
            json.dump(seen, f)
        pb_utils.Logger.log_info("add_sub initialized as " + args["model_instance_name"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            if (in_0.as_numpy() < -100).any():
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError("INPUT0 below -100")))
                continue
            assert request.requested_output_names() == ["OUTPUT0", "OUTPUT1", "NREQ"]
            assert json.loads(request.parameters()) == {}
            out_0 = in_0.as_numpy() + in_1.as_numpy()
            out_1 = in_0.as_numpy() - in_1.as_numpy()
            nreq = np.full((len(out_0), 1), len(requests), dtype=np.int64)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", out_0.astype(self.output0_dtype)),
                pb_utils.Tensor("OUTPUT1", out_1.astype(np.float32)),
                pb_utils.Tensor("NREQ", nreq),
            ]))
        return responses

    def finalize(self):
        pass

'''

ADD_SUB_PBTXT = """
name: "add_sub"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "NREQ" data_type: TYPE_INT64 dims: [ 1 ] }
]
dynamic_batching { max_queue_delay_microseconds: 30000000 }
parameters { key: "scale" value: { string_value: "2" } }
"""

#: max_batch_size 0: execute gets one request per row, tensors of exactly dims.
SCALAR_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            assert x.shape == (3,), x.shape
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (x * 2).astype("float64"))]))
        return out
'''
SCALAR_PBTXT = 'backend: "python"\ninput [ { name: "x" data_type: TYPE_FP64 dims: [ 3 ] } ]\n' \
               'output [ { name: "y" data_type: TYPE_FP64 dims: [ 3 ] } ]\n'

ONE_IO_PBTXT = ('backend: "python"\nmax_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
                'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n')

#: Broken execute()s, each behind ONE_IO_PBTXT: name -> (body of execute, what the error says).  The first
#: three answer the warm-up's rows of zeros (an echo) and fail on any other input.
ECHO = "return [pb_utils.InferenceResponse([pb_utils.Tensor('y', r.inputs()[0].as_numpy())]) for r in requests]"
BROKEN = {
    "raises": ("raise ValueError('no model here')", "TritonPythonModel.execute raised ValueError: no model here"),
    "short": ("return []", "execute must return one InferenceResponse per request (1), got 0 responses"),
    "missing": ("return [pb_utils.InferenceResponse([pb_utils.Tensor('z', r.inputs()[0].as_numpy())]) for r in requests]",
                "execute's response 0 has no output 'y'"),
    "misshaped": ("return [pb_utils.InferenceResponse([pb_utils.Tensor('y', np.zeros((7, 2), 'float32'))]) for r in requests]",
                  "has shape [7, 2]; expected [2, 2]"),
    "bls": ("return [pb_utils.InferenceRequest(model_name='add_sub', requested_output_names=['y'], inputs=[]).exec()]",
            "input 'INPUT0' of model 'add_sub' is missing"),  # BLS: an error response, its request's error
    "sender": ("requests[0].get_response_sender(); return []",
               "get_response_sender() is served for a decoupled model's requests only"),
}


def _broken_py(body: str, *, warms_up: bool = False) -> str:
    guard = f"if not requests[0].inputs()[0].as_numpy().any():\n            {ECHO}\n        " if warms_up else ""
    return ("import numpy as np\nimport triton_python_backend_utils as pb_utils\n\n\n"
            "class TritonPythonModel:\n    def execute(self, requests):\n        " + guard + body + "\n")


def _write(root: Path, name: str, pbtxt: str, model_py: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(pbtxt)
    (root / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


def _write_repo(root: Path) -> None:
    _write(root, "add_sub", ADD_SUB_PBTXT, ADD_SUB_PY)
    _write(root, "scalar", SCALAR_PBTXT, SCALAR_PY)
    for name, (body, _) in BROKEN.items():
        _write(root, name, ONE_IO_PBTXT, _broken_py(body, warms_up=name in ("raises", "bls", "sender")))
    _write(root, "decoupled", ONE_IO_PBTXT + "model_transaction_policy { decoupled: true }\n", _broken_py("return []"))
    _write(root, "zeros_raise", ONE_IO_PBTXT, _broken_py(
        "if not requests[0].inputs()[0].as_numpy().any():\n"
        "            raise pb_utils.TritonModelException('rows of zeros are not a valid input')\n        " + ECHO))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Path]]:
    root = tmp_path_factory.mktemp("triton_python") / "model_repository"
    _write_repo(root)
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc), root
    finally:
        proc.stop()


def _ab(rows: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    a = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + shift
    return a, np.full((rows, 4), 0.5, np.float32)


def test_http_client_runs_triton_add_sub(served) -> None:
    proc, _, root = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    assert client.is_model_ready("add_sub")
    a, b = _ab(8)  # a full batch: the 30 s window does not hold it
    ins = [thttp.InferInput("INPUT0", [8, 4], "FP32"), thttp.InferInput("INPUT1", [8, 4], "FP32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    result = client.infer("add_sub", ins)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    args = json.loads((root / "add_sub" / "args.json").read_text())
    assert args == {"model_name": "add_sub", "model_version": "1", "model_repository": str(root / "add_sub"),
                    "model_instance_kind": "CPU", "model_instance_name": "add_sub_0_0", "input0_dims": [4],
                    "parameters": {"scale": {"string_value": "2"}}}
    proc.wait_logged("add_sub initialized as add_sub_0_0")
    a, b = _ab(16)  # two full batches: wsserve splits the request, each part its own InferenceRequest
    ins = [thttp.InferInput("INPUT0", [16, 4], "FP32"), thttp.InferInput("INPUT1", [16, 4], "FP32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    result = client.infer("add_sub", ins)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_grpc_client_runs_triton_add_sub_and_a_model_without_batching(served) -> None:
    _, address, _ = served
    client = tgrpc.InferenceServerClient(address)
    try:
        a, b = _ab(8, shift=-3)
        ins = [tgrpc.InferInput("INPUT0", [8, 4], "FP32"), tgrpc.InferInput("INPUT1", [8, 4], "FP32")]
        ins[0].set_data_from_numpy(a)
        ins[1].set_data_from_numpy(b)
        np.testing.assert_array_equal(client.infer("add_sub", ins).as_numpy("OUTPUT1"), a - b)
        x = np.arange(3, dtype=np.float64)  # no batch dimension (max_batch_size 0): exactly its dims, as Triton
        inp = tgrpc.InferInput("x", [3], "FP64")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("scalar", [inp]).as_numpy("y"), x * 2)
        two_rows = tgrpc.InferInput("x", [2, 3], "FP64")
        two_rows.set_data_from_numpy(np.zeros((2, 3)))
        with pytest.raises(tgrpc.InferenceServerException, match=r"the model takes \[3\]"):
            client.infer("scalar", [two_rows])
    finally:
        client.close()


async def test_websocket_requests_batched_together_reach_one_execute_as_several_requests(served) -> None:
    """Two 4-row requests on two connections fill the 8-row batch: one execute, two InferenceRequests."""
    from wsserve_client import Client

    proc, _, _ = served
    async with Client(proc.url) as c1, Client(proc.url) as c2:
        (a1, b1), (a2, b2) = _ab(4), _ab(4, shift=100)
        r1, r2 = await asyncio.gather(
            c1.predict("add_sub", {"INPUT0": a1, "INPUT1": b1}, binary=True),
            c2.predict("add_sub", {"INPUT0": a2, "INPUT1": b2}, binary=True))
    np.testing.assert_array_equal(r1.outputs["OUTPUT0"], a1 + b1)
    np.testing.assert_array_equal(r2.outputs["OUTPUT0"], a2 + b2)
    assert r1.outputs["NREQ"].ravel().tolist() == [2] * 4 and r2.outputs["NREQ"].ravel().tolist() == [2] * 4


async def test_an_error_response_fails_only_its_request(served) -> None:
    from wsserve_client import Client, WsserveError

    proc, _, _ = served
    async with Client(proc.url) as c1, Client(proc.url) as c2:
        (a1, b1), (a2, b2) = _ab(4), _ab(4, shift=-1000)
        good, bad = await asyncio.gather(
            c1.predict("add_sub", {"INPUT0": a1, "INPUT1": b1}, binary=True),
            c2.predict("add_sub", {"INPUT0": a2, "INPUT1": b2}, binary=True), return_exceptions=True)
    assert not isinstance(good, BaseException), good
    np.testing.assert_array_equal(good.outputs["OUTPUT1"], a1 - b1)
    assert isinstance(bad, WsserveError) and bad.code == "internal"
    assert "model 'add_sub'" in str(bad) and "INPUT0 below -100" in str(bad)


@pytest.mark.parametrize("name", ["raises", "bls", "sender"])
def test_a_failing_execute_fails_the_request_not_the_server(served, name: str) -> None:
    proc, _, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    x = np.ones((2, 2), np.float32)
    inp = thttp.InferInput("x", [2, 2], "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as info:
        client.infer(name, [inp])
    assert f"model {name!r}" in str(info.value) and BROKEN[name][1] in str(info.value)
    assert client.is_server_live() and client.is_model_ready("add_sub")


def test_an_execute_raising_on_the_implicit_warm_up_is_served_as_triton_serves_it(served) -> None:
    """Triton runs no warm-up but ``model_warmup``: a model whose ``execute`` raises on wsserve's own
    rows of zeros (or, calling other models, finds them still loading) is logged and served; a request
    it raises on fails alone, with its message."""
    proc, _, root = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    assert client.is_model_ready("zeros_raise")
    proc.wait_logged("zeros_raise/1/model.py: warm-up request (rows of zeros) answered with an error")
    x = np.ones((2, 2), np.float32)
    inp = thttp.InferInput("x", [2, 2], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("zeros_raise", [inp]).as_numpy("y"), x)
    inp.set_data_from_numpy(np.zeros((2, 2), np.float32))
    with pytest.raises(InferenceServerException, match="rows of zeros are not a valid input"):
        client.infer("zeros_raise", [inp])


@pytest.mark.parametrize("name", ["short", "missing", "misshaped"])
def test_a_wrong_answer_refuses_the_model_at_warm_up_naming_it(served, name: str) -> None:
    proc, _, root = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    assert not client.is_model_ready(name)
    log = proc.stderr_text()
    assert f"{root / name / '1' / 'model.py'}: warm-up failed" in log
    assert f"model {name!r}: {BROKEN[name][1]}" in log or BROKEN[name][1] in log


def test_http_infer_on_a_decoupled_model_is_refused_as_triton_refuses_it(served) -> None:
    """A decoupled model is served (tests/test_triton_decoupled.py streams it); HTTP ``/infer``, which
    answers once, gets Triton's UNSUPPORTED answer (501)."""
    proc, _, _ = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    assert client.is_model_ready("decoupled")
    assert client.get_model_config("decoupled")["model_transaction_policy"] == {"decoupled": True}
    inp = thttp.InferInput("x", [1, 2], "FP32")
    inp.set_data_from_numpy(np.ones((1, 2), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("decoupled", [inp])
    assert info.value.status() == "501"
    assert info.value.message() == "HTTP end point doesn't support models with decoupled transaction policy"


# --------------------------------------------------------------------------- in process

def _load(root: Path, name: str, pbtxt: str, model_py: str):  # noqa: ANN202 - a RepositoryModel
    _write(root, name, pbtxt, model_py)
    path = root / name / "config.pbtxt"
    return load_version(name, 1, root / name / "1", parse_pbtxt(path.read_text(), path, model_name=name))


def test_the_utilities_module_is_importable_only_while_model_py_executes(tmp_path: Path) -> None:
    model = _load(tmp_path, "m", ONE_IO_PBTXT, _broken_py(ECHO))
    assert "triton_python_backend_utils" not in sys.modules
    x = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(model.predict(x), x)
    np.testing.assert_array_equal(model.predict_requests(x, [1, 2]), x)
    model.close()


def test_a_response_error_and_wrong_rows_are_errors_naming_the_model(tmp_path: Path) -> None:
    from wsserve.repository.triton_backend import TritonError

    model = _load(tmp_path, "e", ONE_IO_PBTXT, _broken_py(
        "return [pb_utils.InferenceResponse(error=pb_utils.TritonError('nope')) if r.inputs()[0].as_numpy()[0, 0] < 0 "
        "else pb_utils.InferenceResponse([pb_utils.Tensor('y', np.zeros((1, 2), 'float32'))]) for r in requests]"))
    with pytest.raises(TritonError, match="^nope$"):
        model.predict(-np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"model 'e': execute's response 1: output 'y' has shape \[1, 2\]; expected \[2, 2\]"):
        model.predict_requests(np.ones((3, 2), np.float32), [1, 2])


@pytest.mark.parametrize(("model_py", "words"), [
    ("class Model:\n    pass\n", "defines no class TritonPythonModel"),
    ("class TritonPythonModel:\n    pass\n", "has no execute(requests) method"),
    ("import triton_python_backend_utils as pb_utils\nclass TritonPythonModel:\n"
     "    def initialize(self, args):\n        raise RuntimeError('no weights')\n    def execute(self, requests):\n        return []\n",
     "TritonPythonModel.initialize raised RuntimeError: no weights"),
    ("import triton_python_backend_utils as pb_utils\nclass TritonPythonModel:\n    @staticmethod\n"
     "    def auto_complete_config(c):\n        c.add_input({'name': 'extra', 'data_type': 'TYPE_FP32', 'dims': [1]})\n        return c\n"
     "    def execute(self, requests):\n        return []\n",
     "auto_complete_config raised ValueError: auto_complete_config of model 'b' adds input 'extra'"),
])
def test_a_bad_model_py_is_refused_naming_the_problem(tmp_path: Path, model_py: str, words: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, "b", ONE_IO_PBTXT, model_py)
    assert words in str(info.value) and str(tmp_path / "b" / "1" / "model.py") in str(info.value)


def test_an_instance_failing_to_initialize_finalizes_the_instances_initialized_before_it(tmp_path: Path) -> None:
    model_py = """
        import os
        import triton_python_backend_utils as pb_utils


        class TritonPythonModel:
            def initialize(self, args):
                self.name = args["model_instance_name"]
                if self.name.endswith("_2"):
                    raise RuntimeError("no room for a third")
                open(os.path.join(args["model_repository"], "open-" + self.name), "w").close()

            def execute(self, requests):
                return []

            def finalize(self):
                os.rename(os.path.join(os.path.dirname(__file__), "..", "open-" + self.name),
                          os.path.join(os.path.dirname(__file__), "..", "finalized-" + self.name))
    """
    with pytest.raises(ModelLoadError, match="TritonPythonModel.initialize raised RuntimeError: no room for a third"):
        _load(tmp_path, "three", ONE_IO_PBTXT + "instance_group [ { count: 3 kind: KIND_CPU } ]\n", model_py)
    assert sorted(p.name for p in (tmp_path / "three").glob("*-three_0_*")) == ["finalized-three_0_0", "finalized-three_0_1"]


def test_a_model_py_hanging_as_it_executes_does_not_hold_up_another_triton_models_load(tmp_path: Path) -> None:
    # a load past its timeout is abandoned, its thread still running: the others must still load
    gate = tmp_path / "gate"
    hung_py = f"""
        import os
        import time
        import triton_python_backend_utils as pb_utils

        open({str(gate)!r} + ".started", "w").close()
        end = time.monotonic() + 60
        while not os.path.exists({str(gate)!r}) and time.monotonic() < end:
            time.sleep(0.01)


        class TritonPythonModel:
            def execute(self, requests):
                return [pb_utils.InferenceResponse([pb_utils.Tensor("y", r.inputs()[0].as_numpy())]) for r in requests]
    """
    hung = threading.Thread(target=_load, args=(tmp_path, "hung", ONE_IO_PBTXT, hung_py), daemon=True)
    hung.start()
    try:
        wait_until(lambda: Path(f"{gate}.started").exists(), 30)
        loaded: list[Any] = []
        other = threading.Thread(target=lambda: loaded.append(_load(tmp_path, "m", ONE_IO_PBTXT, _broken_py(ECHO))),
                                 daemon=True)
        other.start()
        wait_until(lambda: bool(loaded), 30)
        x = np.ones((2, 2), np.float32)
        np.testing.assert_array_equal(loaded[0].predict(x), x)
        loaded[0].close()
        assert "triton_python_backend_utils" in sys.modules  # 'hung' still executes: it may still import it
    finally:
        gate.touch()
        hung.join()
    assert "triton_python_backend_utils" not in sys.modules


#: Answers the item size of the INPUT tensor its execute got (4: the config's TYPE_FP32).
ITEMSIZE_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SIZE", np.full((len(x), 1), x.dtype.itemsize,
                                                                                    np.float32))]))
        return out
'''


@pytest.mark.parametrize("ragged", [False, True], ids=["plain", "allow_ragged_batch"])
def test_a_float32_vector_input_sent_as_json_rows_reaches_execute_as_float32(tmp_path: Path, ragged: bool) -> None:
    """A model of one TYPE_FP32 vector input takes small JSON requests through wsserve's fast path
    (rows gathered as float64): its execute still gets the config's data type, as Triton's."""
    from tests.support import Conn

    root = tmp_path / "repo"
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "1" / "model.py").write_text(ITEMSIZE_MODEL)
    flag = " allow_ragged_batch: true" if ragged else ""
    (root / "m" / "config.pbtxt").write_text(f"""backend: "python"
max_batch_size: 4
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 3 ]{flag} }} ]
output [ {{ name: "SIZE" data_type: TYPE_FP32 dims: [ 1 ] }} ]
""")
    proc = ServerProcess("--models", "none", "--model-repository", str(root))

    async def ask() -> list[dict[str, Any]]:
        conn = await Conn.open(proc.url)
        try:
            await conn.send({"type": "predict", "id": 1, "model": "m", "inputs": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]})
            return (await conn.collect({1}))[1]
        finally:
            await conn.close()

    try:
        (last,) = asyncio.run(ask())
        assert last["type"] == "result" and last["outputs"] == [[4.0], [4.0]], last
    finally:
        proc.stop()
