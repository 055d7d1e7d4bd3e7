"""Experiment: the serving core compiled by Cython as it is (no type declarations), to compare with
the interpreted core in ``bench_core``.

Compiles the modules a single-row predict runs through (the profile's top ten by own time) into
extension modules placed beside their sources in a *scratch checkout* given as the argument (never
this one: Python imports an extension module before the ``.py`` of the same name, so the compiled
copies would shadow the sources).  Then::

    git worktree add --detach /tmp/wsserve-cython HEAD
    pip install cython
    python benchmarks/cython_core.py /tmp/wsserve-cython
    OPENBLAS_NUM_THREADS=1 python -m benchmarks.bench_core --driver picows --model linear \\
        -c 64 -n 30000 --rounds 7 --base /tmp/wsserve-cython

``annotation_typing`` is off: the annotations are for readers and type checkers, and Cython would
otherwise turn ``x: int`` into an exact-type check.  Needs Cython and a C compiler; takes ~3 min on
2 cores.  Not part of the build: the result (BENCHMARKS.md, "Why the transport misses") is that the
compiled core is no faster on Python 3.11.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODULES = (
    "wsserve/protocol.py", "wsserve/connection.py", "wsserve/worker.py", "wsserve/transport/picows_conn.py",
    "wsserve/jobs.py", "wsserve/metrics.py", "wsserve/batching.py", "wsserve/pool.py", "wsserve/admission.py",
    "wsserve/transport/flush.py",
)

SETUP = """
from setuptools import setup
from Cython.Build import cythonize
setup(ext_modules=cythonize({modules!r}, quiet=True, nthreads=2,
      compiler_directives={{"language_level": 3, "annotation_typing": False, "binding": True}}))
"""


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0]).resolve()
    if root == Path(__file__).resolve().parent.parent:
        print("cython_core.py: give a scratch checkout, not this one (its compiled modules would shadow the sources)",
              file=sys.stderr)
        return 2
    missing = [m for m in MODULES if not (root / m).is_file()]
    if missing:
        print(f"cython_core.py: {root} is not a wsserve checkout (no {missing[0]})", file=sys.stderr)
        return 2
    proc = subprocess.run([sys.executable, "-c", SETUP.format(modules=list(MODULES)), "build_ext", "--inplace", "-q"],
                          cwd=root)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
