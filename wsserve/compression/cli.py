"""``wsserve compress MODEL --repository DIR (--int8 | --prune FRACTION) [--scope global|layer] [--finetune]``

A thin adapter: flags -> :class:`CompressPlan` (validated against the
repository, which is only read) -> :func:`wsserve.repository.newversion.add_version`
with :func:`~wsserve.compression.compress` (``model.npz`` of architecture
``mlp``) or :func:`~wsserve.compression.onnx_int8.compress_onnx`
(``model.onnx``, ``--int8`` only) filling the new version.

The source is ``--version N``, or by default the highest version that can be
compressed: an fp32 ``mlp`` model.npz, or a model.onnx that is not itself a
``wsserve compress`` output.  The new version is ``REPO/MODEL/<highest + 1>``,
built in a hidden directory and moved in with one rename, so a server running
with ``--reload`` loads it once it is complete; its figures are in its meta
(``models`` shows them).

Exit status: 0 written; 2 bad arguments - a fraction outside (0, 1), a
missing repository, an unknown model or version, a model type that cannot be
compressed - nothing written; 1 a failure while running (I/O, the ``onnx``
extra missing), nothing written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..argtypes import bounded_int
from ..repository.errors import ModelLoadError
from ..repository.layout import MODEL_FILES, is_model_name
from ..repository.loader import find_model_file
from ..repository.newversion import add_version, existing_versions
from ..repository.npz import read_npz
from .compress import MAX_FINETUNE_EPOCHS, MAX_LATENCY_RUNS
from .prune import DEFAULT_SCOPE

__all__ = ["CompressPlan", "add_compress_arguments", "plan_from_args", "run_compress"]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}") from None
    if not math.isfinite(value) or not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1) (0.5 prunes half the weights), got {text}")
    return value



def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``wsserve compress``'s arguments to ``parser``."""
    parser.add_argument("model", metavar="MODEL", help="model name in the repository")
    parser.add_argument("--repository", type=Path, required=True, metavar="DIR",
                        help="model repository; writes DIR/MODEL/<highest version + 1>/")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--int8", action="store_true",
                     help="int8 weights: per-output-channel symmetric for model.npz mlp; "
                          "ONNX Runtime dynamic quantization for model.onnx")
    how.add_argument("--prune", type=_fraction, metavar="FRACTION",
                     help="magnitude pruning of a model.npz mlp: remove this fraction of the weights, in (0, 1)")
    parser.add_argument("--scope", choices=("global", "layer"), default=None,
                        help="--prune: one ranking over all weights (global, the default) or per layer")
    parser.add_argument("--finetune", action="store_true",
                        help="--prune: fine-tune with the mask fixed on the training split afterwards")
    parser.add_argument("--finetune-epochs", type=bounded_int(1, MAX_FINETUNE_EPOCHS), default=None,
                        help=f"--finetune: epochs (default 2, at most {MAX_FINETUNE_EPOCHS})")
    parser.add_argument("--version", type=bounded_int(1, 10**18), default=None,
                        help="source version (default: the highest version that can be compressed)")
    parser.add_argument("--data-seed", type=bounded_int(0, 2**63 - 1), default=None,
                        help="seed of the held-out data (default: the source's training seed, else 0)")
    parser.add_argument("--latency-runs", type=bounded_int(1, MAX_LATENCY_RUNS), default=21,
                        help="timed batch-256 runs per model for the latency ratio (default 21)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


@dataclass(frozen=True, slots=True)
class CompressPlan:
    """A validated ``wsserve compress`` invocation: the source exists and can be compressed this way."""

    model: str
    model_dir: Path
    source_version: int
    source_dir: Path
    backend: str  # "npz" | "onnx"
    method: str  # "int8" | "prune"
    fraction: float | None
    scope: str
    finetune: bool
    finetune_epochs: int
    data_seed: int | None
    latency_runs: int


def _onnx_is_compressed(path: Path) -> bool:
    """Whether a model.onnx carries wsserve's compression figures (it is an output of this command)."""
    import onnx

    from .onnx_int8 import METADATA_KEY, read_wsserve_metadata

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure: not a usable source
        raise ModelLoadError(path, f"not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    props = {p.key: p.value for p in proto.metadata_props if p.key == METADATA_KEY}
    return "compression" in read_wsserve_metadata(props, str(path))


def _why_not(version_dir: Path, method: str) -> tuple[str | None, str | None]:
    """``(backend, None)`` if the version can be compressed with ``method``, else ``(backend, reason)``."""
    try:
        backend, path = find_model_file(version_dir)
    except ModelLoadError as exc:
        return None, exc.reason
    if backend == "python":
        return backend, "it is a model.py model (wsserve cannot see its weights)"
    if backend == "onnx":
        if method == "prune":
            return backend, "it is an ONNX model: --prune applies to the numpy mlp (model.npz); use --int8"
        try:
            if _onnx_is_compressed(path):
                return backend, "it is already a compressed version (ONNX int8)"
        except (ModelLoadError, ValueError) as exc:
            return backend, str(exc)
        return backend, None
    try:
        arch = read_npz(path).architecture
    except ModelLoadError as exc:
        return backend, exc.reason
    if arch in ("mlp-int8", "mlp-sparse"):
        return backend, f"it is already a compressed version ({arch})"
    if arch != "mlp":
        return backend, f"its architecture is {arch!r}; only the fp32 'mlp' (and ONNX models, --int8) can be compressed"
    return backend, None


def plan_from_args(args: argparse.Namespace) -> CompressPlan:
    """Validate the flags against the repository; raises ``ValueError`` naming the problem.

    Reads the repository (directory listings, model headers); writes nothing.
    Raises ``ImportError`` if deciding needs the ``onnx`` extra and it is missing.
    """
    method = "int8" if args.int8 else "prune"
    if method != "prune":
        for flag, given in (("--scope", args.scope is not None), ("--finetune", args.finetune),
                            ("--finetune-epochs", args.finetune_epochs is not None)):
            if given:
                raise ValueError(f"{flag} applies to --prune only")
    if args.finetune_epochs is not None and not args.finetune:
        raise ValueError("--finetune-epochs needs --finetune")
    repo: Path = args.repository
    if not repo.is_dir():
        raise ValueError(f"--repository {repo}: {'is not a directory' if repo.exists() else 'does not exist'}")
    if not is_model_name(args.model):
        raise ValueError(f"bad model name {args.model!r}: 1-64 of [A-Za-z0-9_.-], starting with a letter or digit")
    model_dir = repo / args.model
    versions = existing_versions(model_dir)
    if not versions:
        known = sorted(p.name for p in repo.iterdir() if p.is_dir() and is_model_name(p.name) and existing_versions(p))
        if model_dir.is_dir():
            raise ValueError(f"model {args.model!r} in {repo} has no version directories")
        raise ValueError(f"no model named {args.model!r} in {repo}; models: {', '.join(known) or 'none'}")
    if args.version is not None:
        if args.version not in versions:
            raise ValueError(f"model {args.model!r} has no version {args.version}; versions: "
                             f"{', '.join(map(str, versions))}")
        backend, why = _why_not(model_dir / str(args.version), method)
        if why is not None:
            raise ValueError(f"cannot compress version {args.version} of model {args.model!r}: {why}")
        source = args.version
    else:
        reasons = []
        for v in reversed(versions):
            backend, why = _why_not(model_dir / str(v), method)
            if why is None:
                source = v
                break
            reasons.append(f"version {v}: {why}")
        else:
            raise ValueError(f"model {args.model!r} has no version that can be compressed with --{method}: "
                             + "; ".join(reasons))
    assert backend in ("npz", "onnx")
    return CompressPlan(
        model=args.model, model_dir=model_dir, source_version=source, source_dir=model_dir / str(source),
        backend=backend, method=method, fraction=args.prune, scope=args.scope or DEFAULT_SCOPE,
        finetune=bool(args.finetune), finetune_epochs=args.finetune_epochs or 2, data_seed=args.data_seed,
        latency_runs=args.latency_runs,
    )


def _fill(plan: CompressPlan):  # noqa: ANN202 - the add_version callback
    def fill(directory: Path) -> dict[str, Any]:
        if plan.backend == "onnx":
            from .onnx_int8 import compress_onnx

            return compress_onnx(plan.source_dir / MODEL_FILES["onnx"], directory, data_seed=plan.data_seed,
                                 latency_runs=plan.latency_runs, source_version=str(plan.source_version))
        from .compress import compress

        return compress(plan.source_dir, directory, method=plan.method, fraction=plan.fraction,  # type: ignore[arg-type]
                        scope=plan.scope, finetune=plan.finetune,  # type: ignore[arg-type]
                        finetune_epochs=plan.finetune_epochs, data_seed=plan.data_seed,
                        latency_runs=plan.latency_runs)

    return fill


def _summary(plan: CompressPlan, version: int, path: Path, f: dict[str, Any]) -> str:
    what = "int8" if plan.method == "int8" else (
        f"{plan.fraction:g} pruned ({plan.scope}{', fine-tuned' if plan.finetune else ''})")
    acc = f.get("heldout_accuracy")
    quality = (f"held-out accuracy {acc:.4f} ({100 * f['heldout_accuracy_delta']:+.2f} points)"
               if acc is not None else "no held-out data for this model's shapes")
    return (f"wrote {plan.model} version {version} to {path}: {what} of version {plan.source_version}; "
            f"{f['bytes']:,} bytes ({f['bytes'] / f['source_bytes']:.1%} of {f['source_bytes']:,}), "
            f"{f['parameters_nonzero']:,} non-zero parameters, {quality}, "
            f"batch-256 latency ratio {f['latency_ratio_b256']:.2f}")


def run_compress(args: argparse.Namespace) -> int:
    """Run ``wsserve compress``; returns the exit status (see the module docstring)."""
    try:
        plan = plan_from_args(args)
    except ValueError as exc:
        print(f"wsserve compress: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"wsserve compress: error: model.onnx needs the onnx extra: pip install 'wsserve[onnx]' ({exc})",
              file=sys.stderr)
        return 1
    try:
        written = add_version(plan.model_dir, _fill(plan))
    except ValueError as exc:  # the source did not fit (e.g. widths without held-out data): nothing written
        print(f"wsserve compress: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ImportError) as exc:
        print(f"wsserve compress: error: {exc}", file=sys.stderr)
        return 1
    figures = {k: v for k, v in written.result.items() if k != "path"}
    if args.json:
        print(json.dumps({"model": plan.model, "version": written.version, "path": str(written.path), **figures},
                         sort_keys=True))
    else:
        print(_summary(plan, written.version, written.path, figures))
    return 0
