"""The benchmark suite's pure parts: medians, ratios and verdicts in suite.md, the SVG plot, the assembler."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from benchmarks.assemble import assemble
from benchmarks.run import FULL, QUICK, loadtest_cmd, median_of
from benchmarks.suite_report import render_suite, render_svg
from benchmarks.svgplot import line_chart


def _run(rps: float, p99: float = 2.0, errors: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "rps": rps,
        "target_rps": None,
        "p50": p99 / 2,
        "p90": p99 * 0.8,
        "p99": p99,
        "p999": p99 * 1.5,
        "max": p99 * 2,
        "sent": 1,
        "ok": 1,
        "errors": errors or {},
        "error_rate": 0.0,
        "late_sends": 0,
        "server_cpu": 0.9,
        "client_cpu": 0.3,
    }


def test_median_of_ignores_failed_runs_and_sums_errors() -> None:
    m = median_of(
        [_run(100.0, errors={"overloaded": 1}), _run(300.0), {"failed": "boom"}, _run(200.0, errors={"overloaded": 2})]
    )
    assert m["rps"] == 200.0 and (m["rps_min"], m["rps_max"]) == (100.0, 300.0)
    assert m["n"] == 3 and m["failures"] == 1 and m["errors"] == {"overloaded": 3}
    assert median_of([{"failed": "boom"}]) == {"failed": "boom", "n": 0}


def _data(wsserve_linear: float, wsserve_mlp: float) -> dict[str, Any]:
    rps = {
        "echo|-": 40_000.0,
        "naive|linear": 10_000.0,
        "naive|mlp": 5_000.0,
        "fastapi|linear": 6_000.0,
        "fastapi|mlp": 3_000.0,
        "wsserve|linear": wsserve_linear,
        "wsserve|mlp": wsserve_mlp,
    }
    summary = {f"{k}|{n}": median_of([_run(v), _run(v)]) for k, v in rps.items() for n in (1, 64, 256)}
    points = [
        dict(_run(f * wsserve_linear, p99=1 + 10 * f), target_rps=f * wsserve_linear, fraction=f)
        for f in (0.1, 0.5, 1.0)
    ]
    return {
        "started_at": "2026-01-01T00:00:00+00:00",
        "elapsed_s": 400.0,
        "plan": {**FULL.__dict__, "connections": [1, 64, 256]},
        "machine": {"cores": 2, "load_average": [0.1, 0.2, 0.3], "git_commit": "abc1234"},
        "server_commands": {"echo": "python benchmarks/peers/echo_server.py --port 0"},
        "loadtest_command": "python -m wsserve.loadtest URL -c N ...",
        "curve_command": "python -m wsserve.loadtest URL --rate R ...",
        "skipped": {},
        "summary": summary,
        "curve": {
            "capacity_rps": wsserve_linear,
            "capacity_from": "wsserve|linear|64",
            "connections": 64,
            "points": points,
        },
    }


def test_suite_fragment_reports_ratios_and_verdicts_honestly() -> None:
    below = render_suite(_data(wsserve_linear=30_000.0, wsserve_mlp=12_000.0))
    assert below.startswith("## Peer comparison: single-row predict")
    assert "| wsserve linear ÷ echo ceiling | 0.75× ❌ | 0.75× ❌ | 0.75× ❌ | ≥ 0.85× |" in below
    assert "| wsserve mlp ÷ naive mlp | 2.40× ✅ | 2.40× ✅ | 2.40× ✅ | ≥ 2× |" in below
    assert "**Below target:** wsserve linear ÷ echo ceiling is 0.75× at 1 connection, below the 0.85× target" in below
    assert "| wsserve | linear | 30,000 <sub>(30,000–30,000)</sub> |" in below
    assert "![wsserve latency vs offered load](benchmarks/results/latency_curve.svg)" in below
    assert "| 50% | 15,000 | 15,000 |" in below
    assert "Quick run" not in below
    met = render_suite(_data(wsserve_linear=36_000.0, wsserve_mlp=12_000.0))
    assert "All targets met in this run." in met and "❌" not in met


def test_picows_targets_are_judged_at_64_connections_only() -> None:
    data = _data(wsserve_linear=36_000.0, wsserve_mlp=12_000.0)
    for n in (1, 64, 256):  # 1.5x the echo ceiling: below the 2x target; mlp 1.6x wsserve's: above 1.5x
        data["summary"][f"wsserve-picows|linear|{n}"] = median_of([_run(60_000.0)])
        data["summary"][f"wsserve-picows|mlp|{n}"] = median_of([_run(19_200.0)])
    text = render_suite(data)
    assert "| wsserve picows linear ÷ echo ceiling | 1.50× | 1.50× ❌ | 1.50× | ≥ 2× at 64 conns |" in text
    assert "| wsserve picows mlp ÷ wsserve mlp | 1.60× | 1.60× ✅ | 1.60× | ≥ 1.5× at 64 conns |" in text
    assert "**Below target:** wsserve picows linear ÷ echo ceiling is 1.50× at 64 connections, below the 2× target." in text
    assert "| wsserve --transport picows | linear | 60,000 <sub>(60,000–60,000)</sub> |" in text


def test_quick_runs_are_labelled() -> None:
    data = _data(30_000.0, 12_000.0)
    data["plan"] = {**QUICK.__dict__, "connections": [1, 64, 256]}
    assert "**Quick run**" in render_suite(data)


def test_svg_is_well_formed_with_every_series() -> None:
    svg = render_svg(_data(30_000.0, 12_000.0))
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert {"p50", "p90", "p99", "p99.9"} <= set(texts)
    assert len(list(root.iter("{http://www.w3.org/2000/svg}path"))) == 4
    with pytest.raises(ValueError):
        line_chart([("x", [], "red")], title="t", x_label="x", y_label="y")


def test_loadtest_command_shape() -> None:
    cmd = loadtest_cmd("ws://h:1", model=None, connections=64, plan=FULL)
    assert cmd[1:4] == ["-m", "wsserve.loadtest", "ws://h:1"] and "--echo" in cmd and cmd[cmd.index("-k") + 1] == "1"
    cmd = loadtest_cmd("ws://h:1", model="mlp", connections=8, plan=FULL, rate=1234.4)
    assert cmd[cmd.index("--rate") + 1] == "1234" and "-k" not in cmd and cmd[cmd.index("--model") + 1] == "mlp"


def test_assembler_orders_fragments_and_describes_the_machine(tmp_path: Path) -> None:
    (tmp_path / "zeta.md").write_text("## Zeta things\n\nz\n")
    (tmp_path / "generate.md").write_text("## Generation\n\ng\n")
    (tmp_path / "suite.md").write_text("## Peer comparison: single-row predict\n\ns\n")
    out = assemble(tmp_path, tmp_path / "BENCHMARKS.md")
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    assert "## Machine" in text and "- CPU:" in text and "- Packages:" in text and "websockets" in text
    order = [text.index(h) for h in ("## Machine", "## Peer comparison", "## Generation", "## Zeta things")]
    assert order == sorted(order)
    assert "- [Peer comparison: single-row predict](#peer-comparison-single-row-predict)" in text


def test_bench_transport_starts_the_cli_of_this_checkout_on_each_transport() -> None:
    """benchmarks/bench_transport.py imports (it broke once when benchmarks/servers.py changed)
    and drives the same CLI command as the tests, once per transport."""
    from benchmarks.bench_transport import SERVERS
    from tests.support import serve_command

    base = serve_command("--log-level", "warning", loop="uvloop")
    assert SERVERS["wsserve"][0] == base
    assert SERVERS["wsserve-picows"][0] == [*base, "--transport", "picows"]


def test_bench_inline_compares_the_thresholds_on_one_cli_and_reports_against_the_thread() -> None:
    """benchmarks/bench_inline.py: the same serve command but for --inline-max-flops, and a report
    whose ratios are each threshold's median over 200,000's (every mlp batch above 2 rows in the
    thread), the default marked, with the batch 20,000,000 inlines and the backlog table."""
    from benchmarks.bench_inline import THRESHOLDS, _command, render
    from tests.support import serve_command

    default = __import__("wsserve.config").config.ServerConfig().inline_max_flops
    assert THRESHOLDS[0] == 200_000 and default == THRESHOLDS[2] == 20_000_000
    for flops in THRESHOLDS:
        assert _command(flops, None) == serve_command("--log-level", "warning", "--models", "mlp",
                                                      "--inline-max-flops", str(flops),
                                                      "--max-message-bytes", str(4 << 20), loop="uvloop")
    rps = dict(zip(THRESHOLDS, (30_000.0, 36_000.0, 34_500.0, 33_000.0), strict=True))
    summary = {f"{f}|64": {**median_of([_run(r)]), "server_us_per_req": 1e6 * 0.9 / r} for f, r in rps.items()}
    backlog = {str(f): {"p50": 2.0, "p99": 6.5, "max": 22.25, "samples": 129, "big_rows_per_s": 200_000.0 + i}
               for i, f in enumerate(THRESHOLDS)}
    data = {"plan": {**FULL.__dict__, "connections": (64,)}, "machine": {"cores": 2, "load_average": [0, 0, 0]},
            "summary": summary, "started_at": "t", "server_commands": {"a": "cmd"}, "loadtest_command": "lt",
            "backlog_summary": backlog,
            "costs": {"flops_per_row": 76_810, "predict_us": {"1": 20.0, "64": 150.0, "128": 300.0},
                      "executor_round_trip_us": 75.0}}
    text = render(data)
    rows: dict[str, str] = {}  # the closed-loop table's rows (the backlog table's come after, same labels)
    for line in text.splitlines():
        if line.startswith("| ") and "req/s" not in line:
            rows.setdefault(line.split(" | ")[0], line)
    assert rows["| 200,000"].endswith("| 1.00× |")
    assert rows["| 5,000,000"].endswith("| 1.20× |") and "36,000" in rows["| 5,000,000"]
    assert rows["| 20,000,000 (default)"].endswith("| 1.15× |")
    assert rows["| 10¹¹ (all inline)"].endswith("| 1.10× |")
    assert "| 20,000,000 (default) | 200,002 | 2.00 | 6.50 | 22.2 | 129 |" in text
    assert "batches of up to 260 rows run on the loop; 128 rows take 300 µs here, 4.0 executor" in text


def test_bench_transport_issue_base_runs_wsserve_on_websockets_from_that_checkout(tmp_path: Path) -> None:
    """--issue-base adds wsserve (the default transport: the only one then) from another checkout, and
    judges the mlp target against it too."""
    import benchmarks.bench_transport as bt

    saved = (dict(bt.SERVERS), dict(bt.LABELS), dict(bt.ROOTS), list(bt.BASE_COMPARISONS))
    try:
        bt.add_issue_base(tmp_path)
        assert bt.SERVERS["wsserve@issue"] == bt.SERVERS["wsserve"] and bt.ROOTS["wsserve@issue"] == tmp_path
        assert ("wsserve-picows|mlp", "wsserve@issue|mlp", "wsserve-picows mlp ÷ wsserve mlp as filed", 1.5) \
            in bt.BASE_COMPARISONS
    finally:
        for table, before in zip((bt.SERVERS, bt.LABELS, bt.ROOTS), saved[:3], strict=True):
            table.clear()
            table.update(before)
        bt.BASE_COMPARISONS[:] = saved[3]
