"""A small hand-written SVG line chart (no plotting dependency): linear x, log-scale y."""

from __future__ import annotations

import math
from html import escape

__all__ = ["Series", "line_chart"]

Series = tuple[str, list[tuple[float, float]], str]  # (label, [(x, y)], colour)

_W, _H = 760, 440
_L, _R, _T, _B = 70, 170, 40, 55  # margins


def _nice_ticks_log(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def _nice_step(span: float, target: int = 6) -> float:
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _fmt(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def line_chart(series: list[Series], *, title: str, x_label: str, y_label: str) -> str:
    """The chart as an SVG document.  y values must be > 0 (log scale); empty series are skipped."""
    pts = [(x, y) for _, data, _ in series for x, y in data if y > 0]
    if not pts:
        raise ValueError("nothing to plot")
    x_hi = max(x for x, _ in pts) * 1.05 or 1.0
    y_lo = 10 ** math.floor(math.log10(min(y for _, y in pts)))
    y_hi = 10 ** math.ceil(math.log10(max(y for _, y in pts)))
    if y_hi <= y_lo:
        y_hi = y_lo * 10
    pw, ph = _W - _L - _R, _H - _T - _B

    def sx(x: float) -> float:
        return _L + x / x_hi * pw

    def sy(y: float) -> float:
        return _T + ph - (math.log10(y) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo)) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{_W}" height="{_H}" fill="white"/>',
        f'<text x="{_L + pw / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    for v in _nice_ticks_log(y_lo, y_hi):
        y = sy(v)
        out.append(f'<line x1="{_L}" y1="{y:.1f}" x2="{_L + pw}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    step = _nice_step(x_hi)
    v = 0.0
    while v <= x_hi:
        x = sx(v)
        out.append(f'<line x1="{x:.1f}" y1="{_T}" x2="{x:.1f}" y2="{_T + ph}" stroke="#f0f0f0"/>')
        out.append(f'<text x="{x:.1f}" y="{_T + ph + 18}" text-anchor="middle">{_fmt(v)}</text>')
        v += step
    out.append(f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{_L + pw / 2}" y="{_H - 12}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(
        f'<text x="16" y="{_T + ph / 2}" text-anchor="middle" transform="rotate(-90 16 {_T + ph / 2})">{escape(y_label)}</text>'
    )
    ly = _T + 10
    for label, data, colour in series:
        data = [(x, y) for x, y in data if y > 0]
        if not data:
            continue
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(data))
        out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in data)
        out.append(
            f'<line x1="{_L + pw + 15}" y1="{ly}" x2="{_L + pw + 40}" y2="{ly}" stroke="{colour}" stroke-width="2"/>'
        )
        out.append(f'<text x="{_L + pw + 46}" y="{ly + 4}">{escape(label)}</text>')
        ly += 20
    out.append("</svg>")
    return "\n".join(out) + "\n"
