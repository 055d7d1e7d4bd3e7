"""Tests for wsserve.modelstore: round trip, keys, corruption, no pickle."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from wsserve import modelstore
from wsserve.modelstore import ModelFileError, config_key, load, model_path, save

CONFIG = {"seed": 0, "hidden": [256, 256], "lr": 0.01, "epochs": 20}
META = {"metrics": {"acc": 0.93}, "epochs": 20, "note": "ünïcode"}


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "w1": rng.standard_normal((32, 256)).astype(np.float32),
        "b1": np.zeros(256, np.float32),
        "count": np.arange(5, dtype=np.int64),
    }


def test_public_api() -> None:
    assert set(modelstore.__all__) == {
        "FORMAT_VERSION", "ModelFileError", "default_cache_dir", "config_key",
        "model_path", "load", "save",
    }
    assert issubclass(ModelFileError, ValueError)


def test_round_trip(tmp_path: Path) -> None:
    arrays = _arrays()
    path = save(tmp_path, "mlp", CONFIG, arrays, META)
    assert path == model_path(tmp_path, "mlp", CONFIG)
    assert path.is_file()
    got = load(tmp_path, "mlp", CONFIG)
    assert got is not None
    got_arrays, got_meta = got
    assert got_meta == META
    assert set(got_arrays) == set(arrays)
    for k, v in arrays.items():
        assert got_arrays[k].dtype == v.dtype
        np.testing.assert_array_equal(got_arrays[k], v)
    # no temporary files left behind
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert load(tmp_path, "mlp", CONFIG) is None
    assert load(tmp_path / "does-not-exist", "mlp", CONFIG) is None


def test_save_creates_dir_and_overwrites(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    save(d, "linear", CONFIG, {"w": np.ones(1)}, {"v": 1})
    save(d, "linear", CONFIG, {"w": np.full(1, 2.0)}, {"v": 2})
    got = load(d, "linear", CONFIG)
    assert got is not None
    assert got[0]["w"][0] == 2.0 and got[1] == {"v": 2}


def test_key_changes_with_config_and_name() -> None:
    k = config_key("mlp", CONFIG)
    assert len(k) == 16 and int(k, 16) >= 0
    assert config_key("mlp", dict(CONFIG)) == k
    # key order does not matter
    assert config_key("mlp", dict(reversed(list(CONFIG.items())))) == k
    assert config_key("mlp", {**CONFIG, "seed": 1}) != k
    assert config_key("mlp", {**CONFIG, "lr": 0.010000001}) != k
    assert config_key("mlp", {**CONFIG, "extra": None}) != k
    assert config_key("linear", CONFIG) != k


def test_key_includes_format_version(monkeypatch: pytest.MonkeyPatch) -> None:
    k = config_key("mlp", CONFIG)
    monkeypatch.setattr(modelstore, "FORMAT_VERSION", modelstore.FORMAT_VERSION + 1)
    assert config_key("mlp", CONFIG) != k


def test_different_config_misses(tmp_path: Path) -> None:
    save(tmp_path, "mlp", CONFIG, _arrays(), META)
    assert load(tmp_path, "mlp", {**CONFIG, "seed": 1}) is None


def test_bad_config_and_names_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        config_key("mlp", {"lr": float("nan")})
    with pytest.raises(TypeError):
        config_key("mlp", {"f": object()})
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            config_key(bad, CONFIG)
    with pytest.raises(ValueError):
        save(tmp_path, "mlp", CONFIG, {"__meta__": np.ones(1)}, {})
    with pytest.raises(TypeError):
        save(tmp_path, "mlp", CONFIG, {"w": np.array([object()])}, {})
    with pytest.raises(TypeError):
        save(tmp_path, "mlp", CONFIG, {"w": np.ones(1)}, {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WSSERVE_CACHE_DIR", str(tmp_path))
    assert modelstore.default_cache_dir() == tmp_path
    monkeypatch.delenv("WSSERVE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert modelstore.default_cache_dir() == tmp_path / "home" / ".cache" / "wsserve"


def _assert_corrupt(tmp_path: Path, path: Path, config: dict = CONFIG) -> ModelFileError:
    with pytest.raises(ModelFileError) as ei:
        load(tmp_path, "mlp", config)
    assert str(path) in str(ei.value)
    assert ei.value.path == path
    return ei.value


def test_garbage_file(tmp_path: Path) -> None:
    path = model_path(tmp_path, "mlp", CONFIG)
    path.write_bytes(b"this is not an npz file at all")
    _assert_corrupt(tmp_path, path)


def test_empty_file(tmp_path: Path) -> None:
    path = model_path(tmp_path, "mlp", CONFIG)
    path.write_bytes(b"")
    _assert_corrupt(tmp_path, path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    path = save(tmp_path, "mlp", CONFIG, _arrays(), META)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    _assert_corrupt(tmp_path, path)


def test_flipped_bytes_fail_crc(tmp_path: Path) -> None:
    path = save(tmp_path, "mlp", CONFIG, _arrays(), META)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2  # inside w1's payload
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    path.write_bytes(bytes(data))
    _assert_corrupt(tmp_path, path)


def test_plain_npy_is_rejected(tmp_path: Path) -> None:
    path = model_path(tmp_path, "mlp", CONFIG)
    with open(path, "wb") as f:
        np.save(f, np.ones(3))
    err = _assert_corrupt(tmp_path, path)
    assert "npz" in err.reason


def test_pickle_is_never_loaded(tmp_path: Path) -> None:
    path = model_path(tmp_path, "mlp", CONFIG)
    # An npz whose members are object arrays (pickled) must not be unpickled.
    with open(path, "wb") as f:
        np.savez(f, allow_pickle=True, __meta__=np.array([{"evil": 1}], dtype=object),
                 w=np.array([object()], dtype=object))
    _assert_corrupt(tmp_path, path)


@pytest.mark.parametrize("shape", [(1 << 40,), (1 << 20, 1 << 20)], ids=["8TiB", "8TiB-2d"])
def test_a_huge_declared_shape_is_refused_before_numpy_allocates(tmp_path: Path, shape: tuple[int, ...]) -> None:
    # a member whose .npy header declares 8 TiB (with 16 bytes of data) used to raise MemoryError
    # from np.load, which escaped load() and the trainer: the server did not start
    path = save(tmp_path, "mlp", CONFIG, {"w": np.ones(2)}, META)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": shape})
    members["w.npy"] = head.getvalue() + bytes(16)
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    err = _assert_corrupt(tmp_path, path)
    assert err.reason == f"arrays need more than {1 << 32} bytes ('w.npy' has shape {list(shape)})"


def test_missing_header(tmp_path: Path) -> None:
    path = model_path(tmp_path, "mlp", CONFIG)
    with open(path, "wb") as f:
        np.savez(f, w=np.ones(2))
    assert "__meta__" in _assert_corrupt(tmp_path, path).reason


def _rewrite(path: Path, drop: str | None = None, add: dict | None = None,
             header_edit=None) -> None:
    """Rewrite a saved file's members (an attacker/bit-rot model)."""
    import json

    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    if drop:
        members.pop(drop)
    members.update(add or {})
    if header_edit:
        header = json.loads(members["__meta__"].tobytes())
        header_edit(header)
        members["__meta__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    os.remove(path)
    with open(path, "wb") as f:
        np.savez(f, **members)


def test_missing_array(tmp_path: Path) -> None:
    path = save(tmp_path, "mlp", CONFIG, _arrays(), META)
    _rewrite(path, drop="b1")
    assert "b1" in _assert_corrupt(tmp_path, path).reason


def test_extra_array(tmp_path: Path) -> None:
    path = save(tmp_path, "mlp", CONFIG, _arrays(), META)
    _rewrite(path, add={"zz": np.ones(1)})
    _assert_corrupt(tmp_path, path)


@pytest.mark.parametrize(
    "edit, word",
    [
        (lambda h: h.update(key="0" * 16), "key"),
        (lambda h: h.update(name="linear"), "linear"),
        (lambda h: h.update(format=999), "format"),
        (lambda h: h["config"].update(seed=7), "config"),
        (lambda h: h.update(meta=[1, 2]), "meta"),
        (lambda h: h.pop("arrays"), "arrays"),
        # these escaped as TypeError / ValueError (the server's start-up failed instead of retraining)
        (lambda h: h.update(arrays=[1, "b1", "count", "w1"]), "arrays"),
        (lambda h: h.update(arrays="b1"), "arrays"),
        (lambda h: h["config"].update(lr=float("nan")), "config"),
        (lambda h: h.update(config={"lr": [1e400]}), "config"),
    ],
)
def test_mismatched_header(tmp_path: Path, edit, word: str) -> None:
    path = save(tmp_path, "mlp", CONFIG, _arrays(), META)
    _rewrite(path, header_edit=edit)
    assert word in _assert_corrupt(tmp_path, path).reason


def test_header_not_json(tmp_path: Path) -> None:
    path = save(tmp_path, "mlp", CONFIG, _arrays(), META)
    _rewrite(path, add={"__meta__": np.frombuffer(b"{not json", np.uint8)})
    _assert_corrupt(tmp_path, path)


@pytest.mark.parametrize("text", [b'{"format": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                  b'{"format": 1, "config": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"],
                         ids=["header", "config"])
def test_a_header_nested_too_deeply_is_corrupt(tmp_path: Path, text: bytes) -> None:
    """json recurses once per level: RecursionError escaped the loader (not a ModelFileError)."""
    path = save(tmp_path, "mlp", CONFIG, _arrays(), META)
    _rewrite(path, add={"__meta__": np.frombuffer(text, np.uint8)})
    assert "nested too deeply" in _assert_corrupt(tmp_path, path).reason


async def test_the_server_retrains_a_default_model_whose_cache_file_has_a_bad_header(tmp_path: Path) -> None:
    """A cache file whose header lists arrays that are not names made the server's start fail
    (TypeError); it is a corrupt file: logged, retrained, served."""
    from tests.support import Conn, ServerProcess

    with ServerProcess("--models", "linear", cache_dir=tmp_path):
        pass  # trains linear and caches its weights
    (path,) = tmp_path.glob("linear-*.npz")
    _rewrite(path, header_edit=lambda h: h.update(arrays=[1, "bias", "weight"]))
    with ServerProcess("--models", "linear", cache_dir=tmp_path) as srv:
        conn = await Conn.open(srv.url)
        await conn.send({"type": "predict", "id": 1, "model": "linear", "inputs": [[0.5]]})
        _, reply = await conn.until_terminal(1)
        await conn.close()
        log = srv.stderr_text()
    assert reply["type"] == "result", reply
    assert f"ignoring corrupt cache file for linear, retraining: model file '{path}': arrays " in log, log[-3000:]


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_a_member_compressed_with_bzip2_or_lzma_is_refused(tmp_path: Path, method: int) -> None:
    """zipfile inflates bzip2 and lzma data without an output bound per read: a cache file of 1.3 KB
    whose member declares 136 bytes made load() allocate 2 GB before the CRC check (and load).
    np.savez writes stored or deflated members only; others are refused before any is read."""
    path = save(tmp_path, "mlp", CONFIG, _arrays(), META)
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    os.remove(path)
    with zipfile.ZipFile(path, "w") as zf:
        for name, array in members.items():
            buf = io.BytesIO()
            np.save(buf, array)
            zf.writestr(f"{name}.npy", buf.getvalue(), compress_type=method if name == "w1" else zipfile.ZIP_STORED)
    err = _assert_corrupt(tmp_path, path)
    assert "member 'w1.npy' is compressed with" in err.reason and "only stored or deflated" in err.reason, err.reason


def test_file_is_a_zip_without_pickle(tmp_path: Path) -> None:
    path = save(tmp_path, "mlp", CONFIG, _arrays(), META)
    with zipfile.ZipFile(path) as zf:
        names = sorted(zf.namelist())
    assert names == sorted(["__meta__.npy", "w1.npy", "b1.npy", "count.npy"])
    # loading with pickle disabled works, i.e. nothing in it needs pickle
    with np.load(path, allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


def test_failed_save_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    path = save(tmp_path, "mlp", CONFIG, _arrays(), META)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(modelstore.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, "mlp", CONFIG, {"w": np.ones(1)}, {})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
