"""Tests for wsserve.compression: int8 quantization, pruning, their version files, ``compress``."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from wsserve import compression
from wsserve.compression import (
    MLPInt8Model,
    MLPSparseModel,
    compress,
    dequantize,
    finetune_masked,
    load_model,
    prune_masks,
    quantize_per_channel,
)
from wsserve.compression.measure import heldout_accuracy, nonzero_parameters
from wsserve.models.linear import LinearModel
from wsserve.models.mlp import (
    MLPConfig,
    MLPModel,
    cross_entropy,
    forward,
    make_mlp_data,
    train_mlp,
)
from wsserve.models.mlp_layers import MAX_WIDTH
from wsserve.repository import ARCHITECTURES, ModelLoadError, read_npz, save_npz_model
from wsserve.repository.npz import encode_npz
from wsserve.trainer import train_default_models


def save_version(version_dir: Path, architecture: str, arrays: dict, meta: dict) -> Path:
    version_dir.mkdir(parents=True, exist_ok=True)
    return save_npz_model(version_dir, architecture, arrays, meta)


SMALL = MLPConfig(n_train=1500, n_heldout=300, hidden=(32, 16), epochs=2, batch_size=100)


@pytest.fixture(scope="module")
def mlp(model_cache: Path) -> MLPModel:
    """The default ``mlp`` (seed 0), from the shared weight cache."""
    model = train_default_models(names=["mlp"], cache_dir=model_cache)["mlp"]
    assert isinstance(model, MLPModel)
    return model


@pytest.fixture(scope="module")
def heldout() -> tuple[np.ndarray, np.ndarray]:
    return make_mlp_data(0)[1]


@pytest.fixture
def source_dir(tmp_path: Path, mlp: MLPModel) -> Path:
    arrays, meta = mlp.to_arrays()
    save_version(tmp_path / "mlp" / "1", "mlp", arrays, meta)
    return tmp_path / "mlp" / "1"


def test_public_api() -> None:
    assert sorted(compression.__all__) == sorted([
        "DEFAULT_SCOPE", "FAMILY", "METHODS", "MODEL_FILE", "MLPInt8Model", "MLPSparseModel",
        "architecture_of", "compress", "dequantize", "finetune_masked", "load_model",
        "prune_masks", "quantize_per_channel",
    ])
    # one reader for the repository's model.npz: it knows the whole family
    assert set(compression.FAMILY) <= set(ARCHITECTURES)


# -- int8 quantization --------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), log_scale=st.floats(-30, 30),
       seed=st.integers(0, 2**32 - 1), zero_col=st.booleans())
def test_quantize_round_trip_bound(rows: int, cols: int, log_scale: float, seed: int, zero_col: bool) -> None:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * math.exp(log_scale)).astype(np.float32)
    if zero_col:
        w[:, 0] = 0
    q, scale = quantize_per_channel(w)
    assert q.dtype == np.int8 and q.shape == w.shape and scale.dtype == np.float32 and scale.shape == (cols,)
    assert q.min() >= -127 and (scale > 0).all() and np.isfinite(scale).all()
    err = np.abs(w.astype(np.float64) - q.astype(np.float64) * scale.astype(np.float64))
    assert (err <= scale.astype(np.float64) * (0.5 + 1e-6)).all()
    # the largest |w| of each non-zero column maps to +-127: the full range is used
    peak = np.abs(w).max(axis=0) > 0
    assert (np.abs(q).max(axis=0)[peak] == 127).all()
    back = dequantize(q, scale)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, w, atol=float(scale.max()) * 0.5 * (1 + 1e-5), rtol=0)


def test_quantize_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="finite 2-D"):
        quantize_per_channel(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="finite 2-D"):
        quantize_per_channel(np.ones(3))


def test_int8_model_matches_dequantized_network(mlp: MLPModel, heldout) -> None:
    x, _ = heldout
    m = MLPInt8Model.from_params(mlp.params)
    deq = MLPModel(m.dequantized_params(np.float32))
    np.testing.assert_array_equal(m.predict(x[:500]), deq.predict(x[:500]))
    # and stays close to the float model it came from
    assert np.abs(m.predict(x[:500]) - mlp.predict(x[:500])).max() < 0.05


@pytest.mark.parametrize("kind", ["int8", "sparse"])
def test_compressed_predict_is_exactly_row_pure(mlp: MLPModel, kind: str) -> None:
    model = (MLPInt8Model.from_params(mlp.params) if kind == "int8" else
             MLPSparseModel.from_pruned(mlp.params, prune_masks([w for w, _ in mlp.params], 0.5)))
    x = np.random.default_rng(4).standard_normal((300, 32))
    full = model.predict(x)
    assert full.shape == (300, 10) and full.dtype == np.float64
    np.testing.assert_allclose(full.sum(axis=1), 1.0)
    for i in (0, 1, 2, 17, 150, 299):
        assert np.array_equal(model.predict(x[i:i + 1]), full[i:i + 1]), i
    for n in (2, 3, 7, 64, 255):
        assert np.array_equal(model.predict(x[:n]), full[:n]), n
    assert np.array_equal(model.predict(x[::-1]), full[::-1])
    with pytest.raises(ValueError, match="32"):
        model.predict(np.ones((2, 31)))


# -- pruning ------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.333])
def test_pruning_sparsity_is_exact(mlp: MLPModel, fraction: float) -> None:
    weights = [w for w, _ in mlp.params]
    per_layer = prune_masks(weights, fraction, "layer")
    for w, m in zip(weights, per_layer):
        assert m.shape == w.shape and m.dtype == bool
        assert (~m).sum() == round(fraction * w.size)
        assert np.abs(w[~m]).max() <= np.abs(w[m]).min()  # the smallest magnitudes went
    glob = prune_masks(weights, fraction, "global")
    total = sum(w.size for w in weights)
    assert sum(int((~m).sum()) for m in glob) == round(fraction * total)
    removed = max(float(np.abs(w[~m]).max()) for w, m in zip(weights, glob) if (~m).any())
    kept = min(float(np.abs(w[m]).min()) for w, m in zip(weights, glob) if m.any())
    assert removed <= kept


def test_pruning_ties_are_deterministic() -> None:
    w = [np.ones((4, 4)), np.ones((4, 2))]
    a = prune_masks(w, 0.5, "global")
    b = prune_masks(w, 0.5, "global")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sum(int((~m).sum()) for m in a) == 12


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), float("inf")])
def test_pruning_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        prune_masks([np.ones((2, 2))], fraction)


def test_pruning_rejects_bad_scope() -> None:
    with pytest.raises(ValueError, match="scope"):
        prune_masks([np.ones((2, 2))], 0.5, "neuron")  # type: ignore[arg-type]


def test_finetune_keeps_mask_and_lowers_training_loss() -> None:
    with threadpool_limits(limits=1):
        model = train_mlp(seed=3, config=SMALL)
    (x, y), _ = make_mlp_data(3, SMALL)
    masks = prune_masks([w for w, _ in model.params], 0.8)
    pruned = [(w * m, b) for (w, b), m in zip(model.params, masks)]
    with threadpool_limits(limits=1):
        tuned = finetune_masked(pruned, masks, x, y, epochs=2, seed=3, config=SMALL)
        again = finetune_masked(pruned, masks, x, y, epochs=2, seed=3, config=SMALL)
    for (w, _), m in zip(tuned, masks):
        assert (w[~m] == 0).all()
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(tuned, again))  # deterministic
    xf = x.astype(np.float32)
    assert cross_entropy(forward(tuned, xf)[0], y) < cross_entropy(forward(pruned, xf)[0], y)
    assert not np.array_equal(tuned[1][0], pruned[1][0])  # it did train the kept weights


def test_sparse_storage_round_trip_and_size(mlp: MLPModel, heldout) -> None:
    x, _ = heldout
    masks = prune_masks([w for w, _ in mlp.params], 0.5, "layer")
    model = MLPSparseModel.from_pruned([(w * m, b) for (w, b), m in zip(mlp.params, masks)], masks)
    arrays, meta = model.to_arrays()
    assert meta["shapes"] == [[32, 256], [256, 256], [256, 10]]
    for i, (w, m) in enumerate(zip([w for w, _ in mlp.params], masks)):
        assert arrays[f"w{i}.mask"].dtype == np.uint8 and arrays[f"w{i}.mask"].size == -(-w.size // 8)
        np.testing.assert_array_equal(arrays[f"w{i}.values"], w[m])  # row-major kept weights
    back = MLPSparseModel.from_arrays(arrays, meta)
    assert np.array_equal(back.predict(x[:300]), model.predict(x[:300]))
    for (w, b), (w2, b2) in zip(back.dense_params(np.float32), model.dense_params(np.float32)):
        assert np.array_equal(w, w2) and np.array_equal(b, b2)
    dense_bytes = len(encode_npz("mlp", *mlp.to_arrays()))
    sparse_bytes = len(encode_npz("mlp-sparse", arrays, meta))
    assert sparse_bytes < 0.56 * dense_bytes  # 1 bit + 50% of 32 bits per weight


# -- validation of files --------------------------------------------------------

def _int8_arrays(mlp: MLPModel) -> tuple[dict, dict]:
    return MLPInt8Model.from_params(mlp.params).to_arrays()


def _sparse_arrays(mlp: MLPModel) -> tuple[dict, dict]:
    return MLPSparseModel.from_pruned(mlp.params, prune_masks([w for w, _ in mlp.params], 0.5)).to_arrays()


INT8_CORRUPTIONS = {
    "scale zero": (lambda a, m: a["w1.scale"].__setitem__(3, 0.0), "positive"),
    "scale negative": (lambda a, m: a["w0.scale"].__setitem__(0, -1.0), "positive"),
    "scale nan": (lambda a, m: a["w2.scale"].__setitem__(0, np.nan), "non-finite"),
    "bias inf": (lambda a, m: a["b0"].__setitem__(0, np.inf), "non-finite"),
    "minus 128": (lambda a, m: a["w1.int8"].__setitem__((0, 0), -128), "-128"),
    "q as float": (lambda a, m: a.__setitem__("w0.int8", a["w0.int8"].astype(np.float32)), "dtype"),
    "scale float64": (lambda a, m: a.__setitem__("w0.scale", a["w0.scale"].astype(np.float64)), "dtype"),
    "scale short": (lambda a, m: a.__setitem__("w0.scale", a["w0.scale"][:-1]), "shape"),
    "layers not chained": (lambda a, m: a.__setitem__("w1.int8", a["w1.int8"][:100]), "layer 1"),
    "missing array": (lambda a, m: a.pop("b2"), "missing arrays"),
    "extra array": (lambda a, m: a.__setitem__("w3.int8", a["w2.int8"]), "unexpected arrays"),
    "q 3-D": (lambda a, m: a.__setitem__("w0.int8", a["w0.int8"][None]), "2-D"),
    "layers bool": (lambda a, m: m.__setitem__("layers", True), "layers"),
    "layers huge": (lambda a, m: m.__setitem__("layers", 10**9), "layers"),
    "scale overflow": (lambda a, m: a["w0.scale"].__setitem__(0, 3e38), "overflow"),
    "metrics not object": (lambda a, m: m.__setitem__("metrics", [1]), "metrics"),
}


@pytest.mark.parametrize("case", sorted(INT8_CORRUPTIONS))
def test_int8_from_arrays_rejects(mlp: MLPModel, case: str) -> None:
    arrays, meta = _int8_arrays(mlp)
    arrays = {k: v.copy() for k, v in arrays.items()}
    corrupt, message = INT8_CORRUPTIONS[case]
    corrupt(arrays, meta)
    with pytest.raises(ValueError, match=message) as info:
        MLPInt8Model.from_arrays(arrays, meta)
    assert "mlp-int8" in str(info.value)


SPARSE_CORRUPTIONS = {
    "padding bits": (None, "padding bits"),
    "values count": (lambda a, m: a.__setitem__("w1.values", a["w1.values"][:-1]), "shape"),
    "values nan": (lambda a, m: a["w0.values"].__setitem__(0, np.nan), "non-finite"),
    "mask length": (lambda a, m: a.__setitem__("w0.mask", a["w0.mask"][:-1]), "shape"),
    "mask dtype": (lambda a, m: a.__setitem__("w0.mask", a["w0.mask"].astype(np.int16)), "dtype"),
    "shapes missing": (lambda a, m: m.pop("shapes"), "layer shapes"),
    "shapes not chained": (lambda a, m: m.__setitem__("shapes", [[32, 256], [255, 256], [256, 10]]), "layer 1"),
    "shape over bound": (lambda a, m: m.__setitem__("shapes", [[MAX_WIDTH + 1, 256], [256, 256], [256, 10]]),
                         "outside"),
    "too many parameters": (lambda a, m: m.__setitem__("shapes", [[65536, 65536], [65536, 256], [256, 10]]),
                            "parameters"),
    "shape floats": (lambda a, m: m.__setitem__("shapes", [[32.0, 256], [256, 256], [256, 10]]), "integers"),
    "layers disagree": (lambda a, m: m.__setitem__("layers", 2), "layers"),
    "metrics not object": (lambda a, m: m.__setitem__("metrics", "x"), "metrics"),
}


def _set_padding_bit(arrays: dict, meta: dict) -> None:
    # the mlp's layer sizes are multiples of 8 (no padding): use a 3x3 layer, 7 padding bits, one set
    arrays.clear()
    arrays.update({"w0.mask": np.array([0xFF, 0x81], np.uint8), "w0.values": np.ones(9, np.float32),
                   "b0": np.zeros(3, np.float32)})
    meta["shapes"] = [[3, 3]]
    meta["layers"] = 1


@pytest.mark.parametrize("case", sorted(SPARSE_CORRUPTIONS))
def test_sparse_from_arrays_rejects(mlp: MLPModel, case: str) -> None:
    arrays, meta = _sparse_arrays(mlp)
    arrays = {k: v.copy() for k, v in arrays.items()}
    corrupt, message = SPARSE_CORRUPTIONS[case]
    (corrupt or _set_padding_bit)(arrays, meta)
    with pytest.raises(ValueError, match=message) as info:
        MLPSparseModel.from_arrays(arrays, meta)
    assert "mlp-sparse" in str(info.value)


def test_sparse_padding_bits_clear_is_accepted() -> None:
    arrays = {"w0.mask": np.array([0xFF, 0x80], np.uint8), "w0.values": np.arange(9, dtype=np.float32),
              "b0": np.zeros(3, np.float32)}
    model = MLPSparseModel.from_arrays(arrays, {"shapes": [[3, 3]], "layers": 1})
    np.testing.assert_array_equal(model.dense_params(np.float32)[0][0], np.arange(9).reshape(3, 3))


# -- the version file (the repository's model.npz) -----------------------------------

def test_version_file_round_trip(tmp_path: Path, mlp: MLPModel, heldout) -> None:
    x, _ = heldout
    for arch, (arrays, meta) in (("mlp", mlp.to_arrays()), ("mlp-int8", _int8_arrays(mlp)),
                                 ("mlp-sparse", _sparse_arrays(mlp))):
        path = save_version(tmp_path / arch, arch, arrays, meta)
        assert path == tmp_path / arch / "model.npz"
        assert [p.name for p in path.parent.iterdir()] == ["model.npz"]  # no temp file left
        contents = read_npz(path)
        assert contents.architecture == arch and contents.size_bytes == path.stat().st_size
        assert sorted(contents.arrays) == sorted(arrays)
        model = load_model(path.parent)
        assert compression.architecture_of(model) == arch
        expected = ARCHITECTURES[arch](arrays, meta).predict(x[:50])
        assert np.array_equal(model.predict(x[:50]), expected)
        raw = np.load(path, allow_pickle=False)["__meta__"]
        header = json.loads(raw.tobytes().decode("utf-8"))
        assert header["format"] == 1 and header["architecture"] == arch and isinstance(header["meta"], dict)


def test_load_model_names_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    arrays = {"w0.int8": np.ones((2, 2), np.int8)}
    with pytest.raises(ValueError, match=r"missing arrays \['b0', 'w0.scale'\]"):
        save_version(tmp_path / "bad", "mlp-int8", arrays, {"layers": 1})
    assert list((tmp_path / "bad").iterdir()) == []  # refused before anything was written
    # written by another tool: the reader names the file
    buf = io.BytesIO()
    header = json.dumps({"format": 1, "architecture": "mlp-int8", "meta": {"layers": 1}}).encode()
    np.savez(buf, __meta__=np.frombuffer(header, np.uint8), **arrays)
    (tmp_path / "bad" / "model.npz").write_bytes(buf.getvalue())
    with pytest.raises(ModelLoadError, match=r"bad/model.npz: bad mlp-int8 model: .*missing arrays") as info:
        load_model(tmp_path / "bad")
    assert info.value.path == tmp_path / "bad" / "model.npz"


# -- compress(): the whole job on files -------------------------------------------

def _figures_from_file(version_dir: Path, heldout) -> dict:
    x, y = heldout
    contents = read_npz(version_dir / "model.npz")
    model = load_model(version_dir)
    return {"bytes": contents.size_bytes, "acc": heldout_accuracy(model, x, y), "nonzero": nonzero_parameters(model),
            "meta": dict(contents.meta), "arch": contents.architecture, "model": model}


def test_compress_int8_meets_targets_and_figures_are_true(tmp_path: Path, source_dir: Path, mlp: MLPModel,
                                                          heldout) -> None:
    report = compress(source_dir, tmp_path / "mlp" / "2", method="int8", latency_runs=3)
    got = _figures_from_file(tmp_path / "mlp" / "2", heldout)
    fig = got["meta"]["compression"]
    assert got["arch"] == "mlp-int8" and fig["architecture"] == "mlp-int8"
    assert fig["method"] == "int8" and fig["source_version"] == "1"  # the directory name, not a path
    assert str(tmp_path) not in json.dumps(got["meta"])
    assert fig["bytes"] == got["bytes"] == report["bytes"] == os.path.getsize(report["path"])
    assert fig["source_bytes"] == (source_dir / "model.npz").stat().st_size
    assert fig["heldout_accuracy"] == got["acc"] == got["meta"]["metrics"]["heldout_accuracy"]
    assert fig["source_heldout_accuracy"] == heldout_accuracy(mlp, *heldout)
    assert fig["heldout_accuracy_delta"] == pytest.approx(got["acc"] - fig["source_heldout_accuracy"], abs=1e-9)
    assert fig["parameters_nonzero"] == got["nonzero"]
    assert fig["source_parameters_nonzero"] == 76810
    assert fig["latency_ms_b256"] > 0 and fig["latency_ratio_b256"] > 0 and fig["latency_runs"] == 3
    assert fig["data_seed"] == 0 and fig["data_seed_from"] == "default" and fig["n_heldout"] == 4000
    # the targets for mlp
    assert fig["bytes"] <= 0.30 * fig["source_bytes"]
    assert fig["heldout_accuracy_delta"] >= -0.01


def test_compress_prune_sparsity_exact_and_finetune_target(tmp_path: Path, source_dir: Path, heldout) -> None:
    report = compress(source_dir, tmp_path / "p50", method="prune", fraction=0.5, finetune=True,
                      latency_runs=1)
    got = _figures_from_file(tmp_path / "p50", heldout)
    fig = got["meta"]["compression"]
    assert got["arch"] == "mlp-sparse"
    assert fig["method"] == "prune" and fig["fraction"] == 0.5 and fig["scope"] == "global"
    assert fig["finetune"] is True and fig["finetune_epochs"] == 2
    masks = got["model"].masks()
    total = sum(m.size for m in masks)
    assert sum(int((~m).sum()) for m in masks) == round(0.5 * total)  # exact sparsity in the file
    assert fig["parameters"] == total - round(0.5 * total) + 522
    assert fig["bytes"] == got["bytes"] < 0.56 * fig["source_bytes"]
    assert fig["heldout_accuracy"] == got["acc"]
    assert fig["heldout_accuracy_delta"] >= -0.01  # target: 50% pruning within 1 point (with finetune)
    assert report["bytes_ratio"] == pytest.approx(fig["bytes"] / fig["source_bytes"])


def test_compress_layer_scope_90(tmp_path: Path, source_dir: Path, mlp: MLPModel, heldout) -> None:
    compress(source_dir, tmp_path / "p90", method="prune", fraction=0.9, scope="layer", latency_runs=1)
    got = _figures_from_file(tmp_path / "p90", heldout)
    masks = got["model"].masks()
    assert [m.shape for m in masks] == [w.shape for w, _ in mlp.params]  # one mask per weight matrix
    for m in masks:
        assert (~m).sum() == round(0.9 * m.size)
    assert got["meta"]["compression"]["heldout_accuracy"] == got["acc"]
    assert got["bytes"] < 0.2 * got["meta"]["compression"]["source_bytes"]


def test_compress_from_model_object_and_seed_from_meta(tmp_path: Path, mlp: MLPModel) -> None:
    report = compress(mlp, tmp_path / "a", method="int8", latency_runs=1)
    assert report["source_bytes"] == len(encode_npz("mlp", *mlp.to_arrays()))
    assert report["source_version"] == mlp.info.version
    arrays, meta = mlp.to_arrays()
    save_version(tmp_path / "src", "mlp", arrays, {**meta, "seed": 7})
    report = compress(tmp_path / "src", tmp_path / "b", method="int8", latency_runs=1)
    assert report["data_seed"] == 7 and report["data_seed_from"] == "source meta"
    _, (x7, y7) = make_mlp_data(7)
    assert report["heldout_accuracy"] == heldout_accuracy(load_model(tmp_path / "b"), x7, y7)
    report = compress(tmp_path / "src", tmp_path / "c", method="int8", data_seed=0, latency_runs=1)
    assert report["data_seed"] == 0 and report["data_seed_from"] == "argument"


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "prune", "fraction": 0}, r"\(0, 1\)"),
    ({"method": "prune", "fraction": 1}, r"\(0, 1\)"),
    ({"method": "prune", "fraction": 1.5}, r"\(0, 1\)"),
    ({"method": "prune", "fraction": -0.2}, r"\(0, 1\)"),
    ({"method": "prune", "fraction": float("nan")}, r"\(0, 1\)"),
    ({"method": "prune", "fraction": True}, r"\(0, 1\)"),
    ({"method": "prune", "fraction": "0.5"}, r"\(0, 1\)"),
    ({"method": "prune"}, "needs a fraction"),
    ({"method": "prune", "fraction": 0.5, "scope": "row"}, "scope"),
    ({"method": "prune", "fraction": 0.5, "finetune": True, "finetune_epochs": 0}, "finetune_epochs"),
    ({"method": "int8", "fraction": 0.5}, "only applies to method 'prune'"),
    ({"method": "int8", "finetune": True}, "only applies to method 'prune'"),
    ({"method": "zip"}, "unknown compression method 'zip'"),
    ({"method": "int8", "data_seed": -1}, "data_seed"),
    ({"method": "int8", "latency_runs": 0}, "latency_runs"),
])
def test_compress_bad_arguments_write_nothing(tmp_path: Path, source_dir: Path, kwargs: dict,
                                              message: str) -> None:
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=message):
        compress(source_dir, tmp_path / "mlp" / "2", **kwargs)
    assert _tree(tmp_path) == before


def test_compress_bad_sources_write_nothing(tmp_path: Path, source_dir: Path, mlp: MLPModel) -> None:
    before = _tree(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="does not exist"):
        compress(tmp_path / "missing", out, method="int8")
    with pytest.raises(ValueError, match=r"model 'linear' of type LinearModel.*only the fp32 'mlp'"):
        compress(LinearModel(3.0, 0.5), out, method="int8")
    int8_model = MLPInt8Model.from_params(mlp.params)
    with pytest.raises(ValueError, match=r"architecture 'mlp-int8'.*only the fp32 'mlp'"):
        compress(int8_model, out, method="prune", fraction=0.5)
    with pytest.raises(ValueError, match="already holds a model"):
        compress(source_dir, source_dir, method="int8")
    assert _tree(tmp_path) == before
    # a compressed version on disk cannot be compressed again
    save_version(tmp_path / "i8", "mlp-int8", *int8_model.to_arrays())
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"architecture 'mlp-int8'.*only the fp32 'mlp'"):
        compress(tmp_path / "i8", out, method="int8")
    # a source with other widths has no held-out data
    with threadpool_limits(limits=1):
        odd = MLPModel([(np.ones((5, 3), np.float32), np.zeros(3, np.float32))])
    with pytest.raises(ValueError, match="held-out data"):
        compress(odd, out, method="int8")
    assert _tree(tmp_path) == before
