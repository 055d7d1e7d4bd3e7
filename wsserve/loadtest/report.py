"""The report: merged stats → a JSON-ready dict → text, and the SLO verdict.

Sans-I/O.  :func:`build_report` is the single source of every figure; the text
printed by :func:`format_text` and the ``--json`` file are both views of the
dict it returns.  :data:`REPORT_SCHEMA` names the format; its keys are listed
in :func:`build_report`'s docstring and pinned by the tests.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from typing import Any

from .config import LoadConfig, ServerInfo
from .histogram import LatencyHistogram
from .stats import RunStats, WorkloadStats

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_SLO", "REPORT_SCHEMA", "build_report", "evaluate_slo", "format_text"]

REPORT_SCHEMA = "wsserve-loadtest-report/1"
EXIT_OK = 0
#: the load test could not run (server unreachable, bad workload for this server, ...)
EXIT_ERROR = 1
#: the run completed but breached ``--slo-p99-ms`` or ``--max-error-rate``
EXIT_SLO = 3


def _spec_json(cfg: LoadConfig) -> list[dict[str, Any]]:
    return [
        {
            "label": s.label,
            "kind": s.kind,
            "model": s.model,
            "weight": s.weight,
            "rows": s.rows,
            "chunk_rows": s.chunk_rows,
            "max_tokens": s.max_tokens,
            "binary": s.binary,
            "explain": s.explain,
        }
        for s in cfg.specs
    ]


def _workload_json(w: WorkloadStats, weight: int, duration_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": w.kind,
        "weight": weight,
        "sent": w.sent,
        "ok": w.ok,
        "errors": dict(sorted(w.errors.items())),
        "error_rate": round(w.error_count / w.sent, 6) if w.sent else 0.0,
        "achieved_rps": round(w.ok_in_window / duration_s, 3),
        "latency_ms": w.latency.summary_ms(),
    }
    if w.kind == "generate":
        out["ttft_ms"] = w.first.summary_ms()
        out["itl_ms"] = w.gap.summary_ms()
        out["tokens"] = w.tokens
        out["tokens_per_s"] = round(w.tokens / duration_s, 3)
    elif w.kind == "stream":
        out["first_chunk_ms"] = w.first.summary_ms()
        out["chunk_gap_ms"] = w.gap.summary_ms()
        out["chunks"] = w.tokens
    return out


def evaluate_slo(
    *, p99_ms: float | None, error_rate: float, ok: int, slo_p99_ms: float | None, max_error_rate: float | None
) -> list[str]:
    """Human-readable breaches (empty list = pass).  No successful request breaches a latency SLO."""
    breaches: list[str] = []
    if slo_p99_ms is not None:
        if ok == 0 or p99_ms is None:
            breaches.append(f"p99 latency undefined (no successful request) with --slo-p99-ms {slo_p99_ms:g}")
        elif p99_ms > slo_p99_ms:
            breaches.append(f"p99 latency {p99_ms:.3f} ms > SLO {slo_p99_ms:g} ms")
    if max_error_rate is not None and error_rate > max_error_rate:
        breaches.append(f"error rate {error_rate:.4%} > max {max_error_rate:.4%}")
    return breaches


#: a client process busier than this (cores) may have limited the measurement
CLIENT_BUSY_CORES = 0.9


def build_report(
    cfg: LoadConfig,
    server: ServerInfo,
    stats: RunStats,
    *,
    started_at_unix: float,
    start_monotonic: float | None = None,
) -> dict[str, Any]:
    """The full report.

    Top-level keys: ``schema`` (str), ``url`` (str), ``started_at`` (ISO 8601
    str), ``mode`` ("closed"|"open"), ``server`` {kind, name, version},
    ``config`` {connections, inflight, rate_per_s, duration_s, warmup_s, procs,
    late_ms, grace_s, mix[]}, ``throughput`` {target_rps, achieved_rps,
    achieved_ratio}, ``requests`` {sent, ok, errors, error_rate},
    ``latency_ms`` {count, min, mean, p50, p90, p99, p99.9, max} over every
    workload, ``workloads`` {label: {...}}, ``errors`` {code: n},
    ``close_codes`` {code: n}, ``connections`` {opened, failed, closed_early}
    (``closed_early``: closed by the server, or broken, before the tool closed
    them at the end; when that is every opened connection the load stopped early
    and ``exit_code`` is 1), ``client``
    {procs, ok_per_proc[], cpu_cores_per_proc[], busy}, ``timeline``
    {start_monotonic, measure_start_monotonic, end_monotonic} (seconds on the
    system-wide monotonic clock, or nulls; to correlate with other measurements),
    ``late_sends`` {count, threshold_ms, send_lag_ms}, ``slo`` {p99_ms,
    max_error_rate, passed, breaches[]}, ``exit_code`` (int) and
    ``histograms`` {label: encoded HDR latency histogram, "all": ...}.
    """
    duration = cfg.duration_s
    total = LatencyHistogram()
    errors: Counter[str] = Counter()
    sent = ok = ok_in_window = 0
    for w in stats.workloads:
        total.merge(w.latency)
        errors.update(w.errors)
        sent += w.sent
        ok += w.ok
        ok_in_window += w.ok_in_window
    n_errors = sum(errors.values())
    error_rate = n_errors / sent if sent else 0.0
    achieved = ok_in_window / duration
    target = cfg.rate_per_s
    overall = total.summary_ms()
    breaches = evaluate_slo(
        p99_ms=overall["p99"] if ok else None,
        error_rate=error_rate,
        ok=ok,
        slo_p99_ms=cfg.slo_p99_ms,
        max_error_rate=cfg.max_error_rate,
    )
    lost_all = stats.connections > 0 and stats.closed_early >= stats.connections
    weights = {s.label: s.weight for s in cfg.specs}
    cpu_cores = list(stats.cpu_cores_per_proc)
    return {
        "schema": REPORT_SCHEMA,
        "url": cfg.url,
        "started_at": _dt.datetime.fromtimestamp(started_at_unix, _dt.UTC).isoformat(timespec="seconds"),
        "mode": cfg.mode,
        "server": {"kind": server.kind, "name": server.server, "version": server.version},
        "config": {
            "connections": cfg.connections,
            "inflight": cfg.inflight,
            "rate_per_s": cfg.rate_per_s,
            "duration_s": cfg.duration_s,
            "warmup_s": cfg.warmup_s,
            "procs": cfg.procs,
            "late_ms": cfg.late_ms,
            "grace_s": cfg.grace_s,
            "mix": _spec_json(cfg),
        },
        "throughput": {
            "target_rps": target,
            "achieved_rps": round(achieved, 3),
            "achieved_ratio": round(achieved / target, 4) if target else None,
        },
        "requests": {"sent": sent, "ok": ok, "errors": n_errors, "error_rate": round(error_rate, 6)},
        "latency_ms": overall,
        "workloads": {w.label: _workload_json(w, weights.get(w.label, 1), duration) for w in stats.workloads},
        "errors": dict(sorted(errors.items())),
        "close_codes": dict(sorted(stats.close_codes.items())),
        "connections": {"opened": stats.connections, "failed": stats.connect_failures,
                        "closed_early": stats.closed_early},
        "client": {
            "procs": stats.procs,
            "ok_per_proc": list(stats.ok_per_proc),
            "cpu_cores_per_proc": cpu_cores,
            "busy": any(c >= CLIENT_BUSY_CORES for c in cpu_cores),
        },
        "timeline": {
            "start_monotonic": start_monotonic,
            "measure_start_monotonic": None if start_monotonic is None else start_monotonic + cfg.warmup_s,
            "end_monotonic": None if start_monotonic is None else start_monotonic + cfg.warmup_s + cfg.duration_s,
        },
        "late_sends": {
            "count": stats.late_sends,
            "threshold_ms": cfg.late_ms,
            "send_lag_ms": stats.send_lag.summary_ms(),
        },
        "slo": {
            "p99_ms": cfg.slo_p99_ms,
            "max_error_rate": cfg.max_error_rate,
            "passed": not breaches,
            "breaches": breaches,
        },
        "exit_code": EXIT_ERROR if lost_all else EXIT_SLO if breaches else EXIT_OK,
        "histograms": {"all": total.encode(), **{w.label: w.latency.encode() for w in stats.workloads}},
    }


def _fmt_row(name: str, s: dict[str, Any], width: int) -> str:
    cells = "".join(f"{s[k]:>10.3f}" for k in ("p50", "p90", "p99", "p99.9", "max", "mean"))
    return f"  {name:<{width}}{cells}{s['count']:>11,}"


def format_text(report: dict[str, Any]) -> str:
    """The human summary printed at the end of a run."""
    cfg = report["config"]
    srv = report["server"]
    lines: list[str] = []
    if report["mode"] == "closed":
        shape = f"closed loop, {cfg['connections']} connections x {cfg['inflight']} in flight"
    else:
        shape = f"open loop at {cfg['rate_per_s']:,.0f} req/s over {cfg['connections']} connections"
    who = srv["name"] + (f" {srv['version']}" if srv["version"] else "") if srv["kind"] == "protocol" else "echo server"
    lines.append(f"{report['url']} ({who}): {shape}, {cfg['procs']} client process(es)")
    lines.append(
        f"measured {cfg['duration_s']:g} s after {cfg['warmup_s']:g} s warm-up; "
        "mix " + ", ".join(f"{m['label']}={m['weight']}" for m in cfg["mix"])
    )
    tp = report["throughput"]
    if tp["target_rps"]:
        lines.append(
            f"throughput: {tp['achieved_rps']:,.1f} req/s achieved of {tp['target_rps']:,.1f} target "
            f"({tp['achieved_ratio']:.1%})"
        )
    else:
        lines.append(f"throughput: {tp['achieved_rps']:,.1f} req/s achieved (closed loop, no target)")
    rq = report["requests"]
    lines.append(f"requests: {rq['sent']:,} sent, {rq['ok']:,} ok, {rq['errors']:,} errors ({rq['error_rate']:.3%})")
    names = ["all", *(label + " 1st chunk" for label in report["workloads"])]
    width = max(len(n) for n in names) + 2
    lines.append(
        f"  {'latency (ms)':<{width}}"
        + "".join(f"{h:>10}" for h in ("p50", "p90", "p99", "p99.9", "max", "mean"))
        + f"{'count':>11}"
    )
    lines.append(_fmt_row("all", report["latency_ms"], width))
    for label, w in report["workloads"].items():
        if len(report["workloads"]) > 1:
            lines.append(_fmt_row(label, w["latency_ms"], width))
        if w["kind"] == "generate":
            lines.append(_fmt_row(label + " ttft", w["ttft_ms"], width))
            lines.append(_fmt_row(label + " itl", w["itl_ms"], width))
            lines.append(f"  {label}: {w['tokens']:,} tokens, {w['tokens_per_s']:,.1f} tokens/s")
        elif w["kind"] == "stream":
            lines.append(_fmt_row(label + " 1st chunk", w["first_chunk_ms"], width))
    if report["errors"]:
        lines.append("errors by code: " + ", ".join(f"{k}={v:,}" for k, v in report["errors"].items()))
    else:
        lines.append("errors by code: none")
    cc = report["close_codes"]
    lines.append(
        "close codes: "
        + (", ".join(f"{k} x{v}" for k, v in cc.items()) if cc else "none")
        + (
            f"; {report['connections']['failed']} connection(s) failed to open"
            if report["connections"]["failed"]
            else ""
        )
        + (
            f"; {report['connections']['closed_early']} connection(s) closed by the server before the end"
            if report["connections"].get("closed_early")
            else ""
        )
    )
    if report["exit_code"] == EXIT_ERROR:
        lines.append("ERROR: the server closed every connection before the end of the run: the load stopped "
                     "early and the figures cover only part of the duration")
    if report["mode"] == "open":
        ls = report["late_sends"]
        lines.append(
            f"late sends: {ls['count']:,} more than {ls['threshold_ms']:g} ms behind schedule; "
            f"send lag p50 {ls['send_lag_ms']['p50']:.3f} ms, p99 {ls['send_lag_ms']['p99']:.3f} ms, "
            f"max {ls['send_lag_ms']['max']:.3f} ms"
        )
    cl = report["client"]
    if cl["cpu_cores_per_proc"]:
        lines.append(
            "client CPU: "
            + ", ".join(f"{c:.2f}" for c in cl["cpu_cores_per_proc"])
            + " cores per process"
            + (
                "  WARNING: a client process was nearly saturated; the tool may have limited the result (add --procs)"
                if cl["busy"]
                else ""
            )
        )
    slo = report["slo"]
    if slo["p99_ms"] is not None or slo["max_error_rate"] is not None:
        lines.append("SLO: " + ("PASS" if slo["passed"] else "FAIL: " + "; ".join(slo["breaches"])))
    return "\n".join(lines)
