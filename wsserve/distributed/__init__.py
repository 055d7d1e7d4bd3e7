"""Data-parallel (MapReduce-style) training on Dask (``pip install 'wsserve[dask]'``).

The data are split into partitions that live on the workers; every step each
partition computes its gradient sums where it lives (map), the sums are added
(reduce) and the client updates the parameters. Public API:

- :func:`train_linear_dask`, :func:`train_linear_generated_dask` (:mod:`.linear`),
  :func:`train_mlp_dask` (:mod:`.mlp`): take a ``distributed.Client``, return the
  same model classes the server serves;
- :func:`write_version` (:mod:`.repository`): write one as the next version of a
  model repository;
- :func:`local_cluster` (:mod:`.cluster`); the CLI in :mod:`.cli`.

Importing this package does not import Dask; the functions that need a cluster
take a client, and :func:`local_cluster` imports ``distributed`` when called.

Dask ships tasks and results between processes with pickle: connect only to a
scheduler and workers you control (see Dask's security docs). Nothing this package
writes to disk uses pickle.
"""

from .cluster import WorkerMismatch, local_cluster
from .linear import train_linear_dask, train_linear_generated_dask
from .mlp import train_mlp_dask
from .repository import WrittenVersion, write_version

__all__ = [
    "WorkerMismatch",
    "WrittenVersion",
    "local_cluster",
    "train_linear_dask",
    "train_linear_generated_dask",
    "train_mlp_dask",
    "write_version",
]
