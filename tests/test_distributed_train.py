"""Data-parallel training on a real Dask ``LocalCluster`` (2 worker processes).

Needs ``pip install -e '.[dask]'``; skipped without it, except under CI (``CI`` set),
where a missing Dask is an error. One cluster for the module; a fit costs ~300
map/reduce rounds, so the file runs a handful of fits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CI"):
    import distributed
else:
    distributed = pytest.importorskip("distributed")

from wsserve.cli import main
from wsserve.distributed import (
    train_linear_dask,
    train_linear_generated_dask,
    train_mlp_dask,
)
from wsserve.distributed.cluster import (
    check_workers,
    make_partitions,
    map_reduce,
    scatter_partitions,
)
from wsserve.distributed.data import (
    BLOCK_ROWS,
    block_ranges,
    linear_block,
    linear_heldout,
    linear_partition,
    row_ranges,
)
from wsserve.distributed.tasks import (
    linear_gradient_sums,
    linear_normal_sums,
    sum_arrays,
)
from wsserve.models.linear import (
    LinearConfig,
    LinearModel,
    make_linear_data,
    mse_and_grad,
    train_linear,
)
from wsserve.models.mlp import MLPModel, make_mlp_data, train_mlp


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
    ) as cluster, distributed.Client(cluster) as c:
        yield c


def test_the_cluster_has_two_wsserve_workers(client) -> None:
    assert len(check_workers(client)) == 2


@pytest.mark.parametrize("partitions", [3])  # uneven over 2 workers; other counts: the round test below
def test_linear_matches_single_process_training(client, partitions: int) -> None:
    ref = train_linear(seed=0)
    model = train_linear_dask(client, seed=0, partitions=partitions)
    assert isinstance(model, LinearModel)
    assert abs(model.weight - ref.weight) < 1e-9
    assert abs(model.bias - ref.bias) < 1e-9
    m, r = model.info.metrics, ref.info.metrics
    assert abs(m["epochs"] - r["epochs"]) <= 1
    assert (m["trained_with"], m["partitions"], m["workers"], m["data"]) == ("dask", partitions, 2, "original")
    # the metrics describe the returned weights on the original data
    rng = np.random.default_rng(0)
    x, y = make_linear_data(rng, 100)
    x_held, y_held = make_linear_data(rng, 1000)
    assert m["train_mse"] == pytest.approx(mse_and_grad(model.weight, model.bias, x, y)[0], rel=1e-12)
    assert m["heldout_mse"] == pytest.approx(mse_and_grad(model.weight, model.bias, x_held, y_held)[0], rel=1e-12)
    assert m["lstsq_weight"] == pytest.approx(r["lstsq_weight"], abs=1e-12)
    assert m["lstsq_bias"] == pytest.approx(r["lstsq_bias"], abs=1e-12)
    assert m["max_abs_diff_vs_lstsq"] == pytest.approx(max(abs(model.weight - m["lstsq_weight"]),
                                                           abs(model.bias - m["lstsq_bias"])))
    np.testing.assert_allclose(model.predict(x), ref.predict(x), rtol=0, atol=1e-9)


def test_one_map_reduce_round_does_not_depend_on_the_partitioning(client) -> None:
    workers = check_workers(client)
    x, y = make_linear_data(np.random.default_rng(0), 100)
    for w, b in ((0.0, 0.0), (2.5, 0.7), (-1.0, 3.0)):
        mse, dw, db = mse_and_grad(w, b, x, y)
        for p in (1, 2, 5, 10, 100):
            parts = scatter_partitions(client, workers, [(x[a:c], y[a:c]) for a, c in row_ranges(100, p)])
            s = map_reduce(client, linear_gradient_sums, sum_arrays, parts, w, b)  # 100 partitions: a reduce tree
            assert s[3] == 100
            assert (2 * s[0] / 100, 2 * s[1] / 100, s[2] / 100) == pytest.approx((dw, db, mse), rel=1e-13, abs=1e-15)


def test_mlp_reaches_the_single_process_accuracy(client) -> None:
    ref = train_mlp(seed=0)
    model = train_mlp_dask(client, seed=0, partitions=2)
    assert isinstance(model, MLPModel)
    m = model.info.metrics
    assert abs(m["heldout_accuracy"] - ref.info.metrics["heldout_accuracy"]) <= 0.01
    assert m["steps"] == ref.info.metrics["steps"]
    (_, _), (x_held, y_held) = make_mlp_data(0)
    assert m["heldout_accuracy"] == pytest.approx(float((model.predict_labels(x_held) == y_held).mean()), abs=1e-9)
    assert (m["trained_with"], m["partitions"], m["workers"]) == ("dask", 2, 2)


def test_generated_set_is_made_on_the_workers_and_partitioning_invariant(client) -> None:
    rows = 2 * BLOCK_ROWS + 1000  # three blocks, the last one short
    workers = check_workers(client)
    sums = []
    for p in (1, 2, 3):
        parts = make_partitions(client, workers, linear_partition, [(5, r) for r in block_ranges(rows, p)])
        sums.append(map_reduce(client, linear_normal_sums, sum_arrays, parts))
        if p == 3:  # built where they were placed, never on the client
            held = client.who_has(parts)
            assert {w for addrs in held.values() for w in addrs} == set(workers)
    assert sums[0][0] == rows
    for s in sums[1:]:
        np.testing.assert_allclose(s, sums[0], rtol=1e-13)


def test_generated_set_fit_matches_single_process_descent(client) -> None:
    rows = 2 * BLOCK_ROWS + 1000
    model = train_linear_generated_dask(client, rows=rows, seed=5, partitions=2)
    # the reference: the same blocks made here, the single-process loop of train_linear
    x = np.concatenate([linear_block(5, j, rows)[0] for j in range(3)])
    y = np.concatenate([linear_block(5, j, rows)[1] for j in range(3)])
    cfg = LinearConfig()
    w = b = 0.0
    for epochs in range(cfg.max_epochs):  # noqa: B007
        _, dw, db = mse_and_grad(w, b, x, y)
        if max(abs(dw), abs(db)) < cfg.tol:
            break
        w, b = w - cfg.learning_rate * dw, b - cfg.learning_rate * db
    assert abs(model.weight - w) < 1e-9 and abs(model.bias - b) < 1e-9
    m = model.info.metrics
    assert abs(m["epochs"] - epochs) <= 1
    (lw, lb), *_ = np.linalg.lstsq(np.hstack([x, np.ones_like(x)]), y[:, 0], rcond=None)
    assert (m["lstsq_weight"], m["lstsq_bias"]) == pytest.approx((lw, lb), abs=1e-10)
    assert m["max_abs_diff_vs_lstsq"] < 1e-8  # converged to this sample's least-squares line
    assert abs(model.weight - 3) < 0.02 and abs(model.bias - 0.5) < 0.02  # near the true line
    assert m["heldout_mse"] == pytest.approx(mse_and_grad(model.weight, model.bias, *linear_heldout(5, 1000))[0])
    assert (m["n_train"], m["data"], m["partitions"]) == (rows, "generated", 2)


def _read(version_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(version_dir / "model.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(arrays.pop("__meta__").tobytes())


def test_cli_trains_on_a_scheduler_address_and_writes_versions(client, tmp_path: Path, capsys) -> None:
    repo = tmp_path / "repo"
    address = client.scheduler.address
    argv = ["train", "mlp", "--out", str(repo), "--dask", address, "--workers", "2", "--epochs", "1", "--seed", "3"]
    assert main(argv) == 0
    assert "wrote mlp version 1" in capsys.readouterr().out
    assert main([*argv, "--partitions", "3"]) == 0
    assert sorted(os.listdir(repo / "mlp")) == ["1", "2"]
    arrays, header = _read(repo / "mlp" / "2")
    assert header["format"] == 1 and header["architecture"] == "mlp"
    meta = header["meta"]
    assert (meta["trained_with"], meta["partitions"], meta["workers"], meta["seed"]) == ("dask", 3, 2, 3)
    model = MLPModel.from_arrays(arrays, meta)
    (_, _), (x_held, y_held) = make_mlp_data(3)
    assert meta["metrics"]["heldout_accuracy"] == pytest.approx(float((model.predict_labels(x_held) == y_held).mean()))
    assert meta["metrics"]["heldout_accuracy"] > 0.5  # one epoch already learns the task (chance 0.1)


def test_cli_unreachable_scheduler_exits_1_and_writes_nothing(tmp_path: Path, capsys) -> None:
    repo = tmp_path / "repo"
    assert main(["train", "linear", "--out", str(repo), "--dask", "tcp://127.0.0.1:9", "--timeout", "2"]) == 1
    assert "wsserve train: error" in capsys.readouterr().err
    assert not repo.exists()


def test_a_round_on_a_cluster_without_workers_ends_with_no_workers() -> None:
    """Dask waits forever for a worker: a remote scheduler whose workers all left held a round
    (and ``wsserve train``) until killed. Now a round raises NoWorkers after the bound."""
    from distributed import Client, LocalCluster

    from wsserve.distributed.cluster import NoWorkers, map_reduce
    from wsserve.distributed.tasks import sum_arrays

    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        with pytest.raises(NoWorkers, match=r"no workers for 1 s with 1 task\(s\) waiting"):
            map_reduce(client, np.add, sum_arrays, [np.ones(2)], np.ones(2), no_workers_timeout_s=1.0)


def test_cli_a_task_that_kills_its_worker_exits_1_naming_it(tmp_path: Path, capsys, monkeypatch) -> None:
    """A task that kills every worker it runs on ends in Dask's KilledWorker, which is none of
    OSError/RuntimeError/ValueError: it was a traceback; now exit 1 with Dask's reason."""
    import dask

    from wsserve.distributed import cli

    def deadly(plan, client):  # the real cluster of the command; a task that kills its process
        return client.submit(os._exit, 3, pure=False).result()

    monkeypatch.setattr(cli, "_train", deadly)
    repo = tmp_path / "repo"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        assert main(["train", "linear", "--out", str(repo), "--dask", "local", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "wsserve train: error: the Dask run failed: KilledWorker: Attempted to run task" in err
    assert "Traceback" not in err and not repo.exists()


def test_python_m_wsserve_train_with_a_local_cluster(tmp_path: Path) -> None:
    """The real command: starts and closes its own LocalCluster (spawned worker processes)."""
    repo = tmp_path / "repo"
    proc = subprocess.run(
        [sys.executable, "-m", "wsserve", "train", "mlp", "--out", str(repo), "--dask", "local", "--workers", "1",
         "--epochs", "1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote mlp version 1" in proc.stdout
    _, header = _read(repo / "mlp" / "1")
    assert (header["meta"]["workers"], header["meta"]["partitions"], header["meta"]["dask"]) == (1, 1, "local")
