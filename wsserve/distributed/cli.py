"""``wsserve train MODEL --out REPOSITORY [--dask ADDRESS | --dask local] ...``

A thin adapter: flags -> :class:`TrainPlan` (validated before anything starts)
-> a Dask client -> a ``train_*_dask`` function -> :func:`.repository.write_version`.

Exit status: 0 written; 2 bad flags (nothing started, nothing written);
1 a failure while running (cannot reach the cluster, workers without wsserve,
no worker for ``--timeout`` seconds, a task killing its workers, a scattered
partition lost with its worker, no convergence, repository not writable;
nothing written).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..argtypes import bounded_int
from ..models.linear import LinearConfig
from ..models.mlp import MLPConfig
from .cluster import MAX_LOCAL_WORKERS
from .data import (
    BLOCK_ROWS,
    MAX_PARTITIONS,
    MAX_ROWS,
    MAX_SEED,
    block_ranges,
    check_seed,
    row_ranges,
)

__all__ = ["MAX_LINEAR_EPOCHS", "MAX_MLP_EPOCHS", "TrainPlan", "add_train_arguments", "plan_from_args", "run_train"]

MODELS = ("linear", "mlp")
#: Caps on ``--epochs`` (linear: the most gradient-descent epochs; mlp: epochs run).
MAX_LINEAR_EPOCHS = 1_000_000
MAX_MLP_EPOCHS = 100
#: Default rows per partition of the generated set when ``--partitions`` is not given.
DEFAULT_PARTITION_ROWS = 16 * BLOCK_ROWS
_ADDRESS_RE = re.compile(r"^(?:(?:tcp|tls)://)?(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")



def _dask_address(text: str) -> str:
    if text == "local":
        return text
    if _ADDRESS_RE.match(text):
        port = int(text.rpartition(":")[2])
        if 1 <= port <= 65535:
            return text
        raise argparse.ArgumentTypeError(f"the port must be in 1..65535, got {port} in {text!r}")
    raise argparse.ArgumentTypeError(f"expected 'local' or a scheduler address like tcp://HOST:8786, got {text!r}")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be in (0, 3600] seconds, got {text}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``wsserve train``'s arguments to ``parser`` (does not import Dask)."""
    parser.add_argument("model", choices=MODELS, help="architecture to train")
    parser.add_argument("--out", type=Path, required=True, metavar="REPOSITORY",
                        help="model repository; writes REPOSITORY/NAME/<next version>/model.npz")
    parser.add_argument("--name", default=None, help="model name in the repository (default: MODEL)")
    parser.add_argument("--dask", type=_dask_address, default="local", metavar="ADDRESS|local",
                        help="scheduler address (tcp://HOST:PORT), or 'local' to start a LocalCluster "
                             "of worker processes for this run (default)")
    parser.add_argument("--workers", type=bounded_int(1, MAX_LOCAL_WORKERS), default=None,
                        help=f"--dask local: worker processes (default: CPU count, at most {MAX_LOCAL_WORKERS}); "
                             "with an address: wait for at least this many workers")
    parser.add_argument("--partitions", type=bounded_int(1, MAX_PARTITIONS), default=None,
                        help="data partitions (default: one per worker; for --rows, also at most "
                             f"{DEFAULT_PARTITION_ROWS:,} rows each)")
    parser.add_argument("--rows", type=bounded_int(1, MAX_ROWS), default=None,
                        help=f"linear only: train on the generated data set of this many rows (1..{MAX_ROWS:,}), "
                             "made on the workers; default: the original 100 rows")
    parser.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0, help="data and init seed (default 0)")
    parser.add_argument("--epochs", type=bounded_int(1, MAX_LINEAR_EPOCHS), default=None,
                        help=f"mlp: epochs to run (default {MLPConfig().epochs}, at most {MAX_MLP_EPOCHS}); "
                             f"linear: the cap on gradient-descent epochs (default {LinearConfig().max_epochs})")
    parser.add_argument("--timeout", type=_positive_seconds, default=30.0,
                        help="seconds to reach the scheduler and its workers, and the longest the run "
                             "waits while the cluster has no worker at all (default 30)")


@dataclass(frozen=True, slots=True)
class TrainPlan:
    """A validated ``wsserve train`` invocation."""

    model: str
    out: Path
    name: str
    dask: str
    workers: int | None
    partitions: int | None
    rows: int | None
    seed: int
    linear: LinearConfig
    mlp: MLPConfig
    timeout: float

    def partitions_for(self, n_workers: int) -> int:
        """The partition count to use on ``n_workers`` workers (the flag, or the default)."""
        if self.partitions is not None:
            return self.partitions
        if self.model == "mlp":
            return min(n_workers, self.mlp.n_train, MAX_PARTITIONS)
        if self.rows is None:
            return min(n_workers, self.linear.n_train, MAX_PARTITIONS)
        n_blocks = -(-self.rows // BLOCK_ROWS)
        return min(max(n_workers, math.ceil(self.rows / DEFAULT_PARTITION_ROWS)), n_blocks, MAX_PARTITIONS)


def _check_writable(out: Path) -> None:
    """Refuse, before any training, an ``--out`` that could not be written: its nearest existing
    ancestor must be a directory this process may create entries in."""
    probe = out.absolute()
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"--out {out}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {probe} is not writable by this user")


def plan_from_args(args: argparse.Namespace) -> TrainPlan:
    """Validate the flags together; raises ``ValueError`` naming the flag. Touches nothing but
    ``stat`` and ``access`` of ``--out`` and its ancestors."""
    name = args.name if args.name is not None else args.model
    if not _NAME_RE.match(name):
        raise ValueError(f"--name must match {_NAME_RE.pattern}, got {name!r}")
    check_seed(args.seed)
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} exists and is not a directory")
    _check_writable(args.out)
    if args.rows is not None and args.model != "linear":
        raise ValueError("--rows applies to linear only (mlp trains on its own 12,000-row task)")
    if args.workers is not None and args.dask == "local" and args.workers > (os.cpu_count() or 1) * 8:
        raise ValueError(f"--workers {args.workers} is more than 8 per CPU; refusing to start that many processes")
    linear, mlp = LinearConfig(), MLPConfig()
    if args.epochs is not None:
        if args.model == "mlp":
            if args.epochs > MAX_MLP_EPOCHS:
                raise ValueError(f"--epochs for mlp must be in 1..{MAX_MLP_EPOCHS}, got {args.epochs}")
            mlp = dataclasses.replace(mlp, epochs=args.epochs)
        else:
            linear = dataclasses.replace(linear, max_epochs=args.epochs)
    if args.partitions is not None:  # check against the data now, before any cluster starts
        try:
            if args.model == "mlp":
                row_ranges(mlp.n_train, args.partitions)
            elif args.rows is None:
                row_ranges(linear.n_train, args.partitions)
            else:
                block_ranges(args.rows, args.partitions)
        except ValueError as exc:
            raise ValueError(f"--partitions: {exc}") from None
    return TrainPlan(
        model=args.model, out=args.out, name=name, dask=args.dask, workers=args.workers,
        partitions=args.partitions, rows=args.rows, seed=args.seed, linear=linear, mlp=mlp, timeout=args.timeout,
    )


def _train(plan: TrainPlan, client: Any) -> tuple[Any, dict[str, Any]]:
    from .cluster import check_workers
    from .linear import train_linear_dask, train_linear_generated_dask
    from .mlp import train_mlp_dask

    partitions = plan.partitions_for(len(check_workers(client)))
    wait = plan.timeout  # one bound: reaching the cluster's workers, and going on without any
    if plan.model == "mlp":
        model = train_mlp_dask(client, seed=plan.seed, partitions=partitions, config=plan.mlp,
                               no_workers_timeout_s=wait)
    elif plan.rows is None:
        model = train_linear_dask(client, seed=plan.seed, partitions=partitions, config=plan.linear,
                                  no_workers_timeout_s=wait)
    else:
        model = train_linear_generated_dask(client, rows=plan.rows, seed=plan.seed, partitions=partitions,
                                            config=plan.linear, no_workers_timeout_s=wait)
    m = model.info.metrics
    extra = {"trained_with": "dask", "partitions": m["partitions"], "workers": m["workers"], "seed": plan.seed,
             "dask": "local" if plan.dask == "local" else "scheduler"}
    return model, extra


def _run(plan: TrainPlan) -> int:
    from distributed import Client

    from .cluster import local_cluster
    from .repository import write_version

    if plan.dask == "local":
        n = plan.workers or min(os.cpu_count() or 1, MAX_LOCAL_WORKERS)
        with local_cluster(n) as client:
            model, extra = _train(plan, client)
    else:
        with Client(plan.dask, timeout=plan.timeout) as client:
            if plan.workers is not None:
                client.wait_for_workers(plan.workers, timeout=plan.timeout)
            model, extra = _train(plan, client)
    written = write_version(plan.out, plan.name, model, extra_meta=extra)
    m = model.info.metrics
    summary = ", ".join(f"{k}={m[k]:.6g}" if isinstance(m[k], float) else f"{k}={m[k]}" for k in (
        ("heldout_accuracy", "steps") if plan.model == "mlp" else ("weight", "bias", "epochs")))
    print(f"wrote {written.name} version {written.version} to {written.path} ({summary}, "
          f"{m['workers']} workers, {m['partitions']} partitions, {m['train_time_s']:.2f} s)")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Run ``wsserve train``; returns the exit status (see the module docstring)."""
    try:
        plan = plan_from_args(args)
    except ValueError as exc:
        print(f"wsserve train: error: {exc}", file=sys.stderr)
        return 2
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("wsserve train: error: Dask is not installed: pip install 'wsserve[dask]'", file=sys.stderr)
        return 1
    try:
        return _run(plan)
    except (OSError, TimeoutError, RuntimeError, ValueError) as exc:
        # RuntimeError covers WorkerMismatch, NoWorkers and non-convergence; OSError a scheduler
        # that cannot be reached or a repository that cannot be written.
        print(f"wsserve train: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - Dask's own failures (KilledWorker, lost scattered data...)
        print(f"wsserve train: error: the Dask run failed: {_dask_failure(exc)}", file=sys.stderr)
        return 1


def _dask_failure(exc: Exception) -> str:
    """A one-line reason for a failure Dask raised into the client (its own text names the task
    and, for ``KilledWorker``, the worker that died)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
