"""model.py backend: loading by path, Model(version_dir), output checks, every failure names the file."""

from __future__ import annotations

import logging
import re
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from wsserve.repository import ModelLoadError, load_version, parse_config
from wsserve.repository.python_backend import DEFAULT_FLOPS_PER_ROW, exec_model_file

SHAPES = "input_shape = [3]\noutput_shape = [1]\n"

GOOD = """
    import json
    from dataclasses import dataclass
    from pathlib import Path

    import numpy as np

    @dataclass
    class Weights:          # a dataclass: needs its module in sys.modules while it is defined
        w: list

    class Model:
        task = "regression"

        def __init__(self, version_dir):
            self.version_dir = Path(version_dir)
            self.weights = Weights(json.loads((self.version_dir / "weights.json").read_text()))
            self.w = np.array(self.weights.w)
            self.parameters = len(self.weights.w)
            self.metrics = {"r2": 0.9}
            self.closed = 0

        def predict(self, batch):
            return batch @ self.w[:, None]          # [n, 3] -> [n, 1]

        def close(self):
            self.closed += 1
"""


def _version(tmp_path: Path, source: str, name: str = "m", version: int = 1, **files: str) -> Path:
    vdir = tmp_path / name / str(version)
    vdir.mkdir(parents=True)
    (vdir / "model.py").write_text(textwrap.dedent(source))
    for fname, text in files.items():
        (vdir / fname.replace("_", ".")).write_text(text)
    return vdir


def _load(vdir: Path, config: str = SHAPES, name: str = "m"):  # type: ignore[no-untyped-def]
    return load_version(name, int(vdir.name), vdir, parse_config(config))


def _fails(vdir: Path, config: str = SHAPES) -> str:
    with pytest.raises(ModelLoadError) as info:
        _load(vdir, config)
    assert str(info.value).startswith(f"{vdir / 'model.py'}: ")
    return str(info.value)


def test_good_model(tmp_path: Path) -> None:
    vdir = _version(tmp_path, GOOD, weights_json="[1, 2, 3]")
    modules_before = set(sys.modules)
    model = _load(vdir)
    assert set(sys.modules) == modules_before  # loaded by path, not left in sys.modules
    assert not any("weights" in name or name.startswith("_wsserve_model") for name in sys.modules)
    model.warmup()
    out = model.predict(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 2.0]]))
    assert out.dtype == np.float64 and out.tolist() == [[6.0], [6.0]]
    assert model.backend == "python" and model.model.version_dir == vdir
    info = model.info.to_json()
    assert info["name"] == "m" and info["version"] == "1" and info["task"] == "regression"
    assert info["parameters"] == 3 and info["metrics"] == {"r2": 0.9}
    assert info["inputs"] == [{"name": "input", "shape": [3], "dtype": "float64"}]
    assert info["outputs"] == [{"name": "output", "shape": [1], "dtype": "float64"}]
    assert model.flops_per_row() == DEFAULT_FLOPS_PER_ROW  # unknown Python code counts as costly
    model.close()
    model.close()
    assert model.model.closed == 1
    with pytest.raises(RuntimeError, match="closed"):
        model.predict(np.zeros((1, 3)))


def test_two_versions_are_separate_modules(tmp_path: Path) -> None:
    src = "import numpy as np\nCOUNT = []\nclass Model:\n    def __init__(self, d):\n        COUNT.append(1)\n        self.n = len(COUNT)\n    def predict(self, b):\n        return np.full((len(b), 1), float(self.n))\n"
    a, b = _load(_version(tmp_path, src, version=1)), _load(_version(tmp_path, src, version=2))
    assert a.predict(np.zeros((1, 3))).tolist() == b.predict(np.zeros((1, 3))).tolist() == [[1.0]]
    assert type(a.model) is not type(b.model)
    assert type(a.model).__module__ != type(b.model).__module__


def test_syntax_error(tmp_path: Path) -> None:
    vdir = _version(tmp_path, "class Model:\n    def predict(self, b)\n        return b\n")
    assert _fails(vdir) == f"{vdir / 'model.py'}: SyntaxError: expected ':' (line 2)"


def test_exception_at_import(tmp_path: Path) -> None:
    vdir = _version(tmp_path, "import no_such_module_here\n")
    assert "executing it raised ModuleNotFoundError: No module named 'no_such_module_here'" in _fails(vdir)


def test_missing_file_opened_at_import_is_not_mistaken_for_a_missing_model_py(tmp_path: Path) -> None:
    vdir = _version(tmp_path, "open('/nonexistent/vocab.txt')\n")
    assert "executing it raised FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/vocab.txt'" in _fails(vdir)
    with pytest.raises(ModelLoadError, match="model.py: does not exist"):
        exec_model_file(tmp_path / "model.py", "m", 1)


def test_sys_exit_at_import_is_a_load_error(tmp_path: Path) -> None:
    vdir = _version(tmp_path, "import sys\nsys.exit(3)\n")
    assert "executing it raised SystemExit: 3" in _fails(vdir)


def test_exception_in_init(tmp_path: Path) -> None:
    vdir = _version(tmp_path, GOOD)  # no weights.json
    msg = _fails(vdir)
    assert f"Model({str(vdir)!r}) raised FileNotFoundError" in msg and "weights.json" in msg


def test_no_model_class(tmp_path: Path) -> None:
    assert _fails(_version(tmp_path, "Model = 3\n")).endswith("defines no class Model")
    assert _fails(_version(tmp_path, "class Model:\n    pass\n", version=2)).endswith("class Model has no predict(batch) method")


def test_bad_task_or_metrics(tmp_path: Path) -> None:
    src = "class Model:\n    task = 'poetry'\n    def __init__(self, d):\n        pass\n    def predict(self, b):\n        return b[:, :1]\n"
    assert _fails(_version(tmp_path, src)).endswith("Model.task must be one of regression, classification, generation, embedding, other; got 'poetry'")
    src = src.replace("task = 'poetry'", "metrics = [1]")
    assert _fails(_version(tmp_path, src, version=2)).endswith("Model.metrics must be a dict, got list")


def test_shapes_are_required_for_model_py(tmp_path: Path) -> None:
    vdir = _version(tmp_path, GOOD, weights_json="[1, 2, 3]")
    assert _fails(vdir, "output_shape = [1]").endswith("model.py models need input_shape (or [[inputs]]) in config.toml")
    assert _fails(vdir, "input_shape = [3]").endswith("model.py models need output_shape (or [[outputs]]) in config.toml")
    assert _fails(vdir, '[[inputs]]\nname = "a"\n[[outputs]]\nname = "y"\nshape = [1]').endswith(
        "config.toml must give the shape of input 'a' for model.py"
    )


@pytest.mark.parametrize(
    "body, words",
    [
        ("return batch[:, :2]", "output 'output' has shape [2, 2]; expected [2, 1]"),
        ("return batch[:1, :1]", "output 'output' has shape [1, 1]; expected [2, 1]"),
        ("return batch[:, 0].tolist()", "output 'output' is a list, not a numpy array"),
        ("return batch[:, :1].astype(str)", "output 'output' has dtype <U32; expected float64"),
        ("return {'y': batch[:, :1]}", "expected outputs ['output'], got ['y']"),
        ("raise ValueError('boom')", "boom"),
    ],
)
def test_bad_outputs_fail_warmup_and_predict(tmp_path: Path, body: str, words: str) -> None:
    src = f"class Model:\n    def __init__(self, d):\n        pass\n    def predict(self, batch):\n        {body}\n"
    model = _load(_version(tmp_path, src))
    with pytest.raises(ModelLoadError) as info:
        model.warmup()
    assert str(info.value).startswith(f"{model.path}: warm-up failed: ") and words in str(info.value)
    with pytest.raises(ValueError) as info2:  # check_outputs' error, or the model's own (a ValueError here)
        model.predict(np.zeros((2, 3)))
    assert words in str(info2.value)


@pytest.mark.parametrize(
    "body, words",
    [
        ("return np.full((len(batch), 1), np.nan)", "output 'output' has NaN at row 0, element [0]"),
        ("return batch[:, :1] - np.inf", "output 'output' has -inf at row 0, element [0]"),
        ("y = batch[:, :1].copy(); y[1, 0] = np.inf; return y", "output 'output' has inf at row 1, element [0]"),
        ("return np.full((len(batch), 1), np.nan, np.float32)", "output 'output' has NaN at row 0"),
    ],
)
def test_a_warm_up_output_that_is_not_finite_is_logged_naming_it(tmp_path: Path, body: str, words: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Served all the same (a model dividing by a norm is NaN only for the warm-up's zeros), but
    the log says which output, value and row, from the rows of zeros."""
    src = f"import numpy as np\nclass Model:\n    def __init__(self, d):\n        pass\n    def predict(self, batch):\n        {body}\n"
    model = _load(_version(tmp_path, src))
    with caplog.at_level(logging.WARNING, logger="wsserve.repository"):
        model.warmup()
    (record,) = [r for r in caplog.records if "warm-up output" in r.getMessage()]
    assert record.getMessage().startswith(f"{model.path}: warm-up ") and words in record.getMessage()
    assert "the warm-up batch is 2 rows of zeros" in record.getMessage()


def test_a_named_warm_up_output_that_is_not_finite_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = NAMED.replace('"first": ids[:, :1]}', '"first": ids[:, :1]}\n') \
        .replace("return {\"sum\": x.sum(axis=1, keepdims=True) + ids.sum(axis=1, keepdims=True),",
                 "return {\"sum\": np.full((len(x), 1), np.nan, np.float32),")
    model = _load(_version(tmp_path, src), NAMED_CONFIG)
    with caplog.at_level(logging.WARNING, logger="wsserve.repository"):
        model.warmup()
    assert any("warm-up output 'sum' has NaN at row 0" in r.getMessage() for r in caplog.records)


def test_outputs_of_the_same_kind_are_cast(tmp_path: Path) -> None:
    src = "import numpy as np\nclass Model:\n    def __init__(self, d):\n        pass\n    def predict(self, b):\n        return b[:, :1].astype(np.float32)\n"
    model = _load(_version(tmp_path, src))
    assert model.predict(np.ones((2, 3))).dtype == np.float64
    assert _load(_version(tmp_path, src.replace("np.float32", "np.int32"), version=2)).predict(np.ones((2, 3))).dtype == np.float64
    model = _load(_version(tmp_path, src, version=3), SHAPES + 'output_dtype = "int64"')
    with pytest.raises(ValueError, match="output 'output' has dtype float32; expected int64"):
        model.predict(np.ones((2, 3)))


@pytest.mark.parametrize("returned, declared, value", [
    ("np.int64", "int32", 2**31), ("np.int64", "int32", -(2**31) - 1), ("np.uint64", "int64", 2**63),
])
def test_integer_outputs_that_do_not_fit_the_declared_dtype_fail_instead_of_wrapping(
        tmp_path: Path, returned: str, declared: str, value: int) -> None:
    """int64 2**31 cast to int32 was -2**31 (a silently wrong answer); an integer of a narrower
    kind that fits is still cast."""
    src = ("import numpy as np\nclass Model:\n    def __init__(self, d):\n        pass\n"  # rows of 7s give 0
           f"    def predict(self, b):\n        return np.full((len(b), 1), {value}, dtype={returned}) * (b[:, :1] != 7)\n")
    model = _load(_version(tmp_path, src), SHAPES + f'output_dtype = "{declared}"')
    assert model.predict(np.full((2, 3), 7.0)).tolist() == [[0], [0]]
    with pytest.raises(ValueError, match=f"output 'output' holds {value}, which does not fit its dtype {declared}"):
        model.predict(np.ones((2, 3)))


def test_integer_outputs_for_a_float_output_are_cast_and_range_checked(tmp_path: Path) -> None:
    """int64 for a float32 output (an integer to a float is cast, docs/repository.md) failed with
    numpy's "Invalid integer data type 'f'"; for float16, a value beyond 65,504 would be inf."""
    src = ("import numpy as np\nclass Model:\n    def __init__(self, d):\n        pass\n"
           "    def predict(self, b):\n        return b[:, :1].astype(np.int64)\n")
    model = _load(_version(tmp_path, src), SHAPES + 'output_dtype = "float32"')
    assert model.predict(np.full((2, 3), 7.0)).tolist() == [[7.0], [7.0]]
    model = _load(_version(tmp_path, src, version=2), SHAPES + 'output_dtype = "float16"')
    y = model.predict(np.array([[65504.0] * 3, [-3.0] * 3]))
    assert y.dtype == np.float16 and y.tolist() == [[65504.0], [-3.0]]
    with pytest.raises(ValueError, match="output 'output' holds 65505, which does not fit its dtype float16"):
        model.predict(np.array([[1.0] * 3, [65505.0] * 3]))


NAMED = """
    import numpy as np

    class Model:
        def __init__(self, version_dir):
            pass

        def predict(self, batch):
            ids, x = batch["ids"], batch["x"]               # [n, 2] int64, [n, 3] float32
            return {"sum": x.sum(axis=1, keepdims=True) + ids.sum(axis=1, keepdims=True),
                    "first": ids[:, :1]}
"""

NAMED_CONFIG = """
[[inputs]]
name = "ids"
shape = [2]
dtype = "int64"
[[inputs]]
name = "x"
shape = [3]
dtype = "float32"
[[outputs]]
name = "sum"
shape = [1]
dtype = "float32"
[[outputs]]
name = "first"
shape = [1]
dtype = "int64"
"""


def test_named_inputs_and_outputs(tmp_path: Path) -> None:
    model = _load(_version(tmp_path, NAMED), NAMED_CONFIG)
    assert [(s.name, s.shape, s.dtype) for s in model.inputs] == [("ids", (2,), "int64"), ("x", (3,), "float32")]
    model.warmup()
    out = model.predict({"ids": np.array([[1, 2]]), "x": np.array([[0.5, 0.5, 0.0]], np.float32)})
    assert out["sum"].dtype == np.float32 and out["sum"].tolist() == [[4.0]]
    assert out["first"].tolist() == [[1]]


def test_max_batch_size_zero_calls_predict_one_row_at_a_time(tmp_path: Path) -> None:
    src = "import numpy as np\nclass Model:\n    def __init__(self, d):\n        self.sizes = []\n    def predict(self, b):\n        self.sizes.append(len(b))\n        return b.sum(axis=1, keepdims=True)\n"
    model = _load(_version(tmp_path, src), SHAPES + "max_batch_size = 0")
    out = model.predict(np.arange(9.0).reshape(3, 3))
    assert out.tolist() == [[3.0], [12.0], [21.0]] and model.model.sizes == [1, 1, 1]


def test_flops_per_row_from_the_model_or_config(tmp_path: Path) -> None:
    src = "class Model:\n    def __init__(self, d):\n        pass\n    def predict(self, b):\n        return b[:, :1]\n    def flops_per_row(self):\n        return 3\n"
    vdir = _version(tmp_path, src)
    assert _load(vdir).flops_per_row() == 3
    assert _load(vdir, SHAPES + "flops_per_row = 7").flops_per_row() == 7
    bad = src.replace("return 3", "return -1")
    assert "Model.flops_per_row must be a positive integer, got -1" in _fails(_version(tmp_path, bad, version=2))


def test_generative_model_is_exposed_not_served(tmp_path: Path) -> None:
    src = "class Model:\n    task = 'generation'\n    def __init__(self, d):\n        self.vocab = 'ab'\n"
    model = _load(_version(tmp_path, src), "")
    assert model.info.task == "generation" and model.inputs == () and model.outputs == ()
    assert model.model.vocab == "ab"
    model.warmup()  # nothing to do
    with pytest.raises(RuntimeError, match="generative: it serves generate, not predict"):
        model.predict(np.zeros((1, 1)))


def test_concurrent_predicts(tmp_path: Path) -> None:
    model = _load(_version(tmp_path, GOOD, weights_json="[1, 2, 3]"))
    x = np.random.default_rng(0).standard_normal((64, 3))
    expected = x @ np.array([[1.0], [2.0], [3.0]])
    results: list[bool] = []

    def work() -> None:
        for _ in range(50):
            results.append(np.array_equal(model.predict(x), expected))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 200


def test_the_worked_example_in_the_docs(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "repository.md").read_text()
    start = doc.index("# examples/repository/custom/1/model.py")
    source = doc[start : doc.index("```", start)]
    vdir = _version(tmp_path, source, name="custom", weights_json="[1.0, 2.0, 3.0]")
    model = _load(vdir, "input_shape = [3]\noutput_shape = [1]", name="custom")
    model.warmup()
    assert model.predict(np.array([[1.0, 1.0, 1.0]])).tolist() == [[6.0]]
    assert model.flops_per_row() == 3 and model.info.parameters == 3 and model.info.metrics == {"r2": 0.93}
    # its input_gradient makes it explainable: integrated gradients of a linear map are exactly w * x
    from wsserve.pool import resolve_explainer

    explainer, refusal = resolve_explainer("custom", model)
    assert refusal is None and explainer is not None and explainer.method == "integrated-gradients"
    x = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, 1.0]])
    np.testing.assert_allclose(explainer.attributions(x), x * np.array([1.0, 2.0, 3.0]), rtol=1e-12)
    model.close()


@pytest.mark.parametrize("gradient, words", [
    # called with the interpolation points of a whole chunk (8 rows x 128 steps)
    ("x[:, :2]", "must return a numeric array of shape [1024, 3], got float64 [1024, 2]"),
    ("[[0.0] * 3] * len(x)", "must return a numeric array of shape [1024, 3], got list"),
    ("x * np.inf", "returned non-finite values"),
])
def test_a_bad_input_gradient_fails_the_explanation_naming_it(tmp_path: Path, gradient: str, words: str) -> None:
    from wsserve.pool import resolve_explainer

    source = f"""
    import numpy as np

    class Model:
        def __init__(self, version_dir):
            pass
        def predict(self, batch):
            return batch.sum(axis=1, keepdims=True)
        def input_gradient(self, x, target):
            return {gradient}
    """
    model = _load(_version(tmp_path, source))
    explainer, refusal = resolve_explainer("m", model)
    assert refusal is None and explainer is not None
    with pytest.raises(ValueError, match=re.escape(words)):
        explainer.attributions(np.ones((4, 3)))
    # several inputs cannot be explained: refused up front, naming them
    multi = _load(_version(tmp_path, source, name="multi"),
                  'output_shape = [1]\n[[inputs]]\nname = "a"\nshape = [3]\n[[inputs]]\nname = "b"\nshape = [3]\n',
                  name="multi")
    explainer, refusal = resolve_explainer("multi", multi)
    assert explainer is None and refusal is not None
    assert refusal.startswith("model 'multi' version 1 cannot be explained: explanations need one float input, it takes a")
