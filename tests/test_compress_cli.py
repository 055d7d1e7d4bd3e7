"""``wsserve compress``: new versions next to the source, figures true to the stored files, bad arguments
exit 2 and write nothing, and a ``--reload`` server serves the new version with its figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support import (
    ROOT,
    Conn,
    ServerProcess,
    child_env,
    http_get,
    wait_until_async,
)
from wsserve.cli import main
from wsserve.compression import MLPInt8Model, load_model
from wsserve.compression.measure import heldout_accuracy, nonzero_parameters
from wsserve.models.linear import LinearModel
from wsserve.models.mlp import MLPModel, make_mlp_data
from wsserve.repository import read_npz, save_npz_model, write_builtin_version
from wsserve.trainer import train_default_models


@pytest.fixture(scope="module")
def mlp(model_cache: Path) -> MLPModel:
    model = train_default_models(names=["mlp"], cache_dir=model_cache)["mlp"]
    assert isinstance(model, MLPModel)
    return model


@pytest.fixture(scope="module")
def heldout() -> tuple[np.ndarray, np.ndarray]:
    return make_mlp_data(0)[1]


@pytest.fixture
def repo(tmp_path: Path, mlp: MLPModel) -> Path:
    """REPO/mlp/1 (the trained default mlp, as the trainer writes it) and REPO/lin/1 (a linear model)."""
    write_builtin_version(tmp_path, "mlp", mlp, 1)
    write_builtin_version(tmp_path, "lin", LinearModel(3.0, 0.5), 1)
    return tmp_path


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(["compress", *argv, "--latency-runs", "3"])
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_int8_writes_the_next_version_with_true_figures(repo: Path, capsys, heldout) -> None:
    code, out, err = _run(capsys, "mlp", "--repository", str(repo), "--int8", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["model"], report["version"], report["source_version"]) == ("mlp", 2, "1")
    contents = read_npz(repo / "mlp" / "2" / "model.npz")
    fig = dict(contents.meta)["compression"]
    # every figure recomputed from the files on disk
    x, y = heldout
    model, source = load_model(repo / "mlp" / "2"), load_model(repo / "mlp" / "1")
    assert contents.architecture == "mlp-int8" and fig["method"] == "int8"
    assert fig["bytes"] == (repo / "mlp" / "2" / "model.npz").stat().st_size == report["bytes"]
    assert fig["source_bytes"] == (repo / "mlp" / "1" / "model.npz").stat().st_size
    assert fig["bytes"] <= 0.30 * fig["source_bytes"]
    assert fig["heldout_accuracy"] == heldout_accuracy(model, x, y)
    assert fig["source_heldout_accuracy"] == heldout_accuracy(source, x, y)
    assert fig["heldout_accuracy_delta"] == pytest.approx(fig["heldout_accuracy"] - fig["source_heldout_accuracy"])
    assert fig["heldout_accuracy_delta"] >= -0.01
    assert fig["parameters_nonzero"] == nonzero_parameters(model)
    assert fig["latency_ratio_b256"] == pytest.approx(fig["latency_ms_b256"] / fig["source_latency_ms_b256"], rel=1e-3)
    assert not [p for p in (repo / "mlp").iterdir() if p.name.startswith(".tmp")]
    # the next run takes the highest uncompressed version (1) again, not the int8 one
    code, out, err = _run(capsys, "mlp", "--repository", str(repo), "--prune", "0.5", "--finetune")
    assert code == 0, err
    assert out.startswith(f"wrote mlp version 3 to {repo / 'mlp' / '3'}: 0.5 pruned (global, fine-tuned) of version 1")
    fig = dict(read_npz(repo / "mlp" / "3" / "model.npz").meta)["compression"]
    assert fig["source_version"] == "1" and fig["fraction"] == 0.5 and fig["finetune"] is True
    pruned = load_model(repo / "mlp" / "3")
    kept = sum(int(m.sum()) for m in pruned.masks())  # type: ignore[attr-defined]
    total = sum(m.size for m in pruned.masks())  # type: ignore[attr-defined]
    assert total - kept == round(0.5 * total)  # global scope: exactly half of all weights
    assert fig["heldout_accuracy"] >= fig["source_heldout_accuracy"] - 0.01


def test_layer_scope_and_explicit_source_version(repo: Path, mlp: MLPModel, capsys) -> None:
    code, _, err = _run(capsys, "mlp", "--repository", str(repo), "--prune", "0.9", "--scope", "layer",
                        "--version", "1")
    assert code == 0, err
    model = load_model(repo / "mlp" / "2")
    masks = model.masks()  # type: ignore[attr-defined]
    assert [m.shape for m in masks] == [w.shape for w, _ in mlp.params]  # one mask per weight matrix
    for m in masks:
        assert (~m).sum() == round(0.9 * m.size)  # per layer: exactly 90% of each matrix
    fig = dict(read_npz(repo / "mlp" / "2" / "model.npz").meta)["compression"]
    assert fig["scope"] == "layer" and fig["finetune"] is False


BAD = [
    (["mlp", "--prune", "0"], "--prune: must be a fraction in (0, 1)"),
    (["mlp", "--prune", "1"], "--prune: must be a fraction in (0, 1)"),
    (["mlp", "--prune", "1.5"], "--prune: must be a fraction in (0, 1)"),
    (["mlp", "--prune", "-0.2"], "--prune: must be a fraction in (0, 1)"),
    (["mlp", "--prune", "nan"], "--prune: must be a fraction in (0, 1)"),
    (["mlp", "--prune", "half"], "expected a fraction in (0, 1), got 'half'"),
    # inside (0, 1) but nothing pruned: it wrote a "pruned" version bigger than its source
    (["mlp", "--prune", "1e-320"], "pruning fraction 1e-320 (global) removes no weight of"),
    (["mlp", "--prune", "1e-9", "--scope", "layer"], "pruning fraction 1e-09 (layer) removes no weight of"),
    (["mlp", "--prune", "0.9999999999"], "pruning fraction 0.9999999999 (global) removes every weight of"),
    (["mlp"], "one of the arguments --int8 --prune is required"),
    (["mlp", "--int8", "--prune", "0.5"], "not allowed with argument"),
    (["mlp", "--int8", "--finetune"], "--finetune applies to --prune only"),
    (["mlp", "--int8", "--scope", "layer"], "--scope applies to --prune only"),
    (["mlp", "--prune", "0.5", "--finetune-epochs", "3"], "--finetune-epochs needs --finetune"),
    (["mlp", "--int8", "--version", "7"], "model 'mlp' has no version 7; versions: 1"),
    (["nope", "--int8"], "no model named 'nope' in {repo}; models: lin, mlp"),
    (["../mlp", "--int8"], "bad model name '../mlp'"),
    (["lin", "--int8"], "model 'lin' has no version that can be compressed with --int8: version 1: its architecture "
                        "is 'linear'; only the fp32 'mlp' (and ONNX models, --int8) can be compressed"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_exit_2_and_write_nothing(repo: Path, capsys, argv: list[str], message: str) -> None:
    before = _tree(repo)
    code, out, err = _run(capsys, *argv, "--repository", str(repo))
    assert code == 2
    assert message.format(repo=repo) in err and out == ""
    assert _tree(repo) == before


def test_missing_repository_and_uncompressible_versions(tmp_path: Path, repo: Path, capsys, mlp: MLPModel) -> None:
    code, _, err = _run(capsys, "mlp", "--repository", str(tmp_path / "nowhere"), "--int8")
    assert code == 2 and f"--repository {tmp_path / 'nowhere'}: does not exist" in err
    assert not (tmp_path / "nowhere").exists()
    # an already compressed version, a model.py model, and widths without held-out data
    (repo / "mlp" / "2").mkdir()
    save_npz_model(repo / "mlp" / "2", "mlp-int8", *MLPInt8Model.from_params(mlp.params).to_arrays())
    (repo / "py" / "1").mkdir(parents=True)
    (repo / "py" / "1" / "model.py").write_text("class Model:\n    def predict(self, x):\n        return x\n")
    odd = MLPModel([(np.ones((5, 3), np.float32), np.zeros(3, np.float32))])
    write_builtin_version(repo, "odd", odd, 1)
    before = _tree(repo)
    code, _, err = _run(capsys, "mlp", "--repository", str(repo), "--int8", "--version", "2")
    assert code == 2 and "cannot compress version 2 of model 'mlp': it is already a compressed version (mlp-int8)" in err
    code, _, err = _run(capsys, "py", "--repository", str(repo), "--prune", "0.5")
    assert code == 2 and "version 1: it is a model.py model" in err
    code, _, err = _run(capsys, "odd", "--repository", str(repo), "--int8")
    assert code == 2 and "source mlp is [5] -> [3]; the held-out data is 32 -> 10" in err
    assert _tree(repo) == before
    # with version 2 compressed, the default source is still version 1
    code, out, err = _run(capsys, "mlp", "--repository", str(repo), "--int8")
    assert code == 0 and "wrote mlp version 3" in out and "of version 1" in out, err


def test_onnx_int8_uses_onnx_runtime_and_stores_its_figures(repo: Path, capsys, mlp: MLPModel, heldout) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from wsserve.compression.onnx_int8 import build_mlp_onnx, onnx_session, save_onnx
    from wsserve.repository import load_version, parse_config

    save_onnx(build_mlp_onnx(mlp.params), repo / "net" / "1" / "model.onnx")
    code, _, err = _run(capsys, "net", "--repository", str(repo), "--prune", "0.5")
    assert code == 2 and "it is an ONNX model: --prune applies to the numpy mlp (model.npz); use --int8" in err
    code, out, err = _run(capsys, "net", "--repository", str(repo), "--int8")
    assert code == 0, err
    assert sorted(p.name for p in (repo / "net" / "2").iterdir()) == ["model.onnx"]
    served = load_version("net", 2, repo / "net" / "2", parse_config(""))
    figures = served.version_figures()
    fig = figures["compression"]
    assert fig["backend"] == "onnx" and fig["method"] == "int8" and fig["source_version"] == "1"
    assert figures["bytes"] == fig["bytes"] == (repo / "net" / "2" / "model.onnx").stat().st_size
    assert fig["bytes"] <= 0.30 * fig["source_bytes"]
    x, y = heldout
    probs = onnx_session(repo / "net" / "2" / "model.onnx").run(None, {"x": x.astype(np.float32)})[0]
    assert fig["heldout_accuracy"] == float((probs.argmax(1) == y).mean()) == figures["metrics"]["heldout_accuracy"]
    assert fig["heldout_accuracy_delta"] >= -0.01
    assert math.isfinite(fig["latency_ratio_b256"]) and fig["latency_ratio_b256"] > 0
    # compressing again picks version 1 (2 is a compressed output) and refuses 2 when asked for it
    code, _, err = _run(capsys, "net", "--repository", str(repo), "--int8", "--version", "2")
    assert code == 2 and "it is already a compressed version (ONNX int8)" in err


async def test_a_reloading_server_serves_the_new_version_with_its_figures(repo: Path, model_cache: Path) -> None:
    server = ServerProcess("--models", "none", "--model-repository", str(repo), "--reload", cache_dir=model_cache)
    try:
        conn = await Conn.open(server.url)
        # the command line, as a user runs it, while the server watches the repository
        done = subprocess.run([sys.executable, "-m", "wsserve", "compress", "mlp", "--repository", str(repo),
                               "--int8", "--latency-runs", "3"], cwd=ROOT, env=child_env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("wrote mlp version 2")

        async def ready() -> dict | None:
            reply = await conn.request({"type": "models", "id": 1})
            mlp = next(m for m in reply["models"] if m["name"] == "mlp")
            return mlp if [v["state"] for v in mlp["versions"]] == ["ready", "ready"] else None

        described = await wait_until_async(ready, 30, what="version 2 of mlp ready")
        v1, v2 = described["versions"]
        fig = dict(read_npz(repo / "mlp" / "2" / "model.npz").meta)["compression"]
        assert v2["bytes"] == fig["bytes"] == (repo / "mlp" / "2" / "model.npz").stat().st_size
        assert v1["bytes"] == fig["source_bytes"]
        assert v2["parameters_nonzero"] == fig["parameters_nonzero"] and v1["parameters_nonzero"] == 76810
        assert v2["metrics"]["heldout_accuracy"] == fig["heldout_accuracy"]
        assert v2["compression"] == fig and "compression" not in v1
        assert v2["compression"]["heldout_accuracy_delta"] == fig["heldout_accuracy_delta"]
        assert v2["compression"]["latency_ratio_b256"] == fig["latency_ratio_b256"]
        # GET /v1/models says the same
        status, _, body = http_get(server.http + "/v1/models")
        assert status == 200 and next(m for m in json.loads(body) if m["name"] == "mlp")["versions"] == [v1, v2]
        # and version 2 answers like the int8 model it is
        x = make_mlp_data(0)[1][0][:3].astype(np.float32)
        reply = await conn.request({"type": "predict", "id": "p", "model": "mlp", "version": 2, "inputs": x.tolist()})
        assert reply["type"] == "result" and reply["version"] == "2"
        np.testing.assert_allclose(reply["outputs"], load_model(repo / "mlp" / "2").predict(x), rtol=1e-12)
        await conn.close()
    finally:
        server.stop()


@pytest.mark.parametrize("value, words", [
    ("{not json", "metadata 'wsserve' is not JSON"),
    ('{"metrics": {"acc": NaN}}', "metadata 'wsserve' is not JSON (NaN is not allowed)"),
    ("[1]", "metadata 'wsserve' must be a JSON object"),
    ('{"compression": 3}', "'compression' must be a JSON object"),
])
def test_malformed_wsserve_metadata_fails_the_load_naming_the_file(tmp_path: Path, mlp: MLPModel, value: str,
                                                                    words: str) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from wsserve.compression.onnx_int8 import build_mlp_onnx, save_onnx
    from wsserve.repository import ModelLoadError, load_version, parse_config

    proto = build_mlp_onnx(mlp.params)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "wsserve", value
    path = save_onnx(proto, tmp_path / "net" / "1" / "model.onnx")
    with pytest.raises(ModelLoadError, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        load_version("net", 1, path.parent, parse_config(""))
    assert info.value.path == path


def _onnx_graph(path: Path, nodes: list, inputs: list, outputs: list, inits: list | None = None,
                producer: str = "someone-else", opsets: tuple = (("", 17),)) -> None:
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                              producer_name=producer)
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def test_onnx_models_onnxruntime_cannot_load_or_run_exit_2_naming_the_file(tmp_path: Path, capsys) -> None:
    """A model.onnx with a dangling node input, an unknown op, or a fixed reshape its dynamic batch
    breaks was a traceback (onnxruntime's own exception types are not ValueError/RuntimeError);
    now exit 2, the file and onnxruntime's reason named, nothing written."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    _onnx_graph(tmp_path / "dangling" / "1" / "model.onnx", [helper.make_node("MatMul", ["x", "nowhere"], ["y"])],
                [x], [y])
    _onnx_graph(tmp_path / "unknownop" / "1" / "model.onnx",
                [helper.make_node("FooBar", ["x"], ["y"], domain="weird.domain")], [x], [y],
                opsets=(("", 17), ("weird.domain", 1)))
    shape = numpy_helper.from_array(np.array([3, 8], np.int64), "shape")  # 256 rows do not make [3, 8]
    _onnx_graph(tmp_path / "reshape" / "1" / "model.onnx", [helper.make_node("Reshape", ["x", "shape"], ["y"])],
                [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 8])], [shape])
    before = _tree(tmp_path)
    for model, reason in (("dangling", "Node input 'nowhere' is not a graph input"),
                          ("unknownop", "weird.domain:FooBar(-1) is not a registered function/op"),
                          ("reshape", "running it on 256 rows of shape [4] failed")):
        code, out, err = _run(capsys, model, "--repository", str(tmp_path), "--int8")
        src = tmp_path / model / "1" / "model.onnx"
        assert code == 2 and out == "", err
        assert f"ONNX source {str(src)!r}" in err and reason in err and "Traceback" not in err
    assert _tree(tmp_path) == before


def test_an_onnx_model_not_from_wsserve_gets_no_mlp_accuracy_claim(tmp_path: Path, capsys) -> None:
    """Any [32] -> [10] model.onnx was measured on the mlp task's held-out rows and given a 'held-out
    accuracy' on a task it was never trained for; only wsserve's own mlp export claims it now."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((32, 10)).astype(np.float32), "w")
    _onnx_graph(tmp_path / "theirs" / "1" / "model.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])],
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], [w])
    code, out, err = _run(capsys, "theirs", "--repository", str(tmp_path), "--int8", "--json")
    assert code == 0, err
    figures = json.loads(out)
    assert figures["heldout_accuracy"] is None and "source_heldout_accuracy" not in figures
    assert math.isfinite(figures["output_max_abs_diff"])  # measured on standard-normal rows instead


def test_an_onnx_model_without_weights_to_quantize_is_refused(tmp_path: Path, capsys) -> None:
    """A model.onnx without weights (Relu of its input) was 'compressed' into a larger file (the
    quantizer adds nodes, the figures add metadata); now exit 2, nothing written."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    _onnx_graph(tmp_path / "relu" / "1" / "model.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])])
    before = _tree(tmp_path)
    code, out, err = _run(capsys, "relu", "--repository", str(tmp_path), "--int8")
    assert code == 2 and out == ""
    assert "int8 quantization finds no float weights to quantize in it" in err
    assert _tree(tmp_path) == before
