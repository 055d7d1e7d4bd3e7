"""wsserve.distributed without a cluster: partition layouts, the generated data set,
the map/reduce functions against the single-process numerics, the repository writer,
and ``wsserve train`` flag validation (exit 2, nothing written)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from wsserve.cli import main
from wsserve.distributed import data, tasks
from wsserve.distributed.data import (
    BLOCK_ROWS,
    BlockRange,
    block_ranges,
    linear_block,
    row_ranges,
)
from wsserve.distributed.repository import write_version
from wsserve.models.linear import LinearConfig, LinearModel, mse_and_grad, train_linear
from wsserve.models.mlp import (
    MLPConfig,
    MLPModel,
    init_params,
    loss_and_grads,
    train_mlp,
)
from wsserve.repository import newversion

# -- layouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n,p", [(100, 1), (100, 3), (100, 100), (7, 2), (65, 64)])
def test_row_ranges_cover_the_rows_contiguously(n: int, p: int) -> None:
    ranges = row_ranges(n, p)
    assert len(ranges) == p
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a < b for a, b in ranges)
    assert all(r[1] == s[0] for r, s in zip(ranges, ranges[1:]))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n,p", [(100, 0), (100, 101), (100, -1), (5000, data.MAX_PARTITIONS + 1)])
def test_row_ranges_refuse_bad_partition_counts(n: int, p: int) -> None:
    with pytest.raises(ValueError, match="partitions"):
        row_ranges(n, p)


def test_block_ranges_use_whole_blocks_and_count_every_row() -> None:
    rows = 5 * BLOCK_ROWS + 17  # 6 blocks, the last one short
    for p in (1, 2, 4, 6):
        ranges = block_ranges(rows, p)
        assert ranges[0].first == 0 and ranges[-1].stop == 6
        assert sum(r.n_rows for r in ranges) == rows
    with pytest.raises(ValueError, match="blocks"):
        block_ranges(rows, 7)
    for bad in (0, data.MAX_ROWS + 1, True, 1.5):
        with pytest.raises(ValueError, match="rows"):
            block_ranges(bad, 1)  # type: ignore[arg-type]


def test_generated_rows_do_not_depend_on_the_partitioning() -> None:
    rows = 3 * BLOCK_ROWS - 5
    whole = data.linear_partition(7, BlockRange(0, 3, rows))
    assert whole[0].shape == (rows, 1) and whole[1].shape == (rows, 1)
    for p in (2, 3):
        parts = [data.linear_partition(7, r) for r in block_ranges(rows, p)]
        np.testing.assert_array_equal(np.concatenate([x for x, _ in parts]), whole[0])
        np.testing.assert_array_equal(np.concatenate([y for _, y in parts]), whole[1])
    # block j comes from (seed, j): another seed gives other rows; the same seed the same rows
    np.testing.assert_array_equal(linear_block(7, 1, rows)[0], whole[0][BLOCK_ROWS : 2 * BLOCK_ROWS])
    assert not np.array_equal(linear_block(8, 1, rows)[0], linear_block(7, 1, rows)[0])
    with pytest.raises(ValueError, match="past the end"):
        linear_block(7, 3, rows)


def test_generated_rows_have_the_original_distribution() -> None:
    x, y = data.linear_partition(0, BlockRange(0, 4, 4 * BLOCK_ROWS))
    noise = y - 3 * x
    assert x.min() >= 0 and x.max() < 1 and noise.min() >= 0 and noise.max() < 1
    assert abs(x.mean() - 0.5) < 0.01 and abs(noise.mean() - 0.5) < 0.01
    # and they are not the 100-row original
    assert not np.allclose(x[:100], np.random.default_rng(0).uniform(0, 1, (100, 1)))


@pytest.mark.parametrize("seed", [-1, 2**63, "1", True])
def test_seeds_are_bounded(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        data.check_seed(seed)  # type: ignore[arg-type]


# -- map and reduce functions against the single-process numerics ------------------------------


def test_linear_gradient_sums_reduce_to_the_mean_gradient() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 1, (100, 1)), rng.uniform(0, 4, (100, 1))
    mse, dw, db = mse_and_grad(1.3, -0.2, x, y)
    for p in (1, 2, 7):
        partials = [tasks.linear_gradient_sums(1.3, -0.2, (x[a:b], y[a:b])) for a, b in row_ranges(100, p)]
        s = tasks.sum_arrays(*partials)
        assert s[3] == 100
        assert 2 * s[0] / 100 == pytest.approx(dw, rel=1e-13)
        assert 2 * s[1] / 100 == pytest.approx(db, rel=1e-13)
        assert s[2] / 100 == pytest.approx(mse, rel=1e-13)


def test_normal_sums_give_the_least_squares_line() -> None:
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (500, 1))
    y = 3 * x + rng.uniform(0, 1, (500, 1))
    n, sx, sxx, sy, sxy = tasks.sum_arrays(*(tasks.linear_normal_sums((x[a:b], y[a:b])) for a, b in row_ranges(500, 3)))
    w, b = np.linalg.solve([[sxx, sx], [sx, n]], [sxy, sy])
    (lw, lb), *_ = np.linalg.lstsq(np.hstack([x, np.ones_like(x)]), y[:, 0], rcond=None)
    assert (w, b) == pytest.approx((lw, lb), abs=1e-12)


def test_mlp_gradient_sums_reduce_to_the_minibatch_gradient() -> None:
    rng = np.random.default_rng(5)
    params = init_params(rng, [6, 8, 3], dtype=np.float64)
    x, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    idx = rng.permutation(40)[:16]
    loss, grads = loss_and_grads(params, x[idx], y[idx])
    ranges = row_ranges(40, 3)
    from wsserve.distributed.mlp import split_minibatch

    local = split_minibatch(idx, ranges)
    assert sorted(np.concatenate([li + a for li, (a, _) in zip(local, ranges)])) == sorted(idx)
    partials = [tasks.mlp_gradient_sums(params, (x[a:b], y[a:b]), li) for li, (a, b) in zip(local, ranges) if len(li)]
    rows, loss_sum, sums = tasks.sum_gradients(*partials)
    assert rows == 16
    assert loss_sum / rows == pytest.approx(loss, rel=1e-12)
    for (gw, gb), (sw, sb) in zip(grads, sums):
        np.testing.assert_allclose(sw / rows, gw, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(sb / rows, gb, rtol=1e-10, atol=1e-14)


# -- the repository writer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_model() -> LinearModel:
    return train_linear(seed=0)


@pytest.fixture(scope="module")
def small_mlp() -> MLPModel:
    return train_mlp(seed=0, config=MLPConfig(n_train=512, n_heldout=128, hidden=(16,), epochs=1))


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path / "model.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = arrays.pop("__meta__")
    assert meta.dtype == np.uint8 and meta.ndim == 1
    return arrays, json.loads(meta.tobytes().decode("utf-8"))


def test_write_version_format_and_round_trip(tmp_path: Path, linear_model: LinearModel, small_mlp: MLPModel) -> None:
    w = write_version(tmp_path, "linear", linear_model, extra_meta={"trained_with": "dask", "partitions": 2, "workers": 2})
    assert (w.version, w.path) == (1, tmp_path / "linear" / "1")
    assert sorted(os.listdir(w.path)) == ["model.npz"]
    arrays, header = _read(w.path)
    assert header["format"] == 1 and header["architecture"] == "linear"
    assert header["meta"]["trained_with"] == "dask" and header["meta"]["partitions"] == 2
    assert header["meta"]["metrics"]["epochs"] == linear_model.info.metrics["epochs"]
    back = LinearModel.from_arrays(arrays, header["meta"])
    assert (back.weight, back.bias) == (linear_model.weight, linear_model.bias)

    w = write_version(tmp_path, "clf", small_mlp, extra_meta={"trained_with": "dask"})
    arrays, header = _read(w.path)
    assert header["architecture"] == "mlp"
    back = MLPModel.from_arrays(arrays, header["meta"])
    x = np.random.default_rng(0).standard_normal((5, 32))
    np.testing.assert_array_equal(back.predict(x), small_mlp.predict(x))
    # readable by a server running as another user
    assert stat.S_IMODE(os.stat(w.path / "model.npz").st_mode) & 0o044 == 0o044
    assert stat.S_IMODE(os.stat(w.path).st_mode) & 0o055 == 0o055


def test_write_version_numbers_after_the_highest_integer(tmp_path: Path, linear_model: LinearModel) -> None:
    assert write_version(tmp_path, "m", linear_model).version == 1
    assert write_version(tmp_path, "m", linear_model).version == 2
    (tmp_path / "m" / "7").mkdir()
    (tmp_path / "m" / "latest").mkdir()      # not an integer: ignored
    (tmp_path / "m" / "099").mkdir()         # not a canonical integer: ignored
    (tmp_path / "m" / "8").write_text("x")   # a stray file takes its number
    assert write_version(tmp_path, "m", linear_model).version == 9
    assert not [p for p in os.listdir(tmp_path / "m") if p.startswith(".")]


def test_concurrent_writers_get_distinct_complete_versions(tmp_path: Path, linear_model: LinearModel) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            results.append(write_version(tmp_path, "m", linear_model).version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == list(range(1, 9))
    for v in results:
        assert _read(tmp_path / "m" / str(v))[1]["architecture"] == "linear"


def test_a_failed_write_leaves_no_version(tmp_path: Path, linear_model: LinearModel, monkeypatch) -> None:
    def refuse(src, dst):  # the filesystem refusing the final rename (a true boundary)
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(newversion.os, "rename", refuse)
    with pytest.raises(PermissionError):
        write_version(tmp_path, "m", linear_model)
    assert os.listdir(tmp_path / "m") == []


def test_write_version_refuses_bad_input(tmp_path: Path, linear_model: LinearModel) -> None:
    for name in ("", "../x", "a/b", ".hidden", "x" * 65):
        with pytest.raises(ValueError, match="name"):
            write_version(tmp_path, name, linear_model)
    with pytest.raises(ValueError):
        write_version(tmp_path, "m", linear_model, extra_meta={"loss": float("nan")})
    with pytest.raises(TypeError, match="linear and mlp only"):
        write_version(tmp_path, "m", object())
    assert os.listdir(tmp_path) == []


# -- wsserve train: bad flags exit 2 and write nothing -----------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["linear", "--partitions", "0"], "--partitions"),
        (["linear", "--partitions", "101"], "--partitions: partitions (101) must not exceed the number of rows"),
        (["linear", "--partitions", "1025"], "--partitions"),
        (["linear", "--rows", "1000", "--partitions", "2"], "--partitions: partitions (2) must not exceed"),
        (["linear", "--rows", "0"], "--rows"),
        (["linear", "--rows", "100000001"], "--rows"),
        (["linear", "--rows", "1e9"], "--rows"),
        (["mlp", "--rows", "1000"], "--rows applies to linear only"),
        (["mlp", "--epochs", "101"], "--epochs for mlp"),
        (["linear", "--epochs", "0"], "--epochs"),
        (["linear", "--seed", "-1"], "--seed"),
        (["linear", "--workers", "0"], "--workers"),
        (["linear", "--workers", "65"], "--workers"),
        (["linear", "--dask", "not an address"], "--dask"),
        (["linear", "--dask", "tcp://host"], "--dask"),
        # an out-of-range port was accepted and only failed when connecting (exit 1 after --timeout)
        (["linear", "--dask", "tcp://127.0.0.1:99999", "--timeout", "1"], "the port must be in 1..65535, got 99999"),
        (["linear", "--dask", "tcp://127.0.0.1:0", "--timeout", "1"], "the port must be in 1..65535, got 0"),
        (["linear", "--timeout", "0"], "--timeout"),
        (["linear", "--name", "../up"], "--name"),
        (["cnn"], "invalid choice"),
    ],
)
def test_bad_flags_exit_2_and_write_nothing(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    repo = tmp_path / "repo"
    model, rest = argv[0], argv[1:]
    with pytest.raises(SystemExit) as exc_info:
        raise SystemExit(main(["train", model, "--out", str(repo), *rest]))
    assert exc_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not repo.exists()


def test_out_must_be_a_directory(tmp_path: Path, capsys) -> None:
    target = tmp_path / "file"
    target.write_text("keep me")
    assert main(["train", "linear", "--out", str(target)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_out_under_a_file_is_refused_before_training(tmp_path: Path, capsys) -> None:
    """--out below a regular file (its parent cannot be made) was only found when writing the
    version, after the whole training run; now exit 2 before any cluster starts."""
    (tmp_path / "file").write_text("keep me")
    assert main(["train", "linear", "--out", str(tmp_path / "file" / "repo"), "--dask", "tcp://127.0.0.1:9"]) == 2
    assert f"--out {tmp_path / 'file' / 'repo'}: {tmp_path / 'file'} is not a directory" in capsys.readouterr().err


def test_default_partitions() -> None:
    from wsserve.distributed.cli import DEFAULT_PARTITION_ROWS, TrainPlan

    plan = TrainPlan(model="linear", out=Path("r"), name="linear", dask="local", workers=None, partitions=None,
                     rows=None, seed=0, linear=LinearConfig(), mlp=MLPConfig(), timeout=1.0)
    assert plan.partitions_for(2) == 2
    assert plan.partitions_for(500) == 100  # one row each at most
    assert dataclasses.replace(plan, rows=10**7).partitions_for(2) == -(-10**7 // DEFAULT_PARTITION_ROWS)
    assert dataclasses.replace(plan, rows=1000).partitions_for(4) == 1  # one block
    assert dataclasses.replace(plan, partitions=3).partitions_for(8) == 3


def test_importing_the_package_and_the_cli_does_not_import_dask() -> None:
    import subprocess
    import sys

    code = ("import sys, wsserve.distributed, wsserve.cli; wsserve.cli.build_parser(); "
            "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
