"""model.npz: format, reader checks (corrupt, pickled, missing/extra arrays, bad header), writer, NpzModel."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from wsserve.models.linear import LinearModel
from wsserve.models.mlp import MLPModel
from wsserve.repository import (
    ARCHITECTURES,
    ModelLoadError,
    load_version,
    parse_config,
    read_npz,
    save_npz_model,
    scan,
    write_builtin_version,
)
from wsserve.repository.npz import build_npz_model


def _rng(seed: int = 0) -> np.random.Generator:
    """A test's own generator: no test's data depends on which tests ran before it."""
    return np.random.default_rng(seed)


def _mlp(sizes: tuple[int, ...] = (4, 8, 3), seed: int = 0) -> MLPModel:
    rng = _rng(seed)
    params = [(rng.standard_normal((a, b)).astype(np.float32), rng.standard_normal(b).astype(np.float32))
              for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    return MLPModel(params, metrics={"accuracy": 0.5})


def _header(obj: object) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


def _write(path: Path, header: object = None, **arrays: np.ndarray) -> Path:
    """An npz written by hand (possibly broken); ``header=None`` omits __meta__."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if header is None else {"__meta__": header if isinstance(header, np.ndarray) else _header(header)}
    with open(path, "wb") as f:
        np.savez(f, **extra, **arrays)
    return path


LINEAR_ARRAYS = {"weight": np.array([3.0]), "bias": np.array([0.5])}
LINEAR_HEADER = {"format": 1, "architecture": "linear", "meta": {"metrics": {"mse": 0.1}}}


def _load_error(path: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        build_npz_model(read_npz(path))
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")
    return str(info.value)


# --------------------------------------------------------------------------- good files

def test_architectures_are_an_explicit_read_only_mapping() -> None:
    assert set(ARCHITECTURES) == {"linear", "mlp", "mlp-int8", "mlp-sparse", "charlm"}
    with pytest.raises(TypeError):
        ARCHITECTURES["evil"] = None  # type: ignore[index]


def test_hand_written_linear_file_loads(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.npz", LINEAR_HEADER, **LINEAR_ARRAYS)
    contents = read_npz(path)
    assert contents.architecture == "linear" and contents.meta == {"metrics": {"mse": 0.1}}
    model = build_npz_model(contents)
    assert model.predict(np.array([[1.0], [2.0]])).tolist() == [[3.5], [6.5]]
    assert model.info.metrics == {"mse": 0.1}


@pytest.mark.parametrize("model", [LinearModel(2.0, -1.0, metrics={"m": 1}), _mlp(), _mlp((5, 7, 7, 2))],
                         ids=["linear", "mlp", "mlp-3-layers"])
def test_save_then_read_round_trips(tmp_path: Path, model: LinearModel | MLPModel) -> None:
    arch = "linear" if isinstance(model, LinearModel) else "mlp"
    arrays, meta = model.to_arrays()
    path = save_npz_model(tmp_path, arch, arrays, meta)
    assert path == tmp_path / "model.npz"
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temporary file left
    loaded = build_npz_model(read_npz(path))
    x = _rng(1).standard_normal((6, model.info.input_shape[0]))
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert loaded.info.metrics == model.info.metrics
    # the header is the fixed format, readable without wsserve
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["__meta__"].tobytes())
    assert header["format"] == 1 and header["architecture"] == arch and set(header) == {"format", "architecture", "meta"}


def test_save_refuses_bad_contents_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown architecture 'cnn'"):
        save_npz_model(tmp_path, "cnn", LINEAR_ARRAYS, {})
    with pytest.raises(ValueError, match="missing bias"):
        save_npz_model(tmp_path, "linear", {"weight": np.array([1.0])}, {})
    with pytest.raises(ValueError, match="unsupported dtype object"):
        save_npz_model(tmp_path, "linear", {**LINEAR_ARRAYS, "x": np.array([{}], dtype=object)}, {})
    with pytest.raises(ValueError, match="Out of range float values"):
        save_npz_model(tmp_path, "linear", LINEAR_ARRAYS, {"metrics": {"mse": float("nan")}})
    with pytest.raises(ValueError, match="bad array name '__meta__'"):
        save_npz_model(tmp_path, "linear", {**LINEAR_ARRAYS, "__meta__": np.zeros(1)}, {})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- bad files

def test_missing_file(tmp_path: Path) -> None:
    assert _load_error(tmp_path / "model.npz").endswith("does not exist")


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    path.write_bytes(b"this is not a zip archive at all")
    assert "unreadable (BadZipFile" in _load_error(path)


def test_truncated_file(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.npz", LINEAR_HEADER, **LINEAR_ARRAYS).read_bytes()
    path = tmp_path / "model.npz"
    path.write_bytes(good[: len(good) // 2])
    assert "unreadable" in _load_error(path)


def test_bad_crc(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.npz", LINEAR_HEADER, **LINEAR_ARRAYS)
    data = bytearray(path.read_bytes())
    # flip a byte of the stored weight (8 bytes of 3.0 in little-endian)
    at = bytes(data).index(np.array([3.0]).tobytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "unreadable (BadZipFile: Bad CRC-32" in _load_error(path)


def test_encrypted_member(tmp_path: Path) -> None:
    """zipfile raises RuntimeError for an encrypted member: still a ModelLoadError naming the file."""
    path = _write(tmp_path / "model.npz", LINEAR_HEADER, **LINEAR_ARRAYS)
    data = bytearray(path.read_bytes())
    for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        at = data.find(signature)
        while at >= 0:
            data[at + flags] |= 1  # general purpose bit 0: encrypted
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    assert "unreadable (RuntimeError:" in _load_error(path) and "encrypted" in _load_error(path)


class _Payload:
    """Unpickling this creates ``sentinel``: proof that a loader ran pickle."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.sentinel), "w"))


def test_pickled_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(sentinel)
    path = _write(tmp_path / "model.npz", LINEAR_HEADER, **LINEAR_ARRAYS, evil=evil)
    msg = _load_error(path)
    assert "array 'evil' has dtype object: only numeric arrays are loaded (no pickled objects)" in msg
    assert not sentinel.exists()


def test_pickled_header_is_refused(tmp_path: Path) -> None:
    header = np.empty(1, dtype=object)
    header[0] = LINEAR_HEADER
    path = _write(tmp_path / "model.npz", header, **LINEAR_ARRAYS)
    assert "array '__meta__' has dtype object" in _load_error(path)


def test_oversized_array_is_refused_before_allocation(tmp_path: Path) -> None:
    # a member whose .npy header claims 10**12 float64s (8 TB) and holds nothing
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    path = tmp_path / "model.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("weight.npy", buf.getvalue())
    assert "arrays need more than 4294967296 bytes (array 'weight' has shape [1000000000000])" in _load_error(path)


def test_max_bytes_is_configurable(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.npz", LINEAR_HEADER, **LINEAR_ARRAYS)
    with pytest.raises(ModelLoadError, match="arrays need more than 8 bytes"):
        read_npz(path, max_bytes=8)


async def test_the_server_reads_model_npz_within_max_npz_bytes(tmp_path: Path) -> None:
    """--max-npz-bytes bounds a repository's model.npz (the default, 4 GiB, is MAX_NPZ_BYTES)."""
    import wsserve
    from wsserve.repository.npz import MAX_NPZ_BYTES

    assert wsserve.ServerConfig().max_npz_bytes == MAX_NPZ_BYTES
    repo = tmp_path / "repo"
    path = _write(repo / "lin" / "1" / "model.npz", LINEAR_HEADER, **LINEAR_ARRAYS)
    need = _header(LINEAR_HEADER).nbytes + 16  # the header array counts, and weight and bias: 8 bytes each
    for limit, state in ((need, "ready"), (need - 1, "failed")):
        server = wsserve.Server(wsserve.ServerConfig(port=0, models=(), model_repository=(repo,), max_npz_bytes=limit))
        await server.start()
        try:
            status = server.pool.status("lin")["1"]
            assert status.state == state, (limit, status)
            if state == "failed":
                assert status.reason == f"{path}: arrays need more than {need - 1} bytes (array 'bias' has shape [1])"
        finally:
            await server.close()


def test_unexpected_member(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("README.txt", "hello")
    assert "unexpected member 'README.txt'" in _load_error(path)


@pytest.mark.parametrize(
    "header, words",
    [
        (None, "missing the __meta__ header array"),
        (np.zeros(3, dtype=np.float64), "__meta__ must be a 1-D uint8 array"),
        (np.frombuffer(b"{not json", dtype=np.uint8), "__meta__ is not UTF-8 JSON"),
        (np.frombuffer(b"\xff\xfe", dtype=np.uint8), "__meta__ is not UTF-8 JSON"),
        ([1, 2], "__meta__ must be a JSON object, got list"),
        ({"format": 1, "architecture": "linear"}, "must have exactly the fields architecture, format, meta"),
        ({**LINEAR_HEADER, "name": "x"}, "must have exactly the fields"),
        ({**LINEAR_HEADER, "format": 2}, "format 2 is not supported (expected 1)"),
        ({**LINEAR_HEADER, "format": True}, "format True is not supported"),
        ({**LINEAR_HEADER, "architecture": "transformer"}, "unknown architecture 'transformer' (known: linear, mlp, mlp-int8, mlp-sparse, charlm)"),
        ({**LINEAR_HEADER, "meta": []}, "__meta__.meta must be a JSON object"),
    ],
)
def test_bad_header(tmp_path: Path, header: object, words: str) -> None:
    path = _write(tmp_path / "model.npz", header, **LINEAR_ARRAYS)
    assert words in _load_error(path)


@pytest.mark.parametrize(
    "arrays, meta, words",
    [
        ({"weight": np.array([3.0])}, {}, "bad linear model: linear arrays: missing bias (expected bias, weight)"),
        ({**LINEAR_ARRAYS, "extra": np.zeros(1)}, {}, "linear arrays: unexpected extra"),
        ({"weight": np.array([3.0], dtype=np.float32), "bias": np.array([0.5])}, {},
         "array 'weight' is float32 with 1 dims; expected float64 with 1"),
        ({"weight": np.array([3.0, 1.0]), "bias": np.array([0.5])}, {}, "array 'weight' has shape [2]; expected [1]"),
        ({"weight": np.array([np.inf]), "bias": np.array([0.5])}, {}, "one finite weight and one finite bias"),
        (LINEAR_ARRAYS, {"metrics": [1]}, "meta.metrics must be an object"),
    ],
)
def test_bad_linear_arrays(tmp_path: Path, arrays: dict[str, np.ndarray], meta: dict, words: str) -> None:
    path = _write(tmp_path / "model.npz", {"format": 1, "architecture": "linear", "meta": meta}, **arrays)
    assert words in _load_error(path)


def _mlp_arrays() -> dict[str, np.ndarray]:
    return _mlp().to_arrays()[0]


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda a: a.pop("b1"), "bad mlp model: mlp arrays: missing b1 (expected b0, b1, w0, w1)"),
        (lambda a: a.update(c1=a.pop("b1")), "mlp arrays: missing b1; unexpected c1"),
        (lambda a: a.update(w300=a["w1"], b300=a["b1"]), "mlp needs 1..256 layers (arrays w0, b0, w1, b1, ...)"),
        (lambda a: a.clear() or a.update(weights=np.zeros(2, np.float32)), "mlp needs 1..256 layers"),
        (lambda a: a.update(w0=a["w0"].astype(np.float64)), "array 'w0' is float64 with 2 dims; expected float32 with 2"),
        (lambda a: a.update(b0=a["b0"][:3]), "MLP layer 0: bias shape [3] does not match weight"),
        # The layer whose input does not fit is the one named (layer 0's shapes are fine).
        (lambda a: a.update(w1=a["w1"][:-1]), "MLP layer 1 takes "),
        (lambda a: a.update(w1=np.full_like(a["w1"], np.nan)), "MLP layer 1 holds non-finite weights"),
    ],
)
def test_bad_mlp_arrays(tmp_path: Path, edit, words: str) -> None:  # type: ignore[no-untyped-def]
    arrays = _mlp_arrays()
    edit(arrays)
    path = _write(tmp_path / "model.npz", {"format": 1, "architecture": "mlp", "meta": {}}, **arrays)
    assert words in _load_error(path)


@pytest.mark.parametrize("w0, w1", [((0, 8), (8, 3)), ((4, 8), (8, 0))], ids=["no-input", "no-output"])
def test_a_zero_width_mlp_layer_is_refused_naming_the_file(tmp_path: Path, w0: tuple[int, int], w1: tuple[int, int]) -> None:
    # used to load, then fail as "tensor 'input': bad shape [0]", a reason without the file's name
    arrays = {"w0": np.ones(w0, np.float32), "b0": np.zeros(w0[1], np.float32),
              "w1": np.ones(w1, np.float32), "b1": np.zeros(w1[1], np.float32)}
    path = _write(tmp_path / "1" / "model.npz", {"format": 1, "architecture": "mlp", "meta": {}}, **arrays)
    bad = "w0" if 0 in w0 else "w1"
    shape = list(w0 if 0 in w0 else w1)
    assert _load_error(path) == f"{path}: bad mlp model: array {bad!r} has shape {shape}; each dimension must be in 1..65536"
    with pytest.raises(ModelLoadError, match=f"^{path}: "):
        load_version("m", 1, path.parent, parse_config(""))


# --------------------------------------------------------------------------- write_builtin_version + NpzModel

def test_write_builtin_version_is_an_ordinary_repository_entry(tmp_path: Path) -> None:
    linear, mlp = LinearModel(3.0, 0.5, metrics={"mse": 0.08}), _mlp()
    assert write_builtin_version(tmp_path, "linear", linear, 1) == tmp_path / "linear" / "1"
    write_builtin_version(tmp_path, "mlp", mlp, 1)
    write_builtin_version(tmp_path, "mlp", mlp, 2)
    assert sorted(p.name for p in (tmp_path / "mlp").iterdir()) == ["1", "2", "config.toml"]  # no temp dirs left

    repo = scan(tmp_path)
    assert repo.names == ("linear", "mlp") and repo.model("mlp").selected == (1, 2)  # type: ignore[union-attr]
    for name, original in (("linear", linear), ("mlp", mlp)):
        entry = repo.model(name)
        assert entry is not None and entry.error is None
        model = load_version(name, 2 if name == "mlp" else 1, entry.versions[-1].path, entry.config)  # type: ignore[arg-type]
        model.warmup()
        x = _rng(2).standard_normal((5, original.info.input_shape[0]))
        batch = x.astype(model.inputs[0].np_dtype)
        assert np.array_equal(model.predict(batch), original.predict(x))
        assert model.backend == "npz" and model.info.name == name and model.info.task == original.info.task
        assert model.info.metrics == original.info.metrics
        assert model.flops_per_row() == original.flops_per_row()
    assert (tmp_path / "mlp" / "config.toml").read_text().count('input_dtype = "float32"') == 1


def test_write_builtin_version_rewrites_config_only_when_it_changes(tmp_path: Path) -> None:
    write_builtin_version(tmp_path, "m", _mlp(), 1)
    config = tmp_path / "m" / "config.toml"
    before = config.stat()
    write_builtin_version(tmp_path, "m", _mlp(), 1)  # same shapes: config untouched, weights replaced in place
    assert config.stat().st_ino == before.st_ino and config.stat().st_mtime_ns == before.st_mtime_ns
    write_builtin_version(tmp_path, "m", _mlp((6, 8, 3)), 2)
    assert config.stat().st_ino != before.st_ino and "input_shape = [6]" in config.read_text()


def test_write_builtin_version_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad model name '../x'"):
        write_builtin_version(tmp_path, "../x", _mlp(), 1)
    with pytest.raises(ValueError, match="bad version 0"):
        write_builtin_version(tmp_path, "m", _mlp(), 0)
    with pytest.raises(TypeError, match="takes a LinearModel, MLPModel or CharLM, got str"):
        write_builtin_version(tmp_path, "m", "model", 1)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_npz_model_checks_config_against_the_file(tmp_path: Path) -> None:
    write_builtin_version(tmp_path, "linear", LinearModel(1.0, 0.0), 1)
    vdir = tmp_path / "linear" / "1"
    with pytest.raises(ModelLoadError) as info:
        load_version("linear", 1, vdir, parse_config("input_shape = [2]"))
    assert str(info.value) == f"{vdir / 'model.npz'}: config.toml says input 'input' has shape [2]; the model's is [1]"
    with pytest.raises(ModelLoadError, match="config.toml says output 'output' is float32; the model's is float64"):
        load_version("linear", 1, vdir, parse_config('output_dtype = "float32"'))
    with pytest.raises(ModelLoadError, match="max_batch_size = 0 .* does not apply to model.npz"):
        load_version("linear", 1, vdir, parse_config("max_batch_size = 0"))
    with pytest.raises(ModelLoadError) as info:  # it was listed as generative, and refused every generate
        load_version("linear", 1, vdir, parse_config('task = "generation"'))
    assert str(info.value) == (f'{vdir / "model.npz"}: config.toml says task = "generation", but a linear model '
                               "is not generative (it serves predict)")
    model = load_version("linear", 1, vdir, parse_config('task = "other"\nflops_per_row = 99'))
    assert model.info.task == "other" and model.flops_per_row() == 99


def test_closed_model_refuses_predict(tmp_path: Path) -> None:
    write_builtin_version(tmp_path, "linear", LinearModel(1.0, 0.0), 1)
    model = load_version("linear", 1, tmp_path / "linear" / "1", parse_config(""))
    model.close()
    model.close()
    with pytest.raises(RuntimeError, match="model 'linear' version 1 is closed"):
        model.predict(np.zeros((1, 1)))


# --------------------------------------------------------------------------- bounds before numpy reads

def test_file_bigger_than_its_arrays_can_be_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    path.write_bytes(b"\0" * (6 << 20))  # 6 MiB: more than 8 bytes of arrays + header + member overhead
    assert "is 6291456 bytes, more than arrays of at most 8 bytes need" in str(
        pytest.raises(ModelLoadError, read_npz, path, max_bytes=8).value)


def test_members_that_expand_past_the_bound_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__meta__.npy", b"\0" * (6 << 20))  # deflates to a few KB
    assert path.stat().st_size < 100_000
    with pytest.raises(ModelLoadError, match="members expand to 6291456 bytes"):
        read_npz(path, max_bytes=8)


@pytest.mark.parametrize("method, name", [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "lzma")])
def test_members_compressed_otherwise_than_numpy_writes_are_refused_before_inflating(
        tmp_path: Path, method: int, name: str) -> None:
    """zipfile inflates bzip2 and lzma data without an output bound per read: a few compressed bytes
    could take gigabytes before any size check.  np.savez (stored) and np.savez_compressed (deflated)
    files load."""
    for writer in (np.savez, np.savez_compressed):
        path = tmp_path / f"{writer.__name__}.npz"
        with open(path, "wb") as f:
            writer(f, __meta__=_header(LINEAR_HEADER), **LINEAR_ARRAYS)
        assert build_npz_model(read_npz(path)).predict(np.array([[2.0]])).tolist() == [[6.5]]
    path = tmp_path / "model.npz"
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for key, a in {"__meta__": _header(LINEAR_HEADER), **LINEAR_ARRAYS}.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a)
            zf.writestr(f"{key}.npy", buf.getvalue())
    assert f"member '__meta__.npy' is compressed with {name}; only stored or deflated members are read" in _load_error(path)


def test_a_deeply_nested_header_is_refused(tmp_path: Path) -> None:
    # json recurses once per nesting level: 1 MiB of "[" used to escape read_npz as RecursionError
    header = np.frombuffer(b"[" * 400_000 + b"]" * 400_000, dtype=np.uint8)
    path = _write(tmp_path / "deep.npz", header, **LINEAR_ARRAYS)
    assert _load_error(path) == f"{path}: __meta__ is not UTF-8 JSON (arrays or objects nested too deeply)"


def test_nan_in_the_header_is_refused(tmp_path: Path) -> None:
    text = b'{"format": 1, "architecture": "linear", "meta": {"metrics": {"mse": NaN}}}'
    path = _write(tmp_path / "model.npz", np.frombuffer(text, dtype=np.uint8), **LINEAR_ARRAYS)
    assert "__meta__ is not UTF-8 JSON (NaN is not allowed)" in _load_error(path)


# --------------------------------------------------------------------------- compressed architectures

def _compressed(arch: str, mlp: MLPModel) -> tuple[dict[str, np.ndarray], dict, MLPModel, float]:
    """The compressed model's arrays and meta, the float model it should approximate and how
    closely: int8 the float model itself; pruned the float model of the kept weights, exactly
    but for summation order."""
    from wsserve.compression import MLPInt8Model, MLPSparseModel, prune_masks

    if arch == "mlp-int8":
        return *MLPInt8Model.from_params(mlp.params).to_arrays(), mlp, 0.05
    masks = prune_masks([w for w, _ in mlp.params], 0.5)
    pruned = [(w * m, b) for (w, b), m in zip(mlp.params, masks)]
    return *MLPSparseModel.from_pruned(pruned, masks).to_arrays(), MLPModel(pruned), 1e-5


@pytest.mark.parametrize("arch", ["mlp-int8", "mlp-sparse"])
def test_compressed_architectures_are_served_like_mlp(tmp_path: Path, arch: str) -> None:
    mlp = _mlp((4, 8, 3))
    arrays, meta, reference, tolerance = _compressed(arch, mlp)
    version_dir = tmp_path / "m" / "2"
    version_dir.mkdir(parents=True)
    save_npz_model(version_dir, arch, arrays, {**meta, "metrics": {"heldout_accuracy": 0.5}})
    model = load_version("m", 2, version_dir, parse_config(""))
    model.warmup()
    assert model.architecture == arch and model.info.task == "classification"
    assert [s.to_json() for s in model.inputs] == [{"name": "input", "shape": [4], "dtype": "float32"}]
    x = _rng(3).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), build_npz_model(read_npz(version_dir / "model.npz")).predict(x))
    assert np.abs(model.predict(x) - reference.predict(x)).max() < tolerance  # the float model it came from
    assert model.info.metrics == {"heldout_accuracy": 0.5}


def test_compressed_arrays_are_checked_on_write_and_read(tmp_path: Path) -> None:
    arrays, meta, _, _ = _compressed("mlp-int8", _mlp((4, 8, 3)))
    arrays["w0.scale"] = -arrays["w0.scale"]
    with pytest.raises(ValueError, match="'w0.scale' must be positive"):
        save_npz_model(tmp_path, "mlp-int8", arrays, meta)
    assert list(tmp_path.iterdir()) == []
    path = _write(tmp_path / "model.npz", {"format": 1, "architecture": "mlp-int8", "meta": meta}, **arrays)
    assert "bad mlp-int8 model: mlp-int8: array 'w0.scale' must be positive" in _load_error(path)
