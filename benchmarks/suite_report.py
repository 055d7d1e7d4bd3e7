"""Render the peer suite's data (``suite.json``) as the ``suite.md`` fragment and the latency-curve SVG."""

from __future__ import annotations

from typing import Any

from benchmarks.svgplot import line_chart

__all__ = ["TARGETS", "render_suite", "render_svg"]

LABELS = {
    "echo": "echo (ceiling)", "naive": "naive per-message", "fastapi": "FastAPI/uvicorn", "wsserve": "wsserve",
    "echo-picows": "picows echo", "wsserve-picows": "wsserve --transport picows",
}
#: (numerator key prefix, denominator key prefix, label, target multiple or None); a target
#: holds at every connection count, except those listed in TARGET_AT (label -> the counts it is for).
TARGETS = (
    ("wsserve|linear", "echo|-", "wsserve linear ÷ echo ceiling", 0.85),
    ("wsserve|mlp", "naive|mlp", "wsserve mlp ÷ naive mlp", 2.0),
    ("wsserve|linear", "naive|linear", "wsserve linear ÷ naive linear", None),
    ("wsserve|linear", "fastapi|linear", "wsserve linear ÷ FastAPI linear", None),
    ("wsserve|mlp", "fastapi|mlp", "wsserve mlp ÷ FastAPI mlp", None),
    ("wsserve-picows|linear", "echo|-", "wsserve picows linear ÷ echo ceiling", 2.0),
    ("wsserve-picows|mlp", "wsserve|mlp", "wsserve picows mlp ÷ wsserve mlp", 1.5),
    ("echo-picows|-", "echo|-", "picows echo ÷ echo ceiling", None),
)
#: Issue #16 sets the picows targets at 64 connections.
TARGET_AT = {"wsserve picows linear ÷ echo ceiling": (64,), "wsserve picows mlp ÷ wsserve mlp": (64,)}
CURVE_PLOT = "benchmarks/results/latency_curve.svg"


def _rows(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key prefix, server label, model) in table order."""
    seen: list[tuple[str, str, str]] = []
    for key in data["summary"]:
        name, model, _ = key.split("|")
        prefix = f"{name}|{model}"
        if all(prefix != p for p, _, _ in seen):
            seen.append((prefix, LABELS.get(name, name), "—" if model == "-" else model))
    return seen


def _cell(data: dict[str, Any], prefix: str, n: int) -> dict[str, Any] | None:
    return data["summary"].get(f"{prefix}|{n}")


def _fmt_rps(c: dict[str, Any] | None, reps: int) -> str:
    if c is None:
        return "—"
    if "rps" not in c:
        return "failed"
    s = f"{c['rps']:,.0f}"
    if reps > 1:
        s += f" <sub>({c['rps_min']:,.0f}–{c['rps_max']:,.0f})</sub>"
    if c.get("errors"):
        s += " ⚠"
    return s


def _fmt_lat(c: dict[str, Any] | None) -> str:
    if c is None:
        return "—"
    if "p50" not in c:
        return "failed"
    return f"{c['p50']:.2f} / {c['p99']:.2f}"


def render_suite(data: dict[str, Any]) -> str:
    plan = data["plan"]
    conns = plan["connections"]
    reps = plan["reps"]
    m = data["machine"]
    out: list[str] = ["## Peer comparison: single-row predict", ""]
    if plan["quick"]:
        out += [
            "> **Quick run** (`--quick`: one short repetition per cell) — a smoke test of the suite, not numbers to cite.",
            "",
        ]
    la = m.get("load_average") or ["?", "?", "?"]
    out += [
        f"Measured {data['started_at']} by `python -m benchmarks.run{' --quick' if plan['quick'] else ''}` in {data.get('elapsed_s', '?')} s; "
        f"load average at the start {la[0]} / {la[1]} / {la[2]} on {m['cores']} cores "
        f"(wsserve {m.get('git_commit') or 'commit unknown'}).",
        "",
        f"Closed loop: N connections, each with one single-row `predict` in flight, for {plan['duration_s']:g} s after "
        f"{plan['warmup_s']:g} s of warm-up; {reps} repetition{'s' if reps > 1 else ''} per cell, interleaved across servers, "
        f"{'median shown (range in small print)' if reps > 1 else 'single run'}. "
        f"The load-test client is {plan['client_procs']} separate process{'es' if plan['client_procs'] > 1 else ''}; "
        "every server is one process on uvloop with `OPENBLAS_NUM_THREADS=1`, serving the same trained models "
        "(echo just returns each frame). Latency is from send to reply, in ms.",
        "",
    ]
    if data.get("skipped"):
        out += [f"Not run: {', '.join(f'{k} ({v})' for k, v in data['skipped'].items())}.", ""]
    head = "| server | model | " + " | ".join(f"{n} conn{'s' if n > 1 else ''}" for n in conns) + " |"
    sep = "|---|---|" + "---:|" * len(conns)
    rows = _rows(data)
    out += ["### Throughput (requests/s)", "", head, sep]
    for prefix, label, model in rows:
        out.append(f"| {label} | {model} | " + " | ".join(_fmt_rps(_cell(data, prefix, n), reps) for n in conns) + " |")
    out += ["", "### Latency p50 / p99 (ms)", "", head, sep]
    for prefix, label, model in rows:
        out.append(f"| {label} | {model} | " + " | ".join(_fmt_lat(_cell(data, prefix, n)) for n in conns) + " |")
    errs = [
        (prefix, n, c["errors"])
        for prefix, _, _ in rows
        for n in conns
        if (c := _cell(data, prefix, n)) and c.get("errors")
    ]
    if errs:
        out += ["", "⚠ errors: " + "; ".join(f"{p.replace('|', ' ')} at {n}: {e}" for p, n, e in errs)]
    out += [
        "",
        "### Ratios and targets",
        "",
        "| comparison | " + " | ".join(f"{n} conn{'s' if n > 1 else ''}" for n in conns) + " | target |",
        "|---|" + "---:|" * len(conns) + "---|",
    ]
    verdicts: list[str] = []
    for num, den, label, target_all in TARGETS:
        cells = []
        for n in conns:
            target = target_all if label not in TARGET_AT or n in TARGET_AT[label] else None
            a, b = _cell(data, num, n), _cell(data, den, n)
            if not a or not b or "rps" not in a or "rps" not in b or not b["rps"]:
                cells.append("—")
                continue
            ratio = a["rps"] / b["rps"]
            mark = "" if target is None else (" ✅" if ratio >= target else " ❌")
            cells.append(f"{ratio:.2f}×{mark}")
            if target is not None and ratio < target:
                verdicts.append(
                    f"{label} is {ratio:.2f}× at {n} connection{'s' if n > 1 else ''}, below the {target:g}× target"
                )
        if all(c == "—" for c in cells):
            continue
        at = "" if label not in TARGET_AT else " at " + ", ".join(map(str, TARGET_AT[label])) + " conns"
        shown_target = f"≥ {target_all:g}×{at}" if target_all else "—"
        out.append(f"| {label} | " + " | ".join(cells) + f" | {shown_target} |")
    out += [""]
    out += ["**Below target:** " + "; ".join(verdicts) + "."] if verdicts else ["All targets met in this run."]
    if 1 in conns:
        out += [
            "",
            "At 1 connection with one request in flight there is never more than one row to batch, so the "
            "batching target (mlp ≥ 2× naive) cannot be met there by design; the ratio is shown for completeness.",
        ]
    out += [
        "",
        "### Who was busy (diagnostic)",
        "",
        "Cores busy during the measured seconds: the server process / the busiest load-test client process. "
        "A server near 1.0 is CPU-bound; a client near 1.0 would mean the tool, not the server, was the limit "
        f"(this machine has {data['machine']['cores']} cores for both).",
        "",
        head,
        sep,
    ]
    for prefix, label, model in rows:
        cells = []
        for n in conns:
            c = _cell(data, prefix, n)
            cells.append("—" if not c or "server_cpu" not in c else f"{c['server_cpu']:.2f} / {c['client_cpu']:.2f}")
        out.append(f"| {label} | {model} | " + " | ".join(cells) + " |")
    out += _render_curve(data)
    out += ["", "### Commands", "", "Servers (each started once, from the repository root):", "", "```"]
    out += [f"{cmd}" for cmd in data["server_commands"].values()]
    out += [
        "```",
        "",
        "Load, per cell (`--echo` instead of `--model` for the echo server; `-c` = 1, 64, 256):",
        "",
        "```",
        data["loadtest_command"],
        "```",
        "",
        "Latency-vs-load points:",
        "",
        "```",
        data["curve_command"],
        "```",
        "",
        "Reproduce everything (rewrites this section and BENCHMARKS.md): `python -m benchmarks.run` "
        "(`--quick` for a < 2 min smoke run). Raw per-run figures: `benchmarks/results/suite.json`.",
        "",
    ]
    return "\n".join(out)


def _render_curve(data: dict[str, Any]) -> list[str]:
    curve = data.get("curve") or {}
    pts = curve.get("points") or []
    if not pts:
        return []
    out = [
        "",
        "### Latency vs load: wsserve `linear`, open loop",
        "",
        f"Requests sent on a fixed schedule at a fraction of wsserve's measured capacity "
        f"({curve['capacity_rps']:,.0f} req/s, its best closed-loop median above) over {curve['connections']} connections; "
        "latency counted from each request's *intended* send time, so queueing anywhere (client included) shows. "
        "Late = sent more than 5 ms behind schedule.",
        "",
        f"![wsserve latency vs offered load]({CURVE_PLOT})",
        "",
        "| offered | req/s offered | req/s achieved | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | late sends | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in pts:
        if "rps" not in p:
            out.append(f"| {p['fraction']:.0%} | — | failed | | | | | | | |")
            continue
        errs = ", ".join(f"{k}={v}" for k, v in p["errors"].items()) or "0"
        out.append(
            f"| {p['fraction']:.0%} | {p['target_rps']:,.0f} | {p['rps']:,.0f} | {p['p50']:.2f} | {p['p90']:.2f} | "
            f"{p['p99']:.2f} | {p['p999']:.2f} | {p['max']:.2f} | {p['late_sends']:,} | {errs} |"
        )
    return out


def render_svg(data: dict[str, Any]) -> str:
    curve = data["curve"]
    pts = [p for p in curve["points"] if "rps" in p]
    series = [
        ("p50", [(p["target_rps"], p["p50"]) for p in pts], "#1f77b4"),
        ("p90", [(p["target_rps"], p["p90"]) for p in pts], "#2ca02c"),
        ("p99", [(p["target_rps"], p["p99"]) for p in pts], "#ff7f0e"),
        ("p99.9", [(p["target_rps"], p["p999"]) for p in pts], "#d62728"),
    ]
    return line_chart(
        series,
        title=f"wsserve linear: latency vs offered load (capacity {curve['capacity_rps']:,.0f} req/s)",
        x_label="offered load, requests/s (open loop)",
        y_label="latency, ms (log scale)",
    )
