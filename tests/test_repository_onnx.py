"""ONNX backend: graphs built with the onnx helper API and a scikit-learn pipeline, run by ONNX Runtime.

Skipped when the ``onnx`` extra is not installed; CI installs it (``pip install -e '.[test-onnx]'``).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests import onnx_builders as ob  # noqa: E402
from wsserve.errors import InvalidInput  # noqa: E402
from wsserve.repository import (  # noqa: E402
    ModelLoadError,
    convert_inputs,
    load_version,
    parse_config,
)

RNG = np.random.default_rng(1)
OPSET_SKL = 17


def _load(tmp_path: Path, model, config: str = "", version: int = 1):  # type: ignore[no-untyped-def]
    vdir = tmp_path / "m" / str(version)
    ob.save(model, vdir)
    return load_version("m", version, vdir, parse_config(config))


def _fails(tmp_path: Path, model, config: str = "") -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, model, config)
    path = tmp_path / "m" / "1" / "model.onnx"
    assert str(info.value).startswith(f"{path}: "), str(info.value)
    return str(info.value)


def test_linear_layer(tmp_path: Path) -> None:
    graph, ref = ob.linear_layer(3, 2)
    model = _load(tmp_path, graph)
    assert [(s.name, s.shape, s.dtype) for s in model.inputs] == [("x", (3,), "float32")]
    assert [(s.name, s.shape, s.dtype) for s in model.outputs] == [("y", (2,), "float32")]
    info = model.info.to_json()
    assert info["backend"] == "onnx" and info["version"] == "1" and info["parameters"] == 3 * 2 + 2
    assert info["input_shape"] == [3] and info["output_shape"] == [2] and info["producer"] == "wsserve-tests"
    assert info["intra_op_num_threads"] == 1
    assert model.flops_per_row() == 8
    model.warmup()
    # end to end: JSON rows -> convert_inputs -> predict
    rows = RNG.standard_normal((5, 3)).tolist()
    x = convert_inputs(rows, model.inputs, max_rows=10, max_elements=100)
    y = model.predict(x)
    assert y.dtype == np.float32 and y.shape == (5, 2)
    np.testing.assert_allclose(y, ref(np.array(rows)), rtol=1e-5, atol=1e-6)
    # a float64 batch from an in-process caller is cast to the graph's dtype
    np.testing.assert_allclose(model.predict(np.array(rows)), y)
    model.close()
    with pytest.raises(RuntimeError, match="closed"):
        model.predict(x)


def test_float64_graph_and_config_threads(tmp_path: Path) -> None:
    graph, ref = ob.linear_layer(4, 1, dtype=np.float64)
    model = _load(tmp_path, graph, "task = \"regression\"\nflops_per_row = 5\n[onnx]\nintra_op_num_threads = 2")
    assert model.inputs[0].dtype == "float64" and model.info.extra["intra_op_num_threads"] == 2
    assert model.flops_per_row() == 5
    x = RNG.standard_normal((3, 4))
    np.testing.assert_allclose(model.predict(x), ref(x), rtol=1e-12)


def test_mlp_with_two_named_inputs_and_outputs(tmp_path: Path) -> None:
    graph, ref = ob.mlp_two_inputs()
    model = _load(tmp_path, graph)
    assert [s.name for s in model.inputs] == ["a", "b"] and [s.name for s in model.outputs] == ["logits", "probs"]
    model.warmup()
    value = {"a": RNG.standard_normal((4, 3)).tolist(), "b": RNG.standard_normal((4, 2)).tolist()}
    batch = convert_inputs(value, model.inputs, max_rows=8, max_elements=100)
    out = model.predict(batch)
    expected = ref(np.array(value["a"], np.float32), np.array(value["b"], np.float32))
    assert set(out) == {"logits", "probs"}
    for name in out:
        np.testing.assert_allclose(out[name], expected[name], rtol=1e-5, atol=1e-6)
    assert model.info.extra["inputs"] == [{"name": "a", "shape": [3], "dtype": "float32"},
                                          {"name": "b", "shape": [2], "dtype": "float32"}]
    with pytest.raises(ValueError, match="takes named inputs"):
        model.predict(np.zeros((1, 3), np.float32))


def test_config_selects_outputs(tmp_path: Path) -> None:
    graph, ref = ob.mlp_two_inputs()
    model = _load(tmp_path, graph, '[[outputs]]\nname = "probs"\nshape = [4]\ndtype = "float32"')
    assert [s.name for s in model.outputs] == ["probs"]
    a, b = np.ones((2, 3), np.float32), np.zeros((2, 2), np.float32)
    out = model.predict({"a": a, "b": b})
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, ref(a, b)["probs"], rtol=1e-5)


def test_int64_input(tmp_path: Path) -> None:
    graph, ref = ob.int64_embedding(vocab=10, dim=3)
    model = _load(tmp_path, graph)
    assert model.inputs[0].dtype == "int64" and model.outputs[0].shape == (2, 3)
    model.warmup()
    ids = convert_inputs([[1, 2], [9, 0.0]], model.inputs, max_rows=4, max_elements=100)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(model.predict(ids), ref(np.array([[1, 2], [9, 0]])))
    with pytest.raises(InvalidInput) as info:
        convert_inputs([[1, 2], [3, 1.5]], model.inputs, max_rows=4, max_elements=100)
    assert info.value.message == "'inputs' row 1 holds 1.5, which does not fit input 'ids' of dtype int64 (integers only)"
    # a value the graph cannot take (index out of the table) fails that call, not the model
    with pytest.raises(Exception, match="indices"):
        model.predict(np.array([[1, 99]]))
    np.testing.assert_array_equal(model.predict(np.array([[3, 4]])), ref(np.array([[3, 4]])))


def test_bool_input(tmp_path: Path) -> None:
    graph, ref = ob.bool_mask(3)
    model = _load(tmp_path, graph)
    assert [s.dtype for s in model.inputs] == ["float32", "bool"]
    value = {"x": [[1, 2, 3], [4, 5, 6]], "mask": [[True, False, True], [False, False, True]]}
    batch = convert_inputs(value, model.inputs, max_rows=2, max_elements=100)
    assert batch["mask"].dtype == np.bool_
    np.testing.assert_array_equal(model.predict(batch), ref(np.array(value["x"]), np.array(value["mask"])))
    with pytest.raises(InvalidInput) as info:
        convert_inputs({**value, "mask": [[1, 0, 1], [0, 0, 1]]}, model.inputs, max_rows=2, max_elements=100)
    assert info.value.message == "'inputs.mask' row 0 holds 1; input 'mask' takes true/false"


def test_scikit_learn_pipeline(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scale = np.array([1, 10, 100, 0.1], dtype=np.float32)
    x = RNG.standard_normal((300, 4)).astype(np.float32) * scale
    y = ((x[:, 0] + x[:, 1] / 10 - x[:, 2] / 100) > 0).astype(np.int64)
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    graph = skl2onnx.to_onnx(pipe, x[:1], options={"zipmap": False}, target_opset=OPSET_SKL)
    model = _load(tmp_path, graph, 'task = "classification"')
    assert [(s.name, s.shape, s.dtype) for s in model.outputs] == [("label", (), "int64"), ("probabilities", (2,), "float32")]
    assert model.info.task == "classification"
    model.warmup()
    x_test = RNG.standard_normal((50, 4)).astype(np.float32) * scale
    batch = convert_inputs(x_test.tolist(), model.inputs, max_rows=50, max_elements=1000)
    out = model.predict(batch)
    np.testing.assert_array_equal(out["label"], pipe.predict(x_test))
    np.testing.assert_allclose(out["probabilities"], pipe.predict_proba(x_test), atol=1e-5)
    # config.toml can serve only the probabilities
    only = _load(tmp_path, graph, '[[outputs]]\nname = "probabilities"', version=2)
    np.testing.assert_allclose(only.predict(batch), pipe.predict_proba(x_test), atol=1e-5)


def test_fixed_first_dimension_is_refused_unless_max_batch_size_is_zero(tmp_path: Path) -> None:
    graph, ref = ob.fixed_batch(3)
    msg = _fails(tmp_path, graph)
    assert "input 'x' has a fixed first dimension 1; wsserve needs it dynamic (the batch)" in msg
    assert "set max_batch_size = 0 in config.toml to run it once per row with row shape [1, 3]" in msg
    model = _load(tmp_path, graph, "max_batch_size = 0", version=2)
    assert model.inputs[0].shape == (1, 3) and model.outputs[0].shape == (1, 3)
    model.warmup()
    x = RNG.standard_normal((4, 1, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), ref(x))


@pytest.mark.parametrize(("shape", "config", "shown"), [
    (["N", 0], "", "[?, 0]"),
    (["N", 2, 0], "", "[?, 2, 0]"),
    ([0, 3], "", "[0, 3]"),  # a batch dimension fixed at 0 (it was taken as dynamic)
    ([0, 3], "max_batch_size = 0", "[0, 3]"),
])
def test_an_input_dimension_fixed_at_zero_is_refused(tmp_path: Path, shape: list, config: str, shown: str) -> None:
    """No request can feed it (each gives at least one value in every dimension): the version was
    served, listing the dimension as variable (-1), and every request failed with ``internal``
    (ONNX Runtime's "Got invalid dimensions"); it fails at load, naming the input."""
    graph, _ = ob.zero_dimension(shape)
    msg = _fails(tmp_path, graph, config)
    assert f"input 'x' has a dimension fixed at 0 (its shape in the graph: {shown}): no request can give it " \
           "values (a request's every dimension is at least 1)" in msg, msg


def test_a_symbolic_feature_dimension_is_variable_unless_config_gives_it(tmp_path: Path) -> None:
    """A graph x [N, F] with no shape in config.toml: F stays variable (-1, as Triton's auto-complete
    has it), each request sizing it; config.toml's input_shape fixes it."""
    graph, ref = ob.symbolic_features()
    variable = _load(tmp_path, graph)
    assert variable.inputs[0].shape == (-1,) and variable.inputs[0].variable
    for f in (3, 7):
        x = RNG.standard_normal((2, f)).astype(np.float32)
        np.testing.assert_allclose(variable.predict(x), ref(x), rtol=1e-5)
    model = _load(tmp_path, graph, "input_shape = [5]", version=2)
    assert model.inputs[0].shape == (5,)
    x = RNG.standard_normal((2, 5)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), ref(x), rtol=1e-5)


@pytest.mark.parametrize(
    "config, words",
    [
        ("input_shape = [4]", "config.toml says input 'x' has shape [4]; the model's is [3]"),
        ("input_shape = [3, 1]", "config.toml says input 'x' has shape [3, 1]; the graph's row shape is [3]"),
        ('input_dtype = "float64"', "config.toml says input 'x' is float64; the model's is float32"),
        ("output_shape = [7]", "config.toml says output 'y' has shape [7]; the model's is [2]"),
        ('[[inputs]]\nname = "z"', "config.toml names input 'z', which the model does not have (it has 'x')"),
        ('[[outputs]]\nname = "q"', "config.toml names output 'q', which the model does not have (it has 'y')"),
        ('backend = "python"', "config.toml says backend = 'python' but there is no model.py"),
        ('task = "generation"', 'config.toml says task = "generation", but an ONNX model is not generative '
                                "(wsserve serves it with predict)"),
    ],
)
def test_config_that_disagrees_with_the_graph(tmp_path: Path, config: str, words: str) -> None:
    graph, _ = ob.linear_layer(3, 2)
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, graph, config)
    assert str(info.value).endswith(words)


def test_shorthand_for_a_model_with_two_inputs(tmp_path: Path) -> None:
    graph, _ = ob.mlp_two_inputs()
    assert _fails(tmp_path, graph, "input_shape = [3]").endswith(
        "the model has 2 inputs ('a', 'b'); name them with [[inputs]] in config.toml"
    )


def test_unsupported_tensor_type(tmp_path: Path) -> None:
    graph, _ = ob.string_input()
    assert "input 's' has type tensor(string); supported: tensor(float), tensor(double)" in _fails(tmp_path, graph)


def test_corrupt_file(tmp_path: Path) -> None:
    vdir = tmp_path / "m" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf model")
    with pytest.raises(ModelLoadError) as info:
        load_version("m", 1, vdir, parse_config(""))
    assert str(info.value).startswith(f"{vdir / 'model.onnx'}: ONNX Runtime cannot load it: ")


def test_deeply_nested_wsserve_metadata_is_refused(tmp_path: Path) -> None:
    # json recurses once per nesting level: this used to escape the loader as RecursionError
    graph, _ = ob.linear_layer()
    entry = graph.metadata_props.add()
    entry.key, entry.value = "wsserve", "[" * 400_000 + "]" * 400_000
    assert _fails(tmp_path, graph).endswith("the graph: metadata 'wsserve' is not JSON (arrays or objects nested too deeply)")


def test_without_onnxruntime_the_error_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph, _ = ob.linear_layer()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    assert _fails(tmp_path, graph).endswith("serving model.onnx needs onnxruntime: pip install 'wsserve[onnx]'")


def test_concurrent_runs_on_one_session(tmp_path: Path) -> None:
    graph, ref = ob.mlp_two_inputs()
    model = _load(tmp_path, graph)
    batches = [{"a": RNG.standard_normal((16, 3)).astype(np.float32), "b": RNG.standard_normal((16, 2)).astype(np.float32)}
               for _ in range(4)]
    expected = [model.predict(b)["probs"] for b in batches]
    ok: list[bool] = []

    def work(i: int) -> None:
        for _ in range(50):
            ok.append(np.array_equal(model.predict(batches[i])["probs"], expected[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ok == [True] * 200
