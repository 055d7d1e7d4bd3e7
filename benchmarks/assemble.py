"""Assemble BENCHMARKS.md from the fragments in ``benchmarks/results/*.md``.

``python -m benchmarks.assemble`` (also run at the end of ``python -m benchmarks.run``).
The page is a header with the machine description followed by every fragment,
in a fixed order for the known ones (``summary``, ``suite``, ``capacity``, ``generate``,
``client``, ``soak``) and alphabetically after them.  Each fragment is written
by its own benchmark script, starts with a ``## `` heading, and links files
relative to the repository root (e.g. ``benchmarks/results/latency_curve.svg``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path

from benchmarks.machine import describe, to_markdown

__all__ = ["ORDER", "assemble", "main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ORDER = ("summary", "suite", "capacity", "generate", "client", "soak")


def _key(path: Path) -> tuple[int, str]:
    return (ORDER.index(path.stem) if path.stem in ORDER else len(ORDER), path.stem)


def _anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def assemble(results: Path = RESULTS, out: Path = ROOT / "BENCHMARKS.md") -> Path:
    """Write ``out`` from the fragments in ``results``; return its path."""
    fragments = sorted(results.glob("*.md"), key=_key)
    bodies = [p.read_text().strip() + "\n" for p in fragments]
    toc = []
    for body in bodies:
        for line in body.splitlines():
            if line.startswith("## "):
                toc.append(f"- [{line[3:].strip()}](#{_anchor(line[3:])})")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# Benchmarks",
        "",
        "<!-- Generated: do not edit. Regenerate with `python -m benchmarks.run` (the peer suite, then this page) or",
        "     `python -m benchmarks.assemble` (this page only, from benchmarks/results/*.md). -->",
        "",
        f"Assembled {now} from `benchmarks/results/*.md` "
        f"({', '.join(p.name for p in fragments) or 'no fragments yet'}). "
        "Each section says how it was produced and the command that reproduces it.",
        "",
        "## Machine",
        "",
        to_markdown(describe()),
        "",
        "Numbers depend on this machine and on what else ran on it; compare rows of one run, not runs of different days.",
        "",
    ]
    if toc:
        header += ["Contents:", "", *toc, ""]
    out.write_text("\n".join(header) + "\n" + "\n".join(bodies))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Assemble BENCHMARKS.md from benchmarks/results/*.md")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    print(f"wrote {assemble(args.results, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
