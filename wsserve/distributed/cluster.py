"""Thin helpers over a ``distributed.Client``: worker list, placement, one map/reduce round.

Everything here talks to the cluster; the numerics live in :mod:`.tasks`.
``distributed`` is imported only where a cluster is started (:func:`local_cluster`),
so the pure parts of :mod:`wsserve.distributed` import without it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client, Future

__all__ = [
    "DEFAULT_NO_WORKERS_TIMEOUT_S",
    "MAX_LOCAL_WORKERS",
    "REDUCE_FAN_IN",
    "NoWorkers",
    "WorkerMismatch",
    "check_workers",
    "local_cluster",
    "make_partitions",
    "map_reduce",
    "scatter_partitions",
    "worker_addresses",
]

#: Most worker processes ``--dask local`` starts.
MAX_LOCAL_WORKERS = 64


class WorkerMismatch(RuntimeError):
    """The cluster's workers cannot run wsserve's tasks (none, or another wsserve version)."""


class NoWorkers(RuntimeError):
    """The cluster had no worker for longer than the run allows, with tasks waiting."""


#: How long a round waits while the cluster has no worker at all (Dask itself waits forever:
#: a remote scheduler whose workers all left would hold ``wsserve train`` until killed).
DEFAULT_NO_WORKERS_TIMEOUT_S = 30.0
#: How often a round that is not done yet looks at the cluster's worker count.
_POLL_S = 0.5


def _worker_wsserve_version() -> str:
    """Runs on each worker: the wsserve version it imports."""
    import wsserve

    return wsserve.__version__


def worker_addresses(client: Client) -> list[str]:
    """The workers' addresses, sorted (a stable order for placement)."""
    return sorted(client.scheduler_info(n_workers=-1)["workers"])


def check_workers(client: Client) -> list[str]:
    """Return the worker addresses after checking each imports this wsserve version.

    Raises :class:`WorkerMismatch` when there is no worker, or a worker cannot import
    wsserve or has another version (its tasks are shipped by reference).
    """
    workers = worker_addresses(client)
    if not workers:
        raise WorkerMismatch("the Dask cluster has no workers")
    try:
        versions = client.run(_worker_wsserve_version)
    except ImportError as exc:
        raise WorkerMismatch(f"a Dask worker cannot import wsserve: {exc}") from None
    wrong = {addr: v for addr, v in versions.items() if v != __version__}
    if wrong:
        raise WorkerMismatch(f"Dask workers run another wsserve version than {__version__}: {wrong}")
    return workers


#: Partial results reduced by one task (or by the client at the last level).
REDUCE_FAN_IN = 8


def map_reduce(
    client: Client,
    mapper: Callable[..., Any],
    reducer: Callable[..., Any],
    parts: Sequence[Future],
    *args: Any,
    per_part: Sequence[Any] | None = None,
    no_workers_timeout_s: float = DEFAULT_NO_WORKERS_TIMEOUT_S,
) -> Any:
    """One round: ``reducer(*[mapper(*args, part[, extra]) for part in parts])``.

    The map runs on the workers, where each partition lives. ``reducer`` must be
    associative (a sum): while more than :data:`REDUCE_FAN_IN` partial results
    remain, groups of that many are reduced by tasks on the workers (a tree), and
    the client gathers the last at most ``REDUCE_FAN_IN`` and reduces them. With
    few partitions that is one task hop per round. ``per_part``, if given, adds
    one extra argument per partition. Blocks until done; a task's exception is
    raised here. Raises :class:`NoWorkers` once the cluster has had no worker for
    ``no_workers_timeout_s`` seconds while the round waits.
    """
    n = len(parts)
    columns = [[a] * n for a in args] + [list(parts)] + ([list(per_part)] if per_part is not None else [])
    partials = client.map(mapper, *columns, pure=False)  # one message for the whole map
    while len(partials) > REDUCE_FAN_IN:
        partials = [
            client.submit(reducer, *partials[i : i + REDUCE_FAN_IN], pure=False)
            for i in range(0, len(partials), REDUCE_FAN_IN)
        ]
    _wait_with_workers(client, partials, no_workers_timeout_s)
    return reducer(*client.gather(partials))


def _wait_with_workers(client: Client, futures: Sequence[Future], no_workers_timeout_s: float) -> None:
    """Wait until every future is finished (done or erred), looking every :data:`_POLL_S` s at the
    cluster: raise :class:`NoWorkers` once it has had no worker for ``no_workers_timeout_s``."""
    from distributed import wait

    without_since: float | None = None
    while True:
        try:
            wait(futures, timeout=_POLL_S)
            return
        except TimeoutError:
            pass
        now = time.monotonic()
        if worker_addresses(client):
            without_since = None
        elif without_since is None:
            without_since = now
        elif now - without_since >= no_workers_timeout_s:
            pending = sum(1 for f in futures if not f.done())
            raise NoWorkers(f"the Dask cluster has had no workers for {no_workers_timeout_s:g} s "
                            f"with {pending} task(s) waiting; start workers or check the scheduler")


def scatter_partitions(client: Client, workers: Sequence[str], items: Sequence[Any]) -> list[Future]:
    """Send partition ``i`` (built on the client) to worker ``i mod len(workers)``."""
    return [client.scatter(item, workers=[workers[i % len(workers)]]) for i, item in enumerate(items)]


def make_partitions(
    client: Client, workers: Sequence[str], builder: Callable[..., Any], args_per_part: Sequence[tuple[Any, ...]]
) -> list[Future]:
    """Build partition ``i`` *on* worker ``i mod len(workers)`` with ``builder(*args_per_part[i])``.

    The data never pass through the client; the returned futures keep them in the
    workers' memory until released. (If a worker dies, Dask rebuilds its partitions
    elsewhere from the same arguments.)
    """
    return [
        client.submit(builder, *args, workers=[workers[i % len(workers)]], allow_other_workers=True, pure=False)
        for i, args in enumerate(args_per_part)
    ]


@contextlib.contextmanager
def local_cluster(n_workers: int) -> Iterator[Client]:
    """A ``LocalCluster`` of ``n_workers`` single-threaded worker processes on 127.0.0.1,
    and a client; both closed on exit. Raises ``ValueError`` on a bad ``n_workers``."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or not 1 <= n_workers <= MAX_LOCAL_WORKERS:
        raise ValueError(f"workers must be an integer in 1..{MAX_LOCAL_WORKERS}, got {n_workers!r}")
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
        # no dashboard; the scheduler's own HTTP endpoint on a free loopback port, not 8787
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
    ) as cluster, Client(cluster) as client:
        yield client
