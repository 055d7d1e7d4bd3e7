"""The narrow and unsigned tensor dtypes (Triton's TYPE_FP16, TYPE_INT8, TYPE_INT16, TYPE_UINT8 ...
TYPE_UINT64; the OIP's FP16, INT8 ... UINT64): an ONNX image front taking uint8 pixels, an ONNX
float16 linear layer and a Triton Python model echoing every integer type, served from a
config.pbtxt repository on a real server on loopback and called with ``tritonclient.http``,
``tritonclient.grpc`` and the wsserve Python client (JSON and binary frames).  Before these dtypes
were served, each of these models was refused at load ("TYPE_UINT8 is not served")."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("grpc")  # the grpc extra
tgrpc = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as thttp  # noqa: E402

from tests import onnx_builders as ob  # noqa: E402
from tests.support import ServerProcess  # noqa: E402
from tests.test_grpc import grpc_address  # noqa: E402
from tests.test_repository_triton_python import _write  # noqa: E402

PIXELS_PBTXT = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "image" data_type: TYPE_UINT8 dims: [ 4 ] } ]
output [ { name: "scaled" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "raw" data_type: TYPE_UINT8 dims: [ 4 ] } ]
"""

HALF_PBTXT = """
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP16 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP16 dims: [ 2 ] } ]
"""

#: (input/output name, Triton type, OIP datatype, numpy dtype, the least and the greatest value).
INTS = [
    ("i8", "TYPE_INT8", "INT8", np.int8, -128, 127),
    ("i16", "TYPE_INT16", "INT16", np.int16, -32768, 32767),
    ("u8", "TYPE_UINT8", "UINT8", np.uint8, 0, 255),
    ("u16", "TYPE_UINT16", "UINT16", np.uint16, 0, 65535),
    ("u32", "TYPE_UINT32", "UINT32", np.uint32, 0, 2**32 - 1),
    ("u64", "TYPE_UINT64", "UINT64", np.uint64, 0, 2**64 - 1),
]
ECHO_PBTXT = 'backend: "python"\nmax_batch_size: 8\n' + "input [ " + ", ".join(
    f'{{ name: "{n}" data_type: {t} dims: [ 2 ] }}' for n, t, *_ in INTS) + " ]\noutput [ " + ", ".join(
    f'{{ name: "{n}_out" data_type: {t} dims: [ 2 ] }}' for n, t, *_ in INTS) + " ]\n"
#: Answers each input as it came, and fails the request unless each came in its own numpy dtype.
ECHO_PY = f"""
import numpy as np
import triton_python_backend_utils as pb_utils

WANT = {{{", ".join(f'"{n}": np.{np.dtype(d).name}' for n, _, _, d, *_ in INTS)}}}


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            tensors = []
            for name, dtype in WANT.items():
                a = pb_utils.get_input_tensor_by_name(r, name).as_numpy()
                if a.dtype != dtype:
                    raise pb_utils.TritonError(f"{{name}} came as {{a.dtype}}")
                tensors.append(pb_utils.Tensor(name + "_out", a))
            out.append(pb_utils.InferenceResponse(tensors))
        return out
"""


#: model.py models whose float16 output ``y`` is computed in a wider type: ``x * 1.0`` (float64)
#: and ``x`` as int64; ``model.py`` outputs of the same kind are cast to the declared dtype.
NARROWED = {"half_of_f64": ("float64", "x * 1.0"), "half_of_i64": ("int64", "x")}
NARROWED_TOML = """
[[inputs]]
name = "x"
shape = [1]
dtype = "{in_dtype}"

[[outputs]]
name = "y"
shape = [1]
dtype = "float16"
"""
NARROWED_PY = """
import numpy as np


class Model:
    def __init__(self, version_dir):
        pass

    def predict(self, x):
        return {expr}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, dict]]:
    root: Path = tmp_path_factory.mktemp("dtypes") / "model_repository"
    refs = {}
    model, refs["pixels"] = ob.uint8_pixels(4)
    ob.save(model, root / "pixels" / "1")
    (root / "pixels" / "config.pbtxt").write_text(PIXELS_PBTXT)
    model, refs["half"] = ob.linear_layer(3, 2, seed=5, dtype=np.float16)
    ob.save(model, root / "half" / "1")
    (root / "half" / "config.pbtxt").write_text(HALF_PBTXT)
    _write(root, "echo", ECHO_PBTXT, ECHO_PY)
    for name, (in_dtype, expr) in NARROWED.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.toml").write_text(NARROWED_TOML.format(in_dtype=in_dtype))
        (root / name / "1" / "model.py").write_text(NARROWED_PY.format(expr=expr))
    proc = ServerProcess("--grpc-port", "0", "--models", "none", "--model-repository", str(root))
    try:
        yield proc, grpc_address(proc), refs
    finally:
        proc.stop()


IMAGE = np.array([[0, 1, 128, 255], [7, 8, 9, 10]], dtype=np.uint8)
HALF_X = np.array([[0.5, -1.25, 2.0], [1.0, 0.0, -3.5]], dtype=np.float16)


def _extremes() -> dict[str, np.ndarray]:
    return {n: np.array([[lo, hi], [hi, lo]], dtype=d) for n, _, _, d, lo, hi in INTS}


@pytest.mark.parametrize("binary", [True, False])
def test_http_uint8_image_and_float16_layer(served, binary: bool) -> None:
    proc, _, refs = served
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    meta = client.get_model_metadata("pixels")
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("image", "UINT8")]
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("scaled", "FP32"), ("raw", "UINT8")]
    inp = thttp.InferInput("image", list(IMAGE.shape), "UINT8")
    inp.set_data_from_numpy(IMAGE, binary_data=binary)
    outs = [thttp.InferRequestedOutput(n, binary_data=binary) for n in ("scaled", "raw")]
    result = client.infer("pixels", [inp], outputs=outs)
    raw = result.as_numpy("raw")
    assert raw.dtype == np.uint8 and raw.tolist() == IMAGE.tolist()
    np.testing.assert_allclose(result.as_numpy("scaled"), refs["pixels"](IMAGE), rtol=1e-6)
    x = thttp.InferInput("x", list(HALF_X.shape), "FP16")
    x.set_data_from_numpy(HALF_X, binary_data=True)  # tritonclient sends FP16 as binary data only
    y = client.infer("half", [x], outputs=[thttp.InferRequestedOutput("y", binary_data=True)]).as_numpy("y")
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), refs["half"](HALF_X).astype(np.float32), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize(("name", "datatype", "value", "words"), [
    ("image", "UINT8", 256, "256"), ("image", "UINT8", -1, "-1"), ("image", "UINT8", 1.5, "1.5"),
    ("x", "FP16", 70000.0, "FP16"),
])
def test_http_json_values_outside_a_narrow_type_are_refused_naming_it(served, name: str, datatype: str,
                                                                      value: float, words: str) -> None:
    proc, _, _ = served
    model = "pixels" if name == "image" else "half"
    data = [0, 1, 2, value] if name == "image" else [0.5, value, 1.0]
    body = json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": [1, len(data)], "data": data}]})
    request = urllib.request.Request(f"http://127.0.0.1:{proc.port}/v2/models/{model}/infer", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    message = json.loads(caught.value.read())["error"]
    assert f"input {name!r}" in message and words in message, message


def test_http_and_grpc_echo_every_integer_type_at_its_extremes(served) -> None:
    proc, address, _ = served
    values = _extremes()
    client = thttp.InferenceServerClient(f"127.0.0.1:{proc.port}")
    for binary in (True, False):
        inputs = []
        for name, _, oip, _, _, _ in INTS:
            t = thttp.InferInput(name, [2, 2], oip)
            t.set_data_from_numpy(values[name], binary_data=binary)
            inputs.append(t)
        result = client.infer("echo", inputs, outputs=[thttp.InferRequestedOutput(n + "_out", binary_data=binary)
                                                     for n, *_ in INTS])
        for name, _, _, dtype, _, _ in INTS:
            got = result.as_numpy(name + "_out")
            assert got.dtype == dtype and got.tolist() == values[name].tolist(), (name, binary, got)
    gclient = tgrpc.InferenceServerClient(address)
    try:
        config = gclient.get_model_config("echo").config
        assert [t.data_type for t in config.input] == [3 + 3, 7, 2, 3, 4, 5]  # TYPE_INT8=6 INT16=7 UINT8=2 ... UINT64=5
        inputs = []
        for name, _, oip, _, _, _ in INTS:
            t = tgrpc.InferInput(name, [2, 2], oip)
            t.set_data_from_numpy(values[name])
            inputs.append(t)
        result = gclient.infer("echo", inputs)
        for name, _, _, dtype, _, _ in INTS:
            got = result.as_numpy(name + "_out")
            assert got.dtype == dtype and got.tolist() == values[name].tolist(), name
        x = tgrpc.InferInput("x", list(HALF_X.shape), "FP16")
        x.set_data_from_numpy(HALF_X)
        assert gclient.infer("half", [x]).as_numpy("y").dtype == np.float16
    finally:
        gclient.close()


async def test_websocket_json_and_binary_frames_carry_the_narrow_types(served) -> None:
    from wsserve_client import Client, InvalidInput

    proc, _, refs = served
    async with Client(proc.url) as client:
        await client.ping()  # a hello read: binary frames may now carry the server's dtypes
        assert {"uint8", "float16", "uint64"} <= set(client.hello.binary_dtypes)
        r = await client.predict("pixels", {"image": IMAGE.tolist()})
        assert r.outputs["raw"] == IMAGE.tolist()
        r = await client.predict("pixels", {"image": IMAGE}, binary=True)
        assert r.outputs["raw"].dtype == np.uint8 and r.outputs["raw"].tolist() == IMAGE.tolist()
        np.testing.assert_allclose(r.outputs["scaled"], refs["pixels"](IMAGE), rtol=1e-6)
        r = await client.predict("half", HALF_X, binary=True)
        assert r.outputs.dtype == np.float16
        np.testing.assert_allclose(r.outputs.astype(np.float32), refs["half"](HALF_X).astype(np.float32),
                                   rtol=2e-3, atol=2e-3)
        values = _extremes()
        r = await client.predict("echo", {k: v.tolist() for k, v in values.items()})
        assert {k[:-4]: v for k, v in r.outputs.items()} == {k: v.tolist() for k, v in values.items()}
        r = await client.predict("echo", values, binary=True)
        for name, _, _, dtype, _, _ in INTS:
            assert r.outputs[name + "_out"].dtype == dtype
            assert r.outputs[name + "_out"].tolist() == values[name].tolist()
        for name, value, words in [("u8", 256, "uint8"), ("i8", -129, "int8"), ("u64", -1, "uint64"),
                                   ("u16", 1.5, "integers only")]:
            rows = {k: v.tolist() for k, v in values.items()}
            rows[name][1][0] = value
            with pytest.raises(InvalidInput, match=rf"'inputs\.{name}' row 1 holds .*{words}"):
                await client.predict("echo", rows)
        with pytest.raises(InvalidInput, match=r"70000.*float16"):
            await client.predict("half", [[0.5, 70000.0, 1.0]])
        wide = values["u8"].astype(np.int64)
        wide[0, 0] = 300  # an int64 frame into a uint8 input: range-checked, as JSON is
        with pytest.raises(InvalidInput, match=r"beyond uint8's range"):
            await client.predict("echo", {**values, "u8": wide}, binary=True)
        r = await client.predict("echo", {**values, "u8": values["u8"].astype(np.int64)}, binary=True)
        assert r.outputs["u8_out"].dtype == np.uint8  # widened values cast back into the model's dtype


async def test_websocket_binary_frames_of_whole_floats_fit_int_inputs_bfloat16_as_float16(served) -> None:
    """A float frame of integral values into an int input is cast (as JSON's ``2.0`` is): a bfloat16
    frame as a float16 one, range- and integer-checked the same way.  It was refused ("is bfloat16;
    input 'i8' takes int8") while float16 was taken."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from wsserve_client import Client, InvalidInput

    proc, _, _ = served
    whole = {n: np.array([[0, 1], [2, 3]]) for n, *_ in INTS}
    async with Client(proc.url) as client:
        await client.ping()
        assert "bfloat16" in client.hello.binary_dtypes
        for dtype in (np.float16, ml_dtypes.bfloat16):
            values = {k: v.astype(dtype) for k, v in whole.items()}
            r = await client.predict("echo", values, binary=True)
            for name, _, _, int_dtype, _, _ in INTS:
                assert r.outputs[name + "_out"].dtype == int_dtype
                assert r.outputs[name + "_out"].tolist() == whole[name].tolist()
            with pytest.raises(InvalidInput, match=r"tensor 'u16' row 1\[0\] holds a value that is not an integer"):
                await client.predict("echo", {**values, "u16": np.array([[0, 1], [1.5, 3]]).astype(dtype)}, binary=True)
            with pytest.raises(InvalidInput, match=r"tensor 'u8' row 0\[1\] holds a value that is not an integer"):
                await client.predict("echo", {**values, "u8": np.array([[0, 256], [2, 3]]).astype(dtype)}, binary=True)


async def test_a_wider_output_beyond_float16_fails_naming_the_value_and_one_within_is_cast(served) -> None:
    """A model.py answering float64 1e6 (or int64 70000) for a float16 output: the cast made it inf,
    and the request failed as the client's ``invalid_input`` ("output row 0 is not finite"); an
    int64 answer for a float output (float16 or float32) failed the version's warm-up with numpy's
    "Invalid integer data type 'f'" (the check for integer wrap-around asked for a float's iinfo)."""
    from wsserve_client import Client, InternalServerError

    proc, _, _ = served
    async with Client(proc.url) as client:
        for model, value, shown in [("half_of_f64", 1e6, "1000000.0"), ("half_of_f64", -65520.0, "-65520.0"),
                                    ("half_of_i64", 70000, "70000")]:
            r = await client.predict(model, [[3], [-65504]])
            assert r.outputs == [[3.0], [-65504.0]], (model, r.outputs)
            with pytest.raises(InternalServerError, match=rf"output 'y' holds {shown}, which does not fit its "
                                                          r"dtype float16"):
                await client.predict(model, [[1], [value]])
